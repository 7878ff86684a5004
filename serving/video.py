"""``fer-pipeline predict clip.mp4``: the emotions of the faces in a video, followed over time.

Length: one pipeline over a video's frames (read, detect, follow, classify, smooth, draw,
write the outputs), whose steps share the frame loop's state; the tracker, the outputs and
the CLI's text are short sections of it.

Every ``stride``-th frame is analysed. On every ``detect_every``-th analysed frame the faces
are found by the detector (:mod:`serving.faces`) and matched to the live tracks by the
overlap of their boxes (IoU, best first): a face that matches no track starts a new one,
with the next id. In between, and for a track the detector missed, each track is followed by
matching its face as last detected (OpenCV template matching around its last box, about a
millisecond), so detection, the expensive part, runs on a fraction of the frames while every
analysed frame is still classified. Frames are read and detected in a thread of their own
(:class:`ReadAhead`), a few frames ahead of the ones being followed and classified, so on
two cores or more a detection pass overlaps classification instead of adding to it. A track
ends after ``max_missed`` detection passes in a row without it; one that only a single pass
found (when later passes looked for it) is dropped as the detector's false box, and the
tracks left are numbered 1, 2, ... in order of appearance. All the faces of an analysed
frame go to the model in one batched call; each track's probabilities are smoothed by an
exponential moving average (weight ``smoothing`` on the past), and the smoothed top emotion
is what the annotated video shows.

Outputs, in one folder, named after the video: ``<stem>.annotated.mp4`` (every frame, each
face's box, track id and smoothed emotion, drawn in a second pass over the video once the
tracks are known), ``<stem>.emotions.csv`` and ``<stem>.emotions.json`` (a row per analysed
frame per track seen in it: box, raw and smoothed probabilities), and
``<stem>.track<id>.timeline.png`` per track (each class's smoothed probability over time).
"""

from __future__ import annotations

import csv
import glob
import json
import os
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import cv2
import numpy as np

from serving.contract import BUNDLED_MODEL_BASE, CLASS_NAMES, PROBABILITIES
from serving.faces import (
    DEFAULT_DETECTOR,
    Detector,
    Face,
    face_crop,
    get_detector,
    iou,
    to_gray,
)

if TYPE_CHECKING:
    from serving.client import GrpcClient, LocalClient, RestClient

    Client = RestClient | GrpcClient | LocalClient

#: The file types ``predict`` reads as videos (anything OpenCV's FFmpeg reads is tried).
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg",
                            ".wmv"})
#: Detection on every 5th analysed frame: an MTCNN pass costs 25-50 ms a 640x480 frame here
#: (benchmarks.video), following a face by template matching under 1 ms; at 25 frames/s a
#: face is re-detected 5 times a second.
DEFAULT_DETECT_EVERY = 5
#: By default the smallest face a video's detection looks for is this share of the frame's
#: shorter side (40 px at 640x480), and at least MIN_FACE px: MTCNN's image pyramid then
#: works on the frame shrunk by half, and a pass at 640x480 costs about 40% less (50 against
#: 82 ms a pass here beside classification, benchmarks.video --min-face 20 0 -v). A smaller
#: face is too few pixels to read an emotion from.
MIN_FACE_SHARE = 1 / 12
MIN_FACE = 20
#: Weight of the past in each track's moving average of probabilities (0: no smoothing).
DEFAULT_SMOOTHING = 0.7
#: Detection passes in a row a track may go without a matching face before it ends.
DEFAULT_MAX_MISSED = 3
#: Least box overlap for a face to continue a track.
MIN_IOU = 0.3
#: Detection passes a track must be found in to be reported (unless the video ended before
#: a second pass could look for it): one-pass tracks are the detector's false boxes.
MIN_HITS = 2
#: A new box at least this share inside a face already seen is part of that face.
NESTED = 0.5
#: Least normalised correlation for a followed face to count as found.
FOLLOW_MIN_SCORE = 0.5
#: A face larger than this (its longer side, px) is followed at a smaller scale.
FOLLOW_SIZE = 128
#: At most this many frames are read (and detected) ahead of the ones being classified.
MAX_READ_AHEAD = 32
#: When a video does not say its frame rate.
FALLBACK_FPS = 25.0
NO_FACE_NOTE = "no face found"
FFMPEG_LOG_ENV = "OPENCV_FFMPEG_LOGLEVEL"
# Encoded images that OpenCV's FFmpeg would open as one-frame videos: their first bytes.
IMAGE_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG", "PNG"), (b"GIF8", "GIF"),
               (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))
# Box colours (BGR) by track id, and the annotation's font.
PALETTE = ((0, 200, 0), (0, 140, 255), (255, 120, 0), (200, 0, 200), (0, 220, 220),
           (60, 60, 255), (255, 255, 0), (120, 60, 180))
