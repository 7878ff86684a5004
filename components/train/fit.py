"""Fitting: optimizers, schedules and losses from the recipe, and resumable phases.

A run is one phase, or two for a two-phase fine-tune of a pretrained base (frozen, then
unfrozen at a lower rate). Every epoch is checkpointed (``BackupAndRestore``); a run killed
at any point resumes from its last epoch with the weights and optimizer state (learning-rate
schedule included) of that epoch. A finished non-final phase leaves a marker with its
weights, so a resumed run skips it. Each epoch's seconds and learning rate go into the
history CSV kept beside the checkpoints, across resumes.
"""

from __future__ import annotations

import contextlib
import csv
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np

from components.train.models import freeze_base, unfreeze_base
from components.train.recipe import TrainConfig

if TYPE_CHECKING:
    import tensorflow as tf

SGD_MOMENTUM = 0.9
HISTORY_CSV = "history.csv"
#: /proc/cpuinfo flags of CPUs that compute in bfloat16 natively (Intel AMX, AVX-512 BF16).
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags as Linux lists them; empty where there is no such file."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def mixed_policy(gpus: int, flags: frozenset[str]) -> str | None:
    """The mixed-precision policy for a machine with ``gpus`` GPUs and these CPU flags:
    ``mixed_float16`` on GPUs; ``mixed_bfloat16`` on a CPU that computes in bfloat16
    natively (on a 2-core Xeon with AMX, oneDNN trains the bundled network at 1.7x its
    float32 speed); ``None`` (float32) on any other CPU, where bfloat16 is emulated and
    slower."""
    if gpus:
        return "mixed_float16"
    return "mixed_bfloat16" if flags & BF16_CPU_FLAGS else None


def tensorflow_mixed_policy() -> str | None:
    """:func:`mixed_policy` for the GPUs TensorFlow sees and this machine's CPU."""
    import tensorflow as tf  # here only, as in distribution_strategy

    return mixed_policy(len(tf.config.list_logical_devices("GPU")), cpu_flags())


def distribution_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over all GPUs when there are several; else the default strategy."""
    import tensorflow as tf  # here only: the rest of this module runs on any Keras backend

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
    """Sparse cross-entropy; with label smoothing or a teacher, categorical cross-entropy on
    one-hot or soft targets (see :func:`components.train.data.uses_one_hot`)."""
    if config.label_smoothing or config.teacher_predictions is not None:
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
    def backup(self) -> str:
        """The checkpoint directory's name: ``backup`` for a plain run's one phase."""
        return "backup" if self.base in (None, "unfrozen") else f"backup_{self.name}"

    @property
    def done_marker(self) -> str:
        """The file a finished non-final phase leaves, with its weights."""
        return f"{self.name}_done.npz"


def phases(config: TrainConfig) -> list[Phase]:
    """One phase; or, with ``freeze_base_epochs``, the frozen-base and fine-tune phases."""
    if not config.freeze_base_epochs:
        return [Phase("train", 0, config.epochs, config.learning_rate, None, config.warmup_epochs)]
    k = config.freeze_base_epochs
    return [Phase("frozen", 0, k, config.learning_rate, "frozen", config.warmup_epochs),
            Phase("finetune", k, config.epochs,
                  config.finetune_learning_rate or config.learning_rate / 10, "unfrozen")]


def fit_phases(fit_model: keras.Model, model: keras.Model, config: TrainConfig, ckpt: Path,
               train_ds: tf.data.Dataset, val_ds: tf.data.Dataset, steps_per_epoch: int,
               class_weight: dict[int, float] | None) -> dict[str, list[float]]:
    """Fit ``fit_model`` (``model``, perhaps wrapped in augmentation) through the recipe's
    phases with checkpoints in ``ckpt``, resuming what a killed run left there. Returns the
    per-epoch history of the whole run, earlier sessions included."""
    plan = phases(config)
    history_csv = ckpt / HISTORY_CSV
    if not any((ckpt / p.backup).exists() or (ckpt / p.done_marker).exists() for p in plan):
        history_csv.unlink(missing_ok=True)  # a fresh start, not a resume
    for phase in plan:
        _run_phase(fit_model, model, phase, phase is plan[-1], config, ckpt, train_ds, val_ds,
                   steps_per_epoch, class_weight)
    for phase in plan:  # the run is complete: a later run starts afresh
        (ckpt / phase.done_marker).unlink(missing_ok=True)
    return read_history(history_csv)


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
        keras.callbacks.CSVLogger(str(ckpt / HISTORY_CSV), append=True),
        ProgressLines(config.architecture, steps_per_epoch),
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
        epochs=phase.last_epoch, class_weight=class_weight, callbacks=callbacks, verbose=0,
        steps_per_epoch=steps_per_epoch if config.class_balance == "sampling" else None,
        shuffle=False,  # the tf.data pipeline shuffles
    )
    if not last:
        np.savez(marker, *fit_model.get_weights())


class EpochRecord(keras.callbacks.Callback):
    """Adds each epoch's wall time (``epoch_seconds``) and learning rate to its logs, so the
    history kept across resumes says how long every epoch took and at which rate."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Start the epoch's clock."""
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """Add ``epoch_seconds`` and ``learning_rate`` to the epoch's ``logs``."""
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self._start
            logs["learning_rate"] = float(
                keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class ProgressLines(keras.callbacks.Callback):
    """Training progress as lines a pipeline's console can show: every ``every`` seconds a
    ``[progress]`` line (epoch, batches, loss, accuracy, ETA), which a terminal draws as one
    bar that updates in place, and at each epoch's end one ``[train]`` line with its figures.
    Full lines, not carriage returns: a step's output reaches the console a line at a time.
    """

    def __init__(self, name: str, steps: int, every: float = 2.0):
        super().__init__()
        self.name, self.steps, self.every = name, steps, every

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Start the epoch's clock."""
        self._epoch, self._start = epoch, time.perf_counter()
        self._shown = self._start

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        """A ``[progress]`` line, at most every ``every`` seconds."""
        now = time.perf_counter()
        if now - self._shown < self.every:
            return
        self._shown = now
        done = batch + 1
        eta = (now - self._start) / done * max(self.steps - done, 0)
        width = 24
        filled = int(width * done / max(self.steps, 1))
        logs = logs or {}
        print(f"[progress] {self.name} epoch {self._epoch + 1}/{self.params.get('epochs')} "
              f"[{'#' * filled}{'.' * (width - filled)}] {done}/{self.steps} "
              f"loss {logs.get('loss', float('nan')):.4f} "
              f"accuracy {logs.get('accuracy', float('nan')):.4f} ETA {eta:.0f} s", flush=True)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """One ``[train]`` line: the epoch's figures and time."""
        logs = logs or {}
        figures = "  ".join(f"{k} {logs[k]:.4f}" for k in
                            ("loss", "accuracy", "val_loss", "val_accuracy") if k in logs)
        print(f"[train] {self.name} epoch {epoch + 1}/{self.params.get('epochs')}: {figures} "
              f"({time.perf_counter() - self._start:.0f} s)", flush=True)


def read_history(path: Path) -> dict[str, list[float]]:
    """The per-epoch history CSVLogger wrote at ``path``, across resumes: metric name ->
    one value per epoch (``{}`` when there is none)."""
    if not path.is_file():
        return {}
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return {key: [float(r[key]) for r in rows] for key in (rows[0] if rows else {}) if key != "epoch"}
