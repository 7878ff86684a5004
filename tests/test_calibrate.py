"""Post-hoc logit adjustment (components.train.calibrate): the tau search, the layer, and the
training step that appends it (real TensorFlow, real faces)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from sklearn.metrics import f1_score, recall_score

from components.dataset import VAL, FaceDataset, read_json
from components.export import export
from components.train.calibrate import (
    TAU_GRID,
    PriorAdjustment,
    adjust,
    choose_tau,
    class_prior,
    fit_prior_adjustment,
    served,
    with_prior_adjustment,
)
from components.train.models import build_model
from components.train.recipe import TrainConfig
from components.train.train import train
from components.train.tta import view_probabilities, with_tta
from serving.contract import MODEL_FILE, SUMMARY_FILE
from tests.helpers import served_val_predictions


def prior_biased_classifier(n: int, prior: np.ndarray, seed: int = 0):
    """Labels drawn from ``prior`` and a noisy classifier whose scores carry ``log(prior)``:
    it under-predicts the rare classes, as a net trained on skewed data does."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(prior), size=n, p=prior)
    scores = 1.2 * np.eye(len(prior))[labels] + rng.normal(0, 1.0, (n, len(prior)))
    logits = scores + np.log(prior)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True), labels


FER_PRIOR = np.array([3995, 436, 4097, 7215, 4830, 3171, 4965], float)
FER_PRIOR /= FER_PRIOR.sum()


def test_tau_is_chosen_for_macro_f1_and_lifts_the_rare_class():
    probs, labels = prior_biased_classifier(6000, FER_PRIOR)
    tau, sweep = choose_tau(probs, labels, FER_PRIOR)
    assert [r["tau"] for r in sweep][:3] == [0.0, 0.05, 0.1] and tau > 0.3
    best = next(r for r in sweep if r["tau"] == tau)
    assert best["macro_f1"] == max(r["macro_f1"] for r in sweep) > sweep[0]["macro_f1"] + 0.02
    plain, adjusted = probs.argmax(1), adjust(probs, FER_PRIOR, tau).argmax(1)
    recall = lambda pred: recall_score(labels, pred, labels=[1], average=None)[0]  # disgust
    assert recall(adjusted) > recall(plain) + 0.1
    assert f1_score(labels, adjusted, average="macro") == pytest.approx(best["macro_f1"])


def test_a_balanced_prior_changes_nothing_and_tau_stays_zero():
    uniform = np.full(7, 1 / 7)
    probs, labels = prior_biased_classifier(700, uniform)
    np.testing.assert_allclose(adjust(probs, uniform, 1.5), probs, atol=1e-9)
    assert choose_tau(probs, labels, uniform)[0] == 0.0  # a tie goes to the smallest
    with pytest.raises(ValueError, match="one probability row per label"):
        choose_tau(probs[:5], labels, uniform)


def test_under_tta_tau_is_scored_on_the_mean_of_the_adjusted_views():
    # Two views of the same faces (the second with its own noise): the tau searched is the
    # one best for their served mean, not for a single view.
    first, labels = prior_biased_classifier(3000, FER_PRIOR, seed=1)
    second = adjust(first * np.exp(np.random.default_rng(2).normal(0, 0.5, first.shape)),
                    FER_PRIOR, 0.0)  # renormalised
    views = np.stack([first, second])
    tau, sweep = choose_tau(views, labels, FER_PRIOR)
    by_hand = [f1_score(labels, ((adjust(first, FER_PRIOR, t) + adjust(second, FER_PRIOR, t))
                                 / 2).argmax(1), average="macro") for t in TAU_GRID]
    np.testing.assert_allclose([r["macro_f1"] for r in sweep], by_hand, atol=1e-12)
    assert tau == TAU_GRID[int(np.argmax(by_hand))]
    np.testing.assert_allclose(served(first[None], FER_PRIOR, 0.7), adjust(first, FER_PRIOR, 0.7))
    with pytest.raises(ValueError, match=r"\[N,K\] or \[views,N,K\]"):
        served(first[0], FER_PRIOR, 0.5)
    with pytest.raises(ValueError, match="one probability row per label"):
        choose_tau(views[:, :10], labels, FER_PRIOR)


