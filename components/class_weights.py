"""The class-weighting step: per-class loss weights from the train split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.dataset import TRAIN, DataError, FaceDataset, read_json, write_json

MODES = ("balanced", "none")


def class_weights(dataset_dir: str | Path, output_path: str | Path,
                  mode: str = "balanced") -> dict[int, float]:
    """Write ``{class_id: weight}`` as JSON to ``output_path`` and return it.

    ``balanced``: scikit-learn's ``compute_class_weight("balanced")`` over the train split,
    ``n_train / (n_classes * n_class)``. ``none``: every weight 1.0.
    """
    if mode not in MODES:
        raise ValueError(f"class weight mode must be one of {MODES}, got {mode!r}")
    dataset = FaceDataset.load(dataset_dir)
    labels, k = dataset.split(TRAIN).labels, dataset.num_classes
    if mode == "none":
        weights = np.ones(k)
    else:
        missing = sorted(set(range(k)) - set(labels.tolist()))
        if missing:
            names = ", ".join(dataset.class_names[i] for i in missing)
            raise DataError(f"cannot weight classes: no training example for {names}")
        from sklearn.utils.class_weight import compute_class_weight

        weights = compute_class_weight("balanced", classes=np.arange(k), y=labels)
    result = {i: round(float(w), 6) for i, w in enumerate(weights)}
    write_json(output_path, {str(k): v for k, v in result.items()})
    return result


def load_class_weights(path: str | Path, num_classes: int | None = None) -> dict[int, float]:
    """Read a class-weight artifact back as ``{int id: float}`` (the form Keras takes): one
    weight for each class id 0..K-1 (K = ``num_classes`` when given)."""
    raw = read_json(path)
    try:
        weights = {int(k): float(v) for k, v in raw.items()}
    except (AttributeError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: expected a JSON object of class id -> weight") from exc
    k = len(weights) if num_classes is None else num_classes
    if sorted(weights) != list(range(k)):
        raise DataError(f"{path}: expected weights for class ids 0-{k - 1}, "
                        f"got {sorted(weights)}")
    return weights
