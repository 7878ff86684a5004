"""Distillation's teacher step: a served model's probabilities for every train face, computed
once and kept as an artifact, so that a single-pass student learns from them every epoch
without running the teacher again.

The teacher is a SavedModel version (what TF Serving serves): the champion deployed under
the run's serving base, the model this package ships, or any version directory. Its
test-time-augmentation signature (``serving_tta``) is used when it has one, else
``serving_default`` (which for models exported before TTA had signatures of its own holds
the average already): the student learns what the teacher serves at its best. The teacher
is also scored on val, so the summary and the model card can put teacher and student side
by side. With a cache directory, predictions are kept there under a key of the teacher's
content and the train faces, and a rerun (a resumed pipeline run) reads them back.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from components.dataset import (
    TRAIN,
    VAL,
    DataError,
    FaceDataset,
    read_json,
    to_model_input,
    write_json,
)
from serving.contract import (
    ASSETS_EXTRA,
    METRICS_FILE,
    NUM_CLASSES,
    PROBABILITIES,
    SIGNATURE_PIXELS,
    SIGNATURE_PIXELS_TTA,
    SIGNATURES,
)

PREDICTIONS_FILE = "teacher.npz"
INFO_FILE = "teacher.json"
BATCH = 256
# The pipeline's ``teacher`` parameter: no teacher, the deployed champion, the shipped model,
# or a SavedModel version directory.
NO_TEACHER, CHAMPION, BUNDLED = "", "champion", "bundled"


def resolve_teacher(teacher: str, serving_base: str, model_name: str) -> Path | None:
    """The SavedModel version directory the pipeline's ``teacher`` names (``None`` for no
    teacher): ``"champion"`` is the highest version under ``serving_base/model_name``,
    ``"bundled"`` the package's released model, anything else a version directory."""
    from serving.contract import BUNDLED_MODEL_BASE
    from serving.storage import local_versions

    if teacher == NO_TEACHER:
        return None
    if teacher in (CHAMPION, BUNDLED):
        base = (Path(serving_base) / model_name) if teacher == CHAMPION else BUNDLED_MODEL_BASE
        if "://" in str(serving_base) and teacher == CHAMPION:
            raise DataError("a champion teacher must be on a local or mounted serving base")
        versions = local_versions(base)
        if not versions:
            raise DataError(f"teacher {teacher!r}: no model version under {base}")
        return base / str(versions[-1])
    path = Path(teacher)
    if not (path / "saved_model.pb").is_file():
        raise DataError(f"teacher {teacher!r} is not a SavedModel version directory "
                        f"(no saved_model.pb); give one, 'champion' or 'bundled'")
    return path


def _cache_key(teacher_fingerprint: str, train: FaceDataset) -> str:
    digest = hashlib.sha256(teacher_fingerprint.encode())
    digest.update(train.images.tobytes())
    digest.update("\n".join(map(str, train.source_ids)).encode())
    return digest.hexdigest()[:24]


def _recorded_test_figures(teacher_dir: Path) -> dict[str, float]:
    """The teacher's own held-out figures, as its export recorded them (``{}`` if none)."""
    record = teacher_dir / ASSETS_EXTRA / METRICS_FILE
    if not record.is_file():
        return {}
    metrics = read_json(record)
    return {f"teacher_{metrics.get('split', 'test')}_{k}": metrics[k]
            for k in ("accuracy", "macro_f1") if k in metrics}


def _probabilities(teacher_dir: Path, *splits: np.ndarray) -> tuple[list[np.ndarray], str]:
    """The teacher's probabilities for each array of faces in ``splits`` (the SavedModel
    loaded once), and the signature that gave them."""
    import tensorflow as tf
    from tqdm import tqdm

    loaded = tf.saved_model.load(str(teacher_dir))
    name = SIGNATURE_PIXELS_TTA if SIGNATURE_PIXELS_TTA in loaded.signatures else SIGNATURE_PIXELS
    fn, input_name = loaded.signatures[name], SIGNATURES[name].input.name
    results = []
    for images in splits:
        chunks = []
        for start in tqdm(range(0, len(images), BATCH), desc="[teacher] predicting",
                          unit="batch", mininterval=10):
            x = tf.constant(to_model_input(images[start:start + BATCH]))
            chunks.append(fn(**{input_name: x})[PROBABILITIES].numpy())
        results.append(np.concatenate(chunks).astype(np.float32) if chunks
                       else np.zeros((0, NUM_CLASSES), np.float32))
    return results, name