def test_the_tta_graph_serves_what_the_tau_was_fit_on(prepared):
    model = build_model("baseline_cnn", filters=(4, 8), dense_units=8)
    data = FaceDataset.load(prepared / "dataset")
    faces = data.split(VAL).images[..., None].astype("float32")
    labels = data.split(VAL).labels
    for mode, count in (("none", 1), ("flip", 2), ("centre", 2), ("crops", 12)):
        views = view_probabilities(model, faces, mode, batch_size=16)  # several batches
        assert views.shape == (count, len(faces), 7)
        np.testing.assert_allclose(views.mean(0), with_tta(model, mode).predict(faces, verbose=0),
                                   atol=1e-5)
    adjusted, val_proba, record = fit_prior_adjustment(model, views, labels, labels)
    assert val_proba.shape == (len(faces), 7) and record["tau"] in TAU_GRID
    np.testing.assert_allclose(with_tta(adjusted, "crops").predict(faces, verbose=0), val_proba,
                               atol=1e-5)


def test_class_prior_is_smoothed_frequencies():
    prior = class_prior(np.array([0, 0, 0, 3]), num_classes=4)
    np.testing.assert_allclose(prior, np.array([4, 1, 1, 2]) / 8)


def test_layer_matches_numpy_and_survives_save_and_load(tmp_path):
    probs, _ = prior_biased_classifier(64, FER_PRIOR, seed=3)
    layer = PriorAdjustment(FER_PRIOR.tolist(), 0.8)
    out = keras.ops.convert_to_numpy(layer(probs.astype("float32")))
    np.testing.assert_allclose(out, adjust(probs, FER_PRIOR, 0.8), atol=1e-5)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(
        PriorAdjustment(FER_PRIOR.tolist(), 0.0)(probs.astype("float32"))), probs, atol=1e-5)

    model = build_model("baseline_cnn", filters=(4, 8), dense_units=8)
    adjusted = with_prior_adjustment(model, FER_PRIOR.tolist(), 1.0)
    assert adjusted.name == model.name and adjusted.layers[-1].name == "prior_adjustment"
    x = np.random.default_rng(0).uniform(0, 255, (5, 48, 48, 1)).astype("float32")
    expected = adjust(model.predict(x, verbose=0), FER_PRIOR, 1.0)
    np.testing.assert_allclose(adjusted.predict(x, verbose=0), expected, atol=1e-5)
    adjusted.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), expected, atol=1e-5)

    with pytest.raises(ValueError, match="prior has 3 classes"):
        with_prior_adjustment(model, [0.2, 0.3, 0.5], 1.0)
    with pytest.raises(ValueError, match="positive and sum to 1"):
        PriorAdjustment([0.5, 0.6], 1.0)
    with pytest.raises(ValueError, match="tau must be >= 0"):
        PriorAdjustment([0.5, 0.5], -1.0)


def test_training_appends_the_adjustment_and_the_export_serves_it(prepared, tmp_path):
    out = tmp_path / "model"
    summary = train(prepared / "dataset", prepared / "class_weights.json", out,
                    TrainConfig(epochs=1, batch_size=32, seed=4, class_balance="none",
                                logit_adjustment=True, tta="flip"))
    adjustment = summary["logit_adjustment"]
    assert 0.0 <= adjustment["tau"] <= 2.0 and len(adjustment["prior"]) == 7
    assert read_json(out / SUMMARY_FILE)["logit_adjustment"] == adjustment
    model = keras.models.load_model(out / MODEL_FILE)
    assert model.layers[-1].name == "prior_adjustment"
    assert model.layers[-1].tau == adjustment["tau"]
    # tau is chosen for the one pass serving_default serves (tau 0 is in the sweep, so it
    # can only help there); the val figures are those of both served forms
    assert adjustment["chosen_for"] == "one pass"
    assert summary["val_macro_f1"] >= adjustment["val_macro_f1_unadjusted"]
    assert summary["val_tta"] == "flip"
    for tta, figures in (("none", summary), ("flip", summary["val_with_tta"])):
        pred, labels = served_val_predictions(out, prepared / "dataset", tta)
        assert figures["val_accuracy"] == pytest.approx(float(np.mean(pred == labels)),
                                                        abs=1e-6)
        assert figures["val_macro_f1"] == pytest.approx(
            f1_score(labels, pred, labels=list(range(7)), average="macro", zero_division=0),
            abs=1e-6)
    # the served graph (here with flip TTA on top) carries it: export checks itself
    result = export(out, prepared / "dataset", tmp_path / "sm", tta="flip")
    assert result["tta"] == "flip"

    plain = train(prepared / "dataset", None, tmp_path / "plain",
                  TrainConfig(epochs=1, batch_size=32, seed=4, class_balance="none"))
    assert plain["logit_adjustment"] is None and plain["val_tta"] == "none"
    assert plain["val_with_tta"] is None
    assert keras.models.load_model(tmp_path / "plain" / MODEL_FILE).layers[-1].name == \
        "predictions"


