"""Bootstrap intervals, the paired comparison and calibration (components.uncertainty)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from components.uncertainty import (
    bootstrap_intervals,
    expected_calibration_error,
    fit_temperature,
    paired_comparison,
    reliability,
    resample_indices,
    resampled_scores,
    temperature_scaled,
)

NAMES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def predictor(rng: np.random.Generator, labels: np.ndarray, accuracy: float) -> np.ndarray:
    """Right with probability ``accuracy`` per face, else a random other class."""
    wrong = (labels + rng.integers(1, 7, len(labels))) % 7
    return np.where(rng.random(len(labels)) < accuracy, labels, wrong)


def test_resampled_scores_equal_scikit_learns_on_each_resample():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 500)
    y[:3] = 1  # a rare class that some resamples lack
    p = predictor(rng, y, 0.6)
    indices = resample_indices(len(y), 20, seed=1)
    scores = resampled_scores(y, p, indices, 7)
    for i, rows in enumerate(indices):
        assert scores["accuracy"][i] == pytest.approx(accuracy_score(y[rows], p[rows]))
        assert scores["macro_f1"][i] == pytest.approx(
            f1_score(y[rows], p[rows], labels=range(7), average="macro", zero_division=0))


def test_the_interval_covers_the_true_accuracy_of_a_known_predictor_in_90_percent_of_trials():
    """A predictor right with probability 0.7: its true accuracy is 0.7. Over 100 seeded
    trials (a fresh test set of 800 faces each), the 95% interval covers 0.7 in at least
    90 (binomial: fewer than 90 of 100 at a true 95% rate has probability under 2%)."""
    covered = 0
    for trial in range(100):
        rng = np.random.default_rng(1000 + trial)
        y = rng.integers(0, 7, 800)
        interval = bootstrap_intervals(y, predictor(rng, y, 0.7), NAMES, seed=trial)
        covered += interval["accuracy"][0] <= 0.7 <= interval["accuracy"][1]
    assert covered >= 90


def test_intervals_hold_the_point_estimate_and_name_every_class():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 7, 2000)
    p = predictor(rng, y, 0.65)
    result = bootstrap_intervals(y, p, NAMES, resamples=1000, seed=0)
    macro = f1_score(y, p, average="macro")
    assert result["macro_f1"][0] < macro < result["macro_f1"][1]
    assert result["macro_f1"][1] - result["macro_f1"][0] < 0.06  # about 4 standard errors
    assert list(result["per_class_f1"]) == NAMES
    assert result == bootstrap_intervals(y, p, NAMES, resamples=1000, seed=0)  # seeded


def test_two_copies_of_one_model_are_not_significantly_different():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 7, 3000)
    p = predictor(rng, y, 0.65)
    result = paired_comparison(y, p, p.copy(), 7)
    assert result.verdict == "not significant"
    assert result.win_probability == 0.5 and result.difference == 0.0


def test_a_model_right_on_strictly_more_faces_is_better():
    """The candidate is right wherever the champion is, and on 3% more faces besides."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, 7, 3000)
    champion = predictor(rng, y, 0.65)
    candidate = champion.copy()
    wrong = np.flatnonzero(champion != y)
    fixed = rng.choice(wrong, size=90, replace=False)
    candidate[fixed] = y[fixed]
    better = paired_comparison(y, candidate, champion, 7)
    assert better.verdict == "better" and better.win_probability >= 0.95
    assert better.difference_interval[0] > 0
    worse = paired_comparison(y, champion, candidate, 7)
    assert worse.verdict == "worse" and worse.win_probability <= 0.05


def test_a_small_difference_on_few_faces_is_not_significant():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 7, 300)
    a, b = predictor(rng, y, 0.65), predictor(rng, y, 0.66)
    assert paired_comparison(y, a, b, 7).verdict == "not significant"


def test_mismatched_inputs_are_named():
    with pytest.raises(ValueError, match="do not match labels"):
        bootstrap_intervals(np.zeros(5, int), np.zeros(4, int), NAMES)
    with pytest.raises(ValueError, match="resamples must be >= 1"):
        bootstrap_intervals(np.zeros(5, int), np.zeros(5, int), NAMES, resamples=0)


def test_ece_of_a_calibrated_and_an_overconfident_predictor():
    """Faces whose top-class confidence is c and which are right with probability c have
    near-zero ECE; the same predictions claimed at 0.99 confidence have ECE near 0.99 - acc."""
    rng = np.random.default_rng(7)
    n = 20000
    confidence = rng.uniform(0.55, 0.95, n)
    y = rng.integers(0, 7, n)
    right = rng.random(n) < confidence
    top = np.where(right, y, (y + 1) % 7)
    probs = np.full((n, 7), 0.0)
    probs[np.arange(n), top] = confidence
    probs[np.arange(n), (top + 3) % 7] = 1 - confidence
    assert expected_calibration_error(y, probs) < 0.02
    sure = np.full((n, 7), 0.01 / 6)
    sure[np.arange(n), top] = 0.99
    assert expected_calibration_error(y, sure) == pytest.approx(0.99 - right.mean(), abs=0.01)
    diagram = reliability(y, probs, bins=10)
    assert sum(diagram["count"]) == n and len(diagram["accuracy"]) == 10


def test_the_fitted_temperature_undoes_a_known_sharpening():
    """Calibrated probabilities sharpened by logits x 2.5 (temperature 0.4): the fitted
    temperature is about 2.5 and lowers the ECE."""
    rng = np.random.default_rng(8)
    logits = rng.normal(0, 1.2, (6000, 7))
    calibrated = temperature_scaled(np.exp(logits), 1.0)
    y = np.array([rng.choice(7, p=row) for row in calibrated])
    sharp = temperature_scaled(calibrated, 0.4)
    t = fit_temperature(y, sharp)
    assert t == pytest.approx(2.5, rel=0.1)
    assert expected_calibration_error(y, temperature_scaled(sharp, t)) < \
        expected_calibration_error(y, sharp) / 2
