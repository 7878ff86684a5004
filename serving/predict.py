"""``fer-pipeline predict``: emotions of the faces in ordinary photos.

Faces are found with OpenCV's bundled Haar cascade, cropped, made 48x48 gray, and sent in
one batched request to a served model (REST or gRPC), or, when no server is named, run in
this process through a SavedModel: ``--model-dir``, by default the released model bundled
with the package. ``--no-detect`` treats each image as a face crop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from serving.client import ClientError, GrpcClient, LocalClient, RestClient
from serving.contract import BUNDLED_MODEL_BASE, CLASS_NAMES, IMAGE_SIZE, PROBABILITIES
from serving.model_store import local_versions

CASCADE = "haarcascade_frontalface_default.xml"


@dataclass
class ImageResult:
    """What prediction found in one image: its face boxes and their class probabilities, or an
    ``error`` (unreadable image, no face found)."""

    path: str
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # x, y, w, h
    probabilities: list[list[float]] = field(default_factory=list)
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data: the image, per face its box, top emotion, confidence
        and probability by class name, and the error (``None`` when there is none)."""
        faces = []
        for box, probs in zip(self.boxes, self.probabilities):
            top = int(np.argmax(probs))
            faces.append({"box": {"x": box[0], "y": box[1], "w": box[2], "h": box[3]},
                          "emotion": CLASS_NAMES[top], "confidence": round(probs[top], 4),
                          PROBABILITIES: {n: round(p, 4) for n, p in zip(CLASS_NAMES, probs)}})
        return {"image": self.path, "faces": faces, "error": self.error or None}


def read_image(path: str | Path) -> np.ndarray:
    """BGR image, or ValueError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    image = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"not a readable image: {path}")
    return image


def detect_faces(image: np.ndarray, min_size: int = 30) -> list[tuple[int, int, int, int]]:
    """Face boxes ``(x, y, w, h)``, left to right, from OpenCV's frontal-face Haar cascade."""
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)
    if cascade.empty():
        raise RuntimeError(f"cannot load OpenCV's {CASCADE}")
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    boxes = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                     minSize=(min_size, min_size))
    return sorted((tuple(int(v) for v in b) for b in boxes), key=lambda b: (b[0], b[1]))


def crop_face(image: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
    """48x48 uint8 gray face from a BGR image (the whole image when ``box`` is None)."""
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if box is not None:
        x, y, w, h = box
        gray = gray[y:y + h, x:x + w]
    return cv2.resize(gray, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)


def predict_paths(paths: list[str], client: RestClient | GrpcClient | LocalClient,
                  detect: bool = True, tta: bool = False) -> list[ImageResult]:
    """One batched request for every face of every readable image in ``paths`` (through the
    TTA signature with ``tta``); returns one result per path."""
    results, faces, owners = [], [], []
    for path in paths:
        result = ImageResult(str(path))
        results.append(result)
        try:
            image = read_image(path)
        except ValueError as exc:
            result.error = str(exc)
            continue
        h, w = image.shape[:2]
        boxes = detect_faces(image) if detect else [(0, 0, w, h)]
        if not boxes:
            result.error = "no face found (use --no-detect if the image is already a face crop)"
        for box in boxes:
            result.boxes.append(box)
            faces.append(crop_face(image, box if detect else None))
            owners.append(result)
    if faces:
        probs = client.predict_pixels(np.stack(faces), tta=tta)[PROBABILITIES]
        for owner, p in zip(owners, probs):
            owner.probabilities.append([float(v) for v in p])
    return results


def annotate(path: str | Path, result: ImageResult, output: Path) -> Path:
    """Draw each face's box and top emotion of ``result`` on the image at ``path``; write it to
    ``output`` and return ``output``."""
    image = read_image(path)
    scale = max(image.shape[:2]) / 600
    for box, probs in zip(result.boxes, result.probabilities):
        x, y, w, h = box
        top = int(np.argmax(probs))
        cv2.rectangle(image, (x, y), (x + w, y + h), (0, 200, 0), max(2, int(2 * scale)))
        label = f"{CLASS_NAMES[top]} {probs[top]:.0%}"
        cv2.putText(image, label, (x, max(y - 6, 12)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5 * max(scale, 1), (0, 200, 0), max(1, int(scale)), cv2.LINE_AA)
    output.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(output), image):
        raise OSError(f"cannot write {output}")
    return output


def format_results(results: list[ImageResult]) -> str:
    """The results as the CLI's text: per image its faces, each with its box, top emotion and
    every class's probability, or the image's error."""
    lines = []
    header = "  " + " ".join(f"{n[:8]:>8}" for n in CLASS_NAMES)
    for r in results:
        if r.error and not r.boxes:
            lines.append(f"{r.path}: {r.error}")
            continue
        lines.append(f"{r.path}: {len(r.boxes)} face{'s' if len(r.boxes) != 1 else ''}")
        lines.append(f"  {'box (x,y,w,h)':<22}{'emotion':<10}" + header)
        for box, probs in zip(r.boxes, r.probabilities):
            top = CLASS_NAMES[int(np.argmax(probs))]
            lines.append(f"  {box!s:<22}{top:<10}  " + " ".join(f"{p:>8.3f}" for p in probs))
    return "\n".join(lines)


def local_client(model_dir: str | Path = BUNDLED_MODEL_BASE) -> LocalClient:
    """A SavedModel version directory, or the highest version under a model base."""
    path = Path(model_dir)
    if path == BUNDLED_MODEL_BASE and not path.is_dir():
        raise ClientError("no model is bundled with this package: give --url or --grpc (a "
                          "server) or --model-dir (a SavedModel)")
    if not path.is_dir():
        raise ClientError(f"model directory {path} does not exist")
    if (path / "saved_model.pb").is_file():
        return LocalClient(path)
    versions = local_versions(path)
    if not versions:
        raise ClientError(f"no numbered model version under {path}")
    return LocalClient(path / str(versions[-1]))


def run_predict(paths: list[str], url: str | None, grpc_target: str | None, model_name: str,
                detect: bool, as_json: bool, annotate_dir: str | None,
                timeout: float = 30.0,
                model_dir: str | Path = BUNDLED_MODEL_BASE,
                tta: bool = False) -> tuple[str, int]:
    """The CLI's work: returns what to print and the exit code (1 if any image failed).

    ``grpc_target`` or ``url`` name a server; with neither, ``model_dir`` runs in-process.
    ``tta``: ask for the model's TTA signature (more accurate, one pass per view).
    """
    if grpc_target:
        client = GrpcClient(grpc_target, model_name, timeout=timeout)
    elif url:
        client = RestClient(url, model_name, timeout=timeout)
    else:
        client = local_client(model_dir)
    results = predict_paths(paths, client, detect, tta)
    if annotate_dir:
        for r in results:
            if r.boxes:
                annotate(r.path, r, Path(annotate_dir) / f"{Path(r.path).stem}.annotated.png")
    text = (json.dumps([r.as_dict() for r in results], indent=2) if as_json
            else format_results(results))
    return text, int(any(r.error for r in results))
