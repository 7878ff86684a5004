"""Distillation: a served teacher's probabilities for the train faces, computed once and
cached, and a single-pass student trained on them (real TensorFlow, real SavedModels)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.dataset import TRAIN, DataError, FaceDataset
from components.distill import (
    PREDICTIONS_FILE,
    distillation_targets,
    has_teacher,
    load_teacher,
    resolve_teacher,
    teacher_predictions,
)
from components.train.recipe import TrainConfig, variant_config
from components.train.train import train
from serving.contract import BUNDLED_MODEL_BASE


def test_targets_mix_the_teacher_and_the_label():
    teacher = np.array([[0.1, 0.6, 0.1, 0.1, 0.05, 0.05, 0.0]], np.float32)
    mixed = distillation_targets(np.array([3]), teacher, 0.25)
    expected = 0.25 * teacher[0] + 0.75 * np.eye(7)[3]
    np.testing.assert_allclose(mixed[0], expected, atol=1e-7)
    assert mixed.sum() == pytest.approx(1.0)
    np.testing.assert_array_equal(distillation_targets(np.array([3]), teacher, 0.0)[0],
                                  np.eye(7)[3])
    with pytest.raises(ValueError, match="distill_weight must be in"):
        distillation_targets(np.array([3]), teacher, 1.5)


def test_a_temperature_softens_the_teacher_but_keeps_its_order():
    teacher = np.array([[1e-5, 0.99994, 1e-5, 1e-5, 1e-5, 1e-5, 1e-5]], np.float32)
    soft = distillation_targets(np.array([1]), teacher, 1.0, temperature=4.0)[0]
    assert soft.sum() == pytest.approx(1.0)
    assert soft.argmax() == 1 and soft[1] < 0.95 and soft[0] > 0.01
    ranked = np.array([[0.5, 0.3, 0.1, 0.05, 0.03, 0.015, 0.005]], np.float32)
    np.testing.assert_array_equal(
        np.argsort(distillation_targets(np.array([0]), ranked, 1.0, 3.0)[0]), np.argsort(ranked[0]))
    np.testing.assert_allclose(distillation_targets(np.array([0]), ranked, 1.0, 1.0)[0],
                               ranked[0], atol=1e-7)
    with pytest.raises(ValueError, match="distill_temperature must be > 0"):
        distillation_targets(np.array([0]), ranked, 1.0, 0.0)


def test_teachers_are_resolved_by_name(exported_model, tmp_path):
    assert resolve_teacher("", str(tmp_path), "fer") is None
    assert resolve_teacher("bundled", str(tmp_path), "fer") == BUNDLED_MODEL_BASE / "1"
    assert resolve_teacher(str(exported_model), str(tmp_path), "fer") == exported_model
    with pytest.raises(DataError, match="no model version under"):
        resolve_teacher("champion", str(tmp_path), "fer")
    with pytest.raises(DataError, match="not a SavedModel version directory"):
        resolve_teacher(str(tmp_path), str(tmp_path), "fer")


@pytest.fixture(scope="module")
def taught(exported_model, prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    info = teacher_predictions(exported_model, prepared / "dataset", root / "out",
                               str(root / "cache"))
    return root, info


def test_teacher_predictions_cover_the_train_split_and_are_cached(taught, exported_model,
                                                                  prepared):
    root, info = taught
    train_set = FaceDataset.load(prepared / "dataset").split(TRAIN)
    probabilities, recorded = load_teacher(root / "out", train_set)
    assert probabilities.shape == (len(train_set), 7)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert info["cached"] is False and recorded["signature"] == "serving_default"
    assert recorded["teacher_name"] == f"{exported_model.parent.name}/{exported_model.name}"
    assert 0 <= recorded["teacher_val_accuracy"] <= 1 and recorded["train_items"] == len(
        train_set)
    # the teacher's own test figures, as its export recorded them (conftest: macro F1 0.2)
    assert recorded["teacher_test_macro_f1"] == 0.2
    # the same teacher and faces again: read back from the cache, not recomputed
    again = teacher_predictions(exported_model, prepared / "dataset", root / "again",
                                str(root / "cache"))
    assert again["cached"] is True
    np.testing.assert_array_equal(load_teacher(root / "again", train_set)[0], probabilities)
    # no teacher: nothing to learn from
    assert teacher_predictions(None, prepared / "dataset", root / "none") == {"teacher": None}
    assert not has_teacher(root / "none") and has_teacher(root / "out")


def test_predictions_for_other_faces_are_refused(taught, prepared):
    root, _ = taught
    train_set = FaceDataset.load(prepared / "dataset").split(TRAIN)
    with pytest.raises(DataError, match="for other train faces"):
        load_teacher(root / "out", train_set.subset(np.arange(len(train_set) - 1)))


def test_a_student_learns_from_the_teachers_probabilities(taught, prepared, tmp_path):
    root, _ = taught
    config = variant_config({"epochs": 1, "batch_size": 32, "distill_weight": 0.7},
                            "baseline_cnn", 3, {"baseline_cnn": {"dense_units": 32}}, "",
                            str(root / "out"))
    assert config.teacher_predictions == str(root / "out")
    summary = train(prepared / "dataset", prepared / "class_weights.json", tmp_path, config)
    distilled = summary["distillation"]
    assert distilled["weight"] == 0.7 and distilled["signature"] == "serving_default"
    assert "teacher_val_macro_f1" in distilled
    assert json.loads((tmp_path / "summary.json").read_text())["distillation"] == distilled
    # a student's checkpoints never mix with a plain run's
    plain = variant_config({}, "baseline_cnn", 3, {}, "/ckpt")
    student = variant_config({}, "baseline_cnn", 3, {}, "/ckpt", str(root / "out"))
    assert student.checkpoint_dir == plain.checkpoint_dir + "-distilled"
    assert TrainConfig().teacher_predictions is None
    assert (root / "out" / PREDICTIONS_FILE).is_file()


def test_a_student_can_start_from_its_teachers_weights(trained_model, exported_model, prepared):
    """init_from: the weights of a SavedModel version (as the variables its serving_default
    uses) or of a trained model's directory, by name; another architecture is refused."""
    from components.train.models import build_model, load_initial_weights, load_trained

    faces = FaceDataset.load(prepared / "dataset").split(TRAIN).images[:8, ..., None]
    teacher = load_trained(trained_model)  # exported_model is its export
    for source in (exported_model, trained_model):
        student = build_model("baseline_cnn")
        assert load_initial_weights(student, source) == len(student.weights)
        np.testing.assert_allclose(student.predict(faces.astype("f4"), verbose=0),
                                   teacher.predict(faces.astype("f4"), verbose=0), atol=1e-5)
    with pytest.raises(ValueError, match="no weight .* of shape"):
        load_initial_weights(build_model("baseline_cnn", dense_units=32), exported_model)
