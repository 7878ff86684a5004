"""Turn raw entries into faces: FER2013 CSV rows and image files.

Each reader yields :class:`Item` for every item it reads, accepted or not; a rejected
item carries a reason code and a message naming the problem. Nothing is dropped silently.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from components.dataset import IMAGE_SIZE, NO_SPLIT, TEST, TRAIN, VAL
from serving.contract import NUM_CLASSES

PIXELS_PER_FACE = IMAGE_SIZE * IMAGE_SIZE
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# FER2013's Usage column.
USAGE_SPLITS = {"training": TRAIN, "publictest": VAL, "privatetest": TEST}
# Folder names and CSV file stems that name a split.
SPLIT_NAMES = {
    "train": TRAIN, "training": TRAIN,
    "val": VAL, "valid": VAL, "validation": VAL, "publictest": VAL,
    "test": TEST, "testing": TEST, "privatetest": TEST,
}


@dataclass
class Item:
    """One item a reader read, from ``source_id`` (a file, or a CSV row): accepted, with its
    face, label and split, or rejected, with a reason code and message."""

    source_id: str
    label: int = -1
    split: str = NO_SPLIT
    face: np.ndarray | None = None  # uint8 [48, 48] when accepted
    reason_code: str = ""  # set when rejected
    reason: str = ""

    @property
    def accepted(self) -> bool:
        """Whether the item was accepted (it has a face)."""
        return self.face is not None


def rejected(source_id: str, code: str, reason: str) -> Item:
    """A rejected item from ``source_id``, with the reason code ``code`` and the message
    ``reason``."""
    return Item(source_id, reason_code=code, reason=reason)


def split_from_name(name: str) -> str:
    """The split a folder name or file stem names (``train``, ``PublicTest``, ... in any case),
    or ``NO_SPLIT`` when it names none."""
    return SPLIT_NAMES.get(name.strip().lower(), NO_SPLIT)


# --------------------------------------------------------------------------- images


class ImageDecodeError(ValueError):
    """An image cannot be decoded; ``code`` is the rejection reason code (``truncated_image`` or
    ``unreadable_image``)."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code


def decode_face(data: bytes) -> np.ndarray:
    """Decode an image of any size and colour mode into a 48×48 uint8 grayscale face.

    Raises :class:`ImageDecodeError` (``truncated_image`` or ``unreadable_image``).
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("L", (IMAGE_SIZE, IMAGE_SIZE))  # JPEG: decode gray at reduced scale
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode.startswith("I;16"):  # 16-bit grayscale: scale, don't clip
                img = Image.fromarray((np.asarray(img, dtype=np.uint32) // 257).astype(np.uint8))
            gray = img.convert("L")
            if gray.size != (IMAGE_SIZE, IMAGE_SIZE):
                gray = gray.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
            return np.asarray(gray, dtype=np.uint8)
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("unreadable_image", "not a readable image file") from exc
    except (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError) as exc:
        text = str(exc) or type(exc).__name__
        if "truncated" in text.lower() or isinstance(exc, EOFError):
            raise ImageDecodeError("truncated_image", f"truncated image file ({text})") from exc
        raise ImageDecodeError("unreadable_image", f"unreadable image file ({text})") from exc


def image_item(entry: str, data: bytes | OSError, label: int, split: str) -> Item:
    """The item for the image file ``entry`` of class ``label`` in ``split``: accepted with its
    decoded face, or rejected when ``data`` is a read error or does not decode."""
    if isinstance(data, OSError):
        return rejected(entry, "read_error", f"cannot read file: {data}")
    try:
        face = decode_face(data)
    except ImageDecodeError as exc:
        return rejected(entry, exc.code, str(exc))
    return Item(entry, label, split, face)


def is_image_entry(entry: str) -> bool:
    """Whether ``entry`` has the suffix of an image format the readers decode (any case)."""
    return PurePosixPath(entry).suffix.lower() in IMAGE_SUFFIXES


# --------------------------------------------------------------------------- CSV


class CsvHeaderError(ValueError):
    """The CSV file as a whole cannot be read (no header, no pixels column)."""


def read_csv_rows(name: str, data: bytes) -> Iterator[Item]:
    """Read a FER2013 CSV: ``emotion,pixels[,Usage]`` (any column order, any case).

    Without a ``Usage`` column the split comes from the file name (``train.csv``,
    ``test.csv``, ...) when it names one. A file without an ``emotion`` column (Kaggle's
    unlabeled ``test.csv``) has every row rejected as unlabeled.
    """
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", errors="replace", newline="")
    reader = csv.reader(text)
    header = next(reader, None)
    if header is None:
        raise CsvHeaderError(f"{name}: empty file, expected a header 'emotion,pixels,Usage'")
    columns = [h.strip().lower() for h in header]
    if "pixels" not in columns:
        raise CsvHeaderError(f"{name}: no 'pixels' column in header {header!r}")
    i_pixels = columns.index("pixels")
    i_label = columns.index("emotion") if "emotion" in columns else None
    i_usage = columns.index("usage") if "usage" in columns else None
    file_split = split_from_name(PurePosixPath(name).stem)

    for row in reader:
        source_id = f"{name}:{reader.line_num}"
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line: not an item
        if len(row) != len(columns):
            yield rejected(source_id, "wrong_field_count",
                           f"expected {len(columns)} fields, got {len(row)}")
            continue
        if i_label is None:
            yield rejected(source_id, "unlabeled", "no 'emotion' column: unlabeled rows cannot be used")
            continue
        yield _csv_item(source_id, row[i_label], row[i_pixels],
                        row[i_usage] if i_usage is not None else None, file_split)


def _csv_item(source_id: str, label_text: str, pixel_text: str, usage: str | None,
              file_split: str) -> Item:
    try:
        label = int(label_text.strip())
    except ValueError:
        return rejected(source_id, "label_not_integer", f"label {label_text!r} is not an integer")
    if not 0 <= label < NUM_CLASSES:
        return rejected(source_id, "label_out_of_range", f"label {label} outside 0-{NUM_CLASSES - 1}")
    if usage is None:
        split = file_split
    else:
        split = USAGE_SPLITS.get(usage.strip().lower(), "")
        if not split:
            return rejected(source_id, "unknown_usage",
                            f"unknown Usage {usage!r} (expected Training, PublicTest or PrivateTest)")
    tokens = pixel_text.split()
    if len(tokens) != PIXELS_PER_FACE:
        return rejected(source_id, "wrong_pixel_count",
                        f"expected {PIXELS_PER_FACE} pixel values, got {len(tokens)}")
    try:
        pixels = np.array(tokens, dtype=np.int32)
    except ValueError:
        bad = next(t for t in tokens if not t.lstrip("+-").isdigit())
        return rejected(source_id, "non_numeric_pixels", f"non-numeric pixel value {bad!r}")
    if pixels.min() < 0 or pixels.max() > 255:
        return rejected(source_id, "pixel_out_of_range", "pixel values must be in 0-255")
    return Item(source_id, label, split, pixels.astype(np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE))