def test_temperature_layer_matches_numpy_keeps_the_top_class_and_survives_saving(tmp_path):
    from components.train.calibrate import (
        TemperatureScaling,
        apply_heads,
        calibration_heads,
        scaled_probabilities,
        with_temperature,
    )

    probs, _ = prior_biased_classifier(200, FER_PRIOR)
    layer = TemperatureScaling(1.7)
    out = keras.ops.convert_to_numpy(layer(probs.astype(np.float32)))
    np.testing.assert_allclose(out, scaled_probabilities(probs, 1.7), atol=1e-5)
    assert (out.argmax(1) == probs.argmax(1)).all()
    assert out.max(1).mean() < probs.max(1).mean()  # T > 1: less sure
    with pytest.raises(ValueError, match="temperature must be > 0"):
        TemperatureScaling(0.0)
    net = build_model("baseline_cnn")
    model = with_temperature(with_prior_adjustment(net, FER_PRIOR, 0.6), 1.7)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    base, heads = calibration_heads(loaded)
    assert [h.name for h in heads] == ["prior_adjustment", "temperature_scaling"]
    faces = np.random.default_rng(0).uniform(0, 255, (4, 48, 48, 1)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(faces, verbose=0),
                               apply_heads(base.predict(faces, verbose=0), heads), atol=1e-5)
    # composition: softmax((log p - tau log prior) / T)
    p = base.predict(faces, verbose=0).astype(np.float64)
    logits = (np.log(p + 1e-12) - 0.6 * np.log(FER_PRIOR)) / 1.7
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(apply_heads(p, heads), expected / expected.sum(1, keepdims=True),
                               atol=1e-6)
    assert calibration_heads(net) == (net, [])


def test_training_fits_a_temperature_that_lowers_val_ece_and_the_export_checks_it(prepared,
                                                                                   tmp_path):
    from components.uncertainty import expected_calibration_error

    out = tmp_path / "model"
    summary = train(prepared / "dataset", prepared / "class_weights.json", out,
                    TrainConfig(epochs=2, batch_size=32, seed=4, class_balance="none",
                                logit_adjustment=True, temperature_scaling=True, tta="flip"))
    record = summary["temperature_scaling"]
    assert record["applied"] and record["temperature"] == record["fitted_temperature"] != 1.0
    assert record["val_ece_after"] < record["val_ece_before"]
    model = keras.models.load_model(out / MODEL_FILE)
    assert [layer.name for layer in model.layers[-2:]] == ["prior_adjustment",
                                                          "temperature_scaling"]
    # the ECE the record gives is the served model's on val, recomputed here
    data = FaceDataset.load(prepared / "dataset")
    val = data.split(VAL)
    served_val = model.predict(val.images[..., None].astype(np.float32), verbose=0)
    assert expected_calibration_error(val.labels, served_val) == pytest.approx(
        record["val_ece_after"], abs=1e-4)
    result = export(out, prepared / "dataset", tmp_path / "sm", tta="flip")
    assert result["max_probability_difference"]["calibration"] < 1e-4
