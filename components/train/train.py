"""The training step: one architecture on the train split, selected on val.

Writes to ``output_dir``: ``model.keras``, ``history.json``, ``training_curves.png`` and
``summary.json`` (architecture, epochs, val accuracy and macro F1, training time: that of every
epoch, a resumed run's earlier sessions included). Checkpoints every
epoch into ``checkpoint_dir``; a run killed at any point resumes from its last epoch, with
the weights and optimizer state (learning-rate schedule included) of that epoch.

The recipe is part of :class:`TrainConfig`; its defaults are the seed recipe (Adam at a
fixed rate halved on plateaus, sparse cross-entropy, class weights, no augmentation).
Options: AdamW or SGD with Nesterov momentum, cosine decay with warm-up, weight decay,
label smoothing, class-balanced sampling, augmentation layers in a training-only wrapper
(``model.keras`` holds the plain network), two-phase fine-tuning of a pretrained base,
mixed precision on GPUs and data parallelism over several GPUs, and post-hoc logit
adjustment for macro F1 (:mod:`components.train.calibrate`).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure

from components.class_weights import load_class_weights
from components.dataset import TRAIN, VAL, DataError, FaceDataset, read_json, write_json
from components.labels import NUM_CLASSES
from components.train.augment import (
    AUGMENTATION_PRESETS,
    augmentation_from_preset,
    with_augmentation,
)
from components.train.calibrate import fit_prior_adjustment, val_scores
from components.train.models import INPUT_SHAPE, build_model, freeze_base, unfreeze_base
from components.train.tta import TTA_MODES, view_probabilities

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
SUMMARY_FILE = "summary.json"
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("plateau", "cosine")
CLASS_BALANCE = ("weights", "sampling", "none")
SGD_MOMENTUM = 0.9


@dataclass
class TrainConfig:
    architecture: str = "baseline_cnn"
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 42
    early_stopping_patience: int = 6  # schedule "plateau" only; cosine runs every epoch
    reduce_lr_patience: int = 3  # schedule "plateau" only
    checkpoint_dir: str | None = None  # None: a temporary directory (no resume across runs)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # The recipe. Defaults: the seed recipe.
    optimizer: str = "adam"  # "adam", "adamw" or "sgd" (Nesterov momentum 0.9)
    schedule: str = "plateau"  # "plateau": halve on val-loss plateaus; "cosine": cosine decay
    warmup_epochs: int = 0  # cosine: linear warm-up from 0 over the first epochs
    weight_decay: float | None = None  # decoupled; None: the optimizer's (AdamW 0.004, else 0)
    label_smoothing: float = 0.0  # > 0: one-hot targets and categorical cross-entropy
    class_balance: str = "weights"  # "weights" (the class-weight artifact), "sampling", "none"
    augmentation: str = "none"  # a preset of components.train.augment: none, light, standard
    augmentation_kwargs: dict[str, Any] = field(default_factory=dict)  # build_augmentation args
    freeze_base_epochs: int = 0  # > 0: two-phase fine-tune, the base frozen for these epochs
    finetune_learning_rate: float | None = None  # phase 2 rate; None: learning_rate / 10
    mixed_precision: bool = False  # mixed_float16 when a GPU is present (ignored on CPU)
    # After training: divide the probabilities by the train prior ** tau, tau chosen on val
    # for macro F1 (components.train.calibrate); model.keras then carries that head.
    logit_adjustment: bool = False
    # The test-time augmentation the model will be served with (components.train.tta): the
    # logit adjustment's tau and the summary's val figures are those of the TTA output.
    tta: str = "none"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES),
                              ("class_balance", CLASS_BALANCE),
                              ("augmentation", tuple(AUGMENTATION_PRESETS)),
                              ("tta", TTA_MODES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not 0 <= self.freeze_base_epochs < self.epochs:
            raise ValueError(f"freeze_base_epochs must be in [0, epochs={self.epochs}), got "
                             f"{self.freeze_base_epochs}")
        first_phase = self.freeze_base_epochs or self.epochs
        if not 0 <= self.warmup_epochs < first_phase:
            raise ValueError(f"warmup_epochs must be in [0, {first_phase}) (the first phase's "
                             f"epochs), got {self.warmup_epochs}")
        if self.warmup_epochs and self.schedule != "cosine":
            raise ValueError("warmup_epochs needs schedule='cosine'")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0 or None, got {self.weight_decay}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.finetune_learning_rate is not None and self.finetune_learning_rate <= 0:
            raise ValueError(f"finetune_learning_rate must be > 0 or None, got "
                             f"{self.finetune_learning_rate}")


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 [N,48,48] -> float32 [N,48,48,1], values 0-255 (the serving contract)."""
    return images[..., None].astype(np.float32)


