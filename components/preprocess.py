"""The preprocess step: final train/val/test splits, duplicate report, normalisation record.

Split rules (nothing is ever tuned on test):

* the source names every split (``Usage`` column, split folders): kept as they are;
* train and test but no val: val is a stratified, seeded slice of train;
* no split information at all: a stratified, seeded train/val/test split;
* train and val but no test: kept; evaluation then uses val.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from components.dataset import (
    NO_SPLIT,
    SPLITS,
    TEST,
    TRAIN,
    VAL,
    DataError,
    FaceDataset,
    held_out_split,
    write_json,
)
from components.ingest.ingest import (
    MANIFEST_FILE,
    counts_by_split,
    require_training_examples,
)

REPORT_FILE = "preprocess.json"

# How pixels reach the model; recorded so that training, export and serving agree.
NORMALISATION = {
    "stored": "uint8 grayscale 48x48, values 0-255",
    "grayscale": "Pillow 'L' (ITU-R 601-2 luma) from any colour mode",
    "resize": "bilinear with antialiasing to 48x48 when the source size differs",
    "model_input": "float32 [N,48,48,1], values 0-255",
    "scaling": "x / 255 inside the model (first layer), so serving takes raw 0-255 pixels",
}


def preprocess(dataset_dir: str | Path, output_dir: str | Path, val_fraction: float = 0.1,
               test_fraction: float = 0.1, seed: int = 42,
               drop_duplicates_from_train: bool = False,
               max_train_per_class: int = 0) -> dict[str, Any]:
    """Split the ingested dataset in ``dataset_dir`` and write it to ``output_dir``.

    ``max_train_per_class`` > 0 keeps a seeded sample of at most that many train items per
    class (quick runs); val and test are never sampled.

    Writes ``faces.npz`` (every item with its final split), ``preprocess.json`` (rule used,
    counts, duplicate report, normalisation) and a copy of the ingest manifest. Returns the
    report. Raises :class:`DataError` if a class ends up with no training example.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 0.5:
            raise ValueError(f"{name} must be in (0, 0.5), got {value}")
    if max_train_per_class < 0:
        raise ValueError(f"max_train_per_class must be >= 0, got {max_train_per_class}")
    dataset = FaceDataset.load(dataset_dir)
    rng = np.random.default_rng(seed)
    splits, rule = assign_splits(dataset.labels, dataset.splits, val_fraction, test_fraction, rng)
    dataset = FaceDataset(dataset.images, dataset.labels, splits, dataset.source_ids,
                          dataset.class_names)

    duplicates = find_duplicates(dataset)
    dropped = np.array(duplicates.pop("_train_leaks"), dtype=np.int64)
    if drop_duplicates_from_train and len(dropped):
        keep = np.ones(len(dataset), dtype=bool)
        keep[dropped] = False
        dataset = dataset.subset(keep)
    duplicates["dropped_from_train"] = int(len(dropped)) if drop_duplicates_from_train else 0
    if max_train_per_class:
        dataset = dataset.subset(limit_train_per_class(dataset, max_train_per_class, rng))
        rule += f"; train sampled to at most {max_train_per_class} per class"
    require_training_examples(dataset, where=str(dataset_dir))

    report = {
        "split_rule": rule,
        "seed": seed,
        "max_train_per_class": max_train_per_class,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "items": len(dataset),
        "counts": counts_by_split(dataset),
        "evaluation_split": held_out_split(dataset)[0],
        "duplicates": duplicates,
        "normalisation": NORMALISATION,
    }
    output_dir = Path(output_dir)
    dataset.save(output_dir)
    write_json(output_dir / REPORT_FILE, report)
    manifest = Path(dataset_dir) / MANIFEST_FILE
    if manifest.is_file():
        shutil.copyfile(manifest, output_dir / MANIFEST_FILE)
    return report


