"""The model zoo's new architectures, their argument checks, and the fine-tuning helpers.

(Every registered builder also builds and trains a step on real faces in test_train.py.)
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from components.train.fit import dtype_policy
from components.train.models import (
    MODEL_BUILDERS,
    build_model,
    freeze_base,
    pretrained_base,
    unfreeze_base,
)


def test_the_zoo_has_every_architecture():
    assert set(MODEL_BUILDERS) == {"baseline_cnn", "deep_cnn", "configurable_cnn",
                                   "resnet_small", "separable_cnn", "vgg19"}


@pytest.mark.parametrize("architecture, kwargs, message", [
    ("deep_cnn", {"filters": ()}, "filters must be a non-empty"),
    ("deep_cnn", {"head_dropout": 1.0}, "head_dropout"),
    ("configurable_cnn", {"depth": 0}, "depth"),
    ("configurable_cnn", {"kernel_size": 4}, "kernel_size must be a positive odd"),
    ("configurable_cnn", {"filters": (8,) * 6}, r"6 halvings take \(48, 48\) below 1x1"),
    ("configurable_cnn", {"dense_units": (0,)}, "dense_units"),
    ("configurable_cnn", {"dropout": -0.1}, "dropout must be in"),
    ("resnet_small", {"widths": (16, 32), "blocks": (1,)}, "one entry per stage"),
    ("resnet_small", {"blocks": (2, 0, 2, 2)}, "blocks must be"),
    ("separable_cnn", {"stem_filters": 0}, "stem_filters"),
    ("separable_cnn", {"widths": (8,) * 7}, "halvings"),
    ("separable_cnn", {"input_shape": (48, 48, 3)}, "grayscale"),
    ("resnet_small", {"num_classes": 1}, "num_classes"),
])
def test_builders_check_arguments_first(architecture, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(architecture, **kwargs)


def layer_types(model: keras.Model) -> list[str]:
    return [type(layer).__name__ for layer in model.layers]


def test_configurable_cnn_follows_its_arguments():
    model = build_model("configurable_cnn", filters=(8, 16, 32), depth=3, kernel_size=5,
                        batch_norm=False, dense_units=(64, 32), dropout=0.1)
    convs = [layer for layer in model.layers if isinstance(layer, layers.Conv2D)]
    assert [c.filters for c in convs] == [8] * 3 + [16] * 3 + [32] * 3
    assert {c.kernel_size for c in convs} == {(5, 5)} and all(c.use_bias for c in convs)
    assert "BatchNormalization" not in layer_types(model)
    assert [model.get_layer(n).units for n in ("fc1", "fc2", "predictions")] == [64, 32, 7]
    assert model.get_layer("block3_pool").output.shape[1:3] == (6, 6)
    with_bn = build_model("configurable_cnn", depth=1)
    assert layer_types(with_bn).count("BatchNormalization") == 3


def test_deep_cnn_is_four_double_conv_blocks():
    model = build_model("deep_cnn")
    convs = [layer.name for layer in model.layers if isinstance(layer, layers.Conv2D)]
    assert convs == [f"block{b}_conv{c}" for b in range(1, 5) for c in (1, 2)]
    assert model.get_layer("block4_pool").output.shape[1:] == (3, 3, 512)


def test_resnet_small_stages_and_shortcuts():
    model = build_model("resnet_small", widths=(8, 16, 32), blocks=(1, 2, 1))
    assert model.get_layer("stage1_block1_out").output.shape[1:] == (48, 48, 8)
    assert model.get_layer("stage3_block1_out").output.shape[1:] == (12, 12, 32)
    # A projection shortcut where the shape changes, the identity elsewhere.
    names = {layer.name for layer in model.layers}
    assert "stage2_block1_shortcut_conv" in names and "stage2_block2_shortcut_conv" not in names
    assert "stage1_block1_shortcut_conv" not in names


def test_separable_cnn_is_a_small_mini_xception():
    model = build_model("separable_cnn")
    assert layer_types(model).count("SeparableConv2D") == 8
    assert layer_types(model).count("Add") == 4
    assert model.count_params() < 100_000
    assert model.get_layer("module4_add").output.shape[1:] == (3, 3, 128)


@pytest.mark.parametrize("architecture", ["baseline_cnn", "deep_cnn", "separable_cnn"])
def test_predictions_stay_float32_under_mixed_precision(architecture):
    with dtype_policy("mixed_float16"):
        model = build_model(architecture)
    assert model.get_layer("rescale").compute_dtype == "float16"
    assert model.get_layer("predictions").compute_dtype == "float32"
    assert model.output.dtype == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"  # restored


def test_vgg19_imagenet_preprocessing_is_caffe_style_and_reloads(tmp_path):
    base = keras.applications.VGG19(include_top=False, weights=None, input_shape=(48, 48, 3))
    path = tmp_path / "vgg19_notop.weights.h5"
    base.save_weights(path)
    model = build_model("vgg19", weights=str(path))
    gray = np.random.default_rng(0).integers(0, 256, (2, 48, 48, 1)).astype("float32")
    preprocess = keras.Model(model.input, model.get_layer("vgg_preprocess").output)
    expected = keras.applications.vgg19.preprocess_input(np.repeat(gray, 3, axis=-1))
    np.testing.assert_allclose(preprocess.predict(gray, verbose=0), expected, atol=1e-4)
    model.save(tmp_path / "model.keras")  # no Lambda layer: reloads in safe mode
    reloaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(reloaded.predict(gray, verbose=0), model.predict(gray, verbose=0),
                               atol=1e-6)


def test_freeze_then_unfreeze_vgg19_base():
    model = build_model("vgg19")
    head = {w.path for w in model.trainable_weights} - {
        w.path for w in model.get_layer("vgg19").trainable_weights}
    base = freeze_base(model)
    assert base.name == "vgg19" and not base.trainable
    assert {w.path for w in model.trainable_weights} == head  # only the new head
    unfreeze_base(model)
    assert base.trainable and all(layer.trainable for layer in base.layers)
    assert len(model.trainable_weights) == len(head) + 32  # 16 convs x (kernel, bias)


def test_unfreeze_keeps_batch_norm_frozen():
    """The helper is generic: any BatchNormalization in the base (nested too) stays frozen."""
    inner = build_model("resnet_small", widths=(8, 16), blocks=(1, 1))
    backbone = keras.Model(inner.input, inner.get_layer("avg_pool").output, name="backbone")
    inputs = keras.Input((48, 48, 1), name="pixels")
    outputs = layers.Dense(7, activation="softmax", name="predictions")(backbone(inputs))
    model = keras.Model(inputs, outputs)

    freeze_base(model)
    assert [w.path for w in model.trainable_weights] == ["predictions/kernel", "predictions/bias"]
    unfreeze_base(model)
    bns = [layer for layer in backbone.layers if isinstance(layer, layers.BatchNormalization)]
    convs = [layer for layer in backbone.layers if isinstance(layer, layers.Conv2D)]
    assert bns and not any(bn.trainable for bn in bns)
    assert convs and all(conv.trainable for conv in convs)
    # Frozen BN runs in inference mode: a training step leaves its statistics alone.
    before = [bn.moving_mean.numpy().copy() for bn in bns]
    model.compile("adam", "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).uniform(0, 255, (8, 48, 48, 1)).astype("float32")
    model.train_on_batch(x, np.arange(8) % 7)
    for bn, mean in zip(bns, before):
        np.testing.assert_array_equal(bn.moving_mean.numpy(), mean)


def test_fine_tuning_needs_exactly_one_base():
    with pytest.raises(ValueError, match="exactly one nested base model to fine-tune, it has 0"):
        pretrained_base(build_model("baseline_cnn"))
