"""Ingest: every format and source kind, label mapping, rejections, fail-clearly cases."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.dataset import NO_SPLIT, TEST, TRAIN, VAL, DataError, FaceDataset
from components.ingest import ingest
from serving.contract import CLASS_NAMES
from tests.helpers import face_pixels, fer_root, make_subset, real_faces


def read_manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def assert_invariant(manifest: dict) -> None:
    assert manifest["items_read"] == manifest["accepted"] + manifest["rejected"]
    assert manifest["rejected"] == len(manifest["rejected_items"])
    assert sum(manifest["rejection_reasons"].values()) == manifest["rejected"]


def csv_row(label, pixels, usage=None) -> str:
    fields = [str(label), pixels] + ([usage] if usage is not None else [])
    return ",".join(fields)


def pixels_of(path: Path) -> str:
    return " ".join(str(v) for v in face_pixels(path).ravel())


# --------------------------------------------------------------------------- image folders


def test_image_folders_local(subset, tmp_path):
    manifest = ingest(str(subset), tmp_path, progress=False)
    assert manifest["format"] == "images"
    assert (manifest["items_read"], manifest["accepted"], manifest["rejected"]) == (35, 35, 0)
    assert manifest["counts"] == {
        "train": {name: 3 for name in CLASS_NAMES},
        "test": {name: 2 for name in CLASS_NAMES},
    }
    ds = FaceDataset.load(tmp_path)
    assert ds.images.shape == (35, 48, 48) and ds.images.dtype == np.uint8
    # Every label comes from its folder name, and the pixels are the file's pixels.
    for image, label, split, sid in zip(ds.images, ds.labels, ds.splits, ds.source_ids):
        split_dir, class_dir, _ = sid.split("/")
        assert CLASS_NAMES[label] == class_dir
        assert split == {"train": TRAIN, "test": TEST}[split_dir]
        np.testing.assert_array_equal(image, face_pixels(subset / sid))


def test_folder_aliases_map_by_name_not_alphabetically(tmp_path):
    aliases = {"angry": "Anger", "disgust": "DISGUSTED", "fear": "fearful", "happy": "Happiness",
               "sad": "sadness", "surprise": "Surprised", "neutral": "Neutral"}
    root = make_subset(tmp_path / "src", {"train": 1}, class_dir=aliases.get)
    ingest(str(root), tmp_path / "out", progress=False)
    ds = FaceDataset.load(tmp_path / "out")
    for label, sid in zip(ds.labels, ds.source_ids):
        folder = sid.split("/")[1]
        original = next(k for k, v in aliases.items() if v == folder)
        assert CLASS_NAMES[label] == original
    # Alphabetical order of these folder names would have put "Neutral" at 4, "sadness" at 5.
    assert sorted(ds.labels.tolist()) == list(range(7))


def test_unknown_class_folders_are_an_error_listing_them(subset, tmp_path):
    root = tmp_path / "src"
    shutil.copytree(subset, root)
    (root / "train" / "contempt").mkdir()
    shutil.copy(real_faces("train", "angry", 1)[0], root / "train" / "contempt" / "x.jpg")
    (root / "train" / "Smile").mkdir()
    shutil.copy(real_faces("train", "happy", 1)[0], root / "train" / "Smile" / "y.jpg")
    with pytest.raises(DataError, match=r"unknown class folder names.*'Smile'.*'contempt'"):
        ingest(str(root), tmp_path / "out", progress=False)


def test_class_folders_without_split(tmp_path):
    root = tmp_path / "faces"
    for name in CLASS_NAMES:
        (root / name).mkdir(parents=True)
        for f in real_faces("train", name, 2):
            shutil.copy(f, root / name / f.name)
    manifest = ingest(str(root), tmp_path / "out", progress=False)
    assert manifest["counts"] == {"unsplit": {name: 2 for name in CLASS_NAMES}}
    assert set(FaceDataset.load(tmp_path / "out").splits.tolist()) == {NO_SPLIT}


def zip_dir(root: Path, target: Path, top: str = "") -> Path:
    with zipfile.ZipFile(target, "w") as zf:
        for f in sorted(root.rglob("*")):
            if f.is_file():
                zf.write(f, f"{top}{f.relative_to(root).as_posix()}")
        zf.writestr("__MACOSX/._junk", b"resource fork")  # archiver litter is not data
    return target


def test_zip_source_matches_directory(subset, tmp_path):
    archive = zip_dir(subset, tmp_path / "fer.zip", top="fer2013/")
    m_zip = ingest(str(archive), tmp_path / "z", progress=False)
    m_dir = ingest(str(subset), tmp_path / "d", progress=False)
    assert m_zip["counts"] == m_dir["counts"] and m_zip["rejected"] == 0
    a, b = FaceDataset.load(tmp_path / "z"), FaceDataset.load(tmp_path / "d")
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert [s.removeprefix("fer2013/") for s in a.source_ids] == b.source_ids.tolist()


def test_not_a_zip_is_a_clear_error(tmp_path):
    bad = tmp_path / "data.zip"
    bad.write_bytes(b"this is not a zip archive")
    with pytest.raises(DataError, match="not a readable .zip"):
        ingest(str(bad), tmp_path / "out", progress=False)


# --------------------------------------------------------------------------- gs://


def upload_dir(bucket, root: Path, prefix: str) -> None:
    for f in sorted(root.rglob("*")):
        if f.is_file():
            bucket.blob(f"{prefix}{f.relative_to(root).as_posix()}").upload_from_filename(str(f))


def test_gcs_prefix_on_emulator(subset, gcs_bucket, tmp_path):
    upload_dir(gcs_bucket, subset, "data/fer2013/")
    manifest = ingest(f"gs://{gcs_bucket.name}/data/fer2013", tmp_path / "g", progress=False)
    ingest(str(subset), tmp_path / "d", progress=False)
    assert manifest["counts"] == {"train": {n: 3 for n in CLASS_NAMES},
                                  "test": {n: 2 for n in CLASS_NAMES}}
    a, b = FaceDataset.load(tmp_path / "g"), FaceDataset.load(tmp_path / "d")
    np.testing.assert_array_equal(a.images, b.images)
    assert a.source_ids.tolist() == b.source_ids.tolist()


def test_gcs_zip_and_csv_objects_on_emulator(subset, gcs_bucket, tmp_path):
    gcs_bucket.blob("fer.zip").upload_from_filename(str(zip_dir(subset, tmp_path / "fer.zip")))
    assert ingest(f"gs://{gcs_bucket.name}/fer.zip", tmp_path / "z", progress=False)["accepted"] == 35
    gcs_bucket.blob("csv/fer2013_head.csv").upload_from_filename(
        str(fer_root() / "fer2013_head.csv"))
    # A labelled 4-row CSV covers only some classes: read fully, then refused for training.
    with pytest.raises(DataError, match="no training example for class"):
        ingest(f"gs://{gcs_bucket.name}/csv/fer2013_head.csv", tmp_path / "c", progress=False)
    assert read_manifest(tmp_path / "c")["accepted"] == 4


def test_missing_gcs_prefix_is_a_clear_error(gcs_bucket, tmp_path):
    with pytest.raises(DataError, match="source does not exist: gs://.*/nothing-here"):
        ingest(f"gs://{gcs_bucket.name}/nothing-here", tmp_path, progress=False)


# --------------------------------------------------------------------------- CSV


def test_head_csv_four_rows_accepted(tmp_path):
    head = fer_root() / "fer2013_head.csv"
    with pytest.raises(DataError, match="no training example for class"):
        ingest(str(head), tmp_path, progress=False)
    manifest = read_manifest(tmp_path)
    assert (manifest["items_read"], manifest["accepted"], manifest["rejected"]) == (4, 4, 0)
    labels = [int(line.split(",")[0]) for line in head.read_text().splitlines()[1:]]
    expected = {name: labels.count(i) for i, name in enumerate(CLASS_NAMES)}
    assert manifest["counts"] == {"train": expected}


def write_csv_with_usage(path: Path, header="emotion,pixels,Usage") -> dict:
    """A FER2013 CSV from real faces: 2 Training, 1 PublicTest, 1 PrivateTest row per class."""
    rows = [header]
    for i, name in enumerate(CLASS_NAMES):
        faces = real_faces("train", name, 4)
        for f, usage in zip(faces, ["Training", "Training", "PublicTest", "PrivateTest"]):
            rows.append(csv_row(i, pixels_of(f), usage))
    path.write_text("\n".join(rows) + "\n")
    return {"train": 14, "val": 7, "test": 7}


def test_csv_with_usage(tmp_path):
    write_csv_with_usage(tmp_path / "fer2013.csv")
    manifest = ingest(str(tmp_path / "fer2013.csv"), tmp_path / "out", progress=False)
    assert manifest["format"] == "csv" and manifest["rejected"] == 0
    assert manifest["counts"] == {"train": {n: 2 for n in CLASS_NAMES},
                                  "val": {n: 1 for n in CLASS_NAMES},
                                  "test": {n: 1 for n in CLASS_NAMES}}
    ds = FaceDataset.load(tmp_path / "out")
    # Row 2 of the file (line 2) is the first angry Training face, pixel for pixel.
    assert ds.source_ids[0] == "fer2013.csv:2"
    np.testing.assert_array_equal(ds.images[0], face_pixels(real_faces("train", "angry", 1)[0]))


def test_csv_columns_any_order_and_case(tmp_path):
    path = tmp_path / "icml_face_data.csv"
    rows = [" Usage, Emotion, Pixels"]
    for i, name in enumerate(CLASS_NAMES):
        rows.append(f"Training,{i},{pixels_of(real_faces('train', name, 1)[0])}")
    path.write_text("\n".join(rows))
    manifest = ingest(str(path), tmp_path / "out", progress=False)
    assert manifest["counts"] == {"train": {n: 1 for n in CLASS_NAMES}}


def test_csv_without_usage_takes_split_from_file_name(tmp_path):
    src = tmp_path / "kaggle"
    src.mkdir()
    for split, n in (("train", 2), ("test", 1)):
        rows = ["emotion,pixels"]
        for i, name in enumerate(CLASS_NAMES):
            rows += [csv_row(i, pixels_of(f)) for f in real_faces(split, name, n)]
        (src / f"{split}.csv").write_text("\n".join(rows) + "\n")
    manifest = ingest(str(src), tmp_path / "out", progress=False)
    assert manifest["counts"] == {"train": {n: 2 for n in CLASS_NAMES},
                                  "test": {n: 1 for n in CLASS_NAMES}}


def test_unlabeled_csv_rows_are_rejected_not_lost(tmp_path):
    src = tmp_path / "kaggle"
    src.mkdir()
    write_csv_with_usage(src / "train.csv", header="emotion,pixels,Usage")
    face = pixels_of(real_faces("test", "happy", 1)[0])
    (src / "test.csv").write_text(f"pixels\n{face}\n{face}\n")
    manifest = ingest(str(src), tmp_path / "out", progress=False)
    assert manifest["rejection_reasons"] == {"unlabeled": 2}
    assert_invariant(manifest)
    assert manifest["accepted"] == 28


def test_every_csv_rejection_reason(tmp_path):
    good = pixels_of(real_faces("train", "angry", 1)[0])
    path = tmp_path / "bad.csv"
    write_csv_with_usage(path)
    bad_rows = {
        "wrong_pixel_count": csv_row(0, " ".join(good.split()[:-1]), "Training"),
        "non_numeric_pixels": csv_row(0, good.replace(good.split()[5], "abc", 1), "Training"),
        "pixel_out_of_range": csv_row(0, "300 " + " ".join(good.split()[1:]), "Training"),
        "label_out_of_range": csv_row(7, good, "Training"),
        "label_not_integer": csv_row("happy", good, "Training"),
        "unknown_usage": csv_row(0, good, "Validation"),
        "wrong_field_count": f"0,{good}",
    }
    with path.open("a") as f:
        for row in bad_rows.values():
            f.write(row + "\n")
    manifest = ingest(str(path), tmp_path / "out", progress=False)
    assert manifest["accepted"] == 28
    assert manifest["rejection_reasons"] == {code: 1 for code in bad_rows}
    assert_invariant(manifest)
    # Each rejected row is named by file and line, in file order, with a readable reason.
    first_bad_line = 1 + 28 + 1
    assert [r["item"] for r in manifest["rejected_items"]] == [
        f"bad.csv:{first_bad_line + k}" for k in range(len(bad_rows))]
    reasons = {r["code"]: r["reason"] for r in manifest["rejected_items"]}
    assert reasons["wrong_pixel_count"] == "expected 2304 pixel values, got 2303"
    assert reasons["non_numeric_pixels"] == "non-numeric pixel value 'abc'"
    assert reasons["label_out_of_range"] == "label 7 outside 0-6"
    assert "'Validation'" in reasons["unknown_usage"]
    assert reasons["wrong_field_count"] == "expected 3 fields, got 2"


def test_csv_without_pixels_column_is_a_clear_error(tmp_path):
    (tmp_path / "x.csv").write_text("emotion,image\n0,foo.jpg\n")
    with pytest.raises(DataError, match="no 'pixels' column"):
        ingest(str(tmp_path / "x.csv"), tmp_path / "out", progress=False)


# --------------------------------------------------------------------------- bad images


def test_every_image_rejection_reason(subset, tmp_path):
    root = tmp_path / "src"
    shutil.copytree(subset, root)
    jpeg = real_faces("train", "happy", 1)[0].read_bytes()
    (root / "train" / "happy" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "train" / "sad" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage" * 20)
    (root / "train" / "sad" / "empty.png").write_bytes(b"")
    (root / "train" / "notes.txt").write_text("not data")  # ignored, not an item
    shutil.copy(real_faces("train", "fear", 1)[0], root / "loose.jpg")
    manifest = ingest(str(root), tmp_path / "out", progress=False)
    assert_invariant(manifest)
    assert manifest["accepted"] == 35
    assert manifest["rejection_reasons"] == {"unreadable_image": 2, "truncated_image": 1,
                                             "not_in_class_folder": 1}
    by_item = {r["item"]: r["code"] for r in manifest["rejected_items"]}
    assert by_item == {"train/happy/truncated.jpg": "truncated_image",
                       "train/sad/corrupt.jpg": "unreadable_image",
                       "train/sad/empty.png": "unreadable_image",
                       "loose.jpg": "not_in_class_folder"}
    assert manifest["ignored_files"] == ["train/notes.txt"]


def test_any_size_and_colour_mode_becomes_48x48_gray(tmp_path):
    root = tmp_path / "src" / "train"
    face = Image.open(real_faces("train", "angry", 1)[0])
    big_rgb = face.convert("RGB").resize((200, 150))
    images = {
        "angry/rgb.png": big_rgb,
        "angry/rgba.png": big_rgb.convert("RGBA"),
        "angry/palette.gif": big_rgb.convert("P"),
        "angry/cmyk.jpg": big_rgb.convert("CMYK"),
        "angry/gray16.png": Image.fromarray(
            (np.asarray(face, dtype=np.uint16) * 257)).convert("I;16"),
    }
    for rel, img in images.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / rel)
    for name in CLASS_NAMES[1:]:  # one plain face for every other class
        (root / name).mkdir()
        shutil.copy(real_faces("train", name, 1)[0], root / name / "f.jpg")
    manifest = ingest(str(tmp_path / "src"), tmp_path / "out", progress=False)
    assert manifest["rejected"] == 0
    ds = FaceDataset.load(tmp_path / "out")
    assert ds.images.shape[1:] == (48, 48)
    by_id = dict(zip(ds.source_ids.tolist(), ds.images))
    reference = np.asarray(big_rgb.convert("L").resize((48, 48), Image.Resampling.BILINEAR))
    for rel in ("train/angry/rgb.png", "train/angry/rgba.png"):
        np.testing.assert_array_equal(by_id[rel], reference)
    np.testing.assert_array_equal(by_id["train/angry/gray16.png"], np.asarray(face))
    for rel in ("train/angry/palette.gif", "train/angry/cmyk.jpg"):  # lossy conversions
        assert np.abs(by_id[rel].astype(int) - reference).mean() < 12


# --------------------------------------------------------------------------- fail clearly


def test_missing_source(tmp_path):
    with pytest.raises(DataError, match="source does not exist: .*no-such-dir"):
        ingest(str(tmp_path / "no-such-dir"), tmp_path / "out", progress=False)


def test_source_with_no_valid_item(tmp_path):
    root = tmp_path / "src" / "train" / "happy"
    root.mkdir(parents=True)
    (root / "a.jpg").write_bytes(b"nope")
    (root / "b.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"holds no valid item: 2 read, all rejected"):
        ingest(str(tmp_path / "src"), tmp_path / "out", progress=False)
    manifest = read_manifest(tmp_path / "out")  # the user can see why
    assert manifest["rejected"] == 2 and manifest["accepted"] == 0


def test_empty_directory(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(DataError, match="no CSV files found"):
        ingest(str(tmp_path / "src"), tmp_path / "out", progress=False)


def test_class_without_training_example(tmp_path):
    root = make_subset(tmp_path / "src", {"train": 1, "test": 1})
    shutil.rmtree(root / "train" / "disgust")
    with pytest.raises(DataError, match="no training example for class.*disgust"):
        ingest(str(root), tmp_path / "out", progress=False)


def test_dataset_artifact_round_trip(subset, tmp_path):
    ingest(str(subset), tmp_path, progress=False)
    ds = FaceDataset.load(tmp_path)
    with np.load(tmp_path / "faces.npz") as raw:
        assert set(raw.files) == {"images", "labels", "splits", "source_ids", "class_names"}
        assert raw["images"].dtype == np.uint8 and raw["labels"].dtype == np.int64
        assert list(raw["class_names"]) == list(CLASS_NAMES)  # the label set travels along
    assert len(ds.split(TRAIN)) == 21 and len(ds.split(VAL)) == 0
    assert ds.class_names == CLASS_NAMES and ds.split(TRAIN).class_names == CLASS_NAMES


def test_in_memory_bytes_decode_like_files(subset):
    from components.ingest.readers import decode_face

    f = real_faces("test", "surprise", 1)[0]
    np.testing.assert_array_equal(decode_face(f.read_bytes()), face_pixels(f))
    buf = io.BytesIO()
    Image.new("RGB", (10, 10), (255, 0, 0)).save(buf, "PNG")
    assert decode_face(buf.getvalue()).shape == (48, 48)


def test_corrupt_zip_member_is_a_read_error(subset, tmp_path):
    archive = tmp_path / "fer.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(subset.rglob("*.jpg")):
            zf.write(f, f.relative_to(subset).as_posix())
    victim = "train/happy/" + real_faces("train", "happy", 1)[0].name
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo(victim)
        offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 100
    raw = bytearray(archive.read_bytes())
    raw[offset] ^= 0xFF  # flip one byte inside the stored member: its CRC no longer matches
    archive.write_bytes(bytes(raw))
    manifest = ingest(str(archive), tmp_path / "out", progress=False)
    assert_invariant(manifest)
    assert manifest["accepted"] == 34
    (item,) = manifest["rejected_items"]
    assert item["item"] == victim and item["code"] == "read_error"
    assert "CRC" in item["reason"]
