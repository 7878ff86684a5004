"""Deep ensembles (components.train.ensemble): members averaged into one model, calibrated on
val, saved, exported and served like a single network (real TensorFlow, real faces)."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from components.dataset import TRAIN, VAL, FaceDataset, read_json
from components.export import export
from components.train.calibrate import adjust, class_prior
from components.train.ensemble import (
    build_ensemble,
    combine,
    ensemble,
    without_prior_adjustment,
)
from components.train.models import build_model
from components.train.recipe import TrainConfig
from components.train.train import train
from serving.contract import MODEL_FILE, SUMMARY_FILE
from tests.helpers import served_val_predictions


@pytest.fixture(scope="module")
def members(prepared, tmp_path_factory):
    """Two different one-epoch networks on the real subset: one with its own logit
    adjustment (which the ensemble must drop), one plain configurable CNN."""
    root = tmp_path_factory.mktemp("members")
    train(prepared / "dataset", None, root / "a",
          TrainConfig(epochs=1, batch_size=32, seed=5, class_balance="none",
                      logit_adjustment=True))
    train(prepared / "dataset", None, root / "b",
          TrainConfig(architecture="configurable_cnn", epochs=1, batch_size=32, seed=6,
                      class_balance="none",
                      model_kwargs={"filters": [8, 16], "depth": 1, "dense_units": [16]}))
    return [root / "a", root / "b"]


def test_the_ensemble_is_the_mean_of_its_members_then_one_adjustment(members, prepared,
                                                                      tmp_path):
    summary = ensemble(members, prepared / "dataset", tmp_path / "ens")
    model = keras.models.load_model(tmp_path / "ens" / MODEL_FILE)
    data = FaceDataset.load(prepared / "dataset")
    faces = data.split(VAL).images[..., None].astype("float32")

    plain = [without_prior_adjustment(keras.models.load_model(m / MODEL_FILE))
             for m in members]
    assert plain[0].layers[-1].name == "predictions"  # member a's own adjustment is gone
    mean = np.mean([m.predict(faces, verbose=0) for m in plain], axis=0)
    adjustment = summary["logit_adjustment"]
    prior = class_prior(data.split(TRAIN).labels)
    np.testing.assert_allclose(adjustment["prior"], prior, atol=1e-6)
    expected = adjust(mean, prior, adjustment["tau"])
    np.testing.assert_allclose(model.predict(faces, verbose=0), expected, atol=1e-5)

    assert summary["architecture"] == "ensemble" and len(summary["members"]) == 2
    assert summary["parameters"] == sum(m.count_params() for m in plain)
    assert summary["val_items"] == len(faces)
    assert summary["val_accuracy"] == pytest.approx(
        float(np.mean(expected.argmax(1) == data.split(VAL).labels)), abs=1e-6)
    assert summary["val_macro_f1"] >= adjustment["val_macro_f1_unadjusted"]
    assert [m["architecture"] for m in summary["members"]] == ["baseline_cnn",
                                                               "configurable_cnn"]
    assert read_json(tmp_path / "ens" / SUMMARY_FILE) == summary


def test_under_tta_the_ensemble_is_calibrated_on_what_it_serves(members, prepared, tmp_path):
    summary = ensemble(members, prepared / "dataset", tmp_path / "ens", tta="crops")
    assert summary["val_tta"] == "crops" and summary["logit_adjustment"]["chosen_for"] == \
        "one pass"
    # val figures of serving_default's one pass, and of the crops average beside them
    for tta, figures in (("none", summary), ("crops", summary["val_with_tta"])):
        pred, labels = served_val_predictions(tmp_path / "ens", prepared / "dataset", tta)
        assert figures["val_accuracy"] == pytest.approx(float(np.mean(pred == labels)),
                                                        abs=1e-6)
    with pytest.raises(ValueError, match="tta must be one of"):
        ensemble(members, prepared / "dataset", tmp_path / "bad", tta="ten-crop")


def test_the_exported_ensemble_serves_the_same_probabilities(members, prepared, tmp_path):
    ensemble(members, prepared / "dataset", tmp_path / "ens", logit_adjustment=False)
    model = keras.models.load_model(tmp_path / "ens" / MODEL_FILE)
    assert model.layers[-1].name == "ensemble_mean"
    # export verifies the SavedModel against the Keras model on real faces, with flip TTA
    result = export(tmp_path / "ens", prepared / "dataset", tmp_path / "sm", tta="flip")
    assert max(result["max_probability_difference"].values()) < 1e-4
    metrics = json.loads((tmp_path / "sm" / "assets.extra" / "metrics.json").read_text())
    assert metrics["training"]["architecture"] == "ensemble"
    served = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_tta"]  # the flip average
    faces = FaceDataset.load(prepared / "dataset").split(VAL).images[:6, ..., None]
    out = served(pixels=tf.constant(faces, tf.float32))["probabilities"].numpy()
    flipped = faces[:, :, ::-1, :]
    by_hand = (model.predict(faces.astype("float32"), verbose=0)
               + model.predict(flipped.astype("float32"), verbose=0)) / 2
    np.testing.assert_allclose(out, by_hand, atol=1e-4)
    # serving_default: the ensemble in one pass (each member once)
    single = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"]
    np.testing.assert_allclose(single(pixels=tf.constant(faces, tf.float32))[
        "probabilities"].numpy(), model.predict(faces.astype("float32"), verbose=0), atol=1e-4)


def test_combine_picks_the_best_or_builds_the_ensemble(members, prepared, tmp_path):
    best = combine(members, tmp_path / "best", prepared / "dataset", use_ensemble=False)
    assert best["winner"] in ("baseline_cnn", "configurable_cnn")
    assert read_json(tmp_path / "best" / SUMMARY_FILE)["architecture"] == best["winner"]

    both = combine(members, tmp_path / "both", prepared / "dataset", use_ensemble=True)
    assert both["winner"] == "ensemble"
    assert [r["architecture"] for r in both["leaderboard"]][0] == "ensemble"
    assert len(both["leaderboard"]) == 3
    assert read_json(tmp_path / "both" / SUMMARY_FILE)["architecture"] == "ensemble"

    single = combine(members[:1], tmp_path / "one", prepared / "dataset", use_ensemble=True)
    assert single["winner"] == "baseline_cnn"  # one model: nothing to average


def test_members_that_do_not_fit_together_are_refused(members, prepared, tmp_path):
    with pytest.raises(ValueError, match="at least 2"):
        ensemble(members[:1], prepared / "dataset", tmp_path / "e1")
    with pytest.raises(FileNotFoundError, match="no model.keras in: .*missing"):
        ensemble([members[0], tmp_path / "missing"], prepared / "dataset", tmp_path / "e2")
    seven = build_model("baseline_cnn", filters=(4, 8), dense_units=8)
    five = build_model("baseline_cnn", filters=(4, 8), dense_units=8, num_classes=5)
    with pytest.raises(ValueError, match="share input shape and number of classes"):
        build_ensemble([seven, five])


def test_the_deploy_command_gates_exports_and_deploys_an_ensemble(members, prepared, tmp_path,
                                                                  capsys):
    from pipeline.cli import main

    base = tmp_path / "serving"
    argv = ["deploy", *map(str, members), "--dataset", str(prepared / "dataset"),
            "--serving-base", str(base), "--tta", "flip"]
    assert main([*argv, "--out", str(tmp_path / "work")]) == 0
    out = capsys.readouterr().out
    assert "evaluation on test" in out and "TTA flip" in out and "gate: PASSED" in out
    metrics = json.loads((base / "fer" / "1" / "assets.extra" / "metrics.json").read_text())
    assert metrics["training"]["architecture"] == "ensemble" and metrics["tta"] == "flip"
    # the same ensemble again does not beat the champion it now is: nothing new is deployed
    assert main([*argv, "--out", str(tmp_path / "again"), "--min-improvement", "0.01"]) == 1
    assert "not deployed" in capsys.readouterr().out
    assert sorted(p.name for p in (base / "fer").iterdir()) == ["1"]
    # one model is deployed as it is, here with crops TTA
    assert main(["deploy", str(members[1]), "--dataset", str(prepared / "dataset"),
                 "--out", str(tmp_path / "one"), "--serving-base", str(tmp_path / "single"),
                 "--tta", "crops", "--classic-baseline"]) == 0
    assert not (tmp_path / "one" / "model").exists()
    metrics = json.loads((tmp_path / "single" / "fer" / "1" / "assets.extra" /
                          "metrics.json").read_text())
    assert metrics["training"]["architecture"] == "configurable_cnn"
    assert metrics["tta"] == "crops"
    assert 0.0 <= metrics["baseline"]["accuracy"] <= 1.0  # HOG + SVM, reported beside it
    assert main(["deploy", str(tmp_path / "missing"), "--dataset", str(prepared / "dataset"),
                 "--serving-base", str(base)]) == 2
    assert "no model.keras in:" in capsys.readouterr().err
