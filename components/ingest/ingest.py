"""The ingest step: any FER2013 source -> a validated dataset artifact and its manifest."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from tqdm import tqdm

from components.dataset import (
    IMAGE_SIZE,
    NO_SPLIT,
    SPLITS,
    TRAIN,
    DataError,
    FaceDataset,
    write_json,
)
from components.ingest.readers import (
    CsvHeaderError,
    Item,
    image_item,
    is_image_entry,
    read_csv_rows,
    rejected,
    split_from_name,
)
from components.ingest.sources import Source, open_source
from components.labels import LabelMapError, LabelSet, label_set

log = logging.getLogger(__name__)

FORMATS = ("auto", "images", "csv")
MANIFEST_FILE = "manifest.json"


def ingest(source: str, output_dir: str | Path, data_format: str = "auto",
           progress: bool = True, label_map: str = "") -> dict[str, Any]:
    """Read every item of ``source`` into ``output_dir`` (``faces.npz`` + ``manifest.json``).

    ``source``: a directory, a ``.zip``, a ``.csv`` file, or ``gs://bucket/prefix`` (any of
    those in a bucket). ``data_format``: ``images`` (``[<split>/]<class>/<file>``), ``csv``
    (FER2013 ``emotion,pixels[,Usage]``) or ``auto`` (images if there are any, else CSV).
    ``label_map``: the label set and how folders (or a CSV's FER2013 ids) map onto it
    (:func:`components.labels.label_set`; FER2013's seven by default).

    Bad items are rejected with a reason and reported; the run goes on. Raises
    :class:`DataError` when the source does not exist, holds no valid item, or a class has
    no training example. Returns the manifest.
    """
    if data_format not in FORMATS:
        raise ValueError(f"data_format must be one of {FORMATS}, got {data_format!r}")
    with open_source(source) as src:
        fmt, entries, ignored = _select_entries(src, data_format)
        folders = {PurePosixPath(e).parts[-2] for e in entries
                   if fmt == "images" and len(PurePosixPath(e).parts) >= 2}
        try:
            labels = label_set(label_map, folders)
        except LabelMapError as exc:
            raise DataError(str(exc)) from exc
        if fmt == "images":
            items = _read_image_folders(src, entries, labels)
        else:
            items = _relabel(_read_csv_files(src, entries), labels)
        dataset, rejects = _collect(items, labels, total=len(entries) if fmt == "images"
                                    else None, progress=progress, desc=f"ingest {source}")

    manifest = build_manifest(source, fmt, dataset, rejects, ignored, labels)
    # The manifest is written first: when the data is unusable it tells the user why.
    write_json(Path(output_dir) / MANIFEST_FILE, manifest)
    if len(dataset) == 0:
        reasons = ", ".join(f"{k} ({v})" for k, v in manifest["rejection_reasons"].items())
        raise DataError(f"{source} holds no valid item: {manifest['items_read']} read, "
                        f"all rejected ({reasons or 'no items found'})")
    require_training_examples(dataset, where=source)
    dataset.save(output_dir)
    return manifest


# --------------------------------------------------------------------------- reading


def _select_entries(src: Source, data_format: str) -> tuple[str, list[str], list[str]]:
    images = [e for e in src.entries if is_image_entry(e)]
    csvs = [e for e in src.entries if PurePosixPath(e).suffix.lower() == ".csv"]
    if data_format == "auto":
        data_format = "images" if images else "csv"
    chosen = images if data_format == "images" else csvs
    if not chosen:
        raise DataError(f"no {'image files' if data_format == 'images' else 'CSV files'} "
                        f"found in {src.uri} ({len(src.entries)} files looked at)")
    chosen_set = set(chosen)
    ignored = [e for e in src.entries if e not in chosen_set]
    return data_format, chosen, ignored


def _read_image_folders(src: Source, entries: list[str], labels: LabelSet) -> Iterator[Item]:
    """``[.../][<split>/]<class>/<file>``: the class folder names the label (a class of
    ``labels``), its parent the split."""
    plan: list[tuple[str, int, str]] = []
    unknown: Counter[str] = Counter()
    loose: list[str] = []
    for entry in entries:
        parts = PurePosixPath(entry).parts
        if len(parts) < 2:
            loose.append(entry)
            continue
        label = labels.class_id(parts[-2])
        if label is None:
            unknown[parts[-2]] += 1
            continue
        split = split_from_name(parts[-3]) if len(parts) >= 3 else NO_SPLIT
        plan.append((entry, label, split))
    if unknown:
        listed = ", ".join(f"{name!r} ({n} files)" for name, n in sorted(unknown.items()))
        if labels.is_fer2013:
            raise DataError(f"unknown class folder names in {src.uri}: {listed}. Class folders "
                            f"must be named after FER2013 classes: {', '.join(labels.classes)} "
                            f"(or their ids 0-6, or aliases like 'anger', 'happiness', "
                            f"'surprised'), or a label map must name them (label_map)")
        raise DataError(f"class folders in {src.uri} that the label set ({labels.describe()}) "
                        f"has no class for: {listed}")
    for entry in loose:
        yield rejected(entry, "not_in_class_folder", "image is not inside a class folder")
    labels = {entry: (label, split) for entry, label, split in plan}
    for entry, data in src.read_many(e for e, _, _ in plan):
        label, split = labels[entry]
        yield image_item(entry, data, label, split)


def _read_csv_files(src: Source, entries: list[str]) -> Iterator[Item]:
    for entry in entries:
        try:
            yield from read_csv_rows(entry, src.read(entry))
        except CsvHeaderError as exc:
            raise DataError(f"{src.uri}: {exc}") from exc
        except OSError as exc:
            raise DataError(f"cannot read {entry} in {src.uri}: {exc}") from exc


def _relabel(items: Iterable[Item], labels: LabelSet) -> Iterator[Item]:
    """CSV items carry FER2013 ids: their class in ``labels``, or rejected when it has none."""
    for item in items:
        if not item.accepted or labels.is_fer2013:
            yield item
            continue
        label = labels.class_id(str(item.label))
        if label is None:
            yield rejected(item.source_id, "label_not_in_label_set",
                           f"FER2013 class {item.label} has no class in the label set")
        else:
            item.label = label
            yield item


def _collect(items: Iterable[Item], labels: LabelSet, total: int | None, progress: bool,
             desc: str) -> tuple[FaceDataset, list[Item]]:
    faces: list[np.ndarray] = []
    ids_of: list[int] = []
    splits: list[str] = []
    ids: list[str] = []
    rejects: list[Item] = []
    for item in tqdm(items, total=total, desc=desc, unit="img", disable=not progress,
                     mininterval=1.0):
        if item.accepted:
            faces.append(item.face)
            ids_of.append(item.label)
            splits.append(item.split)
            ids.append(item.source_id)
        else:
            rejects.append(item)
    images = np.stack(faces) if faces else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    dataset = FaceDataset(images, np.array(ids_of, dtype=np.int64), np.array(splits, dtype=str),
                          np.array(ids, dtype=str), labels.classes)
    return dataset, rejects


# --------------------------------------------------------------------------- reporting


def class_counts(labels: np.ndarray, class_names: Sequence[str]) -> dict[str, int]:
    """Faces per class name among ``labels`` (ids of ``class_names``), every class listed,
    zeros included."""
    counts = np.bincount(labels, minlength=len(class_names))
    return {name: int(n) for name, n in zip(class_names, counts)}


def counts_by_split(dataset: FaceDataset) -> dict[str, dict[str, int]]:
    """``{split: {class_name: n}}`` for the splits present, ``unsplit`` for items without one."""
    out = {}
    for split in (*SPLITS, NO_SPLIT):
        mask = dataset.splits == split
        if mask.any():
            out[split or "unsplit"] = class_counts(dataset.labels[mask], dataset.class_names)
    return out


def build_manifest(source: str, fmt: str, dataset: FaceDataset, rejects: list[Item],
                   ignored: list[str], labels: LabelSet | None = None) -> dict[str, Any]:
    """The ingest manifest: the source and its format, the label set (and which folders were
    merged into which class), how many items were read, accepted and rejected, the class
    counts per split, every rejection with its reason, and the ``ignored`` files."""
    labels = labels or LabelSet()
    return {
        "source": source,
        "format": fmt,
        "class_names": list(labels.classes),
        "label_map": dict(labels.mapping),
        "items_read": len(dataset) + len(rejects),
        "accepted": len(dataset),
        "rejected": len(rejects),
        "counts": counts_by_split(dataset),
        "rejection_reasons": dict(Counter(r.reason_code for r in rejects).most_common()),
        "rejected_items": [{"item": r.source_id, "code": r.reason_code, "reason": r.reason}
                           for r in rejects],
        "ignored_files": ignored,
    }


def require_training_examples(dataset: FaceDataset, where: str) -> None:
    """Fail when a class has no training example (in the train split, if there is one)."""
    train = dataset.labels[dataset.splits == TRAIN] if (dataset.splits == TRAIN).any() else dataset.labels
    names = dataset.class_names
    missing = [names[i] for i, n in enumerate(np.bincount(train, minlength=len(names)))
               if n == 0]
    if missing:
        raise DataError(f"{where}: no training example for class(es) {', '.join(missing)}; "
                        f"every class of the label set needs at least one")
