"""``fer-pipeline predict``: emotions of the faces in ordinary photos.

Inputs are image files, folders (searched recursively for image files) and globs. Faces are
found by MTCNN (or OpenCV's Haar cascade, ``detector="haar"``; :mod:`serving.faces`), aligned
by their landmarks, made 48x48 gray, and sent in batched
requests to a served model (REST or gRPC), or, when no server is named, run in this process
through a SavedModel: ``--model-dir``, by default the released model bundled with the
package. An image that is already a face crop (small and about square, like FER2013's 48x48
faces) is classified whole, and the result says so; ``--no-detect`` treats every image so.
Only the in-process and gRPC paths load TensorFlow.
"""

from __future__ import annotations

import glob
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from serving.client import ClientError, GrpcClient, LocalClient, RestClient
from serving.contract import (
    BUNDLED_MODEL_BASE,
    CLASS_NAMES,
    HEATMAPS,
    PROBABILITIES,
)
from serving.faces import DEFAULT_DETECTOR, Face, face_crop, get_detector
from serving.limits import Limits
from serving.storage import local_versions

#: The file types a folder or glob contributes (what OpenCV reads).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                            ".pgm", ".ppm"})
#: An image no larger than this on its longer side, and about square, is a face crop: too
#: small for the detector (whose smallest face is 30 px) and framed like FER2013's faces.
FACE_CROP_MAX_SIDE = 128
WHOLE_IMAGE_NOTE = "classified as a face crop (the whole image)"


@dataclass
class ImageResult:
    """What prediction found in one image: its face boxes and their class probabilities, or an
    ``error`` (unreadable image, no face found)."""

    path: str
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # x, y, w, h
    probabilities: list[list[float]] = field(default_factory=list)
    error: str = ""
    note: str = ""  # how the faces were found, when it is not by detection
    crops: list[np.ndarray] = field(default_factory=list, repr=False)  # 48x48 gray, as sent
    explanations: list[str] = field(default_factory=list)  # heatmap overlays written
    classes: tuple[str, ...] = CLASS_NAMES  # the model's label set, in id order

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data: the image, per face its box, top emotion, confidence
        and probability by class name, and the error (``None`` when there is none)."""
        faces = []
        for box, probs in zip(self.boxes, self.probabilities):
            top = int(np.argmax(probs))
            faces.append({"box": {"x": box[0], "y": box[1], "w": box[2], "h": box[3]},
                          "emotion": self.classes[top], "confidence": round(probs[top], 4),
                          PROBABILITIES: {n: round(p, 4) for n, p in zip(self.classes, probs)}})
        for face, explanation in zip(faces, self.explanations):
            face["explanation"] = explanation
        return {"image": self.path, "faces": faces, "note": self.note or None,
                "error": self.error or None}


def expand_inputs(inputs: list[str]) -> list[tuple[str, str]]:
    """``(path, error)`` for every image the inputs name, in order: a file as given, a folder's
    image files recursively (sorted), a glob's matches; an input that names nothing gives
    one entry with its error."""
    expanded: list[tuple[str, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            expanded += [(str(p), "") for p in files]
            if not files:
                expanded.append((item, "no image files in this folder"))
        elif path.exists() or not glob.has_magic(item):
            expanded.append((item, ""))
        else:
            matches = sorted(m for m in glob.glob(item, recursive=True)
                             if Path(m).is_file() and Path(m).suffix.lower() in IMAGE_SUFFIXES)
            expanded += [(m, "") for m in matches]
            if not matches:
                expanded.append((item, "no image file matches this pattern"))
    return expanded


def is_face_crop(image: np.ndarray) -> bool:
    """Whether an image is framed like a face crop: small, and about square."""
    h, w = image.shape[:2]
    return max(h, w) <= FACE_CROP_MAX_SIDE and 0.75 <= w / h <= 1.33


def read_image(path: str | Path) -> np.ndarray:
    """BGR image, or ValueError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    image = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"not a readable image: {path}")
    return image


def predict_paths(paths: list[str], client: RestClient | GrpcClient | LocalClient,
                  detect: bool = True, tta: bool = False,
                  batch: int = Limits().max_batch_size,
                  detector: str = DEFAULT_DETECTOR) -> list[ImageResult]:
    """Every face of every image the inputs name (files, folders, globs), found by
    ``detector`` (:data:`serving.faces.DETECTORS`), in requests of at most ``batch`` faces
    (through the TTA signature with ``tta``); one result per image."""
    results, faces, owners = [], [], []
    classes = client.class_names()
    for path, error in expand_inputs([str(p) for p in paths]):
        result = ImageResult(path, error=error, classes=classes)
        results.append(result)
        if error:
            continue
        try:
            image = read_image(path)
        except ValueError as exc:
            result.error = str(exc)
            continue
        h, w = image.shape[:2]
        crop = not detect or is_face_crop(image)  # MTCNN (TensorFlow) loads only when needed
        found = [Face((0, 0, w, h))] if crop else get_detector(detector).detect(image)
        if crop and detect:
            result.note = WHOLE_IMAGE_NOTE
        if not found:
            result.error = "no face found (use --no-detect to classify the whole image)"
        for face in found:
            result.boxes.append(face.box)
            result.crops.append(face_crop(image, None if crop else face))
            faces.append(result.crops[-1])
            owners.append(result)
    for start in range(0, len(faces), batch):
        probs = client.predict_pixels(np.stack(faces[start:start + batch]), tta=tta)
        for owner, p in zip(owners[start:start + batch], probs[PROBABILITIES]):
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
        label = f"{result.classes[top]} {probs[top]:.0%}"
        cv2.putText(image, label, (x, max(y - 6, 12)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5 * max(scale, 1), (0, 200, 0), max(1, int(scale)), cv2.LINE_AA)
    output.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(output), image):
        raise OSError(f"cannot write {output}")
    return output


