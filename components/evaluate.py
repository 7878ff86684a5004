# Length: the evaluate step and its gate in one place: the metrics, their intervals and
# calibration, the champion run on the same faces, the decision, and the text and plots that
# show them; each part is a short function.
"""Evaluate + gate: held-out metrics, confusion matrix, serving cost, and the deploy decision.

The figures are those of ``serving_default``, the single pass every caller gets by default;
with test-time augmentation the TTA signatures' figures are reported beside them. The
candidate is also measured as exported (:mod:`components.latency`): single-face p50 and
batch-64 images/s. The gate passes only if macro F1 >= ``f1_threshold``, the p50 is within
``max_latency_ms`` (0: no budget) **and** there is no deployed champion or the candidate
beats the champion's macro F1 by at least ``min_improvement`` (and, with
``min_win_probability``, is better with at least that probability).

The champion is judged on the same faces: its deployed SavedModel is run on them (its
recorded figure is used only when that cannot be done, and the decision says so), and the
paired bootstrap (:mod:`components.uncertainty`) gives the probability that the candidate is
the better one. Every figure carries its bootstrap 95% interval; the probabilities' expected
calibration error and reliability diagram are reported, before and after the model's
temperature scaling when it has one.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from components.baseline import classic_baseline
from components.dataset import (
    DataError,
    FaceDataset,
    held_out_split,
    to_model_input,
    write_json,
)
from components.deploy import fetch_version, find_champion
from components.explanation_report import (
    evaluation_page,
    explain_evaluation,
    format_explanations,
)
from components.latency import measure_candidate
from components.train.calibrate import (
    TemperatureScaling,
    apply_heads,
    calibration_heads,
)
from components.train.models import load_trained
from components.train.recipe import check_tta
from components.train.train import predict_proba
from components.train.tta import with_tta
from components.uncertainty import (
    DEFAULT_RESAMPLES,
    Comparison,
    bootstrap_intervals,
    paired_comparison,
    reliability,
)
from serving.contract import (
    CLASS_NAMES,
    METRICS_FILE,
    PIXELS_INPUT,
    PROBABILITIES,
    SIGNATURE_IMAGES_TTA,
    SIGNATURE_PIXELS,
    SIGNATURE_PIXELS_TTA,
    read_labels,
)

LATENCY_FACES = 64  # real held-out faces the candidate's cost is measured on

CONFUSION_PNG = "confusion_matrix.png"
RELIABILITY_PNG = "reliability_diagram.png"
REPORT_HTML = "report.html"  # the page for people: text, confusion, explanations


@dataclass
class GateDecision:
    """The gate's verdict on a candidate: whether it may be deployed, why, and the numbers it was
    judged on (the champion's are ``None`` when none is deployed)."""

    passed: bool
    reason: str
    macro_f1: float
    f1_threshold: float
    champion_version: int | None
    champion_macro_f1: float | None
    min_improvement: float
    latency_p50_ms: float | None = None
    batch64_images_per_s: float | None = None
    max_latency_ms: float = 0.0
    champion_source: str | None = None  # "same faces" (recomputed) or "recorded"
    win_probability: float | None = None  # P(candidate better), paired bootstrap
    min_win_probability: float = 0.0
    comparison: str | None = None  # the paired comparison in words


def gate(macro_f1: float, f1_threshold: float, champion: dict[str, Any] | None,
         min_improvement: float, latency: dict[str, float] | None = None,
         max_latency_ms: float = 0.0, comparison: Comparison | None = None,
         min_win_probability: float = 0.0) -> GateDecision:
    """Decide whether a candidate may be deployed. ``champion``: ``{"version", "macro_f1"}``
    (its recorded figure); ``comparison``: the paired comparison with it on the same faces,
    whose champion macro F1 then replaces the recorded one; ``min_win_probability``: the
    probability of being better the candidate needs (0: not required); ``latency``: the
    candidate's ``{"p50_ms", "batch64_images_per_s"}`` as served by default;
    ``max_latency_ms``: the p50 budget (0: none)."""
    if not 0 <= min_win_probability < 1:
        raise ValueError(f"min_win_probability must be in [0, 1), got {min_win_probability}")
    champ_version = champion["version"] if champion else None
    champ_f1 = float(champion["macro_f1"]) if champion else None
    source = None
    if champion is not None:
        source = "recorded"
        if comparison is not None:
            champ_f1, source = comparison.champion_macro_f1, "same faces"
    latency = latency or {}
    decision = GateDecision(False, "", macro_f1, f1_threshold, champ_version, champ_f1,
                            min_improvement, latency.get("p50_ms"),
                            latency.get("batch64_images_per_s"), max_latency_ms, source,
                            comparison.win_probability if comparison else None,
                            min_win_probability,
                            comparison.describe() if comparison else None)
    if max_latency_ms and decision.latency_p50_ms is None:
        raise ValueError("a latency budget needs the candidate's measured latency")
    paired = f"; {comparison.describe()}" if comparison else \
        ("; the champion's figure is its recorded one" if champion else "")
    if macro_f1 < f1_threshold:
        decision.reason = f"macro F1 {macro_f1:.4f} is below the threshold {f1_threshold:.4f}"
    elif max_latency_ms and decision.latency_p50_ms > max_latency_ms:
        decision.reason = (f"single-face p50 {decision.latency_p50_ms:.2f} ms is over the "
                           f"latency budget of {max_latency_ms:g} ms (batch 64: "
                           f"{decision.batch64_images_per_s:,.0f} images/s)")
    elif champion is None:
        decision.passed = True
        decision.reason = (f"macro F1 {macro_f1:.4f} >= threshold {f1_threshold:.4f} and no "
                           f"champion is deployed")
    elif macro_f1 < champ_f1 + min_improvement:
        decision.reason = (f"macro F1 {macro_f1:.4f} does not beat champion version "
                           f"{champ_version} ({champ_f1:.4f}) by {min_improvement:.4f} "
                           f"(difference {macro_f1 - champ_f1:+.4f}){paired}")
    elif min_win_probability and comparison is None:
        decision.reason = (f"a win probability of {min_win_probability:g} is required, but "
                           f"champion version {champ_version} could not be run on the same "
                           f"faces")
    elif min_win_probability and comparison.win_probability < min_win_probability:
        decision.reason = (f"macro F1 {macro_f1:.4f} beats champion version {champ_version} "
                           f"({champ_f1:.4f}), but the probability that it is better, "
                           f"{comparison.win_probability:.3f}, is below the required "
                           f"{min_win_probability:g}{paired}")
    else:
        decision.passed = True
        decision.reason = (f"macro F1 {macro_f1:.4f} beats champion version {champ_version} "
                           f"({champ_f1:.4f}) by {macro_f1 - champ_f1:+.4f} >= "
                           f"{min_improvement:.4f}{paired}")
    return decision


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray,
                           class_names: Sequence[str] = CLASS_NAMES) -> dict[str, Any]:
    """Accuracy, macro/weighted F1, per-class P/R/F1, confusion matrix, most-confused pairs,
    over the label set ``class_names`` (ids 0..K-1)."""
    ids = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=ids, zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=ids)
    off = [(int(cm[t, p]), t, p) for t in ids for p in ids if t != p and cm[t, p] > 0]
    off.sort(reverse=True)
    return {
        "items": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=ids, average="weighted",
                                      zero_division=0)),
        "per_class": {
            class_names[i]: {"precision": float(precision[i]), "recall": float(recall[i]),
                             "f1": float(f1[i]), "support": int(support[i])}
            for i in ids
        },
        "confusion_matrix": cm.tolist(),
        "most_confused": [
            {"true": class_names[t], "predicted": class_names[p], "count": n,
             "share_of_true": round(n / max(int(cm[t].sum()), 1), 4)}
            for n, t, p in off[:5]
        ],
    }