def teacher_predictions(teacher_dir: str | Path | None, dataset_dir: str | Path,
                        output_dir: str | Path, cache_dir: str = "") -> dict[str, Any]:
    """Write the teacher's probabilities for the train split of ``dataset_dir`` to
    ``output_dir`` (``teacher.npz``: ``probabilities`` [N,7] and ``source_ids`` in the split's
    order) with ``teacher.json`` (which teacher and signature, its val accuracy and macro F1).
    ``teacher_dir`` ``None``: no teacher, ``teacher.json`` says so and nothing else is
    written. ``cache_dir``: reuse predictions made before for the same teacher and faces.
    Returns what ``teacher.json`` holds."""
    from components.train.calibrate import val_scores

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if teacher_dir is None:
        info: dict[str, Any] = {"teacher": None}
        write_json(output_dir / INFO_FILE, info)
        return info
    teacher_dir = Path(teacher_dir)
    data = FaceDataset.load(dataset_dir)
    train, val = data.split(TRAIN), data.split(VAL)
    if len(train) == 0:
        raise DataError(f"{dataset_dir}: no train faces to distil on")
    from components.deploy import fingerprint

    teacher_fingerprint = fingerprint(teacher_dir)
    key = _cache_key(teacher_fingerprint, train)
    cached = Path(cache_dir) / f"teacher-{key}" if cache_dir else None
    if cached is not None and (cached / INFO_FILE).is_file():
        print(f"[teacher] predictions of {teacher_dir} read from the cache {cached}", flush=True)
        shutil.copyfile(cached / PREDICTIONS_FILE, output_dir / PREDICTIONS_FILE)
        info = {**read_json(cached / INFO_FILE), "teacher": str(teacher_dir)}  # where it is now
        write_json(output_dir / INFO_FILE, info)
        return {**info, "cached": True}
    print(f"[teacher] {teacher_dir}: predicting {len(train):,} train faces", flush=True)
    (probabilities, val_proba), signature = _probabilities(teacher_dir, train.images,
                                                           val.images)
    np.savez(output_dir / PREDICTIONS_FILE, **{PROBABILITIES: probabilities},
             source_ids=train.source_ids.astype(str))
    info = {"teacher": str(teacher_dir), "signature": signature, "key": key,
            # how the model card names it: no machine path
            "teacher_name": f"{teacher_dir.parent.name}/{teacher_dir.name}",
            "teacher_fingerprint": teacher_fingerprint[:16],
            "train_items": len(train), "train_agreement": float(
                (probabilities.argmax(1) == train.labels).mean()),
            **({f"teacher_{k}": v for k, v in val_scores(val.labels, val_proba).items()}
               if len(val) else {}),
            **_recorded_test_figures(teacher_dir)}
    write_json(output_dir / INFO_FILE, info)
    if cached is not None:
        cached.mkdir(parents=True, exist_ok=True)
        for name in (PREDICTIONS_FILE, INFO_FILE):
            shutil.copyfile(output_dir / name, cached / name)
    print(f"[teacher] done: agrees with the train labels on "
          f"{info['train_agreement']:.1%}; val accuracy "
          f"{info.get('teacher_val_accuracy', float('nan')):.4f}", flush=True)
    return {**info, "cached": False}


def load_teacher(predictions_dir: str | Path, train: FaceDataset) -> tuple[np.ndarray, dict]:
    """The teacher's probabilities for ``train``'s faces, in its order, and its info, from a
    :func:`teacher_predictions` output; raises :class:`DataError` when they were made for
    other faces."""
    predictions_dir = Path(predictions_dir)
    with np.load(predictions_dir / PREDICTIONS_FILE, allow_pickle=False) as saved:
        probabilities, ids = saved[PROBABILITIES], saved["source_ids"]
    if probabilities.shape[1:] != (train.num_classes,):
        raise DataError(f"{predictions_dir}: the teacher serves {probabilities.shape[1]} "
                        f"classes, this dataset has {train.num_classes} "
                        f"({', '.join(train.class_names)}): a teacher must share the label set")
    if len(probabilities) != len(train) or not np.array_equal(
            ids, train.source_ids.astype(str)):
        raise DataError(f"{predictions_dir}: the teacher's predictions are for other train "
                        f"faces ({len(ids):,}) than this dataset's ({len(train):,})")
    return probabilities, read_json(predictions_dir / INFO_FILE)


def has_teacher(predictions_dir: str | Path) -> bool:
    """Whether a :func:`teacher_predictions` output holds predictions (not "no teacher")."""
    return (Path(predictions_dir) / PREDICTIONS_FILE).is_file()


def distillation_targets(labels: np.ndarray, teacher: np.ndarray, weight: float,
                         temperature: float = 1.0) -> np.ndarray:
    """float32 [N,7] targets: ``weight`` of the teacher's probabilities (softened by
    ``temperature``: ``softmax(log p / T)``) plus ``1 - weight`` of the one-hot labels.
    Cross-entropy against them is the weighted sum of the cross-entropies against each."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"distill_weight must be in [0, 1], got {weight}")
    if not temperature > 0:
        raise ValueError(f"distill_temperature must be > 0, got {temperature}")
    if temperature != 1.0:
        logits = np.log(np.maximum(teacher.astype(np.float64), 1e-12)) / temperature
        logits -= logits.max(axis=1, keepdims=True)
        soft = np.exp(logits)
        teacher = soft / soft.sum(axis=1, keepdims=True)
    one_hot = np.eye(teacher.shape[1], dtype=np.float32)[labels]
    return (weight * teacher + (1.0 - weight) * one_hot).astype(np.float32)
