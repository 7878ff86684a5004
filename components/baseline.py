"""A classic reference model: HOG features, PCA and a linear SVM (scikit-learn + OpenCV).

Reported next to the network in evaluation, so a gate decision can be read against what a
non-deep model does on the same faces. On all of FER2013 (28,709 train, 3,589 PublicTest)
it reaches about 0.42 accuracy and 0.36 macro F1, fitted in about 15 s on two cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from sklearn.decomposition import PCA
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import LinearSVC

from components.dataset import TRAIN, DataError, FaceDataset, held_out_split
from serving.contract import CLASS_NAMES, IMAGE_SIZE

NAME = "HOG + PCA + linear SVM"
HOG_CELL = 8  # 8x8-pixel cells, 2x2-cell blocks, 9 orientation bins: 900 features at 48x48
HOG_BINS = 9


def hog_features(images: np.ndarray) -> np.ndarray:
    """[N,48,48] (or [N,48,48,1]) pixels, 0-255 -> float32 [N,900] HOG descriptors (OpenCV)."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"images must be [N,{IMAGE_SIZE},{IMAGE_SIZE}], got {images.shape}")
    if images.dtype != np.uint8:
        images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    block, cell = (2 * HOG_CELL,) * 2, (HOG_CELL,) * 2
    hog = cv2.HOGDescriptor((IMAGE_SIZE, IMAGE_SIZE), block, cell, cell, HOG_BINS)
    return np.stack([hog.compute(np.ascontiguousarray(img)).ravel() for img in images])


def fit_baseline(train_images: np.ndarray, train_labels: np.ndarray, seed: int = 0,
                 pca_components: int = 300, c: float = 0.01) -> Pipeline:
    """Fit HOG -> standardise -> PCA -> linear SVM (class-balanced) on raw faces.

    ``pca_components`` is capped at what the data allows. The pipeline's ``predict`` takes
    uint8 faces [N,48,48] like ``fit``.
    """
    if len(train_images) != len(train_labels):
        raise ValueError(f"{len(train_images)} images but {len(train_labels)} labels")
    if len(np.unique(train_labels)) < 2:
        raise ValueError("the baseline needs training faces of at least two classes")
    if pca_components < 1 or c <= 0:
        raise ValueError(f"pca_components must be >= 1 and c > 0, got {pca_components}, {c}")
    n_features = hog_features(train_images[:1]).shape[1]
    pipeline = Pipeline([
        ("hog", FunctionTransformer(hog_features)),
        ("scale", StandardScaler()),
        ("pca", PCA(min(pca_components, len(train_images), n_features), random_state=seed)),
        ("svm", LinearSVC(C=c, class_weight="balanced", random_state=seed)),
    ])
    return pipeline.fit(train_images, np.asarray(train_labels))


def baseline_metrics(pipeline: Pipeline, images: np.ndarray, labels: np.ndarray,
                     class_names: Sequence[str] = CLASS_NAMES) -> dict[str, Any]:
    """Accuracy, macro F1 and per-class F1 of a fitted baseline on faces labelled with ids
    of ``class_names``."""
    ids = list(range(len(class_names)))
    predicted = pipeline.predict(images)
    per_class = f1_score(labels, predicted, labels=ids, average=None, zero_division=0)
    return {
        "name": NAME,
        "items": int(len(labels)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, labels=ids, average="macro",
                                   zero_division=0)),
        "per_class_f1": {class_names[i]: float(f) for i, f in enumerate(per_class)},
    }


def classic_baseline(dataset_dir: str | Path, seed: int = 0) -> dict[str, Any]:
    """Fit on a dataset's train split and score on its test split (val when there is no
    test), the split :func:`components.evaluate.evaluate` uses. For ``evaluate(baseline=)``."""
    data = FaceDataset.load(dataset_dir)
    split, held_out = held_out_split(data)
    train_set = data.split(TRAIN)
    if len(train_set) == 0 or len(held_out) == 0:
        raise DataError(f"{dataset_dir}: the baseline needs train and test (or val) items")
    metrics = baseline_metrics(fit_baseline(train_set.images, train_set.labels, seed),
                               held_out.images, held_out.labels, data.class_names)
    return {**metrics, "split": split}
