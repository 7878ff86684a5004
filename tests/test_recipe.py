"""The training recipe on real faces: augmentation, optimizers and schedules, label smoothing,
balanced sampling, resume, two-phase fine-tuning, and test-time augmentation."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from components.dataset import FaceDataset
from components.evaluate import evaluate, format_evaluation
from components.export import export
from components.images import png_bytes
from components.train.augment import (
    AUGMENTATION_PRESETS,
    augmentation_from_preset,
    build_augmentation,
)
from components.train.data import balanced_dataset
from components.train.fit import (
    cpu_flags, learning_rate_schedule, make_loss, make_optimizer, mixed_policy)
from components.train.models import build_model
from components.train.recipe import RecipeError, TrainConfig
from components.train.train import train
from components.train.tta import crop_offsets, with_tta
from serving.contract import (
    CLASS_NAMES,
    SIGNATURE_IMAGES,
    SIGNATURE_IMAGES_TTA,
    SIGNATURE_PIXELS,
    SIGNATURE_PIXELS_TTA,
)

SMALL = {"filters": (8, 16), "dense_units": 32}  # a small baseline_cnn: fast on 2 cores
from tests.helpers import Killed


@pytest.fixture(scope="module")
def faces(prepared) -> np.ndarray:
    return FaceDataset.load(prepared / "dataset").split("train").images[:32]


def run(prepared, tmp_path, **kwargs):
    config = TrainConfig(**{"epochs": 1, "batch_size": 32, "seed": 5, "model_kwargs": SMALL,
                            **kwargs})
    return train(prepared / "dataset", prepared / "class_weights.json", tmp_path, config)


# --- augmentation -------------------------------------------------------------------------

def test_augmentation_keeps_shapes_and_pixel_range_and_is_identity_at_inference(faces):
    x = faces[..., None].astype("float32")
    x[0], x[1] = 0.0, 255.0  # the extremes
    aug = build_augmentation(**AUGMENTATION_PRESETS["standard"], seed=1)
    assert [layer.name for layer in aug.layers] == [
        "flip", "rotation", "translation", "zoom", "shear", "brightness", "contrast",
        "erasing", "clip"]
    out = np.asarray(aug(x, training=True))
    assert out.shape == x.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0
    changed = np.abs(out - x).reshape(len(x), -1).max(axis=1) > 1.0
    assert changed[2:].mean() > 0.9  # nearly every real face is altered
    np.testing.assert_array_equal(np.asarray(aug(x, training=False)), x)
    # Seeded: the same layers give the same first draw.
    again = build_augmentation(**AUGMENTATION_PRESETS["standard"], seed=1)
    np.testing.assert_allclose(np.asarray(again(x, training=True)), out, atol=1e-3)


def test_augmentation_arguments_are_checked():
    with pytest.raises(ValueError, match="rotation"):
        build_augmentation(rotation=200)
    with pytest.raises(ValueError, match="zoom"):
        build_augmentation(zoom=1.0)
    with pytest.raises(ValueError, match="erasing is a probability"):
        build_augmentation(erasing=1.5)
    with pytest.raises(ValueError, match="augmentation must be one of"):
        augmentation_from_preset("heavy")
    assert augmentation_from_preset("none") is None


def test_augmented_training_saves_the_plain_network(prepared, tmp_path):
    summary = run(prepared, tmp_path, augmentation="standard", mixed_precision=True)
    # No GPU here: bfloat16 where this CPU computes in it natively, else float32; no error.
    assert summary["mixed_precision"] == mixed_policy(0, cpu_flags())
    saved = keras.models.load_model(tmp_path / "model.keras")
    assert {w.dtype for w in saved.weights} == {"float32"}  # served in full precision
    assert [layer.name for layer in saved.layers] == [
        layer.name for layer in build_model("baseline_cnn", **SMALL).layers]
    x = FaceDataset.load(prepared / "dataset").split("val").images[:8, ..., None].astype("f4")
    np.testing.assert_array_equal(saved.predict(x, verbose=0), saved.predict(x, verbose=0))


def test_mixed_precision_picks_the_policy_the_hardware_computes_in(tmp_path):
    amx = tmp_path / "sapphire_rapids"
    amx.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile "
                   "amx_bf16\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx2\n")
    older = tmp_path / "skylake"
    older.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert "amx_bf16" in cpu_flags(amx) and "avx512_bf16" not in cpu_flags(older)
    assert cpu_flags(tmp_path / "missing") == frozenset()  # not Linux: no flags, float32
    assert mixed_policy(0, cpu_flags(amx)) == "mixed_bfloat16"
    assert mixed_policy(0, frozenset({"avx512_bf16"})) == "mixed_bfloat16"
    assert mixed_policy(0, cpu_flags(older)) is None  # emulated bfloat16 would be slower
    assert mixed_policy(0, frozenset()) is None
    assert mixed_policy(1, cpu_flags(amx)) == mixed_policy(2, frozenset()) == "mixed_float16"


# --- optimizers, schedules, losses, sampling ---------------------------------------------

@pytest.mark.parametrize("optimizer, schedule, warmup", [
    ("adam", "cosine", 0), ("adamw", "plateau", 0), ("sgd", "cosine", 1)])
def test_each_optimizer_and_schedule_trains(optimizer, schedule, warmup, prepared, tmp_path):
    summary = run(prepared, tmp_path, optimizer=optimizer, schedule=schedule,
                  warmup_epochs=warmup, epochs=1 + warmup, weight_decay=1e-4)
    assert summary["epochs_run"] == 1 + warmup
    assert summary["config"]["optimizer"] == optimizer
    history = json.loads((tmp_path / "history.json").read_text())
    assert np.isfinite(history["loss"]).all()
    rates = history["learning_rate"]  # the rate at each epoch's end, as the schedule set it
    assert len(rates) == 1 + warmup
    peak = summary["config"]["learning_rate"]
    if schedule == "cosine":
        assert rates[-1] < 0.01 * peak  # the decay ends near 0
        if warmup:  # the warm-up ends at the peak rate
            assert rates[warmup - 1] == pytest.approx(peak)
    else:
        assert rates == [pytest.approx(peak)]


def test_plateau_stops_early_where_cosine_runs_its_whole_schedule(prepared, tmp_path):
    # At this rate the small net stalls within a few epochs: val loss stops falling and
    # patience 1 runs out under the plateau schedule, not under cosine.
    rough = {"epochs": 6, "learning_rate": 0.01, "early_stopping_patience": 1}
    plateau = run(prepared, tmp_path / "plateau", schedule="plateau", **rough)
    cosine = run(prepared, tmp_path / "cosine", schedule="cosine", **rough)
    assert plateau["epochs_run"] < 6
    assert cosine["epochs_run"] == 6


def test_optimizer_settings():
    sgd = make_optimizer(TrainConfig(optimizer="sgd"), 0.1, 10, 5)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.nesterov and sgd.momentum == 0.9
    assert sgd.weight_decay is None
    adamw = make_optimizer(TrainConfig(optimizer="adamw"), 1e-3, 10, 5)
    assert isinstance(adamw, keras.optimizers.AdamW) and adamw.weight_decay == 0.004
    adam = make_optimizer(TrainConfig(weight_decay=1e-4), 1e-3, 10, 5)
    assert type(adam) is keras.optimizers.Adam and adam.weight_decay == 1e-4
    assert make_optimizer(TrainConfig(), 1e-3, 10, 5).learning_rate.numpy() == pytest.approx(1e-3)

    schedule = learning_rate_schedule(TrainConfig(schedule="cosine", warmup_epochs=2), 0.1,
                                      steps_per_epoch=10, epochs=10, warmup_epochs=2)
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    assert float(schedule(0)) == 0.0  # warm-up from 0 ...
    assert float(schedule(10)) == pytest.approx(0.05)
    assert float(schedule(20)) == pytest.approx(0.1)  # ... to the rate after 2 epochs,
    assert float(schedule(60)) == pytest.approx(0.05)  # half way down the cosine,
    assert float(schedule(100)) == pytest.approx(0.0, abs=1e-7)  # 0 at the end


def test_label_smoothing_and_balanced_sampling_train(prepared, tmp_path):
    loss = make_loss(TrainConfig(label_smoothing=0.1))
    assert isinstance(loss, keras.losses.CategoricalCrossentropy)
    assert loss.get_config()["label_smoothing"] == 0.1
    summary = run(prepared, tmp_path, label_smoothing=0.1, class_balance="sampling")
    assert summary["epochs_run"] == 1
    assert summary["config"]["class_balance"] == "sampling"


def test_balanced_sampling_draws_classes_equally(prepared):
    train_set = FaceDataset.load(prepared / "dataset").split("train")
    # Imbalanced real faces: all the happy ones, three disgust, eight fear.
    idx = np.concatenate([np.flatnonzero(train_set.labels == 3),
                          np.flatnonzero(train_set.labels == 1)[:3],
                          np.flatnonzero(train_set.labels == 2)[:8]])
    ds = balanced_dataset(train_set.images[idx], train_set.labels[idx], 30, seed=0,
                          one_hot=True)
    x, y = next(iter(ds.take(1)))
    assert x.shape == (30, 48, 48, 1) and x.dtype == tf.float32 and y.shape == (30, 7)
    labels = np.concatenate([y.numpy().argmax(axis=1) for _, y in ds.take(40)])
    counts = np.bincount(labels, minlength=7)[[1, 2, 3]]
    assert counts.sum() == 1200 and (np.abs(counts / 1200 - 1 / 3) < 0.05).all()


@pytest.mark.parametrize("kwargs, field, message", [
    ({"optimizer": "rmsprop"}, "optimizer", "optimizer must be one of"),
    ({"schedule": "step"}, "schedule", "schedule must be one of"),
    ({"class_balance": "oversample"}, "class_balance", "class_balance must be one of"),
    ({"augmentation": "heavy"}, "augmentation", "augmentation must be one of"),
    ({"warmup_epochs": 1}, "warmup_epochs", "warmup_epochs needs schedule='cosine'"),
    ({"schedule": "cosine", "warmup_epochs": 30}, "warmup_epochs", r"must be in \[0, 30\)"),
    ({"label_smoothing": 1.0}, "label_smoothing", r"must be in \[0, 1\), got 1.0"),
    ({"weight_decay": -1.0}, "weight_decay", "must be >= 0 or None, got -1.0"),
    ({"freeze_base_epochs": 30}, "freeze_base_epochs", r"must be in \[0, epochs=30\)"),
    ({"early_stopping_patience": -1}, "early_stopping_patience", "must be >= 0"),
])
def test_recipe_options_are_checked(kwargs, field, message):
    with pytest.raises(RecipeError, match=message) as err:
        TrainConfig(**kwargs)
    assert err.value.field == field


@pytest.mark.parametrize("values, field, message", [
    ({"epochs": "ten"}, "epochs", "epochs must be int, got 'ten'"),
    ({"epochs": 2.5}, "epochs", "epochs must be int, got 2.5"),
    ({"mixed_precision": 1}, "mixed_precision", "mixed_precision must be bool"),
    ({"tta": None}, "tta", "tta must be set, got null"),
    ({"augmentation_kwargs": [1]}, "augmentation_kwargs", "must be dict"),
    ({"learning_rte": 0.1}, "learning_rte", "unknown recipe setting"),
])
def test_recipe_from_a_dict_is_typed_and_checked(values, field, message):
    with pytest.raises(RecipeError, match=message) as err:
        TrainConfig.from_dict(values)
    assert err.value.field == field


def test_recipe_round_trips_through_kfp_doubles():
    config = TrainConfig(epochs=12, warmup_epochs=2, schedule="cosine", weight_decay=1e-4,
                         augmentation_kwargs={"rotation": 5.0}, logit_adjustment=True)
    carried = {k: float(v) if type(v) is int else v for k, v in config.recipe().items()}
    again = TrainConfig.from_dict(carried)
    assert again == config and type(again.epochs) is int and type(again.weight_decay) is float
    assert "architecture" not in config.recipe() and "seed" not in config.recipe()


# --- resume -------------------------------------------------------------------------------

def state(model: keras.Model) -> dict[str, list[np.ndarray]]:
    return {"weights": [np.array(w) for w in model.get_weights()],
            "optimizer": [np.array(v) for v in model.optimizer.variables]}


def test_killed_cosine_run_resumes_with_its_weights_and_optimizer_state(prepared, tmp_path,
                                                                       monkeypatch,
                                                                       kill_after_epoch):
    ckpt = tmp_path / "ckpt"
    config = TrainConfig(epochs=3, batch_size=32, seed=2, checkpoint_dir=str(ckpt),
                         model_kwargs=SMALL, optimizer="adamw", schedule="cosine",
                         warmup_epochs=1, label_smoothing=0.1, augmentation="light")
    at_kill, at_resume = {}, {}
    restore = keras.callbacks.BackupAndRestore.on_train_begin

    def at_epoch_end(callback, epoch):
        if epoch == 1:  # the kill comes right after this epoch
            at_kill.update(state(callback.model),
                           lr=float(callback.model.optimizer.learning_rate))

    def record_restored(self, logs=None):
        restore(self, logs)
        at_resume.update(state(self.model), lr=float(self.model.optimizer.learning_rate))

    kill_after_epoch(1, at_epoch_end)
    with pytest.raises(Killed):
        train(prepared / "dataset", prepared / "class_weights.json", tmp_path / "m", config)
    first_two = (ckpt / "history.csv").read_text().splitlines()

    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "on_train_begin", record_restored)
    summary = train(prepared / "dataset", prepared / "class_weights.json", tmp_path / "m", config)
    assert summary["epochs_run"] == 3
    rows = (ckpt / "history.csv").read_text().splitlines()
    assert rows[:3] == first_two and [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]
    # The resumed run starts from the killed run's weights (augmentation RNG state included)
    # and optimizer state: moments, and the step count that drives the cosine schedule.
    for key in ("weights", "optimizer"):
        assert len(at_resume[key]) == len(at_kill[key])
        for a, b in zip(at_resume[key], at_kill[key]):
            np.testing.assert_array_equal(a, b)
    steps = math.ceil(summary["train_items"] / 32)
    assert 2 * steps in [int(v) for v in at_resume["optimizer"] if v.shape == ()]
    assert at_resume["lr"] == pytest.approx(at_kill["lr"]) and 0 < at_resume["lr"] < 1e-3


# --- two-phase fine-tuning ----------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(prepared, tmp_path_factory):
    """4 train and 2 val real faces per class: enough for VGG19 steps on a CPU."""
    data = FaceDataset.load(prepared / "dataset")
    keep = np.concatenate([np.flatnonzero((data.splits == split) & (data.labels == c))[:n]
                           for split, n in (("train", 4), ("val", 2)) for c in range(7)])
    return data.subset(np.sort(keep)).save(tmp_path_factory.mktemp("tiny")).parent


def test_vgg19_fine_tunes_in_two_phases_and_resumes_after_the_first(tiny, tmp_path,
                                                                     kill_after_epoch, capsys):
    base = keras.applications.VGG19(include_top=False, weights=None, input_shape=(48, 48, 3))
    weights = tmp_path / "vgg19_notop.weights.h5"
    base.save_weights(weights)
    first_conv = base.get_layer("block1_conv1").get_weights()[0]
    seen = []

    def record(callback, epoch):
        vgg = callback.model.get_layer("vgg19")
        seen.append({"base_trainable": vgg.trainable,
                     "trainable_weights": len(callback.model.trainable_weights),
                     "first_conv": vgg.get_layer("block1_conv1").get_weights()[0],
                     "lr": float(callback.model.optimizer.learning_rate)})

    kill_after_epoch(1, record)  # killed in the fine-tune phase
    ckpt = tmp_path / "ckpt"
    config = TrainConfig(architecture="vgg19", model_kwargs={"weights": str(weights)},
                         epochs=3, freeze_base_epochs=1, batch_size=16, learning_rate=1e-3,
                         checkpoint_dir=str(ckpt))
    with pytest.raises(Killed):
        train(tiny, None, tmp_path / "m", config)
    frozen, tuned = seen
    assert not frozen["base_trainable"] and frozen["trainable_weights"] == 4  # fc + predictions
    np.testing.assert_array_equal(frozen["first_conv"], first_conv)  # the base did not move
    assert frozen["lr"] == pytest.approx(1e-3)
    assert tuned["base_trainable"] and tuned["trainable_weights"] == 4 + 32  # + 16 convs
    assert not np.array_equal(tuned["first_conv"], first_conv)  # now it does
    assert tuned["lr"] == pytest.approx(1e-4)  # the fine-tune rate: learning_rate / 10

    capsys.readouterr()
    summary = train(tiny, None, tmp_path / "m", config)
    assert "phase frozen already done" in capsys.readouterr().out
    assert len(seen) == 3 and seen[2]["base_trainable"] and seen[2]["lr"] == pytest.approx(1e-4)
    assert summary["epochs_run"] == 3
    rows = (ckpt / "history.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]
    assert not list(ckpt.glob("*_done.npz"))  # a finished run leaves no phase marker
    model = keras.models.load_model(tmp_path / "m" / "model.keras")  # safe mode: no Lambda
    assert model.output_shape == (None, 7)


def test_fine_tuning_needs_a_pretrained_base(prepared, tmp_path):
    with pytest.raises(ValueError, match="exactly one nested base model"):
        run(prepared, tmp_path, epochs=2, freeze_base_epochs=1)


# --- test-time augmentation ---------------------------------------------------------------

def by_hand(model: keras.Model, x: np.ndarray, mode: str) -> np.ndarray:
    """The TTA average computed outside the TTA model: numpy flips, tf.image crops."""
    views = [x]
    if mode == "crops":
        for y0, x0 in crop_offsets(48, 48, 44):
            views.append(tf.image.resize(x[:, y0:y0 + 44, x0:x0 + 44], (48, 48)).numpy())
    if mode == "centre":  # the centre 46x46, a 1 px border off each side, and its mirror
        views = [tf.image.resize(x[:, 1:47, 1:47], (48, 48)).numpy()]
    views += [v[:, :, ::-1] for v in views]
    return np.mean([model.predict(v, verbose=0) for v in views], axis=0)


@pytest.mark.parametrize("mode", ["flip", "centre", "crops"])
def test_tta_model_averages_the_views(mode, trained_model, faces):
    model = keras.models.load_model(trained_model / "model.keras")
    x = faces[..., None].astype("float32")
    tta = with_tta(model, mode)
    assert tta.input_shape == (None, 48, 48, 1) and tta.output_shape == (None, 7)
    probs = tta.predict(x, verbose=0)
    np.testing.assert_allclose(probs, by_hand(model, x, mode), atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert with_tta(model, "none") is model
    with pytest.raises(ValueError, match="tta must be one of"):
        with_tta(model, "rotate")


def test_tta_export_offers_one_pass_by_default_and_the_average_as_a_choice(
        trained_model, prepared, tmp_path, faces):
    result = export(trained_model, prepared / "dataset", tmp_path / "sm", tta="crops")
    assert result["tta"] == "crops"
    assert result["signatures"] == [SIGNATURE_PIXELS, SIGNATURE_IMAGES, SIGNATURE_PIXELS_TTA,
                                    SIGNATURE_IMAGES_TTA, "explain", "explain_images",
                                    "class_names"]
    record = json.loads((tmp_path / "sm" / "assets.extra" / "metrics.json").read_text())
    assert record["tta"] == "crops"
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    model = keras.models.load_model(trained_model / "model.keras")
    x = faces[..., None].astype("float32")
    # serving_default: one pass of the network
    single = loaded.signatures[SIGNATURE_PIXELS](pixels=tf.constant(x))
    np.testing.assert_allclose(single["probabilities"].numpy(), model.predict(x, verbose=0),
                               atol=1e-5)
    # serving_tta: the average of the 12 views, computed here by hand
    out = loaded.signatures[SIGNATURE_PIXELS_TTA](pixels=tf.constant(x))
    expected = by_hand(model, x, "crops")
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-4)
    np.testing.assert_array_equal(out["class_id"].numpy(), expected.argmax(axis=1))
    # the two agree on shapes and class names; the image signature of TTA too
    assert out["probabilities"].shape == single["probabilities"].shape == (len(x), 7)
    for result_ in (single, out):
        names = [n.decode() for n in result_["class_name"].numpy()]
        assert names == [CLASS_NAMES[i] for i in result_["class_id"].numpy()]
    pngs = tf.constant([png_bytes(f) for f in faces])
    by_bytes = loaded.signatures[SIGNATURE_IMAGES_TTA](image_bytes=pngs)["probabilities"]
    np.testing.assert_allclose(by_bytes.numpy(), expected, atol=1e-4)
    # warm-up records cover every signature
    from tensorflow_serving.apis import prediction_log_pb2
    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy()).predict_log.request
               for r in tf.data.TFRecordDataset(
                   str(tmp_path / "sm" / "assets.extra" / "tf_serving_warmup_requests"))]
    assert {r.model_spec.signature_name for r in records} == set(result["signatures"])


def test_evaluate_with_tta(trained_model, prepared, tmp_path):
    plain = evaluate(trained_model, prepared / "dataset", tmp_path / "a", 0.0, 0.01,
                     measure_latency=False)
    flip = evaluate(trained_model, prepared / "dataset", tmp_path / "b", 0.0, 0.01, tta="flip")
    assert plain["tta"] == "none" and flip["tta"] == "flip" and flip["items"] == 70
    # the gate judges serving_default, one pass: the same figures with or without TTA
    assert flip["macro_f1"] == plain["macro_f1"] and flip["accuracy"] == plain["accuracy"]
    assert 0 < flip["tta_metrics"]["accuracy"] and "tta_metrics" not in plain
    assert "with TTA flip" in format_evaluation(flip) and "TTA" not in format_evaluation(plain)
    assert set(flip["latency"]) == {SIGNATURE_PIXELS, SIGNATURE_PIXELS_TTA}
    assert "latency" not in plain
    with pytest.raises(ValueError, match="tta must be one of"):
        evaluate(trained_model, prepared / "dataset", tmp_path / "c", 0.0, 0.01, tta="five")