def predict_proba(model: keras.Model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    return model.predict(to_model_input(images), batch_size=batch_size, verbose=0)


def _batches(ds: tf.data.Dataset, batch_size: int, one_hot: bool) -> tf.data.Dataset:
    def cast(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.cast(x, tf.float32), (tf.one_hot(y, NUM_CLASSES) if one_hot else y)

    return ds.batch(batch_size).map(cast, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE)


def _tf_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool,
                seed: int, one_hot: bool = False) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((images[..., None], labels))
    if shuffle:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    return _batches(ds, batch_size, one_hot)


def balanced_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
                     one_hot: bool = False) -> tf.data.Dataset:
    """An endless stream drawing every class present equally often (each class shuffled and
    repeated, then interleaved at random): class balance by sampling, not loss weights."""
    classes = np.unique(labels)
    streams = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        streams.append(tf.data.Dataset.from_tensor_slices((images[idx, ..., None], labels[idx]))
                       .shuffle(len(idx), seed=seed + int(c), reshuffle_each_iteration=True)
                       .repeat())
    ds = tf.data.Dataset.sample_from_datasets(streams, weights=[1.0 / len(classes)] * len(classes),
                                              seed=seed)
    return _batches(ds, batch_size, one_hot)


def distribution_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over all GPUs when there are several; else the default strategy."""
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


@contextlib.contextmanager
def dtype_policy(name: str | None) -> Iterator[None]:
    """Set Keras' global dtype policy for the block (``None``: leave it), then restore it."""
    previous = keras.mixed_precision.global_policy()
    if name:
        keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def learning_rate_schedule(config: TrainConfig, learning_rate: float, steps_per_epoch: int,
                           epochs: int, warmup_epochs: int = 0,
                           ) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """``plateau``: the fixed rate (ReduceLROnPlateau lowers it). ``cosine``: per-step cosine
    decay to 0 over ``epochs``, after a linear warm-up from 0 over ``warmup_epochs``."""
    if config.schedule != "cosine":
        return learning_rate
    warmup = warmup_epochs * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else learning_rate, decay_steps=steps_per_epoch * epochs - warmup,
        warmup_target=learning_rate if warmup else None, warmup_steps=warmup)


def make_optimizer(config: TrainConfig, learning_rate: float, steps_per_epoch: int,
                   epochs: int, warmup_epochs: int = 0) -> keras.optimizers.Optimizer:
    """The configured optimizer for a phase of ``epochs`` epochs, its schedule included."""
    rate = learning_rate_schedule(config, learning_rate, steps_per_epoch, epochs, warmup_epochs)
    wd = config.weight_decay
    if config.optimizer == "adam":
        opt = keras.optimizers.Adam(rate, weight_decay=wd or None)
    elif config.optimizer == "adamw":  # keeps its own default decay unless one is given
        opt = keras.optimizers.AdamW(rate, **({} if wd is None else {"weight_decay": wd}))
    else:
        opt = keras.optimizers.SGD(rate, momentum=SGD_MOMENTUM, nesterov=True,
                                   weight_decay=wd or None)
    if opt.weight_decay:  # decay kernels only, not biases and batch-norm scales/offsets
        opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return opt


