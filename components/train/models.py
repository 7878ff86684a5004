"""The model zoo: one builder per architecture, keras.applications style.

Every builder has the signature ``build_<arch>(input_shape, num_classes, ...) -> keras.Model``,
checks its arguments first, names its layers, and takes raw pixels (float32, 0-255,
``[N, 48, 48, 1]``): scaling happens in the model, so serving needs no preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
from keras import layers

from components.dataset import IMAGE_SIZE
from components.labels import NUM_CLASSES

INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)


def _check(input_shape: tuple[int, ...], num_classes: int, min_size: int = 32) -> None:
    if len(input_shape) != 3 or input_shape[-1] != 1:
        raise ValueError(f"input_shape must be (height, width, 1) grayscale, got {input_shape}")
    if min(input_shape[:2]) < min_size:
        raise ValueError(f"input height and width must be >= {min_size}, got {input_shape}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")


def build_baseline_cnn(input_shape: tuple[int, ...] = INPUT_SHAPE, num_classes: int = NUM_CLASSES,
                       filters: tuple[int, ...] = (32, 64, 128), dense_units: int = 256,
                       dropout: float = 0.4) -> keras.Model:
    """Three conv blocks (conv-BN-ReLU, max-pool) and a dense head: the seeds' first trial."""
    _check(input_shape, num_classes)
    if not filters or any(f < 1 for f in filters):
        raise ValueError(f"filters must be positive, got {filters}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")

    inputs = keras.Input(shape=input_shape, name="pixels")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for block, n in enumerate(filters, start=1):
        x = layers.Conv2D(n, 3, padding="same", use_bias=False, name=f"block{block}_conv")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"block{block}_bn")(x)
        x = layers.Activation("relu", name=f"block{block}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense_units, activation="relu", name="fc")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="baseline_cnn")


def build_vgg19(input_shape: tuple[int, ...] = INPUT_SHAPE, num_classes: int = NUM_CLASSES,
                weights: str | None = None, dense_units: int = 512,
                dropout: float = 0.5) -> keras.Model:
    """VGG19 adapted to 48x48 grayscale.

    ``weights``: ``None`` (from scratch) or the path of a local ImageNet *no-top* weights file
    (``vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5``); nothing is downloaded. The gray
    channel is repeated to three, and with ImageNet weights the inputs get VGG's own
    (caffe) preprocessing.
    """
    _check(input_shape, num_classes)
    if weights is not None and not Path(weights).is_file():
        raise ValueError(f"weights must be None or the path of a local weights file; "
                         f"no such file: {weights}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")

    inputs = keras.Input(shape=input_shape, name="pixels")
    rgb = layers.Concatenate(name="gray_to_rgb")([inputs, inputs, inputs])
    if weights is None:
        x = layers.Rescaling(1.0 / 255, name="rescale")(rgb)
    else:  # ImageNet weights expect BGR, mean-centred 0-255 values
        x = layers.Lambda(keras.applications.vgg19.preprocess_input, name="vgg_preprocess")(rgb)
    base = keras.applications.VGG19(include_top=False, weights=weights,
                                    input_shape=(*input_shape[:2], 3))
    x = base(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dense(dense_units, activation="relu", name="fc")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="vgg19")


MODEL_BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "baseline_cnn": build_baseline_cnn,
    "vgg19": build_vgg19,
}


def build_model(architecture: str, **kwargs) -> keras.Model:
    """Build a registered architecture; unknown names are an error that lists the known ones."""
    try:
        builder = MODEL_BUILDERS[architecture]
    except KeyError:
        raise ValueError(f"unknown architecture {architecture!r}; "
                         f"known: {', '.join(sorted(MODEL_BUILDERS))}") from None
    return builder(**kwargs)