def assign_splits(labels: np.ndarray, hints: np.ndarray, val_fraction: float,
                  test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Return the final split of every item and a sentence naming the rule applied."""
    splits = hints.astype("<U8").copy()
    present = set(np.unique(hints).tolist())
    if present == {NO_SPLIT}:
        pool = np.arange(len(labels))
        test = stratified_slice(labels, pool, test_fraction, rng)
        splits[:] = TRAIN
        splits[test] = TEST
        rest = np.flatnonzero(splits == TRAIN)
        splits[stratified_slice(labels, rest, val_fraction / (1 - test_fraction), rng)] = VAL
        return splits, (f"no split in source: stratified train/val/test "
                        f"{1 - val_fraction - test_fraction:.0%}/{val_fraction:.0%}/{test_fraction:.0%}")
    if NO_SPLIT in present:
        n = int((hints == NO_SPLIT).sum())
        raise DataError(f"{n} items have no split while others do ({', '.join(sorted(present - {NO_SPLIT}))}); "
                        f"put every item under a split folder, or none")
    if TRAIN not in present:
        raise DataError(f"no training split in the source (found: {', '.join(sorted(present))})")
    if VAL in present:
        rule = "splits as given by the source"
        if TEST not in present:
            rule += " (no test split: evaluation uses val)"
        return splits, rule
    train = np.flatnonzero(hints == TRAIN)
    splits[stratified_slice(labels, train, val_fraction, rng)] = VAL
    return splits, f"source has no val split: val is a stratified {val_fraction:.0%} slice of train"


def stratified_slice(labels: np.ndarray, pool: np.ndarray, fraction: float,
                     rng: np.random.Generator) -> np.ndarray:
    """Pick ``round(fraction * n)`` items of each class from ``pool`` (indices), at random.

    A class of two or more items gives at least one, so small data still gets a non-empty
    slice, and always keeps at least one in the pool, so a rare class is never moved out
    of training entirely.
    """
    picked = []
    for cls in np.unique(labels[pool]):
        members = pool[labels[pool] == cls]
        take = min(max(int(round(fraction * len(members))), 1), len(members) - 1)
        if take > 0:
            picked.append(rng.choice(members, size=take, replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def limit_train_per_class(dataset: FaceDataset, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Mask keeping every val/test item and at most ``limit`` random train items per class."""
    keep = dataset.splits != TRAIN
    for cls in range(dataset.num_classes):
        members = np.flatnonzero((dataset.splits == TRAIN) & (dataset.labels == cls))
        keep[rng.permutation(members)[:limit]] = True
    return keep


def find_duplicates(dataset: FaceDataset) -> dict[str, Any]:
    """Exact duplicate images (identical pixels), within and across splits.

    The key ``_train_leaks`` holds the indices of train items whose image also appears in
    val or test; the caller drops or keeps them.
    """
    n = len(dataset)
    flat = np.ascontiguousarray(dataset.images.reshape(n, -1))
    keys = flat.view(np.dtype((np.void, flat.shape[1]))).ravel()
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    in_group = np.flatnonzero(counts[inverse] > 1)
    groups: dict[int, list[int]] = {}
    for i in in_group[np.argsort(inverse[in_group], kind="stable")]:
        groups.setdefault(int(inverse[i]), []).append(int(i))

    cross, leaks, conflicts = [], [], 0
    pairs = {f"{a}-{b}": 0 for k, a in enumerate(SPLITS) for b in SPLITS[k:]}
    for members in groups.values():
        splits = dataset.splits[members]
        labels = dataset.labels[members]
        conflicts += int(len(set(labels.tolist())) > 1)
        present = [s for s in SPLITS if (splits == s).any()]
        for k, a in enumerate(present):
            for b in present[k:]:
                if a != b or (splits == a).sum() > 1:
                    pairs[f"{a}-{b}"] += 1
        if len(present) > 1:
            cross.append({
                "items": dataset.source_ids[members].tolist(),
                "splits": splits.tolist(),
                "labels": labels.tolist(),
            })
            if TRAIN in present:
                leaks.extend(m for m, s in zip(members, splits) if s == TRAIN)
    return {
        "groups": len(groups),
        "items_in_groups": int(len(in_group)),
        "groups_by_split_pair": pairs,
        "cross_split_groups": len(cross),
        "train_items_also_in_val_or_test": len(leaks),
        "groups_with_conflicting_labels": conflicts,
        "cross_split": cross,
        "_train_leaks": sorted(leaks),
    }
