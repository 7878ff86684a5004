"""What a model costs to serve, measured in-process on this machine: the median latency of one
face and the throughput at batch 64, after warm-up.

The evaluate step measures the candidate as it will be exported (a SavedModel written to a
temporary directory and loaded back, called through its signatures as TF Serving would), so
that the gate can refuse a model over a latency budget before it is pushed, in the spirit
of TFX's InfraValidator. The benchmarks use the same two measures.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

Predict = Callable[[np.ndarray], Any]  # float32 faces [n,48,48,1] -> anything
LATENCY_CALLS = 100
THROUGHPUT_BATCH = 64
WARMUP_CALLS = 5


def p50_ms(predict: Predict, faces: np.ndarray, calls: int = LATENCY_CALLS) -> float:
    """The median time in ms of ``predict`` on one face (cycling through ``faces``), over
    ``calls`` calls after a few warm-up calls."""
    for i in range(WARMUP_CALLS):
        predict(faces[i % len(faces)][None])
    times = []
    for i in range(calls):
        one = faces[i % len(faces)][None]
        start = time.perf_counter()
        predict(one)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def images_per_s(predict: Predict, faces: np.ndarray, batch: int = THROUGHPUT_BATCH,
                 min_seconds: float = 1.0) -> float:
    """Faces per second through ``predict`` at ``batch`` faces a call (``faces`` repeated to
    fill a batch), after one warm-up call; timed over at least ``min_seconds`` and 3 calls."""
    x = np.resize(faces, (batch, *faces.shape[1:]))
    predict(x)
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < min_seconds:
        predict(x)
        calls += 1
    return calls * batch / (time.perf_counter() - start)


def signature_predict(saved_model_dir: str | Path, signature: str) -> Predict:
    """A SavedModel's pixel signature as a callable on float32 faces."""
    import tensorflow as tf

    from serving.contract import SIGNATURES

    fn = tf.saved_model.load(str(saved_model_dir)).signatures[signature]
    input_name = SIGNATURES[signature].input.name
    return lambda x: fn(**{input_name: tf.constant(x)})


def measure_saved_model(saved_model_dir: str | Path, faces: np.ndarray,
                        signatures: list[str]) -> dict[str, dict[str, float]]:
    """``{signature: {"p50_ms", "batch64_images_per_s"}}`` for each pixel signature named,
    on float32 ``faces`` [n,48,48,1]."""
    result = {}
    for name in signatures:
        predict = signature_predict(saved_model_dir, name)
        result[name] = {"p50_ms": round(p50_ms(predict, faces), 3),
                        "batch64_images_per_s": round(images_per_s(predict, faces), 1)}
    return result


def measure_candidate(model: Any, faces: np.ndarray,
                      tta_model: Any = None) -> dict[str, dict[str, float]]:
    """Export the Keras ``model`` (and its TTA form) to a temporary SavedModel as the export
    step would, and measure its pixel signatures (:func:`measure_saved_model`)."""
    from components.export import write_saved_model
    from serving.contract import PIXELS, SIGNATURES, served_signatures

    pixel_signatures = [n for n in served_signatures(tta_model is not None)
                        if SIGNATURES[n].input == PIXELS]
    with tempfile.TemporaryDirectory() as tmp:
        write_saved_model(model, Path(tmp) / "candidate", tta_model=tta_model)
        return measure_saved_model(Path(tmp) / "candidate", faces, pixel_signatures)
