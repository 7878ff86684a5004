"""Time of the bootstrap intervals on a test split's size (target: under 2 s).

    python -m benchmarks.bootstrap [--faces 3589] [--resamples 1000]

Labels and predictions are synthetic (a predictor right on about 69% of faces, like the
shipped model on FER2013 PublicTest's 3,589 faces x 7 classes): the cost depends on their
number, not their values. Prints the median of three runs of
:func:`components.uncertainty.bootstrap_intervals` and of the paired comparison, with
scikit-learn's ``f1_score`` called once per resample as the reference.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from components.uncertainty import bootstrap_intervals, paired_comparison, resample_indices
from serving.contract import CLASS_NAMES


def _median_seconds(fn, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, default=3589)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--reference-resamples", type=int, default=100,
                        help="resamples timed for scikit-learn's loop (scaled up in the "
                             "printout; default: %(default)s)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    y = rng.integers(0, len(CLASS_NAMES), args.faces)
    pred = np.where(rng.random(args.faces) < 0.69, y, rng.integers(0, 7, args.faces))
    other = np.where(rng.random(args.faces) < 0.69, y, rng.integers(0, 7, args.faces))
    ours = _median_seconds(lambda: bootstrap_intervals(y, pred, CLASS_NAMES, args.resamples))
    paired = _median_seconds(lambda: paired_comparison(y, pred, other, len(CLASS_NAMES),
                                                       args.resamples))

    from sklearn.metrics import f1_score

    indices = resample_indices(args.faces, args.reference_resamples, 0)
    loop = _median_seconds(lambda: [f1_score(y[i], pred[i], average=None, labels=range(7))
                                    for i in indices], runs=1)
    scale = args.resamples / args.reference_resamples
    print(f"bootstrap on {args.faces:,} faces x {len(CLASS_NAMES)} classes, "
          f"{args.resamples:,} resamples")
    print(f"  intervals (accuracy, macro F1, per-class F1): {ours:.3f} s  (target < 2 s: "
          f"{'met' if ours < 2 else 'MISSED'})")
    print(f"  paired comparison of two models:              {paired:.3f} s")
    print(f"  reference, scikit-learn f1_score per resample: {loop * scale:.2f} s "
          f"(timed on {args.reference_resamples}, scaled)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