def plot_confusion(cm: list[list[int]], path: Path, title: str,
                   class_names: Sequence[str] = CLASS_NAMES) -> Path:
    """The confusion matrix ``cm`` (counts, one row per true class of ``class_names``)
    normalized per row, drawn under ``title`` and saved at ``path``; returns ``path``."""
    fig = Figure(figsize=(7.5, 6.5), dpi=100)
    ax = fig.subplots()
    cm = np.asarray(cm)
    normalized = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    disp = ConfusionMatrixDisplay(normalized, display_labels=list(class_names))
    disp.plot(ax=ax, cmap="Blues", values_format=".2f", colorbar=True)
    ax.set_title(title)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (rows sum to 1)")
    fig.tight_layout()
    fig.savefig(path)
    return path


def evaluate(model_dir: str | Path, dataset_dir: str | Path, output_dir: str | Path,
             f1_threshold: float, min_improvement: float,
             champion: dict[str, Any] | None = None, tta: str = "none",
             baseline: dict[str, Any] | None = None, max_latency_ms: float = 0.0,
             measure_latency: bool = True, champion_dir: str | Path | None = None,
             min_win_probability: float = 0.0, resamples: int = DEFAULT_RESAMPLES,
             seed: int = 0) -> dict[str, Any]:
    """Evaluate the model on test (val when there is no test) and decide the gate.

    The figures are the single pass's (``serving_default``). ``tta`` (``"flip"``, ``"centre"``,
    ``"crops"``; :mod:`components.train.tta`): the TTA signatures' figures go under
    ``"tta_metrics"``. ``baseline``: a classic reference model's metrics on the same split
    (:func:`components.baseline.classic_baseline`), recorded and printed beside the model's;
    it does not enter the gate. ``measure_latency``: measure the candidate as exported
    (``"latency"``: p50 and batch-64 images/s per pixel signature); ``max_latency_ms``
    (needs it): the gate's budget for ``serving_default``'s p50, 0 for none.
    ``champion_dir``: the champion's deployed SavedModel, run on the same faces for the
    paired comparison (``"champion_comparison"``); ``min_win_probability``: the probability
    of being better the gate requires (0: none). ``resamples``, ``seed``: the bootstrap's
    (``"intervals"``: 95% intervals of accuracy, macro F1 and per-class F1).
    ``"calibration"``: the ECE and reliability diagram of the served probabilities, and,
    for a model with temperature scaling, the ECE without it.

    Writes ``metrics.json`` (metrics + decision), ``confusion_matrix.png``, the Grad-CAM
    explanations (:mod:`components.explanation_report`: per-class mean heatmaps and the
    most confident mistakes, under ``explanations/``; their record under
    ``"explanations"``) and ``report.html``, the page that shows them all; returns the
    metrics with the decision under ``"gate"``.
    """
    check_tta(tta)
    if max_latency_ms < 0:
        raise ValueError(f"max_latency_ms must be >= 0 (0: no budget), got {max_latency_ms}")
    data = FaceDataset.load(dataset_dir)
    split, held_out = held_out_split(data)
    if len(held_out) == 0:
        raise DataError(f"{dataset_dir}: no test or val items to evaluate on")
    model = load_trained(model_dir)
    tta_model = None if tta == "none" else with_tta(model, tta)
    probabilities = predict_proba(model, held_out.images)
    y_pred = probabilities.argmax(axis=1)
    names = data.class_names
    metrics = classification_metrics(held_out.labels, y_pred, names)
    metrics["class_names"] = list(names)
    metrics["split"] = split
    metrics["tta"] = tta
    if tta_model is not None:
        tta_pred = predict_proba(tta_model, held_out.images).argmax(axis=1)
        full = classification_metrics(held_out.labels, tta_pred, names)
        metrics["tta_metrics"] = {
            **{k: full[k] for k in ("accuracy", "macro_f1", "weighted_f1")},
            "per_class_f1": {name: m["f1"] for name, m in full["per_class"].items()}}
    if baseline is not None:
        metrics["baseline"] = baseline
    metrics["intervals"] = bootstrap_intervals(held_out.labels, y_pred, list(names),
                                               resamples, seed)
    metrics["calibration"] = calibration_figures(model, held_out.images, held_out.labels,
                                                 probabilities)
    comparison = None
    if champion_dir is not None:
        champion_pred, note = champion_predictions(champion_dir, held_out.images, names)
        if champion_pred is not None:
            comparison = paired_comparison(held_out.labels, y_pred, champion_pred, len(names),
                                           resamples, seed)
            metrics["champion_comparison"] = asdict(comparison)
        else:
            metrics["champion_comparison"] = {"note": note}
    latency = None
    if measure_latency or max_latency_ms:
        faces = to_model_input(held_out.images[:LATENCY_FACES])
        metrics["latency"] = measure_candidate(model, faces, tta_model)
        latency = metrics["latency"][SIGNATURE_PIXELS]
    decision = gate(metrics["macro_f1"], f1_threshold, champion, min_improvement, latency,
                    max_latency_ms, comparison, min_win_probability)
    metrics["gate"] = asdict(decision)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    plot_confusion(metrics["confusion_matrix"], output_dir / CONFUSION_PNG,
                   f"Confusion on {split} ({len(held_out):,} faces), macro F1 "
                   f"{metrics['macro_f1']:.3f}", names)
    plot_reliability(metrics["calibration"], output_dir / RELIABILITY_PNG,
                     f"Reliability on {split} ({len(held_out):,} faces)")
    metrics["explanations"] = explain_evaluation(model, held_out.images, held_out.labels,
                                                 probabilities, metrics["most_confused"],
                                                 output_dir, class_names=names)
    write_json(output_dir / METRICS_FILE, metrics)
    (output_dir / REPORT_HTML).write_text(evaluation_page(
        "Evaluation", format_evaluation(metrics),
        [output_dir / CONFUSION_PNG, output_dir / RELIABILITY_PNG],
        metrics["explanations"], output_dir))
    return metrics