FONT = cv2.FONT_HERSHEY_SIMPLEX


class VideoError(ValueError):
    """A video that cannot be read: missing, not a video, or without frames."""


def is_video(path: str | Path) -> bool:
    """Whether ``predict`` treats ``path`` as a video: by its suffix."""
    return Path(str(path)).suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class VideoOptions:
    """How a video is analysed (see the module's docstring)."""

    stride: int = 1
    detect_every: int = DEFAULT_DETECT_EVERY
    smoothing: float = DEFAULT_SMOOTHING
    max_missed: int = DEFAULT_MAX_MISSED
    detector: str = DEFAULT_DETECTOR
    tta: bool = False
    min_face: int = 0  # px; 0: the frame's shorter side times MIN_FACE_SHARE (min_face_for)

    def check(self) -> None:
        """ValueError for a setting out of range."""
        if self.stride < 1 or self.detect_every < 1 or self.max_missed < 0:
            raise ValueError("--stride and --detect-every must be at least 1")
        if self.min_face < 0:
            raise ValueError(f"--min-face must be 0 (from the frame size) or more, "
                             f"not {self.min_face}")
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"--smoothing must be in [0, 1), not {self.smoothing}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready settings."""
        return {"stride": self.stride, "detect_every": self.detect_every,
                "smoothing": self.smoothing, "max_missed": self.max_missed,
                "detector": self.detector, "tta": self.tta, "min_face": self.min_face}


def min_face_for(width: int, height: int) -> int:
    """The smallest face (px) looked for in a ``width`` x ``height`` video by default."""
    return max(MIN_FACE, round(min(width, height) * MIN_FACE_SHARE))


# --------------------------------------------------------------------------- tracking


@dataclass
class FrameRow:
    """One track in one analysed frame: where its face was, whether the detector found it
    there (or it was followed), and its probabilities, raw and smoothed."""

    frame: int
    time_s: float
    track: int
    box: tuple[int, int, int, int]
    detected: bool
    probabilities: np.ndarray
    smoothed: np.ndarray

    def as_dict(self, classes: Sequence[str] = CLASS_NAMES) -> dict[str, Any]:
        """JSON-ready: frame, time, track, box, raw and smoothed top emotion and probabilities
        (named by ``classes``, the model's label set)."""
        top, stop = int(np.argmax(self.probabilities)), int(np.argmax(self.smoothed))
        x, y, w, h = self.box
        return {"frame": self.frame, "time_s": round(self.time_s, 3), "track": self.track,
                "box": {"x": x, "y": y, "w": w, "h": h}, "detected": self.detected,
                "emotion": classes[top], "confidence": round(float(self.probabilities[top]), 4),
                PROBABILITIES: {n: round(float(p), 4)
                                for n, p in zip(classes, self.probabilities)},
                "smoothed_emotion": classes[stop],
                "smoothed_confidence": round(float(self.smoothed[stop]), 4),
                "smoothed": {n: round(float(p), 4) for n, p in zip(classes, self.smoothed)}}


@dataclass
class Track:
    """A face followed across frames: its id, last face, the template it is followed by, its
    smoothed probabilities and its rows."""

    id: int
    face: Face
    template: np.ndarray = field(repr=False)
    origin: tuple[int, int] = (0, 0)  # the template's top-left corner in its frame
    misses: int = 0  # detection passes in a row without it
    hits: int = 1  # detection passes that found it (the first one included)
    passes: int = 0  # detection passes since the one that started it, while it lived
    smoothed: np.ndarray | None = None
    rows: list[FrameRow] = field(default_factory=list, repr=False)

    def observe(self, row_frame: int, time_s: float, face: Face, detected: bool,
                probabilities: np.ndarray, smoothing: float) -> FrameRow:
        """Record the track's face and probabilities in an analysed frame; returns its row."""
        p = np.asarray(probabilities, dtype=np.float64)
        self.smoothed = p if self.smoothed is None else ema(self.smoothed, p, smoothing)
        self.face = face
        row = FrameRow(row_frame, time_s, self.id, face.box, detected, p, self.smoothed.copy())
        self.rows.append(row)
        return row


def ema(previous: np.ndarray, current: np.ndarray, smoothing: float) -> np.ndarray:
    """The exponential moving average's next value: ``smoothing`` of the past, the rest now."""
    return smoothing * np.asarray(previous) + (1.0 - smoothing) * np.asarray(current)


def associate(track_boxes: list[tuple[int, int, int, int]],
              found: list[tuple[int, int, int, int]],
              min_iou: float = MIN_IOU) -> list[tuple[int, int]]:
    """Greedy matching, best overlap first: ``(track index, found index)`` pairs with IoU at
    least ``min_iou``, each index at most once."""
    pairs = sorted(((iou(t, f), i, j) for i, t in enumerate(track_boxes)
                    for j, f in enumerate(found)), reverse=True)
    used_t, used_f, matched = set(), set(), []
    for overlap, i, j in pairs:
        if overlap < min_iou:
            break
        if i not in used_t and j not in used_f:
            used_t.add(i)
            used_f.add(j)
            matched.append((i, j))
    return sorted(matched)