def explain_results(results: list[ImageResult], client: RestClient | GrpcClient | LocalClient,
                    output: Path, batch: int = Limits().max_batch_size) -> int:
    """Write, for every face of ``results``, its Grad-CAM overlay for the predicted class
    (the model's ``explain`` signature) to ``output``: the face and the heatmap over it,
    side by side, 4x. Returns the number written; each result lists its files."""
    owners = [(r, k) for r in results for k in range(len(r.crops))]
    output.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(owners), batch):
        chunk = owners[start:start + batch]
        explained = client.explain_pixels(np.stack([r.crops[k] for r, k in chunk]))
        for (result, k), probs, maps in zip(chunk, explained[PROBABILITIES],
                                            explained[HEATMAPS]):
            top = int(np.argmax(probs))
            path = output / f"{Path(result.path).stem}.face{k}.{result.classes[top]}.explain.png"
            write_overlay(result.crops[k], maps[top], path)
            result.explanations.append(str(path))
    return len(owners)


def write_overlay(face: np.ndarray, heatmap: np.ndarray, path: Path, scale: int = 4) -> Path:
    """The 48x48 ``face`` and its ``heatmap`` (values 0-1) blended over it, side by side,
    enlarged ``scale`` times, as a PNG at ``path``."""
    size = (face.shape[1] * scale, face.shape[0] * scale)
    gray = cv2.cvtColor(cv2.resize(face, size, interpolation=cv2.INTER_CUBIC),
                        cv2.COLOR_GRAY2BGR)
    heat = cv2.applyColorMap((np.clip(cv2.resize(heatmap, size), 0, 1) * 255).astype(np.uint8),
                             cv2.COLORMAP_JET)
    if not cv2.imwrite(str(path), np.hstack([gray, cv2.addWeighted(gray, 0.55, heat, 0.45, 0)])):
        raise OSError(f"cannot write {path}")
    return path


def format_results(results: list[ImageResult]) -> str:
    """The results as the CLI's text: per image its faces, each with its box, top emotion and
    every class's probability, or the image's error."""
    lines = []
    for r in results:
        if r.error and not r.boxes:
            lines.append(f"{r.path}: {r.error}")
            continue
        note = f" ({r.note})" if r.note else ""
        lines.append(f"{r.path}: {len(r.boxes)} face{'s' if len(r.boxes) != 1 else ''}{note}")
        header = "  " + " ".join(f"{n[:8]:>8}" for n in r.classes)
        lines.append(f"  {'box (x,y,w,h)':<22}{'emotion':<10}" + header)
        for box, probs in zip(r.boxes, r.probabilities):
            top = r.classes[int(np.argmax(probs))]
            lines.append(f"  {box!s:<22}{top:<10}  " + " ".join(f"{p:>8.3f}" for p in probs))
    if len(results) > 1:
        lines.append(summary_line(results))
    return "\n".join(lines)


def summary_line(results: list[ImageResult]) -> str:
    """One line over all images: how many, how many faces, the emotions found, the failures."""
    tops = Counter(r.classes[int(np.argmax(p))] for r in results for p in r.probabilities)
    faces = sum(tops.values())
    failed = sum(1 for r in results if r.error)
    names = dict.fromkeys(n for r in results for n in r.classes)  # in id order
    found = ", ".join(f"{name} {tops[name]}" for name in names if tops[name])
    return (f"{len(results)} images, {faces} face{'s' if faces != 1 else ''}"
            f"{': ' + found if found else ''}{f'; {failed} failed' if failed else ''}")


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
                tta: bool = False, explain_dir: str | None = None,
                detector: str = DEFAULT_DETECTOR) -> tuple[str, int]:
    """The CLI's work: returns what to print and the exit code (1 if any image failed).

    ``grpc_target`` or ``url`` name a server; with neither, ``model_dir`` runs in-process.
    ``tta``: ask for the model's TTA signature (more accurate, one pass per view).
    ``explain_dir``: write each face's Grad-CAM overlay there (the ``explain`` signature).
    """
    if grpc_target:
        client = GrpcClient(grpc_target, model_name, timeout=timeout)
    elif url:
        client = RestClient(url, model_name, timeout=timeout)
    else:
        client = local_client(model_dir)
    results = predict_paths(paths, client, detect, tta, detector=detector)
    written = explain_results(results, client, Path(explain_dir)) if explain_dir else 0
    if annotate_dir:
        for r in results:
            if r.boxes:
                annotate(r.path, r, Path(annotate_dir) / f"{Path(r.path).stem}.annotated.png")
    text = (json.dumps([r.as_dict() for r in results], indent=2) if as_json
            else format_results(results))
    if explain_dir and not as_json:
        text += f"\n{written} explanation{'s' if written != 1 else ''} written to {explain_dir}"
    return text, int(any(r.error for r in results))
