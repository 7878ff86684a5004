"""Training-time augmentation: Keras preprocessing layers, active only when ``training=True``.

The augmentation works on raw pixels (float32 0-255, ``[N, 48, 48, 1]``), keeps shapes, and
keeps values in [0, 255]. :func:`with_augmentation` wraps a network for training only, so the
network itself (what ``model.keras`` holds and what is exported) stays inference-clean.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers, ops

from components.train.recipe import AUGMENTATION_PRESETS
from serving.contract import PIXELS_INPUT

VALUE_RANGE = (0.0, 255.0)


@keras.saving.register_keras_serializable(package="fer")
class ClipRange(layers.Layer):
    """Clip to the pixel value range (bilinear resampling can overshoot by a rounding error)."""

    def __init__(self, low: float = VALUE_RANGE[0], high: float = VALUE_RANGE[1], **kwargs):
        super().__init__(**kwargs)
        self.low, self.high = float(low), float(high)

    def call(self, inputs):
        return ops.clip(inputs, self.low, self.high)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "low": self.low, "high": self.high}


def build_augmentation(flip: bool = True, rotation: float = 10.0, translation: float = 0.1,
                       zoom: float = 0.1, shear: float = 0.0, brightness: float = 0.0,
                       contrast: float = 0.0, erasing: float = 0.0, seed: int = 0,
                       name: str = "augmentation") -> keras.Sequential:
    """A ``keras.Sequential`` of random image layers (identity when ``training=False``).

    ``flip``: random horizontal flip. ``rotation``: max degrees either way.
    ``translation``: max shift as a fraction of height/width. ``zoom``: max zoom *in* as a
    fraction (a random crop resized back). ``shear``: max shear factor on x and y.
    ``brightness``: max brightness shift as a fraction of 255. ``contrast``: max contrast
    change factor. ``erasing``: probability of erasing a random rectangle (random erasing,
    filled with noise). A value of 0 leaves that layer out. Geometric layers fill with
    reflection; values are clipped to [0, 255] at the end.
    """
    if not 0.0 <= rotation <= 180.0:
        raise ValueError(f"rotation must be in [0, 180] degrees, got {rotation}")
    for arg, value in (("translation", translation), ("zoom", zoom), ("shear", shear),
                       ("brightness", brightness), ("contrast", contrast)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{arg} must be in [0, 1), got {value}")
    if not 0.0 <= erasing <= 1.0:
        raise ValueError(f"erasing is a probability in [0, 1], got {erasing}")

    def opts(k: int) -> dict[str, Any]:  # float32 even under a mixed-precision policy
        return {"seed": seed + k, "dtype": "float32"}

    geometric = {"fill_mode": "reflect", "interpolation": "bilinear"}
    stack: list[layers.Layer] = []
    if flip:
        stack.append(layers.RandomFlip("horizontal", name="flip", **opts(1)))
    if rotation:
        stack.append(layers.RandomRotation(rotation / 360.0, name="rotation", **geometric,
                                           **opts(2)))
    if translation:
        stack.append(layers.RandomTranslation(translation, translation, name="translation",
                                              **geometric, **opts(3)))
    if zoom:
        stack.append(layers.RandomZoom((-zoom, 0.0), name="zoom", **geometric, **opts(4)))
    if shear:
        stack.append(layers.RandomShear(shear, shear, name="shear", **geometric, **opts(5)))
    if brightness:
        stack.append(layers.RandomBrightness(brightness, value_range=VALUE_RANGE,
                                             name="brightness", **opts(6)))
    if contrast:
        stack.append(layers.RandomContrast(contrast, value_range=VALUE_RANGE, name="contrast",
                                           **opts(7)))
    if erasing:
        stack.append(layers.RandomErasing(factor=(erasing, erasing), value_range=VALUE_RANGE,
                                          name="erasing", **opts(8)))
    stack.append(ClipRange(name="clip", dtype="float32"))
    return keras.Sequential(stack, name=name)


def augmentation_from_preset(preset: str, seed: int = 0,
                             overrides: dict[str, Any] | None = None) -> keras.Sequential | None:
    """The augmentation of a named preset (``None`` for ``"none"`` without overrides)."""
    if preset not in AUGMENTATION_PRESETS:
        raise ValueError(f"augmentation must be one of {sorted(AUGMENTATION_PRESETS)}, "
                         f"got {preset!r}")
    if preset == "none" and not overrides:
        return None
    return build_augmentation(**{**AUGMENTATION_PRESETS[preset], **(overrides or {})}, seed=seed)


def with_augmentation(model: keras.Model, augmentation: keras.Sequential) -> keras.Model:
    """A training wrapper ``augmentation -> model`` sharing ``model``'s layers and weights.

    Fit the wrapper, save ``model``: the saved network carries no augmentation.
    """
    inputs = keras.Input(shape=model.input_shape[1:], name=PIXELS_INPUT)
    outputs = model(augmentation(inputs))
    return keras.Model(inputs, outputs, name=f"{model.name}_augmented")
