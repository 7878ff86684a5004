"""The classic baseline (HOG + PCA + linear SVM) on real faces, and its place in evaluation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from components.baseline import (
    NAME,
    baseline_metrics,
    classic_baseline,
    fit_baseline,
    hog_features,
)
from components.evaluate import evaluate, format_evaluation
from serving.contract import CLASS_NAMES
from tests.helpers import face_pixels, real_faces


def load(split: str, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for label, name in enumerate(CLASS_NAMES):
        for path in real_faces(split, name, per_class):
            images.append(face_pixels(path))
            labels.append(label)
    return np.stack(images), np.array(labels)


@pytest.fixture(scope="module")
def real_subset():
    """80 train and 20 test real faces per class (the first ones, sorted: repeatable)."""
    return load("train", 80), load("test", 20)


def test_hog_features(real_subset):
    (images, _), _ = real_subset
    features = hog_features(images[:5])
    assert features.shape == (5, 900) and features.dtype == np.float32
    np.testing.assert_array_equal(hog_features(images[:5, ..., None].astype("float32")), features)
    assert not np.array_equal(features[0], features[1])
    with pytest.raises(ValueError, match=r"images must be \[N,48,48\]"):
        hog_features(np.zeros((2, 64, 64), np.uint8))


def test_baseline_fits_and_beats_chance_on_real_faces(real_subset):
    (x_train, y_train), (x_test, y_test) = real_subset
    pipeline = fit_baseline(x_train, y_train, seed=0)
    metrics = baseline_metrics(pipeline, x_test, y_test)
    assert metrics["name"] == NAME and metrics["items"] == 140
    chance = 1 / 7
    assert metrics["accuracy"] > 1.5 * chance and metrics["macro_f1"] > 1.5 * chance
    assert set(metrics["per_class_f1"]) == set(CLASS_NAMES)
    # Deterministic for a seed, and a plain picklable scikit-learn pipeline.
    again = fit_baseline(x_train, y_train, seed=0)
    np.testing.assert_array_equal(again.predict(x_test), pipeline.predict(x_test))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(pipeline)).predict(x_test),
                                  pipeline.predict(x_test))


def test_baseline_arguments_are_checked(real_subset):
    (x_train, y_train), _ = real_subset
    with pytest.raises(ValueError, match="560 images but 3 labels"):
        fit_baseline(x_train, y_train[:3])
    with pytest.raises(ValueError, match="at least two classes"):
        fit_baseline(x_train[:5], np.zeros(5, int))


def test_evaluation_reports_the_baseline_beside_the_model(trained_model, prepared, tmp_path):
    baseline = classic_baseline(prepared / "dataset", seed=0)
    assert baseline["split"] == "test" and baseline["items"] == 70
    metrics = evaluate(trained_model, prepared / "dataset", tmp_path, 0.0, 0.01,
                       baseline=baseline)
    assert metrics["baseline"] == baseline
    assert not metrics["gate"]["reason"].count("baseline")  # reference only, not gated on
    text = format_evaluation(metrics)
    assert (f"classic baseline ({NAME}): accuracy {baseline['accuracy']:.4f}, macro F1 "
            f"{baseline['macro_f1']:.4f}") in text
    assert "classic baseline" not in format_evaluation(
        evaluate(trained_model, prepared / "dataset", tmp_path / "plain", 0.0, 0.01))
