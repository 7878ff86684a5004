"""The training step: one architecture on the train split, scored on val.

:func:`train` loads the splits, fits the network with the recipe
(:class:`~components.train.recipe.TrainConfig`; phases, checkpoints and resume in
:mod:`components.train.fit`), and finalises: the served form's val figures (its test-time
augmentation, and the logit adjustment when asked), the model and the reports. It writes to
``output_dir``: ``model.keras``, ``history.json``, ``training_curves.png`` and
``summary.json`` (architecture, recipe, epochs, val accuracy and macro F1, training time:
that of every epoch, a resumed run's earlier sessions included).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from components.class_weights import load_class_weights
from components.dataset import (
    TRAIN,
    VAL,
    DataError,
    FaceDataset,
    to_model_input,
    write_json,
)
from components.distill import distillation_targets, load_teacher
from components.report import plot_history
from components.train.augment import augmentation_from_preset, with_augmentation
from components.train.calibrate import (
    fit_one_pass_adjustment,
    fit_temperature_scaling,
    scaled_probabilities,
    val_scores,
)
from components.train.data import training_batches
from components.train.fit import (
    distribution_strategy,
    dtype_policy,
    fit_phases,
    tensorflow_mixed_policy,
)
from components.train.models import build_model, freeze_base, load_initial_weights
from components.train.recipe import TrainConfig, config_record

TEACHER = "teacher"  # init_from: start from the distillation teacher's weights
from components.train.tta import view_probabilities
from serving.contract import FACE_SHAPE, MODEL_FILE, SUMMARY_FILE

log = logging.getLogger(__name__)


def predict_proba(model: keras.Model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """``model``'s probabilities [N,7] for uint8 faces [N,48,48]."""
    return model.predict(to_model_input(images), batch_size=batch_size, verbose=0)


@dataclass
class Fitted:
    """What fitting gives the finalising: the plain network and how its training went."""

    model: keras.Model
    history: dict[str, list[float]]
    seconds: float
    replicas: int
    mixed_precision: str | None  # the policy trained in (mixed_float16, mixed_bfloat16)


def train(dataset_dir: str | Path, class_weights_path: str | Path | None,
          output_dir: str | Path, config: TrainConfig) -> dict[str, Any]:
    """Train ``config.architecture`` on the train split of the dataset at ``dataset_dir``
    (class weights from ``class_weights_path`` when the recipe uses them) and write the
    model, history, curves and summary to ``output_dir``. Returns the summary."""
    data = FaceDataset.load(dataset_dir)
    train_set, val_set = data.split(TRAIN), data.split(VAL)
    if len(train_set) == 0 or len(val_set) == 0:
        raise DataError(f"{dataset_dir}: training needs train and val items "
                        f"(got {len(train_set)} train, {len(val_set)} val)")
    weights = (load_class_weights(class_weights_path, data.num_classes)
               if class_weights_path and config.class_balance == "weights" else None)
    targets, distillation = None, None
    if config.teacher_predictions is not None:
        teacher, info = load_teacher(config.teacher_predictions, train_set)
        targets = distillation_targets(train_set.labels, teacher, config.distill_weight,
                                       config.distill_temperature)
        distillation = {**{k: v for k, v in info.items() if k not in ("key", "teacher")},
                        "weight": config.distill_weight,
                        "temperature": config.distill_temperature,
                        "initialised_from_teacher": config.init_from == TEACHER}
        if config.init_from == TEACHER:
            config = replace(config, init_from=info["teacher"])
        print(f"[train] distilling from {info['teacher_name']} ({info['signature']}), weight "
              f"{config.distill_weight:g} on its probabilities", flush=True)
    elif config.init_from == TEACHER:
        raise DataError("init_from 'teacher' needs a teacher (the pipeline's teacher parameter)")
    fitted = fit(config, train_set, val_set, weights, targets)
    return finalise(config, fitted, train_set, val_set, Path(output_dir), distillation)


def _build(config: TrainConfig, num_classes: int) -> keras.Model:
    return build_model(config.architecture, input_shape=FACE_SHAPE, num_classes=num_classes,
                       **config.model_kwargs)


