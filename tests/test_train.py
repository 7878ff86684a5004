"""The model zoo and the training step, on real faces."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score

from components.dataset import DataError, FaceDataset
from components.train.ensemble import select_best
from components.train.models import MODEL_BUILDERS, build_model, load_trained
from components.train.recipe import TrainConfig, builder_kwargs, checkpoint_dir
from components.train.train import predict_proba, train
from tests.helpers import Killed


@pytest.mark.parametrize("architecture", sorted(MODEL_BUILDERS))
def test_every_builder_builds_and_trains_a_step(architecture, prepared):
    model = build_model(architecture)
    assert model.input_shape == (None, 48, 48, 1)
    assert model.output_shape == (None, 7)
    assert model.name == architecture
    data = FaceDataset.load(prepared / "dataset").split("train")
    x = data.images[:16, ..., None].astype("float32")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    before = [w.copy() for w in model.get_weights()]
    model.train_on_batch(x, data.labels[:16])
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    probs = model.predict(x, verbose=0)
    assert probs.shape == (16, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_builders_check_arguments_first(tmp_path):
    with pytest.raises(ValueError, match="grayscale"):
        build_model("baseline_cnn", input_shape=(48, 48, 3))
    with pytest.raises(ValueError, match=">= 32"):
        build_model("baseline_cnn", input_shape=(16, 16, 1))
    with pytest.raises(ValueError, match="dropout"):
        build_model("baseline_cnn", dropout=1.5)
    with pytest.raises(ValueError, match="no such file"):  # never downloads ImageNet weights
        build_model("vgg19", weights=str(tmp_path / "vgg19_notop.h5"))
    with pytest.raises(ValueError, match="unknown architecture 'resnet9000'; known: "):
        build_model("resnet9000")


def test_vgg19_reads_imagenet_weights_from_a_local_file(tmp_path):
    # A no-top VGG19 weights file, as keras.applications writes it (random values here:
    # real ImageNet weights are a download this machine cannot make).
    base = keras.applications.VGG19(include_top=False, weights=None, input_shape=(48, 48, 3))
    path = tmp_path / "vgg19_notop.weights.h5"
    base.save_weights(path)
    model = build_model("vgg19", weights=str(path))
    loaded = model.get_layer("vgg19")
    for a, b in zip(loaded.get_weights(), base.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_training_writes_model_history_curves_and_summary(trained_model, prepared):
    summary = json.loads((trained_model / "summary.json").read_text())
    assert summary["architecture"] == "baseline_cnn"
    assert summary["epochs_run"] == 2
    # the summary's val figures are those of the saved model on the val split
    val = FaceDataset.load(prepared / "dataset").split("val")
    predicted = predict_proba(load_trained(trained_model), val.images).argmax(axis=1)
    assert summary["val_items"] == len(val)
    assert summary["val_accuracy"] == pytest.approx(accuracy_score(val.labels, predicted),
                                                    abs=1e-6)  # rounded to 6 places
    assert summary["val_macro_f1"] == pytest.approx(
        f1_score(val.labels, predicted, labels=list(range(7)), average="macro",
                 zero_division=0), abs=1e-6)
    history = json.loads((trained_model / "history.json").read_text())
    assert len(history["loss"]) == len(history["val_loss"]) == 2
    with Image.open(trained_model / "training_curves.png") as img:
        assert img.format == "PNG"
    model = keras.models.load_model(trained_model / "model.keras")
    val = FaceDataset.load(prepared / "dataset").split("val")
    probs = predict_proba(model, val.images)
    assert probs.shape == (len(val), 7)


def test_training_is_deterministic_for_a_seed(prepared, tmp_path):
    config = TrainConfig(epochs=1, batch_size=32, seed=3)
    a = train(prepared / "dataset", prepared / "class_weights.json", tmp_path / "a", config)
    b = train(prepared / "dataset", prepared / "class_weights.json", tmp_path / "b", config)
    wa = keras.models.load_model(tmp_path / "a" / "model.keras").get_weights()
    wb = keras.models.load_model(tmp_path / "b" / "model.keras").get_weights()
    for x, y in zip(wa, wb):
        np.testing.assert_array_equal(x, y)
    assert a["val_macro_f1"] == b["val_macro_f1"]


def test_killed_run_resumes_from_its_last_epoch(prepared, tmp_path, kill_after_epoch):
    ckpt = tmp_path / "ckpt"
    config = TrainConfig(epochs=3, batch_size=32, seed=2, checkpoint_dir=str(ckpt))
    kill_after_epoch(1)
    with pytest.raises(Killed):
        train(prepared / "dataset", prepared / "class_weights.json", tmp_path / "m", config)
    first_two = (ckpt / "history.csv").read_text().splitlines()
    assert len(first_two) == 3  # header + 2 epochs

    summary = train(prepared / "dataset", prepared / "class_weights.json", tmp_path / "m", config)
    assert summary["epochs_run"] == 3  # 2 before the kill, 1 after
    rows = (ckpt / "history.csv").read_text().splitlines()
    assert rows[:3] == first_two
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]
    # the training time counts the epochs run before the kill, not only the resumed one
    history = json.loads((tmp_path / "m" / "history.json").read_text())
    assert len(history["epoch_seconds"]) == 3 and min(history["epoch_seconds"]) > 0
    assert summary["train_seconds"] == round(sum(history["epoch_seconds"]), 2)


def test_resumed_run_continues_the_learning_rate_schedule(prepared, tmp_path, kill_after_epoch):
    """The optimizer's step count comes back with the weights: after a kill, a cosine
    schedule goes on where it stopped instead of starting again at its peak."""
    ckpt = tmp_path / "ckpt"
    config = TrainConfig(epochs=3, batch_size=32, seed=2, checkpoint_dir=str(ckpt),
                         schedule="cosine", learning_rate=1e-3)
    kill_after_epoch(1)
    with pytest.raises(Killed):
        train(prepared / "dataset", prepared / "class_weights.json", tmp_path / "m", config)
    train(prepared / "dataset", prepared / "class_weights.json", tmp_path / "m", config)
    rates = json.loads((tmp_path / "m" / "history.json").read_text())["learning_rate"]
    # cosine decay over 3 epochs, read at each epoch's end: 0.75, 0.25, then 0 of the peak
    np.testing.assert_allclose(rates, [0.75e-3, 0.25e-3, 0.0], atol=1e-6)


def test_training_needs_val(tmp_path, prepared):
    data = FaceDataset.load(prepared / "dataset")
    data.subset(data.splits != "val").save(tmp_path / "noval")
    with pytest.raises(DataError, match="needs train and val"):
        train(tmp_path / "noval", None, tmp_path / "m", TrainConfig(epochs=1))


def test_config_is_checked():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig(learning_rate=0)


def test_select_best_by_val_macro_f1(trained_model, tmp_path):
    import shutil

    worse = tmp_path / "worse"
    shutil.copytree(trained_model, worse)
    summary = json.loads((worse / "summary.json").read_text())
    summary.update(architecture="vgg19", val_macro_f1=summary["val_macro_f1"] - 0.1)
    (worse / "summary.json").write_text(json.dumps(summary))
    result = select_best([worse, trained_model], tmp_path / "best")
    assert result["winner"] == "baseline_cnn"
    assert [r["architecture"] for r in result["leaderboard"]] == ["baseline_cnn", "vgg19"]
    assert (tmp_path / "best" / "model.keras").is_file()


def test_checkpoint_dir_keeps_differently_built_variants_apart():
    assert checkpoint_dir("", "baseline_cnn", 42) is None
    assert checkpoint_dir("/ckpt/", "baseline_cnn", 42) == "/ckpt/baseline_cnn-seed42"
    assert checkpoint_dir("/ckpt", "baseline_cnn", 42, {}) == "/ckpt/baseline_cnn-seed42"
    wide = checkpoint_dir("/ckpt", "configurable_cnn", 42, {"filters": [64, 128], "dropout": 0.1})
    same = checkpoint_dir("/ckpt", "configurable_cnn", 42, {"dropout": 0.1, "filters": [64, 128]})
    other = checkpoint_dir("/ckpt", "configurable_cnn", 42, {"filters": [32, 64], "dropout": 0.1})
    assert wide == same != other
    assert wide.startswith("/ckpt/configurable_cnn-seed42-")


def test_builder_kwargs_restore_the_ints_kfp_turns_into_doubles():
    # What a KFP dict parameter delivers: every number a double.
    options = {"configurable_cnn": {"filters": [64.0, 128.0], "dropout": 0.1, "depth": 3.0,
                                    "batch_norm": True}}
    kwargs = builder_kwargs(options, "configurable_cnn")
    assert kwargs == {"filters": [64, 128], "dropout": 0.1, "depth": 3, "batch_norm": True}
    assert all(type(v) is int for v in kwargs["filters"]) and type(kwargs["depth"]) is int
    assert build_model("configurable_cnn", **kwargs).count_params() > 0
    assert builder_kwargs(options, "baseline_cnn") == {}
