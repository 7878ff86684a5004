"""Evaluate + gate: blessed / not-blessed pairs, metrics on known predictions, a real model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from components.dataset import FaceDataset
from components.evaluate import (
    classification_metrics,
    evaluate,
    format_evaluation,
    gate,
)

# --- gate: pairs of (passes, blocked) around each rule -----------------------------------

def test_no_champion_above_threshold_passes():
    d = gate(0.60, 0.55, None, 0.01)
    assert d.passed and "no champion" in d.reason


def test_no_champion_below_threshold_is_blocked():
    d = gate(0.54, 0.55, None, 0.01)
    assert not d.passed and d.reason == "macro F1 0.5400 is below the threshold 0.5500"


def test_threshold_is_inclusive():
    assert gate(0.55, 0.55, None, 0.01).passed


def test_beating_the_champion_by_enough_passes():
    d = gate(0.62, 0.55, {"version": 3, "macro_f1": 0.60}, 0.02)
    assert d.passed and "beats champion version 3" in d.reason
    assert d.champion_version == 3 and d.champion_macro_f1 == 0.60


def test_not_beating_the_champion_by_enough_is_blocked():
    d = gate(0.615, 0.55, {"version": 3, "macro_f1": 0.60}, 0.02)
    assert not d.passed
    assert "does not beat champion version 3 (0.6000) by 0.0200 (difference +0.0150)" in d.reason


def test_worse_than_champion_is_blocked_even_above_threshold():
    assert not gate(0.58, 0.50, {"version": 1, "macro_f1": 0.60}, 0.0).passed


def test_threshold_applies_even_when_beating_a_weak_champion():
    d = gate(0.40, 0.55, {"version": 1, "macro_f1": 0.10}, 0.01)
    assert not d.passed and "below the threshold" in d.reason


def test_latency_budget_pair():
    fast = {"p50_ms": 4.0, "batch64_images_per_s": 900.0}
    slow = {"p50_ms": 40.0, "batch64_images_per_s": 90.0}
    assert gate(0.60, 0.55, None, 0.01, fast, max_latency_ms=10).passed
    d = gate(0.60, 0.55, None, 0.01, slow, max_latency_ms=10)
    assert not d.passed
    assert d.reason == ("single-face p50 40.00 ms is over the latency budget of 10 ms "
                        "(batch 64: 90 images/s)")
    assert (d.latency_p50_ms, d.batch64_images_per_s, d.max_latency_ms) == (40.0, 90.0, 10)
    assert gate(0.60, 0.55, None, 0.01, slow, max_latency_ms=0).passed  # 0: no budget
    with pytest.raises(ValueError, match="needs the candidate's measured latency"):
        gate(0.60, 0.55, None, 0.01, None, max_latency_ms=10)


@pytest.mark.parametrize("budget_ms, passes", [(0.001, False), (60_000, True)])
def test_the_exported_candidates_latency_gates_it(budget_ms, passes, trained_model, prepared,
                                                  tmp_path):
    """Budgets that cannot flake: no model answers in a microsecond, every one in a minute."""
    m = evaluate(trained_model, prepared / "dataset", tmp_path, 0.0, 0.01,
                 max_latency_ms=budget_ms)
    cost = m["latency"]["serving_default"]
    assert cost["p50_ms"] > 0 and cost["batch64_images_per_s"] > 0
    assert m["gate"]["passed"] is passes
    assert m["gate"]["latency_p50_ms"] == cost["p50_ms"]
    if not passes:
        assert "over the latency budget of 0.001 ms" in m["gate"]["reason"]
    assert "cost of serving_default" in format_evaluation(m)


# --- metrics on known predictions --------------------------------------------------------

def test_classification_metrics_on_known_predictions():
    y_true = np.array([0, 0, 0, 1, 2, 3, 3, 4, 5, 6])
    y_pred = np.array([0, 0, 2, 1, 2, 3, 4, 4, 5, 6])
    m = classification_metrics(y_true, y_pred)
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["confusion_matrix"][0] == [2, 0, 1, 0, 0, 0, 0]
    assert m["per_class"]["angry"] == {"precision": 1.0, "recall": pytest.approx(2 / 3),
                                       "f1": pytest.approx(0.8), "support": 3}
    assert m["per_class"]["fear"]["precision"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx(np.mean([0.8, 1, 2 / 3, 2 / 3, 2 / 3, 1, 1]))
    pairs = {(c["true"], c["predicted"]): c["count"] for c in m["most_confused"]}
    assert pairs == {("angry", "fear"): 1, ("happy", "sad"): 1}


def test_absent_class_counts_zero_not_crash():
    m = classification_metrics(np.array([0, 3, 3]), np.array([0, 3, 0]))
    assert m["per_class"]["disgust"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


# --- a real trained model ---------------------------------------------------------------

def test_evaluate_real_model_on_test(trained_model, prepared, tmp_path):
    m = evaluate(trained_model, prepared / "dataset", tmp_path, f1_threshold=0.0,
                 min_improvement=0.01)
    assert m["split"] == "test" and m["items"] == 70
    assert sum(map(sum, m["confusion_matrix"])) == 70
    assert m["gate"]["passed"]
    assert json.loads((tmp_path / "metrics.json").read_text())["macro_f1"] == m["macro_f1"]
    with Image.open(tmp_path / "confusion_matrix.png") as img:
        assert img.format == "PNG"
    text = format_evaluation(m)
    assert "gate: PASSED" in text and "disgust" in text


def test_evaluate_falls_back_to_val(trained_model, prepared, tmp_path):
    data = FaceDataset.load(prepared / "dataset")
    data.subset(data.splits != "test").save(tmp_path / "noTest")
    m = evaluate(trained_model, tmp_path / "noTest", tmp_path / "out", 1.0, 0.0)
    assert m["split"] == "val"
    assert not m["gate"]["passed"]


# --- uncertainty: intervals, the paired gate, calibration ---------------------------------

def _comparison(win: float, champion_f1: float = 0.5, candidate_f1: float = 0.52):
    from components.uncertainty import Comparison

    verdict = "better" if win >= 0.95 else "worse" if win <= 0.05 else "not significant"
    return Comparison(candidate_f1, champion_f1, candidate_f1 - champion_f1, [-0.01, 0.05],
                      win, verdict, 1000, 3589)


def test_a_required_win_probability_pair():
    champion = {"version": 3, "macro_f1": 0.9}  # recorded; the paired figure replaces it
    sure = gate(0.52, 0.4, champion, 0.01, comparison=_comparison(0.97), min_win_probability=0.95)
    assert sure.passed and sure.champion_source == "same faces"
    assert sure.champion_macro_f1 == 0.5 and "P(candidate better) 0.970: better" in sure.reason
    unsure = gate(0.52, 0.4, champion, 0.01, comparison=_comparison(0.80),
                  min_win_probability=0.95)
    assert not unsure.passed
    assert "the probability that it is better, 0.800, is below the required 0.95" in unsure.reason
    # off by default: today's rule alone
    assert gate(0.52, 0.4, champion, 0.01, comparison=_comparison(0.80)).passed
    recorded = gate(0.95, 0.4, champion, 0.01, min_win_probability=0.95)
    assert not recorded.passed and "could not be run on the same faces" in recorded.reason
    with pytest.raises(ValueError, match="min_win_probability"):
        gate(0.5, 0.4, None, 0.0, min_win_probability=1.0)


def test_the_champion_is_run_on_the_same_faces_from_its_deployed_saved_model(
        trained_model, exported_model, prepared, tmp_path):
    """The champion deployed is the candidate itself (its export): on the same faces the
    paired comparison finds them equal, not significantly different; its recorded figure
    (set false here) is not used; a required win probability then blocks."""
    from components.deploy import deploy
    from components.evaluate import evaluate_candidate

    serving = tmp_path / "serving"
    deploy(exported_model, str(serving), "fer")
    record = serving / "fer" / "1" / "assets.extra" / "metrics.json"
    metrics = json.loads(record.read_text())
    record.write_text(json.dumps({**metrics, "macro_f1": 0.0}))
    m = evaluate_candidate(trained_model, prepared / "dataset", tmp_path / "e", str(serving),
                           "fer", 0.0, 0.0)
    comparison = m["champion_comparison"]
    assert comparison["verdict"] == "not significant" and comparison["win_probability"] == 0.5
    assert comparison["faces"] == m["items"]
    assert m["gate"]["champion_source"] == "same faces"
    assert m["gate"]["champion_macro_f1"] == pytest.approx(m["macro_f1"], abs=1e-9)
    assert m["gate"]["passed"]  # equal, and no win probability required
    blocked = evaluate_candidate(trained_model, prepared / "dataset", tmp_path / "b",
                                 str(serving), "fer", 0.0, 0.0, min_win_probability=0.9)
    assert not blocked["gate"]["passed"]
    assert "is below the required 0.9" in blocked["gate"]["reason"]
    assert "paired on 70 faces" in format_evaluation(blocked)


def test_the_evaluation_reports_intervals_and_calibration(trained_model, prepared, tmp_path):
    m = evaluate(trained_model, prepared / "dataset", tmp_path, 0.0, 0.0, measure_latency=False)
    ci = m["intervals"]
    assert ci["resamples"] == 1000 and ci["accuracy"][0] <= m["accuracy"] <= ci["accuracy"][1]
    assert ci["macro_f1"][0] <= m["macro_f1"] <= ci["macro_f1"][1]
    assert set(ci["per_class_f1"]) == set(m["per_class"])
    cal = m["calibration"]
    assert 0 <= cal["ece"] <= 1 and sum(cal["after"]["count"]) == m["items"]
    with Image.open(tmp_path / "reliability_diagram.png") as img:
        assert img.format == "PNG"
    text = format_evaluation(m)
    assert "95% intervals (1,000 bootstrap resamples)" in text
    assert "expected calibration error" in text