def make_loss(config: TrainConfig) -> str | keras.losses.Loss:
    if config.label_smoothing:
        return keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
    return "sparse_categorical_crossentropy"


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs ``[first_epoch, last_epoch)`` with one compiled optimizer."""

    name: str
    first_epoch: int
    last_epoch: int
    learning_rate: float
    base: str | None  # "frozen", "unfrozen", or None (no pretrained base handling)
    warmup_epochs: int = 0

    @property
    def backup(self) -> str:  # "backup" for the last phase: a plain run's checkpoint dir
        return "backup" if self.base in (None, "unfrozen") else f"backup_{self.name}"

    @property
    def done_marker(self) -> str:
        return f"{self.name}_done.npz"


def phases(config: TrainConfig) -> list[Phase]:
    """One phase; or, with ``freeze_base_epochs``, the frozen-base and fine-tune phases."""
    if not config.freeze_base_epochs:
        return [Phase("train", 0, config.epochs, config.learning_rate, None, config.warmup_epochs)]
    k = config.freeze_base_epochs
    return [Phase("frozen", 0, k, config.learning_rate, "frozen", config.warmup_epochs),
            Phase("finetune", k, config.epochs,
                  config.finetune_learning_rate or config.learning_rate / 10, "unfrozen")]


def train(dataset_dir: str | Path, class_weights_path: str | Path | None,
          output_dir: str | Path, config: TrainConfig) -> dict[str, Any]:
    """Train ``config.architecture`` and write the model, history, curves and summary."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    data = FaceDataset.load(dataset_dir)
    train_set, val_set = data.split(TRAIN), data.split(VAL)
    if len(train_set) == 0 or len(val_set) == 0:
        raise DataError(f"{dataset_dir}: training needs train and val items "
                        f"(got {len(train_set)} train, {len(val_set)} val)")
    weights = (load_class_weights(class_weights_path)
               if class_weights_path and config.class_balance == "weights" else None)

    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    strategy = distribution_strategy()
    mixed = config.mixed_precision and bool(tf.config.list_logical_devices("GPU"))
    if config.mixed_precision and not mixed:
        log.warning("mixed_precision needs a GPU; training in float32")
    one_hot = config.label_smoothing > 0
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    if config.class_balance == "sampling":
        train_ds = balanced_dataset(train_set.images, train_set.labels, config.batch_size,
                                    config.seed, one_hot)
    else:
        train_ds = _tf_dataset(train_set.images, train_set.labels, config.batch_size, True,
                               config.seed, one_hot)
    val_ds = _tf_dataset(val_set.images, val_set.labels, 256, False, config.seed, one_hot)

    with dtype_policy("mixed_float16" if mixed else None), strategy.scope():
        model = build_model(config.architecture, input_shape=INPUT_SHAPE,
                            num_classes=NUM_CLASSES, **config.model_kwargs)
        augmentation = augmentation_from_preset(config.augmentation, config.seed,
                                                config.augmentation_kwargs)
        fit_model = with_augmentation(model, augmentation) if augmentation else model
        plan = phases(config)
        if config.freeze_base_epochs:
            freeze_base(model)  # checks there is a base before any training
        print(f"[train] {config.architecture}: {model.count_params():,} parameters, "
              f"{len(train_set):,} train / {len(val_set):,} val faces, up to {config.epochs} "
              f"epochs, {strategy.num_replicas_in_sync} replica(s)"
              f"{', mixed precision' if mixed else ''}", flush=True)

        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(config.checkpoint_dir) if config.checkpoint_dir else Path(tmp)
            ckpt.mkdir(parents=True, exist_ok=True)
            history_csv = ckpt / "history.csv"
            if not any((ckpt / p.backup).exists() or (ckpt / p.done_marker).exists()
                       for p in plan):
                history_csv.unlink(missing_ok=True)  # a fresh start, not a resume
            start = time.perf_counter()
            for phase in plan:
                _run_phase(fit_model, model, phase, phase is plan[-1], config, ckpt, train_ds,
                           val_ds, steps_per_epoch, weights)
            seconds = time.perf_counter() - start
            history = read_history(history_csv)
            for phase in plan:  # the run is complete: a later run starts afresh
                (ckpt / phase.done_marker).unlink(missing_ok=True)

    if mixed:  # save a float32 twin: model.keras serves anywhere, CPUs included
        trained = model.get_weights()
        model = build_model(config.architecture, input_shape=INPUT_SHAPE,
                            num_classes=NUM_CLASSES, **config.model_kwargs)
        model.set_weights(trained)
    val_views = view_probabilities(model, to_model_input(val_set.images), config.tta)
    val_proba, adjustment = val_views.mean(axis=0), None
    if config.logit_adjustment:
        model, val_proba, adjustment = fit_prior_adjustment(model, val_views, val_set.labels,
                                                            train_set.labels)
    model.save(output_dir / MODEL_FILE)
    epochs_run, epoch_seconds = len(history.get("loss", [])), history.get("epoch_seconds", [])
    summary = {
        "architecture": config.architecture,
        "config": asdict(config),
        "parameters": int(model.count_params()),
        "train_items": len(train_set),
        "val_items": len(val_set),
        "epochs_run": epochs_run,
        # every epoch's time, those of earlier sessions included, when a run was resumed
        "train_seconds": round(sum(epoch_seconds) if len(epoch_seconds) == epochs_run
                               else seconds, 2),
        "replicas": int(strategy.num_replicas_in_sync),
        "mixed_precision": mixed,
        **val_scores(val_set.labels, val_proba),
        "val_tta": config.tta,
        "logit_adjustment": adjustment,
    }
    if adjustment:
        print(f"[train] logit adjustment: tau {adjustment['tau']:.2f} (val macro F1 "
              f"{adjustment['val_macro_f1_unadjusted']:.4f} -> {summary['val_macro_f1']:.4f})",
              flush=True)
    write_json(output_dir / "history.json", history)
    plot_history(history, output_dir / "training_curves.png", config.architecture)
    write_json(output_dir / SUMMARY_FILE, summary)
    under = "" if config.tta == "none" else f" (TTA {config.tta})"
    print(f"[train] {config.architecture}: val accuracy{under} {summary['val_accuracy']:.4f}, "
          f"val macro F1 {summary['val_macro_f1']:.4f} after {summary['epochs_run']} epochs "
          f"({summary['train_seconds']:.0f} s)", flush=True)
    return summary