def inside(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """The share of box ``a``'s area that lies inside box ``b``."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / (a[2] * a[3]) if a[2] * a[3] > 0 else 0.0


def _clip(box: tuple[int, int, int, int], shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """The part of ``box`` inside an image of ``shape``, as ``(x0, y0, x1, y1)``."""
    x, y, w, h = box
    return max(x, 0), max(y, 0), min(x + w, shape[1]), min(y + h, shape[0])


def shifted(face: Face, dx: int, dy: int) -> Face:
    """``face`` moved by ``(dx, dy)`` pixels, landmarks too."""
    x, y, w, h = face.box
    marks = ({k: (v[0] + dx, v[1] + dy) for k, v in face.landmarks.items()}
             if face.landmarks else None)
    return Face((x + dx, y + dy, w, h), face.score, marks)


class Tracker:
    """Tracks with stable ids (1, 2, ... in order of appearance) over a video's analysed
    frames: :meth:`detected` on frames with detection, :meth:`follow` on the others."""

    def __init__(self, max_missed: int = DEFAULT_MAX_MISSED, min_iou: float = MIN_IOU):
        self.max_missed = max_missed
        self.min_iou = min_iou
        self.live: list[Track] = []
        self.ended: list[Track] = []
        self._next_id = 1

    @property
    def tracks(self) -> list[Track]:
        """Every track so far, live or ended, by id."""
        return sorted(self.ended + self.live, key=lambda t: t.id)

    def finish(self) -> list[Track]:
        """The tracks to report, renumbered 1, 2, ... in order of appearance (rows too): all
        but those the detector found in one pass only although later passes looked for them
        (a false box, followed for a few frames)."""
        kept = [t for t in self.tracks if t.hits >= MIN_HITS or t.passes == 0]
        for number, track in enumerate(kept, start=1):
            track.id = number
            for row in track.rows:
                row.track = number
        return kept

    def _new(self, gray: np.ndarray, face: Face) -> Track:
        track = Track(self._next_id, face, np.empty(0))
        self._next_id += 1
        _refresh_template(track, gray, face)
        self.live.append(track)
        return track

    def detected(self, gray: np.ndarray, faces: list[Face]) -> list[tuple[Track, Face, bool]]:
        """Match a detection pass's ``faces`` to the live tracks; start a track for each face
        left over (unless it lies inside a face already seen); follow each live track left
        over by its template (a face the detector missed once); end tracks missed more than
        ``max_missed`` passes in a row. Returns ``(track, face, detected)`` for every track
        seen in this frame."""
        pairs = associate([t.face.box for t in self.live], [f.box for f in faces],
                          self.min_iou)
        seen: list[tuple[Track, Face, bool]] = []
        matched_t = {i for i, _ in pairs}
        for track in self.live:
            track.passes += 1
        for i, j in pairs:
            track = self.live[i]
            track.misses = 0
            track.hits += 1
            _refresh_template(track, gray, faces[j])
            seen.append((track, faces[j], True))
        left = [t for k, t in enumerate(self.live) if k not in matched_t]
        matched_f = {j for _, j in pairs}
        # Larger faces first; a box mostly inside a face already seen is a part of it (a
        # detector's false box on a mouth or an eye), not a new face.
        for j in sorted(set(range(len(faces))) - matched_f,
                        key=lambda j: -faces[j].box[2] * faces[j].box[3]):
            if all(inside(faces[j].box, f.box) < NESTED for _, f, _ in seen):
                seen.append((self._new(gray, faces[j]), faces[j], True))
        for track in left:
            track.misses += 1
            if track.misses > self.max_missed:
                self.live.remove(track)
                self.ended.append(track)
                continue
            found = _follow(track, gray)
            # A followed box on a face another track holds is that face, not this one.
            if found and all(iou(found[0].box, f.box) < self.min_iou for _, f, _ in seen):
                track.face, track.origin = found
                seen.append((track, track.face, False))
        return sorted(seen, key=lambda s: s[0].id)

    def follow(self, gray: np.ndarray) -> list[tuple[Track, Face, bool]]:
        """Follow every live track by its template into this frame; ``(track, face, False)``
        for each one found."""
        seen = []
        for track in self.live:
            found = _follow(track, gray)
            if found:
                track.face, track.origin = found
                seen.append((track, track.face, False))
        return seen


def _refresh_template(track: Track, gray: np.ndarray, face: Face) -> None:
    x0, y0, x1, y1 = _clip(face.box, gray.shape)
    track.face = face
    track.template = gray[y0:y1, x0:x1].copy()
    track.origin = (x0, y0)


def _follow(track: Track, gray: np.ndarray) -> tuple[Face, tuple[int, int]] | None:
    """Where the track's template best matches around its last box (a search margin of half
    the face's size): its face moved there, and the template's new corner; ``None`` when the
    match is poor."""
    th, tw = track.template.shape[:2]
    if th < 8 or tw < 8:
        return None
    x, y, w, h = track.face.box
    margin = max(8, max(w, h) // 2)
    x0, y0, x1, y1 = _clip((x - margin, y - margin, w + 2 * margin, h + 2 * margin), gray.shape)
    if x1 - x0 < tw or y1 - y0 < th:
        return None
    window, template = gray[y0:y1, x0:x1], track.template
    scale = min(1.0, FOLLOW_SIZE / max(th, tw))
    if scale < 1.0:  # a large face: matched smaller (a 400 px face costs 18 ms at full size)
        window = cv2.resize(window, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        template = cv2.resize(template, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    scores = cv2.matchTemplate(window, template, cv2.TM_CCOEFF_NORMED)
    _, best, _, (bx, by) = cv2.minMaxLoc(scores)
    if not np.isfinite(best) or best < FOLLOW_MIN_SCORE:
        return None
    bx, by = round(bx / scale), round(by / scale)
    # The template was cut at ``origin`` from the box of ``track.face`` as last detected or
    # followed; its new corner moves the face by the same amount.
    dx, dy = x0 + bx - track.origin[0], y0 + by - track.origin[1]
    return shifted(track.face, dx, dy), (x0 + bx, y0 + by)


# --------------------------------------------------------------------------- reading


@dataclass
class VideoInfo:
    """What a video says about itself: frame size, frame rate, frame count (``None`` when it
    does not say)."""

    width: int
    height: int
    fps: float
    frames: int | None


def open_video(path: str | Path) -> tuple[cv2.VideoCapture, VideoInfo]:
    """An opened capture whose first frame reads, and its info; :class:`VideoError` naming
    the problem otherwise (missing, empty, an image, not a video, no frames)."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"no such file: {path}")
    with path.open("rb") as f:
        head = f.read(16)
    if not head:
        raise VideoError(f"empty file: {path}")
    for magic, kind in IMAGE_MAGIC:
        if head.startswith(magic):
            raise VideoError(f"a {kind} image, not a video: {path}")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        raise VideoError(f"a WEBP image, not a video: {path}")
    # FFmpeg's own lines on a bad file ("moov atom not found") say less than the error raised
    # here: quiet unless set otherwise. FFmpeg reads it once, at OpenCV's first capture.
    os.environ.setdefault(FFMPEG_LOG_ENV, "-8")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise VideoError(f"not a readable video: {path}")
    count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    fps = capture.get(cv2.CAP_PROP_FPS)
    info = VideoInfo(int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                     int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                     float(fps) if np.isfinite(fps) and 0 < fps < 1000 else FALLBACK_FPS,
                     int(count) if 0 < count < 1e9 else None)
    ok, first = capture.read()
    capture.release()  # the first frame is read: reopen at the start
    if not ok or first is None:
        raise VideoError(f"no frames in video: {path}")
    if info.width <= 0 or info.height <= 0:  # a container that does not say
        info.height, info.width = first.shape[:2]
    capture = cv2.VideoCapture(str(path))
    return capture, info


def frames(capture: cv2.VideoCapture) -> Iterator[np.ndarray]:
    """The capture's frames as BGR uint8 images, until it ends (or fails)."""
    try:
        while True:
            ok, frame = capture.read()
            if not ok or frame is None:
                return
            yield frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    finally:
        capture.release()


# --------------------------------------------------------------------------- analysis


@dataclass
class VideoResult:
    """A video's analysis: its info, counts, tracks and rows, the time each part took, and
    the files written; or its ``error``."""

    path: str
    info: VideoInfo | None = None
    options: VideoOptions = field(default_factory=VideoOptions)
    frames_read: int = 0
    frames_analysed: int = 0
    detections: int = 0  # detection passes
    tracks: list[Track] = field(default_factory=list, repr=False)
    seconds: dict[str, float] = field(default_factory=lambda: {
        "total": 0.0, "detection": 0.0, "classification": 0.0, "waiting": 0.0})
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    classes: tuple[str, ...] = CLASS_NAMES  # the model's label set, in id order

    @property
    def rows(self) -> list[FrameRow]:
        """Every row, by frame then track."""
        return sorted((r for t in self.tracks for r in t.rows), key=lambda r: (r.frame, r.track))

    @property
    def note(self) -> str:
        """``no face found`` when frames were analysed and no track was started."""
        return NO_FACE_NOTE if self.frames_analysed and not self.tracks else ""

    @property
    def fps(self) -> float:
        """Frames read per second of processing."""
        return self.frames_read / self.seconds["total"] if self.seconds["total"] else 0.0

    def timing(self) -> dict[str, float]:
        """Frames/s, and per analysed frame the ms spent detecting (in the read-ahead thread,
        alongside the rest), classifying, waiting for the read-ahead thread (reading and
        detection not hidden behind classification) and on the rest (following, cropping,
        drawing, writing the outputs)."""
        n = max(self.frames_analysed, 1)
        total, det, cls, wait = (self.seconds[k] for k in ("total", "detection",
                                                           "classification", "waiting"))
        return {"frames_per_s": round(self.fps, 2),
                "analysed_per_s": round(self.frames_analysed / total, 2) if total else 0.0,
                "detection_ms_per_frame": round(det * 1000 / n, 1),
                "classification_ms_per_frame": round(cls * 1000 / n, 1),
                "waiting_ms_per_frame": round(wait * 1000 / n, 1),
                "other_ms_per_frame": round(max(total - cls - wait, 0.0) * 1000 / n, 1),
                "detection_ms_per_pass": round(det * 1000 / max(self.detections, 1), 1)}

    def track_summaries(self) -> list[dict[str, Any]]:
        """Per track: id, frames, times, its most frequent smoothed emotion and its share,
        and the mean probabilities."""
        out = []
        for t in self.tracks:
            tops = Counter(self.classes[int(np.argmax(r.smoothed))] for r in t.rows)
            emotion, count = tops.most_common(1)[0]
            mean = np.mean([r.probabilities for r in t.rows], axis=0)
            out.append({"track": t.id, "first_frame": t.rows[0].frame,
                        "last_frame": t.rows[-1].frame, "rows": len(t.rows),
                        "start_s": round(t.rows[0].time_s, 3),
                        "end_s": round(t.rows[-1].time_s, 3), "emotion": emotion,
                        "share": round(count / len(t.rows), 3),
                        "mean_" + PROBABILITIES: {n: round(float(p), 4)
                                                  for n, p in zip(self.classes, mean)},
                        "timeline": self.outputs.get("timelines", {}).get(t.id)})
        return out

    def as_dict(self, rows: bool = False) -> dict[str, Any]:
        """JSON-ready summary (and every row with ``rows``)."""
        info = self.info
        data = {"video": self.path,
                "width": info.width if info else None, "height": info.height if info else None,
                "fps": round(info.fps, 3) if info else None,
                "frames_read": self.frames_read, "frames_analysed": self.frames_analysed,
                "detection_passes": self.detections, "settings": self.options.as_dict(),
                "tracks": self.track_summaries(), "timing": self.timing(),
                "outputs": self.outputs or None, "note": self.note or None,
                "error": self.error or None}
        if rows:
            data["rows"] = [r.as_dict(self.classes) for r in self.rows]
        return data


def analyse_video(path: str | Path, client: Client | Callable[[], Client],
                  options: VideoOptions = VideoOptions(), output: Path | None = None,
                  progress: bool = False, detector: Detector | None = None) -> VideoResult:
    """Analyse the video at ``path`` (see the module's docstring) with ``client`` (or the
    client a callable makes, called only once the video is known to read), writing the
    annotated video (:func:`render`) to ``output`` when given, with a progress bar on a
    terminal with ``progress``. Raises :class:`VideoError` for a video that
    cannot be read."""
    options.check()
    capture, info = open_video(path)
    if callable(client):  # the clients themselves are not callable
        client = client()
    detector = detector or get_detector(options.detector)
    options = replace(options, min_face=options.min_face or min_face_for(info.width,
                                                                         info.height))
    result = VideoResult(str(path), info, options, classes=client.class_names())
    tracker = Tracker(options.max_missed)
    from tqdm import tqdm

    stream = progress_stream() if progress else None
    bar = tqdm(total=info.frames, unit="frame", desc=Path(path).name, file=stream,
               disable=stream is None, leave=False, mininterval=0.5)
    start = time.perf_counter()
    ahead = ReadAhead(_read_and_detect(capture, detector, options, result),
                      depth=min(MAX_READ_AHEAD, 2 * options.stride * options.detect_every))
    try:
        while True:
            t = time.perf_counter()
            item = ahead.next()
            result.seconds["waiting"] += time.perf_counter() - t
            if item is None:
                break
            result.frames_read += 1
            if item.gray is not None:
                _analyse_frame(item, info.fps, tracker, client, options, result)
            bar.update()
        result.tracks = tracker.finish()
        if output is not None:
            bar.reset(total=result.frames_read)
            bar.set_description(f"{Path(path).name} (writing)")
            target = output / f"{Path(path).stem}.annotated.mp4"
            result.outputs["video"] = str(render(path, result, target, bar.update))
    finally:
        ahead.close()
        bar.close()
    result.seconds["total"] = time.perf_counter() - start
    return result


def render(path: str | Path, result: VideoResult, target: Path,
           tick: Callable[[], Any] = lambda: None) -> Path:
    """Write the video at ``path`` again to ``target`` (MPEG-4, the same size and rate),
    every frame with the boxes and smoothed emotions of ``result``'s rows of the last analysed
    frame up to it; ``tick`` is called after each frame."""
    capture, info = open_video(path)
    by_frame: dict[int, list[FrameRow]] = {}
    for row in result.rows:
        by_frame.setdefault(row.frame, []).append(row)
    target.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), info.fps,
                             (info.width, info.height))
    if not writer.isOpened():
        capture.release()
        raise OSError(f"cannot write {target}")
    shown: list[FrameRow] = []
    try:
        for index, frame in enumerate(frames(capture)):
            if index % result.options.stride == 0:
                shown = by_frame.get(index, [])
            if frame.shape[:2] != (info.height, info.width):
                frame = cv2.resize(frame, (info.width, info.height))
            writer.write(draw(frame, shown, result.classes))
            tick()
    finally:
        capture.release()
        writer.release()
    return target


