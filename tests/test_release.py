"""``fer-pipeline release`` and the model bundled with the package.

A tiny model trained, evaluated and exported by the pipeline's own steps is released into a
temporary model base, then run in-process on real FER2013 test faces, through the client
and ``fer-pipeline predict`` (``fer-serve`` with no model named:
tests/test_serving_files.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.deploy import fingerprint
from components.evaluate import evaluate
from components.export import export
from pipeline.cli import main
from pipeline.release import (
    CARD_FILE,
    ReleaseError,
    directory_bytes,
    model_card,
    release,
)
from serving import predict
from serving.client import ClientError, LocalClient
from serving.contract import CLASS_NAMES
from tests.helpers import face_pixels, real_faces


@pytest.fixture(scope="module")
def evaluated_export(trained_model, prepared, tmp_path_factory):
    """The tiny model evaluated and exported with its metrics, as the pipeline does."""
    root = tmp_path_factory.mktemp("release")
    metrics = evaluate(trained_model, prepared / "dataset", root / "eval", 0.0, 0.01)
    export(trained_model, prepared / "dataset", root / "saved_model", metrics)
    return root / "saved_model", metrics


def test_release_copies_the_version_and_writes_the_card(evaluated_export, tmp_path):
    version, metrics = evaluated_export
    result = release(version, tmp_path / "model" / "fer", notes="Trained for the test.")
    target = tmp_path / "model" / "fer" / "1"
    assert result["path"] == str(target)
    assert sorted(p.name for p in target.iterdir()) == sorted(p.name for p in version.iterdir())
    assert directory_bytes(target) == directory_bytes(version)
    card = (tmp_path / "model" / CARD_FILE).read_text()
    assert f"Accuracy **{metrics['accuracy']:.4f}**" in card
    for name in CLASS_NAMES:  # one row per class with its own F1
        assert f"| {name} |" in card
        assert f"{metrics['per_class'][name]['f1']:.4f}" in card
    assert card.rstrip().endswith("Trained for the test.")
    # the card names the model by version and content, never by a path on this machine
    assert f"deployed version {version.name}, content fingerprint `{fingerprint(version)[:16]}`" \
        in card
    assert str(version) not in card and str(tmp_path) not in card
    # releasing again replaces version 1: still one version, no staging left behind
    release(version, tmp_path / "model" / "fer")
    assert [p.name for p in (tmp_path / "model" / "fer").iterdir()] == ["1"]


def test_release_refuses_what_it_cannot_ship(evaluated_export, exported_model, tmp_path):
    version, _ = evaluated_export
    with pytest.raises(ReleaseError, match="no saved_model.pb"):
        release(tmp_path, tmp_path / "dest")
    with pytest.raises(ReleaseError, match="no accuracy, per_class"):  # exported without eval
        release(exported_model, tmp_path / "dest")
    with pytest.raises(ReleaseError, match="more than"):
        release(version, tmp_path / "dest", max_bytes=1000)
    assert not (tmp_path / "dest" / "1").exists()
    assert main(["release", str(tmp_path), "--dest", str(tmp_path / "dest")]) == 2


def test_card_names_the_recipe_and_builder_arguments(evaluated_export):
    _, metrics = evaluated_export
    training = {"architecture": "configurable_cnn", "parameters": 1234, "epochs_run": 55,
                "train_seconds": 4200.0, "val_accuracy": 0.6, "val_macro_f1": 0.5,
                "config": {"epochs": 55, "schedule": "cosine", "warmup_epochs": 2,
                           "model_kwargs": {"filters": [32, 64], "dropout": 0.1}},
                "logit_adjustment": {"tau": 0.65, "val_macro_f1_unadjusted": 0.4321}}
    card = model_card({**metrics, "training": training}, "runs/serving/fer/3", 7_000_000)
    assert "schedule `cosine`, warmup_epochs `2`" in card
    assert "55 epochs run in 70 min." in card
    assert 'Builder arguments: `{"dropout": 0.1, "filters": [32, 64]}`' in card
    assert "`configurable_cnn`, 1,234 parameters" in card
    assert "to the power 0.65, chosen on validation (macro F1 0.4321 before it)" in card
    # without a recipe (an older export) the card still renders, without those lines
    plain = model_card({**metrics, "training": {}}, "runs/serving/fer/3", 7_000_000)
    for line in ("- Builder arguments", "- Recipe", "- Logit adjustment", "- Member"):
        assert line not in plain


def test_card_lists_an_ensembles_members(evaluated_export):
    _, metrics = evaluated_export
    member = {"architecture": "configurable_cnn", "parameters": 1000, "epochs_run": 55,
              "train_seconds": 4286.0, "val_accuracy": 0.62, "val_macro_f1": 0.55,
              "config": {"optimizer": "adam", "schedule": "cosine", "augmentation": "light",
                         "seed": 42, "model_kwargs": {"filters": [32, 64]}}}
    training = {"architecture": "ensemble", "parameters": 3000, "val_accuracy": 0.65,
                "val_macro_f1": 0.6, "train_seconds": 9000.0,
                "members": [member, {**member, "parameters": 2000, "config": None,
                                     "epochs_run": None, "train_seconds": None}]}
    card = model_card({**metrics, "training": training}, "runs/serving/fer/4", 19_000_000)
    assert "`ensemble`, 3,000 parameters" in card
    assert ('- Member 0: `configurable_cnn`, 1,000 parameters, builder arguments '
            '`{"filters": [32, 64]}`, optimizer `adam`, schedule `cosine`, augmentation '
            '`light`, seed `42`; 55 epochs in 71 min; alone on validation, unadjusted: '
            'accuracy 0.6200, macro F1 0.5500.') in card
    assert ("- Member 1: `configurable_cnn`, 2,000 parameters; alone on validation, unadjusted: "
            "accuracy 0.6200") in card
    assert "averages the members' probabilities" in card


# ------------------------------------------------------- a released model, in-process


@pytest.fixture(scope="module")
def released(evaluated_export, tmp_path_factory):
    base = tmp_path_factory.mktemp("bundle") / "model" / "fer"
    release(evaluated_export[0], base)
    return base


def test_local_client_runs_a_released_model_like_the_server(released):
    client = LocalClient(released / "1")
    faces = np.stack([face_pixels(p) for name in CLASS_NAMES for p in real_faces("test", name, 2)])
    out = client.predict_pixels(faces)
    assert out["probabilities"].shape == (14, 7)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, atol=1e-5)
    assert out["class_name"] == [CLASS_NAMES[i] for i in out["class_id"]]
    jpegs = [p.read_bytes() for name in CLASS_NAMES for p in real_faces("test", name, 2)]
    # The same faces as files, decoded in-graph (TF's JPEG decoder differs from Pillow's by
    # a grey level here and there).
    np.testing.assert_allclose(client.predict_images(jpegs)["probabilities"],
                               out["probabilities"], atol=5e-3)
    with pytest.raises(ClientError, match="Unknown image file format"):
        client.predict_images([b"not an image"])
    with pytest.raises(ClientError, match="no saved_model.pb"):
        LocalClient(released)


def test_predict_cli_runs_in_process_without_a_server(released, capsys):
    files = [str(p) for p in real_faces("test", "happy", 3)]
    assert main(["predict", *files, "--no-detect", "--json", "--model-dir", str(released)]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [len(r["faces"]) for r in results] == [1, 1, 1]
    expected = LocalClient(released / "1").predict_pixels(
        np.stack([face_pixels(p) for p in real_faces("test", "happy", 3)]))
    assert [r["faces"][0]["emotion"] for r in results] == expected["class_name"]


def test_predict_cli_names_a_missing_model(tmp_path, capsys, monkeypatch):
    face = str(real_faces("test", "happy", 1)[0])
    assert main(["predict", face, "--no-detect", "--model-dir", str(tmp_path / "none")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["predict", face, "--no-detect", "--model-dir", str(tmp_path)]) == 1
    assert "no numbered model version" in capsys.readouterr().err
    # A package that bundles no model says so, and what to give instead.
    monkeypatch.setattr(predict, "BUNDLED_MODEL_BASE", tmp_path / "model" / "fer")
    with pytest.raises(ClientError, match="no model is bundled with this package: give --url"):
        predict.local_client(tmp_path / "model" / "fer")


# ------------------------------------------------------- the model this package ships


def test_the_bundled_model_recognises_real_faces_and_its_card_matches_it(capsys):
    """The shipped model (serving/model/fer/1), on 20 real PublicTest faces per class: it
    must beat chance (1/7) by far, and its card must quote its own recorded metrics."""
    from serving.contract import BUNDLED_MODEL_BASE

    version = BUNDLED_MODEL_BASE / "1"
    assert (version / "saved_model.pb").is_file(), "this package ships a model"
    files = [p for name in CLASS_NAMES for p in real_faces("test", name, 20)]
    truth = [name for name in CLASS_NAMES for _ in range(20)]
    out = LocalClient(version).predict_pixels(np.stack([face_pixels(p) for p in files]))
    assert np.mean(np.array(out["class_name"]) == np.array(truth)) > 0.45
    # predict with no --url/--grpc/--model-dir runs this same model in-process
    assert main(["predict", *map(str, files[:3]), "--no-detect", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["faces"][0]["emotion"] for r in results] == out["class_name"][:3]
    recorded = json.loads((version / "assets.extra" / "metrics.json").read_text())
    card = (BUNDLED_MODEL_BASE.parent / CARD_FILE).read_text()
    assert f"Accuracy **{recorded['accuracy']:.4f}**, macro F1 **{recorded['macro_f1']:.4f}**" \
        in card


def test_card_names_teacher_and_student_and_the_cost(evaluated_export):
    _, metrics = evaluated_export
    training = {"architecture": "configurable_cnn", "parameters": 1234, "val_accuracy": 0.66,
                "val_macro_f1": 0.64, "config": {"epochs": 15},
                "distillation": {"teacher_name": "fer/1", "teacher_fingerprint": "49b0aca4",
                                 "signature": "serving_default", "weight": 0.7,
                                 "teacher_val_accuracy": 0.6856, "teacher_val_macro_f1": 0.677,
                                 "teacher_test_accuracy": 0.6882,
                                 "teacher_test_macro_f1": 0.6632}}
    record = {**metrics, "training": training, "tta": "crops",
              "tta_metrics": {"accuracy": 0.69, "macro_f1": 0.67, "weighted_f1": 0.68},
              "latency": {"serving_default": {"p50_ms": 6.5, "batch64_images_per_s": 380.0},
                          "serving_tta": {"p50_ms": 40.0, "batch64_images_per_s": 33.0}}}
    card = model_card(record, "deployed version 2", 14_000_000)
    assert ("Distilled from teacher `fer/1` (content fingerprint `49b0aca4`, its "
            "`serving_default` signature): the targets were 0.7 of its probabilities and "
            "0.3 of the label") in card
    assert "Teacher on validation: accuracy 0.6856, macro F1 0.6770; on test" in card
    assert "accuracy 0.6882, macro F1 0.6632" in card
    assert "- Validation (the student): accuracy 0.6600, macro F1 0.6400." in card
    assert "one pass of the network in `serving_default`" in card
    assert "With test-time augmentation `crops` (`serving_tta`): accuracy 0.6900" in card
    assert "- `serving_default`: one face p50 6.50 ms; batch 64 380 images/s." in card

    # A student whose recipe serves TTA too: both val figures, and the adjustment's pass.
    training = {**training, "val_tta": "crops",
                "val_with_tta": {"val_accuracy": 0.68, "val_macro_f1": 0.65},
                "logit_adjustment": {"tau": 0.3, "prior": [1 / 7] * 7, "chosen_for": "one pass",
                                     "val_accuracy_unadjusted": 0.645,
                                     "val_macro_f1_unadjusted": 0.6}}
    card = model_card({**record, "training": training}, "deployed version 2", 14_000_000)
    assert ("- Validation (the student): accuracy 0.6600, macro F1 0.6400 in one pass; with "
            "TTA `crops`: accuracy 0.6800, macro F1 0.6500.") in card
    assert ("power 0.30, chosen on validation for the one pass (macro F1 0.6000 before it)"
            in card)
    # A summary from before val_with_tta (the bundled model's): its val figures are its TTA's.
    older = {k: v for k, v in training.items() if k != "val_with_tta"}
    card = model_card({**record, "training": older}, "deployed version 2", 14_000_000)
    assert ("- Validation (the student) with TTA `crops`: accuracy 0.6600, macro F1 0.6400."
            in card)


def test_card_gives_each_figure_its_interval_and_the_calibration(evaluated_export):
    _, metrics = evaluated_export
    card = model_card({**metrics, "training": {}}, "runs/serving/fer/3", 7_000_000)
    ci = metrics["intervals"]
    assert (f"accuracy {ci['accuracy'][0]:.4f} to {ci['accuracy'][1]:.4f}, macro F1 "
            f"{ci['macro_f1'][0]:.4f} to {ci['macro_f1'][1]:.4f}") in card
    assert "| class | precision | recall | F1 | F1 95% interval | support |" in card
    low, high = ci["per_class_f1"]["happy"]
    assert f" {low:.3f} to {high:.3f} |" in card
    assert f"expected calibration error of the served probabilities on `test` " \
           f"{metrics['calibration']['ece']:.4f}" in card
