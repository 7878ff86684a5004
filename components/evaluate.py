"""Evaluate + gate: held-out metrics, confusion matrix, serving cost, and the deploy decision.

The figures are those of ``serving_default``, the single pass every caller gets by default;
with test-time augmentation the TTA signatures' figures are reported beside them. The
candidate is also measured as exported (:mod:`components.latency`): single-face p50 and
batch-64 images/s. The gate passes only if macro F1 >= ``f1_threshold``, the p50 is within
``max_latency_ms`` (0: no budget) **and** there is no deployed champion or the candidate
beats the champion's recorded macro F1 by at least ``min_improvement``.
"""

from __future__ import annotations

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
from components.deploy import find_champion
from components.explanation_report import (
    evaluation_page,
    explain_evaluation,
    format_explanations,
)
from components.latency import measure_candidate
from components.train.models import load_trained
from components.train.recipe import check_tta
from components.train.train import predict_proba
from components.train.tta import with_tta
from serving.contract import (
    CLASS_NAMES,
    METRICS_FILE,
    NUM_CLASSES,
    SIGNATURE_IMAGES_TTA,
    SIGNATURE_PIXELS,
    SIGNATURE_PIXELS_TTA,
)

LATENCY_FACES = 64  # real held-out faces the candidate's cost is measured on

CONFUSION_PNG = "confusion_matrix.png"
REPORT_HTML = "report.html"  # the page for people: text, confusion, explanations
LABELS = list(range(NUM_CLASSES))


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


def gate(macro_f1: float, f1_threshold: float, champion: dict[str, Any] | None,
         min_improvement: float, latency: dict[str, float] | None = None,
         max_latency_ms: float = 0.0) -> GateDecision:
    """Decide whether a candidate may be deployed. ``champion``: ``{"version", "macro_f1"}``;
    ``latency``: the candidate's ``{"p50_ms", "batch64_images_per_s"}`` as served by
    default; ``max_latency_ms``: the p50 budget (0: none)."""
    champ_version = champion["version"] if champion else None
    champ_f1 = float(champion["macro_f1"]) if champion else None
    latency = latency or {}
    decision = GateDecision(False, "", macro_f1, f1_threshold, champ_version, champ_f1,
                            min_improvement, latency.get("p50_ms"),
                            latency.get("batch64_images_per_s"), max_latency_ms)
    if max_latency_ms and decision.latency_p50_ms is None:
        raise ValueError("a latency budget needs the candidate's measured latency")
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
    elif macro_f1 >= champ_f1 + min_improvement:
        decision.passed = True
        decision.reason = (f"macro F1 {macro_f1:.4f} beats champion version {champ_version} "
                           f"({champ_f1:.4f}) by {macro_f1 - champ_f1:+.4f} >= {min_improvement:.4f}")
    else:
        decision.reason = (f"macro F1 {macro_f1:.4f} does not beat champion version "
                           f"{champ_version} ({champ_f1:.4f}) by {min_improvement:.4f} "
                           f"(difference {macro_f1 - champ_f1:+.4f})")
    return decision


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro/weighted F1, per-class P/R/F1, confusion matrix, most-confused pairs."""
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=LABELS, zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=LABELS)
    off = [(int(cm[t, p]), t, p) for t in LABELS for p in LABELS if t != p and cm[t, p] > 0]
    off.sort(reverse=True)
    return {
        "items": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=LABELS, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=LABELS, average="weighted",
                                      zero_division=0)),
        "per_class": {
            CLASS_NAMES[i]: {"precision": float(precision[i]), "recall": float(recall[i]),
                             "f1": float(f1[i]), "support": int(support[i])}
            for i in LABELS
        },
        "confusion_matrix": cm.tolist(),
        "most_confused": [
            {"true": CLASS_NAMES[t], "predicted": CLASS_NAMES[p], "count": n,
             "share_of_true": round(n / max(int(cm[t].sum()), 1), 4)}
            for n, t, p in off[:5]
        ],
    }


def plot_confusion(cm: list[list[int]], path: Path, title: str) -> Path:
    """The confusion matrix ``cm`` (counts, one row per true class) normalized per row, drawn
    under ``title`` and saved at ``path``; returns ``path``."""
    fig = Figure(figsize=(7.5, 6.5), dpi=100)
    ax = fig.subplots()
    cm = np.asarray(cm)
    normalized = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    disp = ConfusionMatrixDisplay(normalized, display_labels=CLASS_NAMES)
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
             measure_latency: bool = True) -> dict[str, Any]:
    """Evaluate the model on test (val when there is no test) and decide the gate.

    The figures are the single pass's (``serving_default``). ``tta`` (``"flip"``,
    ``"crops"``; :mod:`components.train.tta`): the TTA signatures' figures go under
    ``"tta_metrics"``. ``baseline``: a classic reference model's metrics on the same split
    (:func:`components.baseline.classic_baseline`), recorded and printed beside the model's;
    it does not enter the gate. ``measure_latency``: measure the candidate as exported
    (``"latency"``: p50 and batch-64 images/s per pixel signature); ``max_latency_ms``
    (needs it): the gate's budget for ``serving_default``'s p50, 0 for none.

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
    metrics = classification_metrics(held_out.labels, y_pred)
    metrics["split"] = split
    metrics["tta"] = tta
    if tta_model is not None:
        tta_pred = predict_proba(tta_model, held_out.images).argmax(axis=1)
        full = classification_metrics(held_out.labels, tta_pred)
        metrics["tta_metrics"] = {
            **{k: full[k] for k in ("accuracy", "macro_f1", "weighted_f1")},
            "per_class_f1": {name: m["f1"] for name, m in full["per_class"].items()}}
    if baseline is not None:
        metrics["baseline"] = baseline
    latency = None
    if measure_latency or max_latency_ms:
        faces = to_model_input(held_out.images[:LATENCY_FACES])
        metrics["latency"] = measure_candidate(model, faces, tta_model)
        latency = metrics["latency"][SIGNATURE_PIXELS]
    decision = gate(metrics["macro_f1"], f1_threshold, champion, min_improvement, latency,
                    max_latency_ms)
    metrics["gate"] = asdict(decision)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    plot_confusion(metrics["confusion_matrix"], output_dir / CONFUSION_PNG,
                   f"Confusion on {split} ({len(held_out):,} faces), macro F1 "
                   f"{metrics['macro_f1']:.3f}")
    metrics["explanations"] = explain_evaluation(model, held_out.images, held_out.labels,
                                                 probabilities, metrics["most_confused"],
                                                 output_dir)
    write_json(output_dir / METRICS_FILE, metrics)
    (output_dir / REPORT_HTML).write_text(evaluation_page(
        "Evaluation", format_evaluation(metrics), [output_dir / CONFUSION_PNG],
        metrics["explanations"], output_dir))
    return metrics