def progress_stream() -> TextIO | None:
    """Where a progress bar goes: stderr on a terminal; stdout on a terminal when stderr is
    not one (``fer-pipeline`` filters stderr through a pipe, see :mod:`serving.logs`, which
    would hold a bar's carriage-return updates); ``None`` (no bar) otherwise."""
    for stream in (sys.stderr, sys.stdout):
        try:
            if stream.isatty():
                return stream
        except (AttributeError, ValueError):  # replaced or closed streams
            continue
    return None


@dataclass
class ReadFrame:
    """A frame as the read-ahead thread hands it over: its index, and for a frame to analyse
    its grey image and, on a detection frame, the detector's faces (else ``None``)."""

    index: int
    gray: np.ndarray | None = None
    faces: list[Face] | None = None


def _read_and_detect(capture: cv2.VideoCapture, detector: Detector, options: VideoOptions,
                     result: VideoResult) -> Iterator[ReadFrame]:
    """The video's frames as :class:`ReadFrame`: every ``stride``-th one to analyse, with the
    detector's faces on every ``detect_every``-th of those; ``result`` counts the detection
    passes and their time."""
    analysed = 0
    for index, frame in enumerate(frames(capture)):
        if index % options.stride:
            yield ReadFrame(index)
            continue
        faces = None
        if analysed % options.detect_every == 0:
            t = time.perf_counter()
            faces = detector.detect(frame, options.min_face)
            result.seconds["detection"] += time.perf_counter() - t
            result.detections += 1
        analysed += 1
        yield ReadFrame(index, to_gray(frame), faces)


