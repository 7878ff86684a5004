"""The training step: one architecture on the train split, early-stopped on val.

Writes to ``output_dir``: ``model.keras``, ``history.json``, ``training_curves.png`` and
``summary.json`` (architecture, epochs, val accuracy and macro F1, time). Checkpoints every
epoch into ``checkpoint_dir``; a run killed at any point resumes from its last epoch.
"""

from __future__ import annotations

import csv
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure
from sklearn.metrics import accuracy_score, f1_score

from components.class_weights import load_class_weights
from components.dataset import TRAIN, VAL, DataError, FaceDataset, read_json, write_json
from components.labels import NUM_CLASSES
from components.train.models import INPUT_SHAPE, build_model

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
SUMMARY_FILE = "summary.json"


@dataclass
class TrainConfig:
    architecture: str = "baseline_cnn"
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 42
    early_stopping_patience: int = 6
    reduce_lr_patience: int = 3
    checkpoint_dir: str | None = None  # None: a temporary directory (no resume across runs)
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 [N,48,48] -> float32 [N,48,48,1], values 0-255 (the serving contract)."""
    return images[..., None].astype(np.float32)


def predict_proba(model: keras.Model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    return model.predict(to_model_input(images), batch_size=batch_size, verbose=0)


def _tf_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool,
                seed: int) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((images[..., None], labels))
    if shuffle:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y),
                                  num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


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
    weights = load_class_weights(class_weights_path) if class_weights_path else None

    keras.utils.set_random_seed(config.seed)
    tf.config.experimental.enable_op_determinism()
    model = build_model(config.architecture, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES,
                        **config.model_kwargs)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    print(f"[train] {config.architecture}: {model.count_params():,} parameters, "
          f"{len(train_set):,} train / {len(val_set):,} val faces, up to {config.epochs} epochs",
          flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(config.checkpoint_dir) if config.checkpoint_dir else Path(tmp)
        ckpt.mkdir(parents=True, exist_ok=True)
        history_csv = ckpt / "history.csv"
        if not (ckpt / "backup").exists():
            history_csv.unlink(missing_ok=True)  # a fresh start, not a resume
        callbacks = [
            keras.callbacks.BackupAndRestore(str(ckpt / "backup")),
            keras.callbacks.CSVLogger(str(history_csv), append=True),
            keras.callbacks.EarlyStopping(monitor="val_loss",
                                          patience=config.early_stopping_patience,
                                          restore_best_weights=True),
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                              patience=config.reduce_lr_patience, min_lr=1e-6),
        ]
        start = time.perf_counter()
        model.fit(
            _tf_dataset(train_set.images, train_set.labels, config.batch_size, True, config.seed),
            validation_data=_tf_dataset(val_set.images, val_set.labels, 256, False, config.seed),
            epochs=config.epochs, class_weight=weights, callbacks=callbacks, verbose=2,
            shuffle=False,  # the tf.data pipeline shuffles
        )
        seconds = time.perf_counter() - start
        history = read_history(history_csv)

    model.save(output_dir / MODEL_FILE)
    val_pred = predict_proba(model, val_set.images).argmax(axis=1)
    summary = {
        "architecture": config.architecture,
        "config": asdict(config),
        "parameters": int(model.count_params()),
        "train_items": len(train_set),
        "val_items": len(val_set),
        "epochs_run": len(history.get("loss", [])),
        "train_seconds": round(seconds, 2),
        "val_accuracy": round(float(accuracy_score(val_set.labels, val_pred)), 6),
        "val_macro_f1": round(float(f1_score(val_set.labels, val_pred, average="macro",
                                             labels=list(range(NUM_CLASSES)), zero_division=0)), 6),
    }
    write_json(output_dir / "history.json", history)
    plot_history(history, output_dir / "training_curves.png", config.architecture)
    write_json(output_dir / SUMMARY_FILE, summary)
    print(f"[train] {config.architecture}: val accuracy {summary['val_accuracy']:.4f}, "
          f"val macro F1 {summary['val_macro_f1']:.4f} after {summary['epochs_run']} epochs "
          f"({seconds:.0f} s)", flush=True)
    return summary


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
