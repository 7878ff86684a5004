"""The dataset artifact shared by the data steps and training.

A dataset is a directory holding ``faces.npz`` (uint8 images N×48×48, int labels,
split name and source id per item, and the label set's class names in id order) and JSON
reports written by the step that made it
(``manifest.json`` from ingest, ``preprocess.json`` from preprocess).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.contract import CLASS_NAMES, IMAGE_SIZE, check_class_names

TRAIN, VAL, TEST = "train", "val", "test"
SPLITS: tuple[str, ...] = (TRAIN, VAL, TEST)
NO_SPLIT = ""  # the source said nothing about the split
FACES_FILE = "faces.npz"


class DataError(Exception):
    """The data cannot be used; the message names the problem and what to do."""


@dataclass
class FaceDataset:
    """Faces with their labels, splits and source ids, one row per item: what a dataset's
    ``faces.npz`` holds. The arrays are checked to agree on construction."""

    images: np.ndarray  # uint8 [N, 48, 48]
    labels: np.ndarray  # int64 [N], class ids 0..K-1 (FER2013's 0..6 by default)
    splits: np.ndarray  # str [N], one of SPLITS or NO_SPLIT
    source_ids: np.ndarray  # str [N], where each item came from (file or CSV row)
    class_names: tuple[str, ...] = field(default=CLASS_NAMES)  # the label set, in id order

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.dtype != np.uint8 or self.images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(
                f"images must be uint8 [N,{IMAGE_SIZE},{IMAGE_SIZE}], got {self.images.dtype} "
                f"{self.images.shape}"
            )
        for name in ("labels", "splits", "source_ids"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} items, images has {n}")
        self.class_names = check_class_names(self.class_names)
        if n and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise ValueError(f"labels must be in 0..{self.num_classes - 1}")

    @property
    def num_classes(self) -> int:
        """The size of the label set."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, mask_or_index: np.ndarray) -> FaceDataset:
        """The items ``mask_or_index`` (a boolean mask or an index array) selects, as a new
        dataset."""
        return FaceDataset(
            self.images[mask_or_index],
            self.labels[mask_or_index],
            self.splits[mask_or_index],
            self.source_ids[mask_or_index],
            self.class_names,
        )

    def split(self, name: str) -> FaceDataset:
        """The items of the split ``name`` (``train``, ``val``, ``test``, or ``""`` for those
        without one)."""
        return self.subset(self.splits == name)

    def save(self, directory: str | Path) -> Path:
        """Write the dataset as ``faces.npz`` into ``directory`` (created if missing); return the
        file's path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / FACES_FILE
        np.savez(
            path,
            images=self.images,
            labels=self.labels.astype(np.int64),
            splits=self.splits.astype(str),
            source_ids=self.source_ids.astype(str),
            class_names=np.array(self.class_names, dtype=str),
        )
        return path

    @classmethod
    def load(cls, directory: str | Path) -> FaceDataset:
        """The dataset saved in ``directory``; raises :class:`DataError` when its ``faces.npz``
        is missing."""
        path = Path(directory) / FACES_FILE
        if not path.is_file():
            raise DataError(f"no dataset at {directory}: {FACES_FILE} is missing")
        with np.load(path, allow_pickle=False) as data:
            names = (tuple(str(n) for n in data["class_names"]) if "class_names" in data
                     else CLASS_NAMES)  # written before label sets: FER2013's
            return cls(data["images"], data["labels"], data["splits"], data["source_ids"],
                       names)


def held_out_split(data: FaceDataset) -> tuple[str, FaceDataset]:
    """The split a model is judged on: test, or val when the dataset has no test items.
    Returns its name and its items."""
    split = TEST if (data.splits == TEST).any() else VAL
    return split, data.split(split)


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 faces [N,48,48] -> float32 [N,48,48,1], values 0-255: the ``pixels`` input of
    every model and of the serving contract."""
    return images[..., None].astype(np.float32)


def write_json(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` to ``path`` as indented JSON, creating its parent directory; return
    ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def read_json(path: str | Path) -> Any:
    """The JSON value in ``path``; raises :class:`DataError` when the file is missing or not
    valid JSON."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing file: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from exc