class ReadAhead:
    """Runs an iterator in a thread of its own, up to ``depth`` items ahead of :meth:`next`.

    The video loop reads and detects in this thread while the main thread follows and
    classifies: both are mostly TensorFlow or OpenCV work, which runs without Python's lock,
    so on a machine with two cores or more a detection pass overlaps the classification of
    the frames before it instead of adding to it. An exception in the thread is raised again
    by :meth:`next`; :meth:`close` stops the thread (it closes the iterator, so a video
    capture is released) and waits for it."""

    def __init__(self, items: Iterator[Any], depth: int):
        self._items = items
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name="video-read-ahead",
                                        daemon=True)
        self._thread.start()

    def _put(self, entry: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._items:
                if not self._put(("item", item)):
                    return
            self._put(("end", None))
        except BaseException as error:  # handed to the main thread, raised there
            self._put(("error", error))
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()

    def next(self) -> Any:
        """The next item, or ``None`` once the iterator is exhausted."""
        if self._done:
            return None
        kind, value = self._queue.get()
        if kind == "item":
            return value
        self._done = True
        if kind == "error":
            raise value
        return None

    def close(self) -> None:
        """Stop the thread (if it still runs) and wait for it."""
        self._stop.set()
        self._thread.join()


def _analyse_frame(item: ReadFrame, fps: float, tracker: Tracker, client: Client,
                   options: VideoOptions, result: VideoResult) -> None:
    """Match a detection frame's faces to the tracks, or follow them into another analysed
    frame; classify the faces in one call, and record each track's row."""
    gray = item.gray
    seen = tracker.follow(gray) if item.faces is None else tracker.detected(gray, item.faces)
    result.frames_analysed += 1
    if not seen:
        return
    crops = np.stack([face_crop(gray, face) for _, face, _ in seen])
    t = time.perf_counter()
    probs = client.predict_pixels(crops, tta=options.tta)[PROBABILITIES]
    result.seconds["classification"] += time.perf_counter() - t
    for (track, face, detected), p in zip(seen, probs):
        track.observe(item.index, item.index / fps, face, detected, p, options.smoothing)


def draw(frame: np.ndarray, rows: list[FrameRow],
         classes: Sequence[str] = CLASS_NAMES) -> np.ndarray:
    """``frame`` with each row's box, track id and smoothed top emotion (of ``classes``)
    drawn on it."""
    scale = max(frame.shape[:2]) / 640
    thick = max(1, round(2 * scale))
    for row in rows:
        x, y, w, h = row.box
        colour = PALETTE[(row.track - 1) % len(PALETTE)]
        top = int(np.argmax(row.smoothed))
        cv2.rectangle(frame, (x, y), (x + w, y + h), colour, thick)
        label = f"#{row.track} {classes[top]} {row.smoothed[top]:.0%}"
        at, size, weight = (x, max(y - 6, 14)), 0.55 * max(scale, 0.6), max(1, round(scale))
        cv2.putText(frame, label, at, FONT, size, (0, 0, 0), weight + 2, cv2.LINE_AA)  # outline
        cv2.putText(frame, label, at, FONT, size, colour, weight, cv2.LINE_AA)
    return frame


# --------------------------------------------------------------------------- outputs

def csv_fields(classes: Sequence[str] = CLASS_NAMES) -> tuple[str, ...]:
    """The CSV's columns: the row's, then each class's probability, raw and smoothed."""
    return ("frame", "time_s", "track", "x", "y", "w", "h", "detected", "emotion",
            "confidence", "smoothed_emotion", "smoothed_confidence",
            *classes, *(f"smoothed_{n}" for n in classes))


def write_csv(result: VideoResult, path: Path) -> Path:
    """A row per analysed frame per track seen in it (:func:`csv_fields`); only the header
    when no face was found."""
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(csv_fields(result.classes))
        for r in result.rows:
            d = r.as_dict(result.classes)
            out.writerow([r.frame, d["time_s"], r.track, *r.box, int(r.detected), d["emotion"],
                          d["confidence"], d["smoothed_emotion"], d["smoothed_confidence"],
                          *(f"{p:.4f}" for p in r.probabilities),
                          *(f"{p:.4f}" for p in r.smoothed)])
    return path


def write_timeline(track: Track, path: Path, title: str,
                   classes: Sequence[str] = CLASS_NAMES) -> Path:
    """A PNG of each class's smoothed probability over time for one track (matplotlib's Agg
    canvas, no global backend), with each analysed frame's raw top probability as a dot in its
    class's colour."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    times = [r.time_s for r in track.rows]
    smoothed = np.array([r.smoothed for r in track.rows])
    fig = Figure(figsize=(8, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = ("#d62728", "#8c564b", "#9467bd", "#2ca02c", "#1f77b4", "#ff7f0e", "#7f7f7f")
    for k, name in enumerate(classes):
        ax.plot(times, smoothed[:, k], label=name, color=colours[k % len(colours)],
                linewidth=1.6, marker="." if len(times) < 3 else None)
    raw = np.array([r.probabilities for r in track.rows])
    tops = raw.argmax(axis=1)
    ax.scatter(times, raw[np.arange(len(raw)), tops], s=7, alpha=0.5, zorder=3,
               c=[colours[k % len(colours)] for k in tops], label="raw top")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability (smoothed)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    return path


def write_outputs(result: VideoResult, output: Path) -> None:
    """The CSV, the JSON (summary and rows) and a timeline PNG per track into ``output``;
    their paths go into ``result.outputs``."""
    stem = Path(result.path).stem
    output.mkdir(parents=True, exist_ok=True)
    result.outputs["csv"] = str(write_csv(result, output / f"{stem}.emotions.csv"))
    result.outputs["timelines"] = {}
    for t in result.tracks:
        title = (f"{Path(result.path).name}: track #{t.id}, frames {t.rows[0].frame}-"
                 f"{t.rows[-1].frame} (smoothing {result.options.smoothing})")
        result.outputs["timelines"][t.id] = str(
            write_timeline(t, output / f"{stem}.track{t.id}.timeline.png", title,
                           result.classes))
    json_path = output / f"{stem}.emotions.json"
    result.outputs["json"] = str(json_path)
    json_path.write_text(json.dumps(result.as_dict(rows=True), indent=1))


# --------------------------------------------------------------------------- the CLI's work


def make_client(url: str | None, grpc_target: str | None, model_name: str = "fer",
                timeout: float = 30.0, model_dir: str | Path = BUNDLED_MODEL_BASE) -> Client:
    """The client ``predict`` uses: gRPC or REST to a server, else ``model_dir`` in-process."""
    from serving.client import GrpcClient, RestClient

    if grpc_target:
        return GrpcClient(grpc_target, model_name, timeout=timeout)
    if url:
        return RestClient(url, model_name, timeout=timeout)
    from serving.predict import local_client

    return local_client(model_dir)


def expand_videos(inputs: list[str]) -> list[str]:
    """The videos the inputs name: a file as given, a glob's matches (sorted); a glob that
    matches nothing stays as given (and fails as a missing file)."""
    out: list[str] = []
    for item in inputs:
        if Path(item).exists() or not glob.has_magic(item):
            out.append(item)
        else:
            out += sorted(glob.glob(item, recursive=True)) or [item]
    return out


def output_dir(path: str, output: str | None) -> Path:
    """Where a video's outputs go: ``output``, else ``<stem>_emotions`` in this directory."""
    return Path(output) if output else Path(f"{Path(path).stem}_emotions")


def run_videos(paths: list[str], client: Client | Callable[[], Client],
               options: VideoOptions = VideoOptions(), output: str | None = None,
               as_json: bool = False, progress: bool = False, verbose: bool = False,
               log: TextIO | None = None) -> tuple[str, int, list[dict[str, Any]]]:
    """Analyse each video and write its outputs: returns what to print (a table, or JSON
    with ``as_json``), the exit code (1 if any video failed) and the JSON-ready summaries.
    A video that cannot be read is reported as its error; the client is made (a model
    loaded) only once a video reads. With ``as_json``, each video's summary line (frames,
    tracks, frames/s) goes to ``log`` when given."""
    options.check()
    made: list[Client] = []

    def once() -> Client:
        if not made:
            made.append(client() if callable(client) else client)
        return made[0]

    results: list[VideoResult] = []
    for path in expand_videos(paths):
        out = output_dir(path, output)
        try:
            result = analyse_video(path, once, options, out, progress)
        except VideoError as exc:
            result = VideoResult(path, options=options, error=str(exc))
        else:
            write_outputs(result, out)
            if as_json and log is not None:
                print(summary_line(result), file=log, flush=True)
        results.append(result)
    summaries = [r.as_dict() for r in results]
    text = (json.dumps(summaries, indent=2) if as_json
            else "\n".join(format_video(r, verbose) for r in results))
    return text, int(any(r.error for r in results)), summaries


def summary_line(result: VideoResult) -> str:
    """One line: frames read, frames analysed, tracks, frames/s."""
    n = len(result.tracks)
    return (f"{result.path}: {result.frames_read} frames read, {result.frames_analysed} "
            f"analysed, {n} track{'s' if n != 1 else ''}, {result.fps:.1f} frames/s")


def format_video(result: VideoResult, verbose: bool = False) -> str:
    """The CLI's text for one video: its tracks, its outputs, the summary line (and with
    ``verbose`` the settings and where the time went)."""
    if result.error:
        return f"{result.path}: {result.error}"
    info = result.info
    lines = [f"{result.path}: {info.width}x{info.height}, {info.fps:.1f} frames/s, "
             f"{NO_FACE_NOTE} in {result.frames_analysed} analysed frames" if result.note else
             f"{result.path}: {info.width}x{info.height}, {info.fps:.1f} frames/s"]
    if result.tracks:
        lines.append(f"  {'track':<7}{'frames':<14}{'seconds':<15}{'rows':>5}  emotion "
                     "(smoothed, share of rows)")
        for s in result.track_summaries():
            span = f"{s['first_frame']}-{s['last_frame']}"
            secs = f"{s['start_s']:.2f}-{s['end_s']:.2f}"
            lines.append(f"  #{s['track']:<6}{span:<14}{secs:<15}{s['rows']:>5}  "
                         f"{s['emotion']} {s['share']:.0%}")
    outs = result.outputs
    files = [outs.get(k) for k in ("video", "csv", "json") if outs.get(k)]
    timelines = list((outs.get("timelines") or {}).values())
    lines.append("  wrote " + ", ".join(files) + (
        f", {len(timelines)} timeline{'s' if len(timelines) != 1 else ''} "
        f"({Path(timelines[0]).parent / '*.timeline.png'})" if timelines else ""))
    if verbose:
        o, t = result.options, result.timing()
        lines.append(f"  settings: detector {o.detector}, detect every {o.detect_every}, "
                     f"stride {o.stride}, smoothing {o.smoothing}, "
                     f"{result.detections} detection passes")
        lines.append(f"  per analysed frame: detection {t['detection_ms_per_frame']} ms "
                     f"(alongside the rest), classification "
                     f"{t['classification_ms_per_frame']} ms, waiting for detection "
                     f"{t['waiting_ms_per_frame']} ms, other {t['other_ms_per_frame']} ms")
    lines.append(summary_line(result))
    return "\n".join(lines)

