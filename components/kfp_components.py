"""Thin KFP wrappers: map artifacts to paths, call the step's logic, record metadata.

No logic lives here (and no ``from __future__ import annotations``: KFP reads the
annotations as types). Each wrapper is a lightweight Python component whose body imports
the installed project, so the same definition runs locally under
``kfp.local.SubprocessRunner(use_venv=False)`` and on a cluster on the training image.
"""

from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import (
    HTML,
    Artifact,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
)

from pipeline.cluster import TRAIN_IMAGE  # the image every task runs on


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def ingest_op(source: str, data_format: str, dataset: Output[Dataset], metrics: Output[Metrics],
              label_map: str = ""):
    """Read FER2013 (CSV or image folders; local, .zip or gs://) into a dataset artifact, its
    classes those of ``label_map`` (FER2013's seven when empty)."""
    from components.ingest import ingest

    manifest = ingest(source, dataset.path, data_format, label_map=label_map)
    dataset.metadata.update({"source": source, "format": manifest["format"],
                             "class_names": manifest["class_names"],
                             "counts": manifest["counts"]})
    for key in ("items_read", "accepted", "rejected"):
        metrics.log_metric(key, manifest[key])


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def preprocess_op(dataset: Input[Dataset], val_fraction: float, test_fraction: float, seed: int,
                  drop_duplicates: bool, max_train_per_class: int, splits: Output[Dataset]):
    """Assign train/val/test, report duplicates, record the normalisation."""
    from components.preprocess import preprocess

    report = preprocess(dataset.path, splits.path, val_fraction, test_fraction, seed,
                        drop_duplicates, max_train_per_class)
    splits.metadata.update({"split_rule": report["split_rule"], "counts": report["counts"],
                            "evaluation_split": report["evaluation_split"]})


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def class_weights_op(dataset: Input[Dataset], mode: str, weights: Output[Artifact]):
    """Per-class loss weights from the train split, as JSON keyed by class id."""
    from components.class_weights import class_weights

    result = class_weights(dataset.path, weights.path, mode)
    weights.metadata.update({"mode": mode, **{str(k): v for k, v in result.items()}})


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def data_report_op(dataset: Input[Dataset], weights: Input[Artifact], report: Output[HTML],
                   summary: Output[Markdown]):
    """Class distribution, sample faces and summary, as KFP UI artifacts."""
    import shutil
    import tempfile

    from components.class_weights import load_class_weights
    from components.report import data_report

    with tempfile.TemporaryDirectory() as tmp:
        paths = data_report(dataset.path, tmp, load_class_weights(weights.path))
        shutil.copyfile(paths["html"], report.path)
        shutil.copyfile(paths["markdown"], summary.path)


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def teacher_op(dataset: Input[Dataset], teacher: str, serving_base: str, model_name: str,
               checkpoint_root: str, predictions: Output[Artifact]):
    """Distillation's teacher: its probabilities for every train face, computed once (kept
    under ``checkpoint_root`` for a resumed run). ``teacher`` "": none, nothing computed."""
    from components.distill import resolve_teacher, teacher_predictions

    cache = f"{checkpoint_root.rstrip('/')}/teacher" if checkpoint_root else ""
    info = teacher_predictions(resolve_teacher(teacher, serving_base, model_name),
                               dataset.path, predictions.path, cache)
    predictions.metadata.update({k: v for k, v in info.items() if v is not None})


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def train_plan_op(architectures: List[str], folds: int, cv_final: str, ensemble: bool,
                  teacher: str) -> List[dict]:
    """The train tasks, ``{"architecture", "fold"}`` each: one per architecture, or with
    ``folds`` >= 2 one per architecture and fold (plus each architecture on the whole
    splits for ``cv_final`` "retrain"); bad cross-validation settings fail here, before
    any training."""
    from components.cv import cv_plan

    return cv_plan(architectures, folds, cv_final, ensemble, teacher)


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def train_op(dataset: Input[Dataset], weights: Input[Artifact], teacher: Input[Artifact],
             architecture: str, seed: int, model_options: dict, checkpoint_root: str,
             recipe: dict, model: Output[Model], curves: Output[HTML], fold: int = -1,
             folds: int = 0):
    """Train one architecture with the ``recipe`` (a TrainConfig as a dict), distilled from
    the ``teacher`` step's predictions when it made any, on fold ``fold`` of ``folds`` of
    train + val (-1: the splits as they are); checkpoints under ``checkpoint_root`` make it
    resumable."""
    from pathlib import Path

    from components.cv import train_variant
    from components.distill import has_teacher
    from components.report import html_page
    from components.train.recipe import variant_config

    config = variant_config(recipe, architecture, seed, model_options, checkpoint_root,
                            teacher.path if has_teacher(teacher.path) else None)
    summary = train_variant(dataset.path, weights.path, model.path, config, folds, fold)
    model.metadata.update({k: v for k, v in summary.items()
                           if k != "config" and v is not None})
    Path(curves.path).write_text(html_page(f"Training curves: {architecture}",
                                           "", [Path(model.path) / "training_curves.png"]))


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def select_best_op(models: Input[List[Model]], dataset: Input[Dataset], ensemble: bool,
                   recipe: dict, best: Output[Model], metrics: Output[Metrics],
                   table: Output[Markdown], cv_final: str = "retrain") -> str:
    """The variant with the best val macro F1 goes on, or (``ensemble``) the average of all
    the variants, calibrated and scored as the recipe serves it; with fold models, the
    architecture with the best CV mean, retrained or as the ensemble of its folds
    (``cv_final``). Returns the leaderboard (JSON; with folds, the CV table too)."""
    import json
    from pathlib import Path

    from components.cv import markdown_selection, select_with_cv, selection_metrics
    from components.train.recipe import TrainConfig

    config = TrainConfig.from_dict(recipe)
    result = select_with_cv([m.path for m in models], best.path, dataset.path, ensemble,
                            config.logit_adjustment, config.tta, cv_final)
    served = result.get("cv", {}).get("served", result["winner"])
    best.metadata.update({"architecture": served})
    for key, value in selection_metrics(result).items():
        metrics.log_metric(key, value)
    Path(table.path).write_text(markdown_selection(result))
    print(json.dumps(result, indent=2))
    return json.dumps(result)


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def evaluate_op(model: Input[Model], dataset: Input[Dataset], serving_base: str, model_name: str,
                f1_threshold: float, min_improvement: float, max_latency_ms: float,
                min_win_probability: float,
                recipe: dict, classic_baseline: bool, evaluation: Output[Artifact],
                metrics: Output[Metrics], confusion: Output[ClassificationMetrics],
                report: Output[HTML]) -> NamedTuple("Outputs", passed=bool, decision=str):
    """Held-out metrics (one pass, and the TTA signatures' when the recipe has them), the
    candidate's serving cost, bootstrap intervals, calibration, and the gate against the
    threshold, the latency budget and the deployed champion (run on the same faces, paired);
    the report shows them with the Grad-CAM explanations."""
    import json
    import shutil
    from collections import namedtuple
    from pathlib import Path

    from components.evaluate import REPORT_HTML, evaluate_candidate, format_evaluation
    from components.train.recipe import TrainConfig

    result = evaluate_candidate(model.path, dataset.path, evaluation.path, serving_base,
                                model_name, f1_threshold, min_improvement,
                                TrainConfig.from_dict(recipe).tta, classic_baseline,
                                max_latency_ms, min_win_probability)
    for key in ("accuracy", "macro_f1", "weighted_f1"):
        metrics.log_metric(key, result[key])
    for key in ("accuracy", "macro_f1"):  # the bootstrap 95% interval
        low, high = result["intervals"][key]
        metrics.log_metric(f"{key}_ci95_low", low)
        metrics.log_metric(f"{key}_ci95_high", high)
    metrics.log_metric("expected_calibration_error", result["calibration"]["ece"])
    if "before" in result["calibration"]:
        metrics.log_metric("expected_calibration_error_before_temperature",
                           result["calibration"]["before"]["ece"])
    if result["gate"]["win_probability"] is not None:
        metrics.log_metric("win_probability_vs_champion", result["gate"]["win_probability"])
    for key, value in result.get("tta_metrics", {}).items():
        if isinstance(value, float):
            metrics.log_metric(f"tta_{key}", value)
    for signature, cost in result.get("latency", {}).items():
        for key, value in cost.items():
            metrics.log_metric(f"{signature}_{key}", value)
    for name, m in result["per_class"].items():
        metrics.log_metric(f"f1_{name}", m["f1"])
    confusion.log_confusion_matrix(result["class_names"], result["confusion_matrix"])
    text = format_evaluation(result)
    print(text)
    shutil.copyfile(Path(evaluation.path) / REPORT_HTML, report.path)
    outputs = namedtuple("Outputs", ["passed", "decision"])
    return outputs(result["gate"]["passed"], json.dumps(result["gate"]))


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def export_op(model: Input[Model], dataset: Input[Dataset], evaluation: Input[Artifact],
              recipe: dict, saved_model: Output[Model]):
    """A SavedModel for TF Serving, verified against the Keras model before it is emitted."""
    from pathlib import Path

    from components.dataset import read_json
    from components.export import export
    from components.train.recipe import TrainConfig
    from serving.contract import METRICS_FILE

    metrics = read_json(Path(evaluation.path) / METRICS_FILE)
    result = export(model.path, dataset.path, saved_model.path, metrics,
                    tta=TrainConfig.from_dict(recipe).tta)
    saved_model.metadata.update(result)


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def deploy_op(saved_model: Input[Model], serving_base: str, model_name: str) -> str:
    """Publish as the next version under ``serving_base/model_name`` (JSON result)."""
    import json

    from components.deploy import deploy

    result = deploy(saved_model.path, serving_base, model_name)
    print(result["reason"], "->", result["path"])
    return json.dumps(result)


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def skip_deploy_op(decision: str) -> str:
    """The gate blocked the candidate: say why, deploy nothing (JSON result)."""
    import json

    reason = json.loads(decision)["reason"]
    print(f"not deployed: {reason}")
    return json.dumps({"created": False, "version": None, "path": None,
                       "reason": f"not deployed: {reason}"})