def evaluate_candidate(model_dir: str | Path, dataset_dir: str | Path, output_dir: str | Path,
                       serving_base: str, model_name: str, f1_threshold: float,
                       min_improvement: float, tta: str = "none",
                       with_classic_baseline: bool = False,
                       max_latency_ms: float = 0.0,
                       min_win_probability: float = 0.0) -> dict[str, Any]:
    """The pipeline's evaluate step: :func:`evaluate` the candidate in ``model_dir`` against
    the champion deployed as ``model_name`` under ``serving_base`` (none: the threshold
    alone decides; its SavedModel, fetched from the serving base, runs on the same faces),
    the latency budget ``max_latency_ms`` (0: none) and the required win probability
    ``min_win_probability`` (0: none), beside the classic baseline when
    ``with_classic_baseline``. Returns :func:`evaluate`'s metrics with the gate decision."""
    champion = find_champion(serving_base, model_name)
    baseline = classic_baseline(dataset_dir) if with_classic_baseline else None
    with tempfile.TemporaryDirectory() as tmp:
        champion_dir = None
        if champion is not None:
            champion_dir = fetch_version(serving_base, model_name, champion["version"], tmp)
        return evaluate(model_dir, dataset_dir, output_dir, f1_threshold, min_improvement,
                        champion, tta=tta, baseline=baseline, max_latency_ms=max_latency_ms,
                        champion_dir=champion_dir, min_win_probability=min_win_probability)