def fit(config: TrainConfig, train_set: FaceDataset, val_set: FaceDataset,
        class_weight: dict[int, float] | None, targets: np.ndarray | None = None) -> Fitted:
    """Build the network and fit it with the recipe, seeded and deterministic, resuming
    from ``config.checkpoint_dir`` when a killed run left checkpoints there. ``targets``:
    soft train targets (distillation) instead of the labels."""
    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    strategy = distribution_strategy()
    policy = tensorflow_mixed_policy() if config.mixed_precision else None
    if config.mixed_precision and not policy:
        log.warning("mixed_precision needs a GPU or a CPU with bfloat16 (AMX, AVX-512 BF16); "
                    "training in float32")
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    train_ds, val_ds = training_batches(config, train_set, val_set, targets)

    with dtype_policy(policy), strategy.scope():
        model = _build(config, train_set.num_classes)
        if config.init_from:
            count = load_initial_weights(model, config.init_from)
            print(f"[train] {count} weights from {config.init_from}", flush=True)
        augmentation = augmentation_from_preset(config.augmentation, config.seed,
                                                config.augmentation_kwargs)
        fit_model = with_augmentation(model, augmentation) if augmentation else model
        if config.freeze_base_epochs:
            freeze_base(model)  # checks there is a base before any training
        print(f"[train] {config.architecture}: {model.count_params():,} parameters, "
              f"{len(train_set):,} train / {len(val_set):,} val faces, up to {config.epochs} "
              f"epochs, {strategy.num_replicas_in_sync} replica(s)"
              f"{f', {policy}' if policy else ''}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(config.checkpoint_dir or tmp)
            ckpt.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            history = fit_phases(fit_model, model, config, ckpt, train_ds, val_ds,
                                 steps_per_epoch, class_weight)
            seconds = time.perf_counter() - start

    if policy:  # a float32 twin: model.keras serves anywhere, in full precision
        trained = model.get_weights()
        model = _build(config, train_set.num_classes)
        model.set_weights(trained)
    return Fitted(model, history, seconds, int(strategy.num_replicas_in_sync), policy)


def finalise(config: TrainConfig, fitted: Fitted, train_set: FaceDataset,
             val_set: FaceDataset, output_dir: Path,
             distillation: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score the served form on val (its TTA; the logit adjustment fitted there when the
    recipe asks for it), save the model, history, curves and summary in ``output_dir``
    (``distillation``: the teacher the model learnt from, recorded in it); return the
    summary."""
    output_dir.mkdir(parents=True, exist_ok=True)
    model, history = fitted.model, fitted.history
    # [V,N,K]; view 0 is the one pass serving_default serves (and the gate judges)
    val_views, adjustment = view_probabilities(model, to_model_input(val_set.images),
                                               config.tta), None
    if config.logit_adjustment:
        model, val_views, adjustment = fit_one_pass_adjustment(model, val_views, val_set.labels,
                                                               train_set.labels)
    val_proba = val_views.mean(axis=0)  # what the recipe's TTA serves
    calibration = None
    if config.temperature_scaling:
        # Fitted on the one pass, adjusted. A TTA graph then averages the calibrated views,
        # and val is scored on that.
        model, calibration = fit_temperature_scaling(model, val_views[0], val_set.labels)
        if calibration["applied"]:
            val_proba = scaled_probabilities(val_views, calibration["temperature"]).mean(axis=0)
    model.save(output_dir / MODEL_FILE)
    epochs_run, epoch_seconds = len(history.get("loss", [])), history.get("epoch_seconds", [])
    summary = {
        "architecture": config.architecture,
        "config": config_record(config),
        "parameters": int(model.count_params()),
        "train_items": len(train_set),
        "val_items": len(val_set),
        "epochs_run": epochs_run,
        # every epoch's time, those of earlier sessions included, when a run was resumed
        "train_seconds": round(sum(epoch_seconds) if len(epoch_seconds) == epochs_run
                               else fitted.seconds, 2),
        "replicas": fitted.replicas,
        "mixed_precision": fitted.mixed_precision,
        # what serving_default serves, which selection and the gate judge (calibration
        # never changes the top class); the recipe's TTA, a choice at serving time, beside it
        **val_scores(val_set.labels, val_views[0]),
        "val_tta": config.tta,
        "val_with_tta": (val_scores(val_set.labels, val_proba) if config.tta != "none"
                         else None),
        "logit_adjustment": adjustment,
        "temperature_scaling": calibration,
        "distillation": distillation,
    }
    if adjustment:
        print(f"[train] logit adjustment: tau {adjustment['tau']:.2f} (one-pass val macro F1 "
              f"{adjustment['val_macro_f1_unadjusted']:.4f} -> {summary['val_macro_f1']:.4f})",
              flush=True)
    if calibration:
        print(f"[train] temperature scaling: T {calibration['fitted_temperature']:.2f}, val ECE "
              f"{calibration['val_ece_before']:.4f} -> {calibration['val_ece_after']:.4f}"
              f"{'' if calibration['applied'] else ' (not applied: it did not lower it)'}",
              flush=True)
    write_json(output_dir / "history.json", history)
    plot_history(history, output_dir / "training_curves.png", config.architecture)
    write_json(output_dir / SUMMARY_FILE, summary)
    tta = summary["val_with_tta"]
    tta = ("" if tta is None else f"; with TTA {config.tta}: val accuracy "
           f"{tta['val_accuracy']:.4f}, val macro F1 {tta['val_macro_f1']:.4f}")
    print(f"[train] {config.architecture}: val accuracy {summary['val_accuracy']:.4f}, "
          f"val macro F1 {summary['val_macro_f1']:.4f} in one pass{tta}, after "
          f"{summary['epochs_run']} epochs ({summary['train_seconds']:.0f} s)", flush=True)
    return summary
