"""Helpers the tests share: real FER2013 faces from ../shared, small subsets of them, free
ports on 127.0.0.1, a trained model's served val predictions. Fixtures live in conftest.py."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serving.contract import CLASS_NAMES

FER_ROOT = Path(__file__).resolve().parents[2] / "shared" / "fer2013"


def fer_root() -> Path:
    if not (FER_ROOT / "train").is_dir():
        pytest.fail(f"FER2013 not found at {FER_ROOT}: the tests need ../shared/fer2013 "
                    f"beside the repository")
    return FER_ROOT


def real_faces(split: str, class_name: str, n: int) -> list[Path]:
    """The first ``n`` real FER2013 files of a class (sorted, so tests are repeatable)."""
    files = sorted((fer_root() / split / class_name).iterdir())[:n]
    assert len(files) == n
    return files


def make_subset(root: Path, per_class: dict[str, int], class_dir=lambda name: name) -> Path:
    """Copy real faces into ``root/<split>/<class_dir(class)>/`` (a tmp dir, never the repo)."""
    for split, n in per_class.items():
        for name in CLASS_NAMES:
            target = root / split / class_dir(name)
            target.mkdir(parents=True, exist_ok=True)
            for f in real_faces(split, name, n):
                shutil.copy(f, target / f.name)
    return root


def face_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("L"), dtype=np.uint8)


def served_val_predictions(model_dir: Path, dataset_dir: Path, tta: str
                           ) -> tuple[np.ndarray, np.ndarray]:
    """The classes ``model_dir``'s model predicts for the val faces of ``dataset_dir`` when
    served with ``tta``, and the true labels."""
    from components.dataset import VAL, FaceDataset, to_model_input
    from components.train.models import load_trained
    from components.train.tta import with_tta

    model = load_trained(model_dir)
    val = FaceDataset.load(dataset_dir).split(VAL)
    proba = with_tta(model, tta).predict(to_model_input(val.images), verbose=0)
    return proba.argmax(1), val.labels


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Killed(Exception):
    """Raised by :func:`tests.conftest.kill_after_epoch` in place of a killed process."""


def deploy_and_serve(saved_model, root, start, **options):
    """Deploy ``saved_model`` as version 1 of ``fer`` under ``root/serving`` and start a
    server over it with ``start`` (the ``serve`` or ``serve_module`` fixture)."""
    from components.deploy import deploy

    deploy(saved_model, str(root / "serving"), "fer")
    return start(root / "serving" / "fer", **options)
