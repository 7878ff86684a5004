"""Video analysis speed: frames/s of ``fer-pipeline predict clip.mp4``'s path, and where the
time goes.

    python -m benchmarks.video [--model-dir serving/model/fer] [--detector mtcnn haar]
                               [--detect-every 1 5] [--stride 1 2] [--min-face 0 20]
                               [--seconds 4] [--verbose]

Writes a 640x480, 25 frames/s clip (``--seconds`` long) of one real face moving about a
plain background (the licensed photo ``tests/data/photos/face_recognition_obama.jpg``, see
its ``SOURCES.md``), then runs :func:`serving.video.analyse_video` on it in this process, as
the CLI does (annotated video written, one batched model call per analysed frame), with the
model in ``--model-dir`` (by default the bundled released model), once per combination of
detector, ``--detect-every``, ``--stride`` and ``--min-face`` (0: the CLI's default, from the
frame size). Prints per run: frames read per second (the
figure the CLI prints; target >= 15 on a 2-core machine), analysed frames per second, and
per analysed frame the milliseconds of detection (in the read-ahead thread, alongside the
rest), classification, waiting for the read-ahead thread, and the rest (cropping, following,
drawing, encoding). The detector and the model are warmed up first.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import cv2
import numpy as np

from serving.contract import BUNDLED_MODEL_BASE
from serving.logs import quiet_native_logs, verbose_requested

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "tests" / "data" / "photos" / "face_recognition_obama.jpg"
FACE_REGION = (165, 10, 222, 260)  # x, y, w, h of the photo around its face (faces.json)
SIZE, FPS = (640, 480), 25.0
TARGET_FPS = 15.0
LOOP_SECONDS = 4.0  # the face's path repeats: at most 11 px a frame, a head turning about


def write_clip(path: Path, seconds: float, photo: Path = PHOTO) -> int:
    """A ``SIZE`` clip at ``FPS`` of the face in ``photo`` moving on a figure-of-eight loop
    (``LOOP_SECONDS`` a round) over a gradient background; returns its frame count."""
    image = cv2.imread(str(photo))
    if image is None:
        raise SystemExit(f"cannot read {photo}")
    x, y, w, h = FACE_REGION
    face = cv2.resize(image[y:y + h, x:x + w], (170, 200), interpolation=cv2.INTER_AREA)
    fh, fw = face.shape[:2]
    yy, xx = np.mgrid[0:SIZE[1], 0:SIZE[0]]
    background = np.dstack([90 + xx * 0.1, 140 + yy * 0.1, np.full(xx.shape, 170.0)]
                           ).astype(np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    n = round(seconds * FPS)
    for i in range(n):
        phase = 2 * np.pi * i / (LOOP_SECONDS * FPS)
        left = int((SIZE[0] - fw) / 2 + 180 * np.sin(phase))
        top = int((SIZE[1] - fh) / 2 + 90 * np.sin(2 * phase))
        frame = background.copy()
        frame[top:top + fh, left:left + fw] = face
        writer.write(frame)
    writer.release()
    return n


def measure(clip: Path, client, settings: list[tuple[str, int, int, int]], out: Path
            ) -> list[dict]:
    """One analysis of ``clip`` per ``(detector, detect_every, stride, min_face)``: the
    timing figures, tracks and detection passes of each."""
    from serving.video import VideoOptions, analyse_video

    rows = []
    for detector, every, stride, min_face in settings:
        options = VideoOptions(stride, every, detector=detector, min_face=min_face)
        result = analyse_video(clip, client, options, out)
        rows.append({"detector": detector, "detect_every": every, "stride": stride,
                     "min_face": result.options.min_face,
                     "frames": result.frames_read, "analysed": result.frames_analysed,
                     "passes": result.detections, "tracks": len(result.tracks),
                     "rows": len(result.rows), **result.timing()})
    return rows


def format_table(rows: list[dict], verbose: bool = False) -> str:
    """A row per run: settings, frames/s, and per analysed frame where the time went."""
    head = (f"{'detector':<9}{'detect-every':>13}{'stride':>7}{'min-face':>9}{'frames/s':>10}"
            f"{'analysed/s':>11}{'detect ms':>10}{'classify ms':>12}{'wait ms':>8}{'other ms':>9}"
            f"{'tracks':>7}")
    if verbose:
        head += f"{'passes':>7}{'ms/pass':>9}{'rows':>6}"
    lines = [head]
    for r in rows:
        line = (f"{r['detector']:<9}{r['detect_every']:>13}{r['stride']:>7}{r['min_face']:>9}"
                f"{r['frames_per_s']:>10.1f}{r['analysed_per_s']:>11.1f}"
                f"{r['detection_ms_per_frame']:>10.1f}{r['classification_ms_per_frame']:>12.1f}"
                f"{r['waiting_ms_per_frame']:>8.1f}{r['other_ms_per_frame']:>9.1f}"
                f"{r['tracks']:>7}")
        if verbose:
            line += f"{r['passes']:>7}{r['detection_ms_per_pass']:>9.1f}{r['rows']:>6}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from serving.faces import DETECTORS
    from serving.video import DEFAULT_DETECT_EVERY

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=BUNDLED_MODEL_BASE,
                        help="a SavedModel version directory or model base "
                             "(default: the bundled model)")
    parser.add_argument("--detector", nargs="+", choices=DETECTORS, default=["mtcnn"])
    parser.add_argument("--detect-every", nargs="+", type=int,
                        default=sorted({1, DEFAULT_DETECT_EVERY}), metavar="N")
    parser.add_argument("--stride", nargs="+", type=int, default=[1, 2], metavar="N")
    parser.add_argument("--min-face", nargs="+", type=int, default=[0], metavar="PX",
                        help="smallest face looked for; 0: from the frame size, as the CLI "
                             "(default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=4.0,
                        help="length of the clip (default: %(default)s)")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="TensorFlow's log lines; detection passes, ms per pass and rows")
    args = parser.parse_args(argv)
    if not verbose_requested(args.verbose):
        quiet_native_logs()
    from benchmarks.accuracy import served_graph
    from serving.faces import face_crop, get_detector
    from serving.predict import local_client

    client = local_client(args.model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        n = write_clip(clip, args.seconds)
        first = cv2.VideoCapture(str(clip)).read()[1]
        for name in args.detector:  # warm-up: build, trace, first allocations
            faces = get_detector(name).detect(first)
        client.predict_pixels(np.stack([face_crop(first, f) for f in faces] or
                                       [np.zeros((48, 48), np.uint8)]))
        settings = list(itertools.product(args.detector, args.detect_every, args.stride,
                                          args.min_face))
        rows = measure(clip, client, settings, Path(tmp) / "out")
    print(f"clip: {SIZE[0]}x{SIZE[1]}, {n} frames ({args.seconds:g} s at {FPS:g} frames/s), "
          f"one real face ({PHOTO.relative_to(ROOT)})")
    print(f"model: {client.version_dir} in-process; serving_default: "
          f"{served_graph(client.version_dir)}")
    print(f"frames/s: frames read per second (target >= {TARGET_FPS:g}); ms: per analysed "
          "frame")
    print(format_table(rows, verbose_requested(args.verbose)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
