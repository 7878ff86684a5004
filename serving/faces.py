"""Finding faces in photos and framing them as FER2013 frames its faces.

Two detectors: MTCNN (the ``mtcnn`` package, TensorFlow; its weights ship inside the wheel),
the default, which finds faces at angles, turned, small and large, and gives five landmarks;
and OpenCV's bundled frontal-face Haar cascade, fast and dependency-light, selectable as
``haar``. With landmarks, a face is aligned before its 48x48 crop: rotated so the eyes are
level, scaled and shifted so the eyes sit where FER2013's faces have them (measured with
MTCNN on 127 of its training faces: eye midpoint at 50% across and 39% down, eyes 36.5% of
the width apart). Without landmarks (Haar), the box is cropped as it is.

Detectors are built on first use and kept (MTCNN's three networks load in about a second);
:func:`get_detector` returns the shared one.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from serving.contract import IMAGE_SIZE

DETECTORS = ("mtcnn", "haar")
DEFAULT_DETECTOR = "mtcnn"
#: Where FER2013's faces have their eyes, as fractions of the 48x48 frame.
EYES_CENTER = (0.5, 0.393)
EYES_DISTANCE = 0.365
#: MTCNN's final-stage confidence below which a box is not kept as a face. Its own stage
#: thresholds (0.6/0.7/0.7) let through small blobs of texture; 0.9 keeps every face of the
#: README's photos and drops them.
MTCNN_MIN_CONFIDENCE = 0.9
HAAR_CASCADE = "haarcascade_frontalface_default.xml"


@dataclass(frozen=True)
class Face:
    """A face found in an image: its box ``(x, y, w, h)`` in pixels, the detector's confidence
    (1.0 for Haar, which gives none), and MTCNN's five landmarks (image-left eye first)."""

    box: tuple[int, int, int, int]
    score: float = 1.0
    landmarks: dict[str, tuple[float, float]] | None = None

    def as_dict(self) -> dict:
        """JSON-ready: box, score and landmarks (``None`` when the detector gives none)."""
        x, y, w, h = self.box
        return {"box": {"x": x, "y": y, "w": w, "h": h}, "score": round(self.score, 4),
                "landmarks": ({k: [round(v[0], 1), round(v[1], 1)]
                               for k, v in self.landmarks.items()} if self.landmarks else None)}


class Detector(Protocol):
    """What a face detector offers: its name and :meth:`detect`."""

    name: str

    def detect(self, image: np.ndarray, min_face: int | None = None) -> list[Face]:
        """Faces of a BGR uint8 image, left to right, looking for faces of ``min_face`` px
        and more (default: the detector's own minimum)."""


class HaarDetector:
    """OpenCV's frontal-face Haar cascade (bundled with the OpenCV wheel)."""

    name = "haar"

    def __init__(self, min_face: int = 30):
        self.min_face = min_face
        self._cascade = cv2.CascadeClassifier(cv2.data.haarcascades + HAAR_CASCADE)
        if self._cascade.empty():
            raise RuntimeError(f"cannot load OpenCV's {HAAR_CASCADE}")
        self._lock = threading.Lock()  # a CascadeClassifier is not safe across threads

    def detect(self, image: np.ndarray, min_face: int | None = None) -> list[Face]:
        """Faces of a BGR (or gray) uint8 image, left to right, none smaller than
        ``min_face`` px (default :attr:`min_face`); no landmarks."""
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
        size = min_face or self.min_face
        with self._lock:
            boxes = self._cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                                   minSize=(size, size))
        return sorted((Face(tuple(int(v) for v in b)) for b in boxes),
                      key=lambda f: (f.box[0], f.box[1]))


class MtcnnDetector:
    """MTCNN (Zhang et al., 2016) from the ``mtcnn`` package: boxes and five landmarks."""

    name = "mtcnn"

    def __init__(self, min_face: int = 20, min_confidence: float = MTCNN_MIN_CONFIDENCE,
                 graphs: bool = True):
        """``graphs``: run the networks as graphs (:func:`compile_stages`); ``False`` runs
        them eagerly, as the package does (a benchmark's reference)."""
        from mtcnn import MTCNN  # TensorFlow: loaded only when this detector is used

        self.min_face = min_face
        self.min_confidence = min_confidence
        self._mtcnn = MTCNN()
        if graphs:
            compile_stages(self._mtcnn)
        self._lock = threading.Lock()

    def detect(self, image: np.ndarray, min_face: int | None = None) -> list[Face]:
        """Faces of a BGR (or gray) uint8 image with at least :attr:`min_confidence`, left
        to right, each with its five landmarks, looking for faces of ``min_face`` px and more
        (default :attr:`min_face`; somewhat smaller ones may still be found). The larger it
        is, the smaller the image MTCNN's pyramid is built from and the less a pass costs."""
        if min_face and min_face > self.min_face:
            # The mtcnn package (1.0.0) finds nothing with a min_face_size above 20: its image
            # pyramid keeps as many levels and the last ones fall under P-Net's 12 px input.
            # The same pyramid from the image shrunk instead: faces of min_face px come out
            # self.min_face px.
            return detect_shrunk(self, image, self.min_face / min_face)
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image.ndim == 3 else \
            cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        with self._lock:
            found = self._mtcnn.detect_faces(rgb, min_face_size=min_face or self.min_face)
        faces = []
        for item in found:
            if item["confidence"] < self.min_confidence:
                continue
            x, y, w, h = (int(v) for v in item["box"])
            if w < 2 or h < 2:
                continue
            marks = {k: (float(v[0]), float(v[1])) for k, v in item["keypoints"].items()}
            faces.append(Face((x, y, w, h), float(item["confidence"]), marks))
        return sorted(faces, key=lambda f: (f.box[0], f.box[1]))


