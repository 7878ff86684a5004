"""Preprocess: split rules, seeded stratification, duplicate detection and dropping."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.dataset import NO_SPLIT, TEST, TRAIN, VAL, DataError, FaceDataset
from components.ingest import ingest
from components.preprocess import assign_splits, preprocess, stratified_slice
from tests.helpers import make_subset


def synthetic(labels, splits, images=None) -> FaceDataset:
    n = len(labels)
    if images is None:  # distinct images: item i is filled with i (mod 256) plus its index bytes
        images = np.zeros((n, 48, 48), np.uint8)
        for i in range(n):
            images[i].flat[:4] = np.frombuffer(np.uint32(i).tobytes(), np.uint8)
    return FaceDataset(images, np.array(labels, np.int64), np.array(splits, dtype=str),
                       np.array([f"item{i}" for i in range(n)], dtype=str))


def run(ds: FaceDataset, tmp_path, **kw) -> tuple[dict, FaceDataset]:
    ds.save(tmp_path / "in")
    report = preprocess(tmp_path / "in", tmp_path / "out", **kw)
    return report, FaceDataset.load(tmp_path / "out")


def test_train_and_test_get_a_stratified_val_slice_of_train(tmp_path):
    labels = np.repeat(np.arange(7), 20)  # 20 train items per class
    ds = synthetic(np.concatenate([labels, np.arange(7)]), [TRAIN] * 140 + [TEST] * 7)
    report, out = run(ds, tmp_path, val_fraction=0.1, seed=1)
    assert report["split_rule"].startswith("source has no val split")
    assert report["evaluation_split"] == TEST
    # 10% of each class moved from train to val; test untouched.
    assert report["counts"]["val"] == {n: 2 for n in report["counts"]["val"]}
    assert report["counts"]["train"] == {n: 18 for n in report["counts"]["train"]}
    assert out.source_ids[out.splits == TEST].tolist() == [f"item{i}" for i in range(140, 147)]
    assert not set(out.source_ids[out.splits == VAL]) & set(ds.source_ids[ds.splits == TEST])


def test_val_slice_is_seeded(tmp_path):
    ds = synthetic(np.repeat(np.arange(7), 10), [TRAIN] * 70)
    ds = synthetic(np.concatenate([ds.labels, np.arange(7)]), [TRAIN] * 70 + [TEST] * 7)
    val = {}
    for seed in (3, 3, 4):
        _, out = run(ds, tmp_path / str(len(val)), seed=seed)
        val.setdefault(seed, []).append(out.source_ids[out.splits == VAL].tolist())
    assert val[3][0] == val[3][1]
    assert val[3][0] != val[4][0]


def test_usage_splits_are_kept(tmp_path):
    labels = np.tile(np.arange(7), 3)
    splits = [TRAIN] * 7 + [VAL] * 7 + [TEST] * 7
    report, out = run(synthetic(labels, splits), tmp_path)
    assert report["split_rule"] == "splits as given by the source"
    assert out.splits.tolist() == splits


def test_train_and_val_without_test_evaluates_on_val(tmp_path):
    labels = np.tile(np.arange(7), 2)
    report, out = run(synthetic(labels, [TRAIN] * 7 + [VAL] * 7), tmp_path)
    assert "no test split" in report["split_rule"]
    assert report["evaluation_split"] == VAL
    assert TEST not in out.splits


def test_no_split_information_gets_stratified_train_val_test(tmp_path):
    labels = np.repeat(np.arange(7), [30, 10, 30, 50, 30, 30, 30])
    report, out = run(synthetic(labels, [NO_SPLIT] * len(labels)), tmp_path,
                      val_fraction=0.1, test_fraction=0.2, seed=0)
    assert "stratified train/val/test 70%/10%/20%" in report["split_rule"]
    for cls, n in enumerate([30, 10, 30, 50, 30, 30, 30]):
        got = {s: int(((out.labels == cls) & (out.splits == s)).sum()) for s in (TRAIN, VAL, TEST)}
        assert got == {TEST: round(0.2 * n), VAL: round(0.1 * n), TRAIN: n - round(0.3 * n)}


def test_rare_class_always_keeps_a_training_example():
    labels = np.array([0, 0, 0, 1])
    picked = stratified_slice(labels, np.arange(4), 0.5, np.random.default_rng(0))
    assert 3 not in picked  # the only class-1 item stays in the pool
    assert len(picked) == 2


def test_small_classes_still_give_one_item():
    labels = np.repeat(np.arange(7), 3)  # 10% of 3 rounds to 0
    picked = stratified_slice(labels, np.arange(21), 0.1, np.random.default_rng(0))
    assert sorted(labels[picked].tolist()) == list(range(7))


def test_mixed_split_hints_are_an_error():
    with pytest.raises(DataError, match="2 items have no split while others do"):
        assign_splits(np.zeros(4, int), np.array([TRAIN, TRAIN, NO_SPLIT, NO_SPLIT]),
                      0.1, 0.1, np.random.default_rng())


def test_no_training_split_is_an_error():
    with pytest.raises(DataError, match="no training split"):
        assign_splits(np.zeros(2, int), np.array([TEST, VAL]), 0.1, 0.1, np.random.default_rng())


def test_bad_fractions():
    with pytest.raises(ValueError, match="val_fraction"):
        preprocess("unused", "unused", val_fraction=0.7)


def test_duplicates_across_splits_are_reported_and_optionally_dropped(tmp_path):
    labels = np.concatenate([np.repeat(np.arange(7), 3), np.arange(7), np.arange(7)])
    splits = [TRAIN] * 21 + [VAL] * 7 + [TEST] * 7
    ds = synthetic(labels, splits)
    images = ds.images.copy()
    images[0] = images[28]      # train item 0 (angry) == test item 28 (angry)
    images[1] = images[21]      # train item 1 (angry) == val item 21 (angry)
    images[5] = images[4]       # two train items identical (within train), labels 1 and 1
    images[3] = images[22]      # train item 3 (disgust) == val item 22 (disgust)
    images[10] = images[30]     # train item 10 (happy) == test item 30 (fear): conflicting labels
    ds = FaceDataset(images, ds.labels, ds.splits, ds.source_ids)

    report, out = run(ds, tmp_path)
    dup = report["duplicates"]
    assert dup["groups"] == 5
    assert dup["cross_split_groups"] == 4
    assert dup["train_items_also_in_val_or_test"] == 4
    assert dup["groups_with_conflicting_labels"] == 1
    assert dup["groups_by_split_pair"]["train-train"] == 1
    assert dup["groups_by_split_pair"]["train-test"] == 2
    assert dup["groups_by_split_pair"]["train-val"] == 2
    assert {tuple(g["items"]) for g in dup["cross_split"]} == {
        ("item0", "item28"), ("item1", "item21"), ("item3", "item22"), ("item10", "item30")}
    assert dup["dropped_from_train"] == 0 and len(out) == 35

    report, out = run(ds, tmp_path / "drop", drop_duplicates_from_train=True)
    assert report["duplicates"]["dropped_from_train"] == 4
    assert len(out) == 31
    assert not {"item0", "item1", "item3", "item10"} & set(out.source_ids.tolist())
    assert {"item21", "item22", "item28", "item30", "item4", "item5"} <= set(out.source_ids.tolist())


def test_dropping_duplicates_that_empty_a_class_fails_clearly(tmp_path):
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 1])
    ds = synthetic(labels, [TRAIN] * 7 + [TEST])
    images = ds.images.copy()
    images[1] = images[7]  # the only disgust training face is also in test
    ds = FaceDataset(images, ds.labels, ds.splits, ds.source_ids)
    with pytest.raises(DataError, match="no training example for class.*disgust"):
        run(ds, tmp_path, drop_duplicates_from_train=True, val_fraction=0.1)


def test_on_real_subset_records_normalisation_and_copies_manifest(subset, tmp_path):
    ingest(str(subset), tmp_path / "ing", progress=False)
    report = preprocess(tmp_path / "ing", tmp_path / "out")
    assert report["normalisation"]["model_input"] == "float32 [N,48,48,1], values 0-255"
    assert json.loads((tmp_path / "out" / "preprocess.json").read_text()) == report
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["accepted"] == 35
    assert sum(sum(c.values()) for c in report["counts"].values()) == 35


def test_real_face_copied_across_splits_is_found(tmp_path):
    """A real face copied into test under another class: a cross-split, conflicting duplicate."""
    root = make_subset(tmp_path / "src", {"train": 1, "test": 1})
    src = next((root / "train" / "happy").iterdir())
    (root / "test" / "sad" / "copy.jpg").write_bytes(src.read_bytes())
    ingest(str(root), tmp_path / "ing", progress=False)
    dup = preprocess(tmp_path / "ing", tmp_path / "out")["duplicates"]
    assert dup["cross_split_groups"] == 1 and dup["groups_with_conflicting_labels"] == 1


def test_max_train_per_class_samples_train_only(tmp_path):
    labels = np.concatenate([np.repeat(np.arange(7), 10), np.tile(np.arange(7), 2)])
    splits = [TRAIN] * 70 + [VAL] * 7 + [TEST] * 7
    report, out = run(synthetic(labels, splits), tmp_path, max_train_per_class=4, seed=5)
    assert report["counts"]["train"] == {n: 4 for n in report["counts"]["train"]}
    assert report["counts"]["val"] == {n: 1 for n in report["counts"]["val"]}
    assert report["counts"]["test"] == {n: 1 for n in report["counts"]["test"]}
    assert "at most 4 per class" in report["split_rule"]
    _, again = run(synthetic(labels, splits), tmp_path / "again", max_train_per_class=4, seed=5)
    assert again.source_ids.tolist() == out.source_ids.tolist()