def champion_predictions(saved_model_dir: str | Path, images: np.ndarray,
                         class_names: Sequence[str] = CLASS_NAMES,
                         batch: int = 256) -> tuple[np.ndarray | None, str]:
    """The classes a deployed SavedModel's ``serving_default`` predicts for ``images``
    (uint8 [N,48,48]), or ``None`` and why it could not be run on them (a label set other
    than the candidate's ``class_names``, a signature missing, an unloadable model)."""
    champion_names = read_labels(saved_model_dir)
    if champion_names != tuple(class_names):
        return None, (f"the champion's classes ({', '.join(champion_names)}) are not the "
                      f"candidate's ({', '.join(class_names)}): no paired comparison")
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(saved_model_dir))
        fn = loaded.signatures[SIGNATURE_PIXELS]
        chunks = [fn(**{PIXELS_INPUT: tf.constant(to_model_input(images[i:i + batch]))})
                  [PROBABILITIES].numpy() for i in range(0, len(images), batch)]
    except (OSError, KeyError, ValueError, tf.errors.OpError) as exc:
        return None, f"the champion could not be run on these faces: {str(exc)[:200]}"
    probabilities = np.concatenate(chunks)
    if probabilities.shape[1] != len(class_names):
        return None, (f"the champion has {probabilities.shape[1]} classes, the candidate "
                      f"{len(class_names)}: no paired comparison")
    return probabilities.argmax(axis=1), ""


def calibration_figures(model, images: np.ndarray, labels: np.ndarray,
                        probabilities: np.ndarray) -> dict[str, Any]:
    """The served probabilities' reliability (ECE, per-bin accuracy and confidence) and, when
    the model ends in temperature scaling, the same without it (``"before"``) and its
    temperature."""
    result = {"after": reliability(labels, probabilities), "temperature": None}
    base, heads = calibration_heads(model)
    if heads and isinstance(heads[-1], TemperatureScaling):
        plain = predict_proba(base, images)
        result["before"] = reliability(labels, apply_heads(plain, heads[:-1]))
        result["temperature"] = heads[-1].temperature
    result["ece"] = result["after"]["ece"]
    return result


