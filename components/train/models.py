"""The model zoo: one builder per architecture, keras.applications style.

Every builder has the signature ``build_<arch>(input_shape, num_classes, ...) -> keras.Model``,
checks its arguments first, names its layers, and takes raw pixels (float32, 0-255,
``[N, 48, 48, 1]``): scaling happens in the model, so serving needs no preprocessing. The
``predictions`` layer is float32 even under a mixed-precision policy.

Architectures: ``baseline_cnn`` (3 conv blocks), ``deep_cnn`` (4 double-conv blocks),
``configurable_cnn`` (blocks, depth, kernel, dropout, batch norm and head as arguments),
``resnet_small`` (ResNet-18-like basic blocks for 48x48), ``separable_cnn``
(mini-Xception: depthwise-separable residual modules, for CPU budgets) and ``vgg19``
(ImageNet weights from a local file; see :func:`freeze_base` / :func:`unfreeze_base` for
two-phase fine-tuning).

Length: six builders of 15 to 50 lines each, side by side as in ``keras.applications``, so
that the zoo reads as one table of architectures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import keras
from keras import layers

from serving.contract import FACE_SHAPE, MODEL_FILE, NUM_CLASSES, PIXELS_INPUT

INPUT_SHAPE = FACE_SHAPE
VGG_BGR_MEAN = (103.939, 116.779, 123.68)  # keras.applications.vgg19.preprocess_input


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

    inputs = keras.Input(shape=input_shape, name=PIXELS_INPUT)
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for block, n in enumerate(filters, start=1):
        x = layers.Conv2D(n, 3, padding="same", use_bias=False, name=f"block{block}_conv")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"block{block}_bn")(x)
        x = layers.Activation("relu", name=f"block{block}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense_units, activation="relu", name="fc")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = _predictions(x, num_classes)
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

    inputs = keras.Input(shape=input_shape, name=PIXELS_INPUT)
    rgb = layers.Concatenate(name="gray_to_rgb")([inputs, inputs, inputs])
    if weights is None:
        x = layers.Rescaling(1.0 / 255, name="rescale")(rgb)
    else:  # ImageNet weights expect BGR, mean-centred 0-255 values ("caffe" preprocessing);
        # the three channels are equal, so BGR order is a no-op and only the means remain.
        # (A Rescaling layer, unlike a Lambda, reloads from model.keras in safe mode.)
        x = layers.Rescaling(1.0, offset=[-m for m in VGG_BGR_MEAN], name="vgg_preprocess")(rgb)
    base = keras.applications.VGG19(include_top=False, weights=weights,
                                    input_shape=(*input_shape[:2], 3))
    x = base(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dense(dense_units, activation="relu", name="fc")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = _predictions(x, num_classes)
    return keras.Model(inputs, outputs, name="vgg19")


def build_deep_cnn(input_shape: tuple[int, ...] = INPUT_SHAPE, num_classes: int = NUM_CLASSES,
                   filters: Sequence[int] = (64, 128, 256, 512),
                   dense_units: Sequence[int] = (512,), dropout: float = 0.25,
                   head_dropout: float = 0.5) -> keras.Model:
    """Four blocks of two conv-BN-ReLU, max-pool and dropout, then a dense head."""
    _check(input_shape, num_classes)
    _check_cnn(input_shape, filters, 2, 3, dropout, dense_units, head_dropout)
    return _conv_net(input_shape, num_classes, filters, 2, 3, dropout, True, dense_units,
                     head_dropout, name="deep_cnn")


def build_configurable_cnn(input_shape: tuple[int, ...] = INPUT_SHAPE,
                           num_classes: int = NUM_CLASSES,
                           filters: Sequence[int] = (32, 64, 128), depth: int = 2,
                           kernel_size: int = 3, dropout: float = 0.25, batch_norm: bool = True,
                           dense_units: Sequence[int] = (256,),
                           head_dropout: float = 0.5) -> keras.Model:
    """Plain conv blocks, all sizes as arguments (for sweeps).

    ``filters``: one entry per block (each block halves the resolution); ``depth``: convs per
    block; ``kernel_size``: odd; ``dropout``: after each block; ``batch_norm``: conv-BN-ReLU
    (else conv+bias-ReLU); ``dense_units``: hidden dense layers of the head (may be empty);
    ``head_dropout``: after each of them.
    """
    _check(input_shape, num_classes)
    _check_cnn(input_shape, filters, depth, kernel_size, dropout, dense_units, head_dropout)
    return _conv_net(input_shape, num_classes, filters, depth, kernel_size, dropout, batch_norm,
                     dense_units, head_dropout, name="configurable_cnn")


def build_resnet_small(input_shape: tuple[int, ...] = INPUT_SHAPE, num_classes: int = NUM_CLASSES,
                       widths: Sequence[int] = (32, 64, 128, 256),
                       blocks: Sequence[int] = (2, 2, 2, 2), dropout: float = 0.3) -> keras.Model:
    """A ResNet-18-like network for 48x48 faces (He et al., 2016, basic blocks).

    A 3x3 stride-1 stem (no max-pool: the faces are small), then one stage per ``widths``
    entry with ``blocks`` basic blocks each; every stage after the first halves the
    resolution (ResNet-D shortcuts). ``widths=(64, 128, 256, 512)`` is ResNet-18's; the
    default is half as wide.
    """
    _check(input_shape, num_classes)
    _check_positive("widths", widths)
    _check_positive("blocks", blocks)
    if len(widths) != len(blocks):
        raise ValueError(f"widths and blocks must have one entry per stage, got "
                         f"{len(widths)} widths and {len(blocks)} blocks")
    _check_downsampling(input_shape, len(widths) - 1, "stages after the first")
    _check_dropout("dropout", dropout)

    inputs = keras.Input(shape=input_shape, name=PIXELS_INPUT)
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = layers.Conv2D(widths[0], 3, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for stage, (width, n) in enumerate(zip(widths, blocks), start=1):
        for block in range(1, n + 1):
            stride = 2 if stage > 1 and block == 1 else 1
            x = _basic_block(x, width, stride, name=f"stage{stage}_block{block}")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = _predictions(x, num_classes)
    return keras.Model(inputs, outputs, name="resnet_small")


def build_separable_cnn(input_shape: tuple[int, ...] = INPUT_SHAPE,
                        num_classes: int = NUM_CLASSES, stem_filters: int = 8,
                        widths: Sequence[int] = (16, 32, 64, 128),
                        dropout: float = 0.25) -> keras.Model:
    """mini-Xception (Arriaga et al., 2017): cheap enough for CPU training and serving.

    Two 3x3 conv-BN-ReLU stem layers, then one residual module per ``widths`` entry: two
    depthwise-separable conv-BN (ReLU between), a stride-2 max-pool, plus a downsampling
    1x1 conv-BN shortcut. Global average pooling and a softmax head.
    """
    _check(input_shape, num_classes)
    if stem_filters < 1:
        raise ValueError(f"stem_filters must be >= 1, got {stem_filters}")
    _check_positive("widths", widths)
    _check_downsampling(input_shape, len(widths), "widths (modules)")
    _check_dropout("dropout", dropout)

    inputs = keras.Input(shape=input_shape, name=PIXELS_INPUT)
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for i in (1, 2):
        x = layers.Conv2D(stem_filters, 3, padding="same", use_bias=False, name=f"stem_conv{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"stem_bn{i}")(x)
        x = layers.Activation("relu", name=f"stem_relu{i}")(x)
    for m, width in enumerate(widths, start=1):
        name = f"module{m}"
        shortcut = _projection(x, width, 2, name)
        x = layers.SeparableConv2D(width, 3, padding="same", use_bias=False,
                                   name=f"{name}_sepconv1")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn1")(x)
        x = layers.Activation("relu", name=f"{name}_relu")(x)
        x = layers.SeparableConv2D(width, 3, padding="same", use_bias=False,
                                   name=f"{name}_sepconv2")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn2")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_pool")(x)
        x = layers.Add(name=f"{name}_add")([x, shortcut])
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = _predictions(x, num_classes)
    return keras.Model(inputs, outputs, name="separable_cnn")


# --------------------------------------------------------------------------- pieces


def _predictions(x: keras.KerasTensor, num_classes: int) -> keras.KerasTensor:
    """The softmax head; float32 so mixed precision keeps the probabilities exact."""
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")(x)


def _check_positive(name: str, values: Sequence[int]) -> None:
    if not values or any(int(v) != v or v < 1 for v in values):
        raise ValueError(f"{name} must be a non-empty sequence of positive integers, got {values}")


def _check_dropout(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def _check_downsampling(input_shape: tuple[int, ...], halvings: int, what: str) -> None:
    if min(input_shape[:2]) // 2 ** halvings < 1:
        raise ValueError(f"{what}: {halvings} halvings take {input_shape[:2]} below 1x1")


def _check_cnn(input_shape: tuple[int, ...], filters: Sequence[int], depth: int,
               kernel_size: int, dropout: float, dense_units: Sequence[int],
               head_dropout: float) -> None:
    _check_positive("filters", filters)
    _check_downsampling(input_shape, len(filters), "filters (blocks)")
    if depth < 1:
        raise ValueError(f"depth (convs per block) must be >= 1, got {depth}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    _check_dropout("dropout", dropout)
    if any(int(u) != u or u < 1 for u in dense_units):
        raise ValueError(f"dense_units must be positive integers, got {dense_units}")
    _check_dropout("head_dropout", head_dropout)


def _conv_net(input_shape: tuple[int, ...], num_classes: int, filters: Sequence[int],
              depth: int, kernel_size: int, dropout: float, batch_norm: bool,
              dense_units: Sequence[int], head_dropout: float, name: str) -> keras.Model:
    inputs = keras.Input(shape=input_shape, name=PIXELS_INPUT)
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for block, n in enumerate(filters, start=1):
        for conv in range(1, depth + 1):
            x = layers.Conv2D(n, kernel_size, padding="same", use_bias=not batch_norm,
                              name=f"block{block}_conv{conv}")(x)
            if batch_norm:
                x = layers.BatchNormalization(momentum=0.9, name=f"block{block}_bn{conv}")(x)
            x = layers.Activation("relu", name=f"block{block}_relu{conv}")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        if dropout:
            x = layers.Dropout(dropout, name=f"block{block}_dropout")(x)
    x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate(dense_units, start=1):
        x = layers.Dense(units, activation="relu", name=f"fc{i}")(x)
        if head_dropout:
            x = layers.Dropout(head_dropout, name=f"fc{i}_dropout")(x)
    return keras.Model(inputs, _predictions(x, num_classes), name=name)


def _projection(x: keras.KerasTensor, width: int, stride: int, name: str) -> keras.KerasTensor:
    """A ResNet-D shortcut (He et al., 2019): average-pool, then 1x1 conv-BN. Unlike a
    strided 1x1 conv it drops no activations, and it avoids a crash of TF 2.21's oneDNN
    kernels when training strided 1x1 convs over few (<= 12) channels on AVX-512 CPUs."""
    if stride != 1:
        x = layers.AveragePooling2D(stride, padding="same", name=f"{name}_shortcut_pool")(x)
    x = layers.Conv2D(width, 1, use_bias=False, name=f"{name}_shortcut_conv")(x)
    return layers.BatchNormalization(momentum=0.9, name=f"{name}_shortcut_bn")(x)


def _basic_block(x: keras.KerasTensor, width: int, stride: int, name: str) -> keras.KerasTensor:
    shortcut = x
    if stride != 1 or x.shape[-1] != width:
        shortcut = _projection(x, width, stride, name)
    x = layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False,
                      name=f"{name}_conv1")(x)
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn1")(x)
    x = layers.Activation("relu", name=f"{name}_relu1")(x)
    x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{name}_conv2")(x)
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn2")(x)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.Activation("relu", name=f"{name}_out")(x)


# --------------------------------------------------------------------------- fine-tuning


def pretrained_base(model: keras.Model) -> keras.Model:
    """The one nested model of ``model`` (its pretrained backbone, e.g. VGG19's conv base)."""
    bases = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(bases) != 1:
        raise ValueError(f"model {model.name!r} must have exactly one nested base model to "
                         f"fine-tune, it has {len(bases)}")
    return bases[0]


def _walk(layer: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    yield layer
    for child in getattr(layer, "layers", []):
        yield from _walk(child)


def freeze_base(model: keras.Model) -> keras.Model:
    """Phase 1 of fine-tuning: the base is frozen, only the new head trains. Returns the base.
    Compile (again) afterwards."""
    base = pretrained_base(model)
    base.trainable = False
    return base


def unfreeze_base(model: keras.Model) -> keras.Model:
    """Phase 2 of fine-tuning: the base trains too, except its BatchNormalization layers,
    which stay frozen (and so in inference mode: their ImageNet statistics survive small
    batches). Returns the base. Compile (again, with a lower learning rate) afterwards."""
    base = pretrained_base(model)
    base.trainable = True
    for layer in _walk(base):
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
    return base


MODEL_BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "baseline_cnn": build_baseline_cnn,
    "deep_cnn": build_deep_cnn,
    "configurable_cnn": build_configurable_cnn,
    "resnet_small": build_resnet_small,
    "separable_cnn": build_separable_cnn,
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


def load_trained(model_dir: str | Path) -> keras.Model:
    """The trained model a train, select or ensemble step wrote to ``model_dir``
    (``model.keras``), with the project's custom layers (logit adjustment, TTA views,
    augmentation) registered first, whatever the caller imported."""
    from components.train import augment, calibrate, tta  # noqa: F401 (register their layers)

    return keras.models.load_model(Path(model_dir) / MODEL_FILE)


def load_initial_weights(model: keras.Model, source: str | Path) -> int:
    """Set ``model``'s weights, by name, from ``source``: a SavedModel version directory
    (the variables its ``serving_default`` uses) or a trained model's directory
    (``model.keras``). Every weight of ``model`` must be found there with its shape; else
    ValueError naming the first that is not. Returns the number of weights set."""
    import numpy as np

    source = Path(source)
    if (source / "saved_model.pb").is_file():
        import tensorflow as tf

        from serving.contract import SIGNATURE_PIXELS

        loaded = tf.saved_model.load(str(source))  # kept alive while its variables are read
        found = {v.name.removesuffix(":0"): v.numpy()
                 for v in loaded.signatures[SIGNATURE_PIXELS].variables}
    elif (source / MODEL_FILE).is_file():
        found = {w.path: np.asarray(w) for w in load_trained(source).weights}
    else:
        raise ValueError(f"init_from {source}: neither a SavedModel version directory nor a "
                         f"trained model directory ({MODEL_FILE})")
    for weight in model.weights:
        value = found.get(weight.path)
        if value is None or tuple(value.shape) != tuple(weight.shape):
            raise ValueError(f"init_from {source}: no weight {weight.path} of shape "
                             f"{tuple(weight.shape)} there (another architecture or other "
                             f"builder arguments?)")
        weight.assign(value)
    return len(model.weights)