def _run_phase(fit_model: keras.Model, model: keras.Model, phase: Phase, last: bool,
               config: TrainConfig, ckpt: Path, train_ds: tf.data.Dataset,
               val_ds: tf.data.Dataset, steps_per_epoch: int,
               class_weight: dict[int, float] | None) -> None:
    """Compile and fit one phase, resuming from its backup; a finished non-final phase
    leaves a marker with its weights, so a resumed run skips it."""
    if phase.base == "frozen":
        freeze_base(model)
    elif phase.base == "unfrozen":
        unfreeze_base(model)
    marker = ckpt / phase.done_marker
    if not last and marker.is_file():
        with np.load(marker) as saved:
            fit_model.set_weights([saved[f"arr_{i}"] for i in range(len(saved.files))])
        print(f"[train] phase {phase.name} already done; resuming after it", flush=True)
        return
    if phase.base:
        print(f"[train] phase {phase.name}: epochs {phase.first_epoch + 1}-{phase.last_epoch}, "
              f"base {phase.base}, learning rate {phase.learning_rate:g}", flush=True)
    fit_model.compile(
        optimizer=make_optimizer(config, phase.learning_rate, steps_per_epoch,
                                 phase.last_epoch - phase.first_epoch, phase.warmup_epochs),
        loss=make_loss(config), metrics=["accuracy"])
    callbacks = [
        keras.callbacks.BackupAndRestore(str(ckpt / phase.backup)),
        EpochRecord(),  # before CSVLogger, which writes the logs it adds
        keras.callbacks.CSVLogger(str(ckpt / "history.csv"), append=True),
    ]
    if config.schedule == "plateau":  # a cosine schedule runs its whole length: stopping
        # early would cut off the low-rate end, where it gains most
        callbacks += [
            keras.callbacks.EarlyStopping(monitor="val_loss",
                                          patience=config.early_stopping_patience,
                                          restore_best_weights=True),
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                              patience=config.reduce_lr_patience, min_lr=1e-6),
        ]
    fit_model.fit(
        train_ds, validation_data=val_ds, initial_epoch=phase.first_epoch,
        epochs=phase.last_epoch, class_weight=class_weight, callbacks=callbacks, verbose=2,
        steps_per_epoch=steps_per_epoch if config.class_balance == "sampling" else None,
        shuffle=False,  # the tf.data pipeline shuffles
    )
    if not last:
        np.savez(marker, *fit_model.get_weights())


