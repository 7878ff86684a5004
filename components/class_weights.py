"""The class-weighting step: per-class loss weights from the train split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.dataset import TRAIN, DataError, FaceDataset, read_json, write_json
from serving.contract import CLASS_NAMES, NUM_CLASSES

MODES = ("balanced", "none")


def class_weights(dataset_dir: str | Path, output_path: str | Path,
                  mode: str = "balanced") -> dict[int, float]:
    """Write ``{class_id: weight}`` as JSON to ``output_path`` and return it.

    ``balanced``: scikit-learn's ``compute_class_weight("balanced")`` over the train split,
    ``n_train / (n_classes * n_class)``. ``none``: every weight 1.0.
    """
    if mode not in MODES:
        raise ValueError(f"class weight mode must be one of {MODES}, got {mode!r}")
    labels = FaceDataset.load(dataset_dir).split(TRAIN).labels
    if mode == "none":
        weights = np.ones(NUM_CLASSES)
    else:
        missing = sorted(set(range(NUM_CLASSES)) - set(labels.tolist()))
        if missing:
            names = ", ".join(CLASS_NAMES[i] for i in missing)
            raise DataError(f"cannot weight classes: no training example for {names}")
        from sklearn.utils.class_weight import compute_class_weight

        weights = compute_class_weight("balanced", classes=np.arange(NUM_CLASSES), y=labels)
    result = {i: round(float(w), 6) for i, w in enumerate(weights)}
    write_json(output_path, {str(k): v for k, v in result.items()})
    return result


def load_class_weights(path: str | Path) -> dict[int, float]:
    """Read a class-weight artifact back as ``{int id: float}`` (the form Keras takes)."""
    raw = read_json(path)
    try:
        weights = {int(k): float(v) for k, v in raw.items()}
    except (AttributeError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: expected a JSON object of class id -> weight") from exc
    if sorted(weights) != list(range(NUM_CLASSES)):
        raise DataError(f"{path}: expected weights for class ids 0-{NUM_CLASSES - 1}, "
                        f"got {sorted(weights)}")
    return weights
