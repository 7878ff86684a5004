"""Face detection on real photos: found / missed / false boxes and time, per detector.

    python -m benchmarks.detection [--photos tests/data/photos] [--verbose]

The photos are the licensed test photos in ``tests/data/photos`` (see its ``SOURCES.md``),
with their true face boxes in ``faces.json``. Beside the detectors, ``mtcnn-eager`` is the
reference for MTCNN's time: the same networks run eagerly, layer by layer, as the ``mtcnn``
package runs them by itself (``fer-pipeline`` runs each as one TensorFlow graph). A detected
box finds a true face when they overlap with IoU 0.3 or more (each face at most once, best
overlap first); a box that finds none is false. Time is the median of three runs per photo,
after one warm-up run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import cv2

from serving.faces import DETECTORS, MtcnnDetector, get_detector, match_counts
from serving.logs import quiet_native_logs, verbose_requested

PHOTOS = Path(__file__).resolve().parents[1] / "tests" / "data" / "photos"


REFERENCE = "mtcnn-eager"


def measure(photos: Path, detectors: tuple[str, ...] = (*DETECTORS, REFERENCE),
            ) -> dict[str, dict[str, dict[str, float]]]:
    """Per detector, per photo (and ``total``): found, missed, false, faces and median ms."""
    truth = json.loads((photos / "faces.json").read_text())["faces"]
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name in detectors:
        detector = MtcnnDetector(graphs=False) if name == REFERENCE else get_detector(name)
        rows: dict[str, dict[str, float]] = {}
        for photo, boxes in truth.items():
            image = cv2.imread(str(photos / photo))
            if image is None:
                raise SystemExit(f"cannot read {photos / photo}")
            detector.detect(image)  # warm-up
            times, found = [], []
            for _ in range(3):
                start = time.perf_counter()
                found = detector.detect(image)
                times.append((time.perf_counter() - start) * 1000)
            rows[photo] = {**match_counts([f.box for f in found], [tuple(b) for b in boxes]),
                           "faces": len(boxes), "ms": statistics.median(times)}
        rows["total"] = {k: sum(r[k] for r in rows.values()) for k in
                         ("found", "missed", "false", "faces", "ms")}
        results[name] = rows
    return results


def format_table(results: dict[str, dict[str, dict[str, float]]], verbose: bool = False) -> str:
    """The totals per detector, and with ``verbose`` every photo's row."""
    lines = [f"{'detector':<11} {'photo':<42} {'faces':>5} {'found':>5} {'missed':>6} "
             f"{'false':>5} {'ms':>7}"]
    for name, rows in results.items():
        for photo, r in rows.items():
            if photo != "total" and not verbose:
                continue
            label = "all photos" if photo == "total" else photo
            lines.append(f"{name:<11} {label:<42} {r['faces']:>5.0f} {r['found']:>5.0f} "
                         f"{r['missed']:>6.0f} {r['false']:>5.0f} {r['ms']:>7.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=PHOTOS,
                        help="folder with the photos and their faces.json (default: %(default)s)")
    parser.add_argument("--verbose", "-v", action="store_true", help="a row per photo")
    args = parser.parse_args(argv)
    if not verbose_requested(args.verbose):
        quiet_native_logs()
    results = measure(args.photos)
    count = len(json.loads((args.photos / "faces.json").read_text())["faces"])
    print(f"Face detection on {count} photos in {args.photos}")
    print(format_table(results, args.verbose))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