def plot_reliability(calibration: dict[str, Any], path: Path, title: str) -> Path:
    """The reliability diagram: accuracy against mean confidence per confidence bin, for the
    served probabilities (and before temperature scaling, when there is one), with the
    diagonal of perfect calibration and the ECE in the legend; saved at ``path``."""
    fig = Figure(figsize=(6, 5.5), dpi=100)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="perfectly calibrated")
    curves = [("before", "before temperature scaling", "tab:orange"),
              ("after", "served" if calibration.get("temperature") is None
               else f"served (temperature {calibration['temperature']:.2f})", "tab:blue")]
    for key, label, colour in curves:
        if key not in calibration:
            continue
        r = calibration[key]
        points = [(c, a) for c, a in zip(r["confidence"], r["accuracy"]) if c is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", color=colour, label=f"{label}, ECE {r['ece']:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence of the top class")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    return path


def format_evaluation(metrics: dict[str, Any]) -> str:
    """The text the CLI prints for :func:`evaluate`'s ``metrics``: overall and per-class scores,
    the most confused pairs, the baseline if any, and the gate decision."""
    lines = [f"evaluation on {metrics['split']} ({metrics['items']:,} faces, one pass): "
             f"accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}, "
             f"weighted F1 {metrics['weighted_f1']:.4f}"]
    ci = metrics.get("intervals")
    if ci:
        lines.append(f"  95% intervals ({ci['resamples']:,} bootstrap resamples): accuracy "
                     f"{ci['accuracy'][0]:.4f}-{ci['accuracy'][1]:.4f}, macro F1 "
                     f"{ci['macro_f1'][0]:.4f}-{ci['macro_f1'][1]:.4f}")
    lines.append(f"{'class':<9} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}"
                 + ("  f1 95% interval" if ci else ""))
    for name, m in metrics["per_class"].items():
        band = (f"  {ci['per_class_f1'][name][0]:.3f}-{ci['per_class_f1'][name][1]:.3f}"
                if ci else "")
        lines.append(f"{name:<9} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>6.3f} "
                     f"{m['support']:>8,}{band}")
    if metrics["most_confused"]:
        lines.append("most confused: " + "; ".join(
            f"{c['true']} -> {c['predicted']} {c['count']} ({c['share_of_true']:.0%})"
            for c in metrics["most_confused"][:3]))
    tta = metrics.get("tta_metrics")
    if tta:
        lines.append(f"with TTA {metrics['tta']} (signatures {SIGNATURE_PIXELS_TTA}, "
                     f"{SIGNATURE_IMAGES_TTA}): accuracy {tta['accuracy']:.4f}, macro F1 "
                     f"{tta['macro_f1']:.4f}")
    for name, cost in metrics.get("latency", {}).items():
        lines.append(f"cost of {name} (in-process, this machine): one face p50 "
                     f"{cost['p50_ms']:.2f} ms, batch 64 {cost['batch64_images_per_s']:,.0f} "
                     f"images/s")
    base = metrics.get("baseline")
    if base:
        lines.append(f"classic baseline ({base.get('name', 'reference')}): accuracy "
                     f"{base['accuracy']:.4f}, macro F1 {base['macro_f1']:.4f}; the model "
                     f"{metrics['accuracy'] - base['accuracy']:+.4f} accuracy, "
                     f"{metrics['macro_f1'] - base['macro_f1']:+.4f} macro F1")
    cal = metrics.get("calibration")
    if cal:
        before = (f" ({cal['before']['ece']:.4f} before temperature scaling at "
                  f"T={cal['temperature']:.2f})" if "before" in cal else "")
        lines.append(f"calibration: expected calibration error {cal['ece']:.4f}{before}")
    if "explanations" in metrics:
        lines.append(format_explanations(metrics["explanations"]))
    gate_ = metrics["gate"]
    lines.append(f"gate: {'PASSED' if gate_['passed'] else 'BLOCKED'}: {gate_['reason']}")
    return "\n".join(lines)
