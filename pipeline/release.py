"""``fer-pipeline release``: make a deployed model version the package's bundled model.

    fer-pipeline release runs/serving/fer/3 --notes release_notes.md

Copies the SavedModel version directory (as the pipeline's deploy step published it, with
its ``assets.extra/``) to ``serving/model/fer/1/`` and writes ``serving/model/MODEL_CARD.md``
from the metrics that travel with the model (``assets.extra/metrics.json``: the evaluation
on the held-out split and the training summary). ``--notes`` appends free text (how the
model was trained, comparisons) to the card. The copy is staged and renamed into place,
and refused when it is larger than the package should carry.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from components.deploy import fingerprint
from serving.contract import (
    ASSETS_EXTRA,
    BUNDLED_MODEL_BASE,
    CLASS_NAMES,
    METRICS_FILE,
    SIGNATURE_IMAGES_TTA,
    SIGNATURE_PIXELS_TTA,
)

MAX_BUNDLE_BYTES = 20 * 1024 * 1024
CARD_FILE = "MODEL_CARD.md"


class ReleaseError(Exception):
    """The version cannot be released (not a SavedModel, no metrics, too large)."""


def directory_bytes(path: Path) -> int:
    """The total size in bytes of the files under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def model_card(metrics: dict[str, Any], source: str, size_bytes: int, notes: str = "") -> str:
    """The model card in Markdown, from the model's ``metrics.json``; ``source`` says which
    model it is without naming a machine's paths (a version and its content fingerprint)."""
    training = metrics.get("training", {})
    config = training.get("config", {})
    names = tuple(metrics.get("class_names") or CLASS_NAMES)  # the label set, in id order
    classes = ("the seven FER2013 classes" if names == CLASS_NAMES
               else f"{len(names)} classes")
    split = metrics.get("split", "test")
    tta = metrics.get("tta", "none")
    if "tta_metrics" in metrics or tta == "none":  # TTA, if any, in signatures of its own
        served = ("one pass of the network in `serving_default` and `predict_images`"
                  + ("" if tta == "none" else f"; test-time augmentation `{tta}` (views "
                     f"averaged) in `{SIGNATURE_PIXELS_TTA}` and `{SIGNATURE_IMAGES_TTA}`"))
    else:  # exported before TTA had signatures of its own
        served = f"test-time augmentation `{tta}` inside every signature"
    lines = [
        "# Model card: the bundled FER2013 emotion model",
        "",
        f"Released from {source} ({size_bytes / 1e6:.1f} MB). Served as model `fer`, "
        "version 1, by `fer-serve` with no arguments; run by `fer-pipeline predict` when no "
        "server is named.",
        "",
        "## Model",
        "",
        f"- Architecture: `{training.get('architecture', 'unknown')}`, "
        f"{training.get('parameters', 0):,} parameters; {served}.",
        "- Input: 48x48 grayscale faces, pixels 0-255 (`serving_default`, input `pixels`), or "
        "encoded images of any size (`predict_images`, input `image_bytes`).",
        f"- Output: `probabilities` over {classes}, `class_id`, `class_name`; "
        "labels " + ", ".join(f"{i} {n}" for i, n in enumerate(names)) + ".",
        "",
        "## Data and recipe",
        "",
        "- Trained on FER2013 `train/` (28,709 faces) less a seeded, stratified 10% validation "
        "slice, used for model selection (and for early stopping and the logit adjustment "
        "where the recipe has them); never on `test/`.",
    ]
    if config:
        keys = ("epochs", "batch_size", "learning_rate", "optimizer", "schedule",
                "warmup_epochs", "label_smoothing", "class_balance", "augmentation", "seed")
        lines.append("- Recipe: " + ", ".join(f"{k} `{config[k]}`" for k in keys if k in config)
                     + f"; {training.get('epochs_run', '?')} epochs run"
                     + (f" in {training['train_seconds'] / 60:.0f} min"
                        if "train_seconds" in training else "") + ".")
        if config.get("model_kwargs"):
            lines.append("- Builder arguments: `" + json.dumps(config["model_kwargs"],
                                                              sort_keys=True) + "`.")
    for i, member in enumerate(training.get("members", [])):
        recipe = member.get("config") or {}
        lines.append(
            f"- Member {i}: `{member['architecture']}`, {member['parameters']:,} parameters"
            + (f", builder arguments `{json.dumps(recipe['model_kwargs'], sort_keys=True)}`"
               if recipe.get("model_kwargs") else "")
            + "".join(f", {k} `{recipe[k]}`" for k in ("optimizer", "schedule",
                                                       "augmentation", "seed") if k in recipe)
            + (f"; {member['epochs_run']} epochs" if member.get("epochs_run") else "")
            + (f" in {member['train_seconds'] / 60:.0f} min" if member.get("train_seconds")
               else "")
            + f"; alone on validation, unadjusted: accuracy {member['val_accuracy']:.4f}, macro F1 "
              f"{member['val_macro_f1']:.4f}.")
    if training.get("members"):
        lines.append("- The served model averages the members' probabilities (their own logit "
                     "adjustments removed) before one adjustment for the ensemble.")
    distilled = training.get("distillation")
    if distilled:
        lines.append(
            f"- Distilled from teacher `{distilled.get('teacher_name', 'unknown')}` (content "
            f"fingerprint `{distilled.get('teacher_fingerprint', '?')}`, its `"
            f"{distilled.get('signature', '?')}` signature): the targets were "
            f"{distilled['weight']:g} of its probabilities and {1 - distilled['weight']:g} of "
            f"the label, on the train split only. Teacher on validation: accuracy "
            f"{distilled.get('teacher_val_accuracy', float('nan')):.4f}, macro F1 "
            f"{distilled.get('teacher_val_macro_f1', float('nan')):.4f}"
            + (f"; on test, as its own export recorded: accuracy "
               f"{distilled['teacher_test_accuracy']:.4f}, macro F1 "
               f"{distilled['teacher_test_macro_f1']:.4f}"
               if "teacher_test_accuracy" in distilled else "") + ".")
    with_tta, val_tta = training.get("val_with_tta"), training.get("val_tta", "none")
    # a summary written before val_with_tta gave its val figures under its recipe's TTA
    older_tta = "val_with_tta" not in training and val_tta != "none"
    if "val_accuracy" in training:
        lines.append(f"- Validation{' (the student)' if distilled else ''}"
                     f"{f' with TTA `{val_tta}`' if older_tta else ''}: accuracy "
                     f"{training['val_accuracy']:.4f}, macro F1 {training['val_macro_f1']:.4f}"
                     + (f" in one pass; with TTA `{val_tta}`: accuracy "
                        f"{with_tta['val_accuracy']:.4f}, macro F1 "
                        f"{with_tta['val_macro_f1']:.4f}" if with_tta else "") + ".")
    adjustment = training.get("logit_adjustment")
    if adjustment:
        chosen_for = adjustment.get("chosen_for")  # older summaries: for the TTA output
        lines.append(f"- Logit adjustment: probabilities divided by the train prior to the "
                     f"power {adjustment['tau']:.2f}, chosen on validation"
                     f"{f' for the {chosen_for}' if chosen_for else ''} (macro F1 "
                     f"{adjustment['val_macro_f1_unadjusted']:.4f} before it).")
    lines += [
        "",
        f"## Metrics on the `{split}` split ({metrics.get('items', 0):,} faces)",
        "",
        f"Accuracy **{metrics['accuracy']:.4f}**, macro F1 **{metrics['macro_f1']:.4f}**, "
        f"weighted F1 {metrics.get('weighted_f1', 0):.4f}"
        + (" (one pass, `serving_default`)." if "tta_metrics" in metrics else "."),
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    ci = metrics.get("intervals")
    if ci:
        lines[-3:-3] = [f"95% intervals ({ci['resamples']:,} bootstrap resamples of the faces): "
                        f"accuracy {ci['accuracy'][0]:.4f} to {ci['accuracy'][1]:.4f}, macro F1 "
                        f"{ci['macro_f1'][0]:.4f} to {ci['macro_f1'][1]:.4f}.", ""]
        lines[-2] = "| class | precision | recall | F1 | F1 95% interval | support |"
        lines[-1] = "|---|---:|---:|---:|---:|---:|"
    for name in names:
        c = metrics["per_class"][name]
        band = (f" {ci['per_class_f1'][name][0]:.3f} to {ci['per_class_f1'][name][1]:.3f} |"
                if ci else "")
        lines.append(f"| {name} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} |"
                     f"{band} {c['support']} |")
    if metrics.get("most_confused"):
        lines += ["", "Most confused (true -> predicted, share of the true class): " + "; ".join(
            f"{m['true']} -> {m['predicted']} {m['share_of_true']:.0%}"
            for m in metrics["most_confused"][:3]) + "."]
    if "tta_metrics" in metrics:
        t = metrics["tta_metrics"]
        lines += ["", f"With test-time augmentation `{tta}` (`{SIGNATURE_PIXELS_TTA}`): accuracy "
                      f"{t['accuracy']:.4f}, macro F1 {t['macro_f1']:.4f}."]
    cal = metrics.get("calibration")
    if cal:
        before = (f"; {cal['before']['ece']:.4f} without the temperature scaling "
                  f"(T = {cal['temperature']:.2f}, fitted on validation) built into the graph"
                  if "before" in cal else "; no temperature scaling")
        lines += ["", f"Calibration: expected calibration error of the served probabilities on "
                      f"`{split}` {cal['ece']:.4f}{before}."]
    if metrics.get("latency"):
        lines += ["", "## Cost", "", "Measured in-process at evaluation, on the machine that "
                  "ran it, after warm-up:", ""]
        lines += [f"- `{name}`: one face p50 {c['p50_ms']:.2f} ms; batch 64 "
                  f"{c['batch64_images_per_s']:,.0f} images/s."
                  for name, c in metrics["latency"].items()]
    baseline = metrics.get("baseline")
    if baseline:
        lines += ["", f"Classic HOG + linear SVM on the same faces: accuracy "
                      f"{baseline['accuracy']:.4f}, macro F1 {baseline['macro_f1']:.4f}."]
    worst = min(names, key=lambda n: metrics["per_class"][n]["f1"])
    lines += [
        "",
        "## Known limits",
        "",
        f"- Weakest class: {worst} (F1 {metrics['per_class'][worst]['f1']:.2f}). FER2013 has "
        "only 436 disgust training faces, and fear, sad and neutral are often confused.",
        "- FER2013 faces are low-resolution, mostly frontal, web-scraped and labelled once; "
        "about 10% of labels are thought to be wrong. Accuracy on other populations, poses, "
        "lighting or cameras is unmeasured.",
        "- The predict CLI finds faces with MTCNN and aligns them by their eyes; faces seen "
        "from the side, and faces smaller than 20 px, are missed.",
        "- Predicted expressions are not felt emotions; do not use the model for decisions "
        "about people.",
    ]
    if notes.strip():
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


def release(version_dir: str | Path, dest_base: str | Path = BUNDLED_MODEL_BASE,
            notes: str = "", max_bytes: int = MAX_BUNDLE_BYTES) -> dict[str, Any]:
    """Copy ``version_dir`` to ``dest_base/1`` and write the model card beside ``dest_base``."""
    version_dir, dest_base = Path(version_dir), Path(dest_base)
    if not (version_dir / "saved_model.pb").is_file():
        raise ReleaseError(f"{version_dir} is not a SavedModel version directory "
                           "(no saved_model.pb)")
    metrics_file = version_dir / ASSETS_EXTRA / METRICS_FILE
    if not metrics_file.is_file():
        raise ReleaseError(f"{metrics_file} is missing: release a version the pipeline exported")
    size = directory_bytes(version_dir)
    if size > max_bytes:
        raise ReleaseError(f"{version_dir} is {size / 1e6:.1f} MB, more than the "
                           f"{max_bytes / 1e6:.0f} MB the package carries")
    metrics = json.loads(metrics_file.read_text())
    missing = [k for k in ("accuracy", "macro_f1", "per_class") if k not in metrics]
    if missing:
        raise ReleaseError(f"{metrics_file} has no {', '.join(missing)}: release a version "
                           "exported with its evaluation metrics")
    target = dest_base / "1"
    staging = dest_base / f".1.tmp-{uuid.uuid4().hex[:8]}"
    dest_base.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copytree(version_dir, staging)
        old = dest_base / f".1.old-{uuid.uuid4().hex[:8]}"
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    card = dest_base.parent / CARD_FILE
    source = (f"deployed version {version_dir.name}, content fingerprint "
              f"`{fingerprint(version_dir)[:16]}`")
    card.write_text(model_card(metrics, source, size, notes))
    return {"path": str(target), "card": str(card), "bytes": size,
            "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