def compile_stages(mtcnn) -> None:
    """Run each of an ``mtcnn.MTCNN``'s three networks (P-Net, R-Net, O-Net) as one
    TensorFlow graph (``tf.function``, any batch and image size, traced once) instead of
    layer by layer in eager mode, as the package (1.0.0) does. Same boxes, landmarks and
    scores; a pass costs a third to a quarter as much (at 640x480 looking for 40 px faces,
    29 against 100 ms here), since eager dispatch, not arithmetic, is most of a small
    network's time. A stage without a network where 1.0.0 keeps it is left as it is."""
    import tensorflow as tf

    spec = [tf.TensorSpec([None, None, None, 3], tf.float32)]
    for stage in getattr(mtcnn, "stages", ()):
        model = getattr(stage, "_model", None)
        if model is not None and not hasattr(model, "python_function"):
            stage._model = tf.function(model, input_signature=spec)


def detect_shrunk(detector: Detector, image: np.ndarray, scale: float) -> list[Face]:
    """The faces ``detector`` finds in a copy of ``image`` resized by ``scale`` (under 1), in
    ``image``'s coordinates: quicker, and blind to faces under the detector's minimum once
    shrunk."""
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return [Face(tuple(round(v / scale) for v in face.box), face.score,
                 {k: (x / scale, y / scale) for k, (x, y) in face.landmarks.items()}
                 if face.landmarks else None)
            for face in detector.detect(small)]


@functools.cache
def get_detector(name: str = DEFAULT_DETECTOR) -> Detector:
    """The shared detector called ``name`` (one of :data:`DETECTORS`)."""
    if name not in DETECTORS:
        raise ValueError(f"unknown face detector {name!r}: choose one of {', '.join(DETECTORS)}")
    return MtcnnDetector() if name == "mtcnn" else HaarDetector()


def to_gray(image: np.ndarray) -> np.ndarray:
    """A uint8 image as one gray channel."""
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image


def alignment_matrix(face: Face, size: int = IMAGE_SIZE) -> np.ndarray | None:
    """The 2x3 affine map from image to a ``size`` square frame that levels the eyes and puts
    them where FER2013's faces have them; ``None`` without landmarks."""
    if not face.landmarks:
        return None
    left = np.asarray(face.landmarks["left_eye"], dtype=np.float64)
    right = np.asarray(face.landmarks["right_eye"], dtype=np.float64)
    if left[0] > right[0]:
        left, right = right, left
    delta = right - left
    distance = float(np.hypot(*delta))
    if distance < 1.0:
        return None
    angle = np.degrees(np.arctan2(delta[1], delta[0]))
    center = (left + right) / 2
    matrix = cv2.getRotationMatrix2D((float(center[0]), float(center[1])), angle,
                                     EYES_DISTANCE * size / distance)
    matrix[:, 2] += np.array(EYES_CENTER) * size - center
    return matrix


def face_crop(image: np.ndarray, face: Face | None, size: int = IMAGE_SIZE) -> np.ndarray:
    """The ``size`` x ``size`` uint8 gray face: aligned by its landmarks when it has them, its
    box otherwise, the whole image when ``face`` is None. Areas outside the image are filled
    by replicating its edge."""
    gray = to_gray(image)
    matrix = alignment_matrix(face, size * 4) if face is not None else None
    if matrix is not None:
        # Warp at 4x, then shrink with pixel-area averaging: a direct warp to 48 px would
        # alias a large face.
        big = cv2.warpAffine(gray, matrix, (size * 4, size * 4), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
        return cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)
    if face is not None:
        x, y, w, h = face.box
        gray = gray[max(y, 0):y + h, max(x, 0):x + w]
    return cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def match_counts(found: list[tuple[int, int, int, int]], truth: list[tuple[int, int, int, int]],
                 min_iou: float = 0.3) -> dict[str, int]:
    """Found / missed / false-box counts of detected boxes against true face boxes: each true
    face matches at most one box (greedy, best overlap first, IoU at least ``min_iou``)."""
    pairs = sorted(((iou(f, t), i, j) for i, f in enumerate(found) for j, t in enumerate(truth)),
                   reverse=True)
    used_f, used_t = set(), set()
    for overlap, i, j in pairs:
        if overlap < min_iou:
            break
        if i not in used_f and j not in used_t:
            used_f.add(i)
            used_t.add(j)
    return {"found": len(used_t), "missed": len(truth) - len(used_t),
            "false": len(found) - len(used_f)}