def evaluate_candidate(model_dir: str | Path, dataset_dir: str | Path, output_dir: str | Path,
                       serving_base: str, model_name: str, f1_threshold: float,
                       min_improvement: float, tta: str = "none",
                       with_classic_baseline: bool = False,
                       max_latency_ms: float = 0.0) -> dict[str, Any]:
    """The pipeline's evaluate step: :func:`evaluate` the candidate in ``model_dir`` against
    the champion deployed as ``model_name`` under ``serving_base`` (none: the threshold
    alone decides) and the latency budget ``max_latency_ms`` (0: none), beside the classic
    baseline when ``with_classic_baseline``. Returns :func:`evaluate`'s metrics with the
    gate decision."""
    champion = find_champion(serving_base, model_name)
    baseline = classic_baseline(dataset_dir) if with_classic_baseline else None
    return evaluate(model_dir, dataset_dir, output_dir, f1_threshold, min_improvement,
                    champion, tta=tta, baseline=baseline, max_latency_ms=max_latency_ms)


def format_evaluation(metrics: dict[str, Any]) -> str:
    """The text the CLI prints for :func:`evaluate`'s ``metrics``: overall and per-class scores,
    the most confused pairs, the baseline if any, and the gate decision."""
    lines = [f"evaluation on {metrics['split']} ({metrics['items']:,} faces, one pass): "
             f"accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}, "
             f"weighted F1 {metrics['weighted_f1']:.4f}",
             f"{'class':<9} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}"]
    for name, m in metrics["per_class"].items():
        lines.append(f"{name:<9} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>6.3f} "
                     f"{m['support']:>8,}")
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
    if "explanations" in metrics:
        lines.append(format_explanations(metrics["explanations"]))
    gate_ = metrics["gate"]
    lines.append(f"gate: {'PASSED' if gate_['passed'] else 'BLOCKED'}: {gate_['reason']}")
    return "\n".join(lines)