class EpochRecord(keras.callbacks.Callback):
    """Adds each epoch's wall time (``epoch_seconds``) and learning rate to its logs, so the
    history kept across resumes says how long every epoch took and at which rate."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self._start
            logs["learning_rate"] = float(
                keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


def read_history(path: Path) -> dict[str, list[float]]:
    """The per-epoch history CSVLogger wrote, across resumes."""
    if not path.is_file():
        return {}
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return {key: [float(r[key]) for r in rows] for key in (rows[0] if rows else {}) if key != "epoch"}


def plot_history(history: dict[str, list[float]], path: Path, title: str) -> Path:
    fig = Figure(figsize=(10, 4), dpi=100)
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + metric)
            if values:
                ax.plot(range(1, len(values) + 1), values, style, marker="o",
                        label=f"{'val' if prefix else 'train'} {metric}")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(f"Training curves: {title}")
    fig.tight_layout()
    fig.savefig(path)
    return path


def builder_kwargs(model_options: dict[str, Any], architecture: str) -> dict[str, Any]:
    """``architecture``'s builder arguments from a pipeline's ``model_options``.

    KFP carries numbers as doubles (a protobuf ``Struct``), so whole numbers become ints
    again (filters, units, kernel sizes); no builder takes a whole-valued float.
    """
    def restore(value: Any) -> Any:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, list):
            return [restore(v) for v in value]
        return value

    return {k: restore(v) for k, v in model_options.get(architecture, {}).items()}


def checkpoint_dir(root: str, architecture: str, seed: int,
                   model_kwargs: dict[str, Any] | None = None) -> str | None:
    """Where one variant keeps its checkpoints under ``root`` (``""``: nowhere). A variant
    built with other builder arguments gets its own directory, so that a run never resumes
    from weights of another shape."""
    if not root:
        return None
    name = f"{architecture}-seed{seed}"
    if model_kwargs:
        options = json.dumps(model_kwargs, sort_keys=True).encode()
        name += "-" + hashlib.sha256(options).hexdigest()[:8]
    return f"{root.rstrip('/')}/{name}"


def select_best(model_dirs: list[str | Path], output_dir: str | Path) -> dict[str, Any]:
    """Copy the trained model with the best val macro F1 to ``output_dir``; return the leaderboard."""
    if not model_dirs:
        raise ValueError("no trained model to select from")
    board = []
    for d in model_dirs:
        summary = read_json(Path(d) / SUMMARY_FILE)
        board.append({"architecture": summary["architecture"], "dir": str(d),
                      "val_macro_f1": summary["val_macro_f1"],
                      "val_accuracy": summary["val_accuracy"],
                      "epochs_run": summary["epochs_run"]})
    board.sort(key=lambda r: r["val_macro_f1"], reverse=True)
    shutil.copytree(board[0]["dir"], output_dir, dirs_exist_ok=True)
    return {"winner": board[0]["architecture"], "leaderboard": board}
