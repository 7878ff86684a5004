# Length: writing, self-checking (every signature against the Keras model, JPEG bytes
# against Pillow's pixels, the calibration heads recomputed) and warming the SavedModel are
# one guarantee: what is emitted serves what was trained.
"""Export: a self-verified SavedModel that TensorFlow Serving loads.

The signatures, their inputs and outputs are those :mod:`serving.contract` declares
(``serving_default`` on pixels, ``predict_images`` on encoded images, ``class_names`` naming
the label set's ids, ...); this module builds them over a Keras model and checks the result
against that declaration.

``assets.extra/`` carries the label names (the dataset's label set) and the run's metrics.
The export reloads what it wrote and refuses to emit it unless the predictions match the Keras model on real faces.
"""

from __future__ import annotations

import functools
import json
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from components.dataset import FaceDataset, held_out_split, to_model_input, write_json
from components.explain import gradcam, gradcam_model
from components.images import decode_image, jpeg_bytes_and_pixels, png_bytes
from components.train.calibrate import apply_heads, calibration_heads
from components.train.models import load_trained
from components.train.recipe import check_tta
from components.train.tta import with_tta
from serving.contract import (
    ASSETS_EXTRA,
    CLASS_ID,
    CLASS_NAME,
    CLASS_NAMES,
    FACE_SHAPE,
    HEATMAPS,
    IMAGE_BYTES,
    IMAGE_SIZE,
    LABELS_FILE,
    METRICS_FILE,
    NUM_CLASSES,
    PIXELS,
    PROBABILITIES,
    SIGNATURE_CLASS_NAMES,
    SIGNATURE_EXPLAIN,
    SIGNATURE_EXPLAIN_IMAGES,
    SIGNATURE_IMAGES,
    SIGNATURE_IMAGES_TTA,
    SIGNATURE_PIXELS,
    SIGNATURE_PIXELS_TTA,
    SIGNATURES,
    WARMUP_FILE,
    TensorInfo,
    served_class_names,
    served_signatures,
)

TOLERANCE = 1e-4


def tensor_spec(info: TensorInfo) -> tf.TensorSpec:
    """The contract's description of a tensor as a ``tf.TensorSpec``."""
    return tf.TensorSpec(list(info.shape), tf.as_dtype(info.dtype), name=info.name)


Endpoints = dict[str, tuple[Callable[..., dict[str, tf.Tensor]], tf.TensorSpec]]
# (model, its TTA form or None) -> the signatures to export
EndpointBuilder = Callable[[keras.Model, keras.Model | None], Endpoints]


class ExportError(Exception):
    """The SavedModel does not honour the serving contract; nothing was emitted."""


def _outputs(probabilities: tf.Tensor, class_names: Sequence[str]) -> dict[str, tf.Tensor]:
    class_id = tf.argmax(probabilities, axis=1, output_type=tf.int64)
    return {PROBABILITIES: probabilities, CLASS_ID: class_id,
            CLASS_NAME: tf.gather(tf.constant(list(class_names)), class_id)}


def _decode(image_bytes: tf.Tensor) -> tf.Tensor:
    return tf.map_fn(decode_image, image_bytes,
                     fn_output_signature=tf.TensorSpec(FACE_SHAPE, tf.float32))


def _signature_functions(model: keras.Model, class_names: Sequence[str]
                         ) -> tuple[Callable, Callable]:
    """The pixel and the image-bytes functions of the contract over ``model``."""
    def predict_pixels(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        return _outputs(model(pixels, training=False), class_names)

    def predict_images(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return predict_pixels(_decode(image_bytes))

    return predict_pixels, predict_images


def _explain_functions(grad_model: keras.Model, class_names: Sequence[str]
                       ) -> tuple[Callable, Callable]:
    """The explain signatures' functions: the single-pass outputs plus Grad-CAM heatmaps."""
    def explain_pixels(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        probabilities, heatmaps = gradcam(grad_model, pixels)
        return {**_outputs(probabilities, class_names), HEATMAPS: heatmaps}

    def explain_images(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return explain_pixels(_decode(image_bytes))

    return explain_pixels, explain_images


def serving_endpoints(model: keras.Model, tta_model: keras.Model | None = None,
                      class_names: Sequence[str] | None = None) -> Endpoints:
    """The contract's signatures: the single-pass ones over ``model``, the explain ones
    when it has a convolutional feature map, with a ``tta_model`` (``model`` averaged over
    test-time augmentation views) the TTA ones over it, and ``class_names``, which names
    the label set's ids. ``class_names``: the label set (by default FER2013's for a model of
    seven outputs, else numbered). Returns signature name -> (function, input spec)."""
    names = tuple(class_names or served_class_names(model.output_shape[-1]))

    def name_ids(class_id: tf.Tensor) -> dict[str, tf.Tensor]:
        return {CLASS_NAME: tf.gather(tf.constant(list(names)), class_id)}

    functions = dict(zip((SIGNATURE_PIXELS, SIGNATURE_IMAGES),
                         _signature_functions(model, names)))
    grad_model = gradcam_model(model)
    if grad_model is not None:
        functions.update(zip((SIGNATURE_EXPLAIN, SIGNATURE_EXPLAIN_IMAGES),
                             _explain_functions(grad_model, names)))
    if tta_model is not None:
        functions.update(zip((SIGNATURE_PIXELS_TTA, SIGNATURE_IMAGES_TTA),
                             _signature_functions(tta_model, names)))
    functions[SIGNATURE_CLASS_NAMES] = name_ids
    return {name: (fn, tensor_spec(SIGNATURES[name].input)) for name, fn in functions.items()}


def write_saved_model(model: keras.Model, path: Path,
                      endpoints: EndpointBuilder = serving_endpoints,
                      tta_model: keras.Model | None = None) -> None:
    """Write ``model`` as a SavedModel at ``path``, with the signatures ``endpoints`` builds over
    it and its TTA form ``tta_model`` (by default the contract's)."""
    archive = keras.export.ExportArchive()
    # No archive.track(model): the endpoints' own variables are tracked anyway, and tracking
    # the model as well stores every weight twice (keras-team/keras#23553: 2x the files and
    # 2x TF Serving's memory). The model has no lookup tables, the one thing track() adds.
    for name, (fn, spec) in endpoints(model, tta_model).items():
        archive.add_endpoint(name=name, fn=fn, input_signature=[spec])
    archive.write_out(str(path), verbose=False)


def verify_saved_model(path: Path, model: keras.Model, faces: np.ndarray,
                       tolerance: float = TOLERANCE,
                       tta_model: keras.Model | None = None,
                       class_names: Sequence[str] = CLASS_NAMES) -> dict[str, float]:
    """Reload the SavedModel and check its contract and predictions on real ``faces``: the
    single-pass signatures against ``model``, the TTA ones (when ``tta_model`` is given)
    against ``tta_model``, and that every signature names the classes of ``class_names``
    with the same output shapes, ``class_names`` naming each id.

    Raises :class:`ExportError` naming the first problem. Returns the largest difference
    in probability per signature.
    """
    loaded = tf.saved_model.load(str(path))
    explain = gradcam_model(model) is not None
    references = {False: model.predict(to_model_input(faces), verbose=0)}
    if tta_model is not None:
        references[True] = tta_model.predict(to_model_input(faces), verbose=0)
    inputs = {PIXELS.name: tf.constant(to_model_input(faces)),
              IMAGE_BYTES.name: tf.constant([png_bytes(f) for f in faces])}
    names, k = list(class_names), len(class_names)
    diffs = {}
    for name in served_signatures(tta_model is not None, explain):
        signature = SIGNATURES[name]
        if name not in loaded.signatures:
            raise ExportError(f"signature {name!r} is missing (has {sorted(loaded.signatures)})")
        if signature.lookup:
            out = loaded.signatures[name](**{CLASS_ID: tf.range(k, dtype=tf.int64)})
            if [n.decode() for n in out[CLASS_NAME].numpy()] != names:
                raise ExportError(f"signature {name!r} does not name ids 0-{k - 1} "
                                  f"{names}")
            diffs[name] = 0.0
            continue
        expected = references[signature.tta]
        fn = loaded.signatures[name]
        _, kwargs = fn.structured_input_signature
        want_in = signature.input
        if list(kwargs) != [want_in.name] or kwargs[want_in.name].dtype.name != want_in.dtype:
            raise ExportError(f"signature {name!r} takes {kwargs}, expected {want_in.name!r} "
                              f"{want_in.dtype}")
        out = fn(**{want_in.name: inputs[want_in.name]})
        for want in signature.outputs:
            if want.name not in out or out[want.name].dtype.name != want.dtype:
                raise ExportError(f"signature {name!r} output {want.name!r} missing or not "
                                  f"{want.dtype}: { {k: v.dtype.name for k, v in out.items()} }")
        probabilities = out[PROBABILITIES].numpy()
        if probabilities.shape != (len(faces), k):
            raise ExportError(f"signature {name!r} returns probabilities of shape "
                              f"{probabilities.shape}, expected {(len(faces), k)}")
        diff = float(np.abs(probabilities - expected).max())
        if diff > tolerance:
            raise ExportError(f"signature {name!r} disagrees with the Keras model on real faces: "
                              f"max |probability difference| {diff:.2e} > {tolerance:.0e}")
        ids = out[CLASS_ID].numpy()
        served_names = [n.decode() for n in out[CLASS_NAME].numpy()]
        if (not np.array_equal(ids, expected.argmax(axis=1))
                or served_names != [names[i] for i in ids]):
            raise ExportError(f"signature {name!r} returns class ids or names that do not match "
                              f"its probabilities and the labels {names}")
        if signature.explain:
            heatmaps = out[HEATMAPS].numpy()
            if (heatmaps.shape != (len(faces), k, IMAGE_SIZE, IMAGE_SIZE)
                    or not np.isfinite(heatmaps).all() or heatmaps.min() < 0
                    or heatmaps.max() > 1):
                raise ExportError(f"signature {name!r} returns heatmaps of shape "
                                  f"{heatmaps.shape} outside [0, 1] or not finite")
        diffs[name] = diff
    extra = sorted(set(loaded.signatures) - set(diffs))
    if extra:
        raise ExportError(f"signatures {extra} are not in the contract for this model")
    # Encoded JPEGs (lossy) through the image signature give what the pixel signature gives
    # for the pixels Pillow decodes from the same bytes: both paths see the same face.
    jpegs, decoded = zip(*(jpeg_bytes_and_pixels(f) for f in faces))
    by_bytes = loaded.signatures[SIGNATURE_IMAGES](
        **{IMAGE_BYTES.name: tf.constant(list(jpegs))})[PROBABILITIES]
    by_pixels = model.predict(to_model_input(np.stack(decoded)), verbose=0)
    diff = float(np.abs(by_bytes.numpy() - by_pixels).max())
    if diff > tolerance:
        raise ExportError(f"signature {SIGNATURE_IMAGES!r} on JPEG bytes disagrees with the "
                          f"model on Pillow's pixels of them: max |probability difference| "
                          f"{diff:.2e} > {tolerance:.0e}")
    diffs[f"{SIGNATURE_IMAGES} (JPEG)"] = diff
    # The calibration heads, computed independently: serving_default's probabilities are
    # softmax((log p - tau log prior) / T) of the network's own p.
    base, heads = calibration_heads(model)
    if heads:
        expected = apply_heads(base.predict(to_model_input(faces), verbose=0), heads)
        served_p = loaded.signatures[SIGNATURE_PIXELS](
            **{PIXELS.name: inputs[PIXELS.name]})[PROBABILITIES].numpy()
        diff = float(np.abs(served_p - expected).max())
        if diff > tolerance:
            described = " then ".join(type(h).__name__ for h in heads)
            raise ExportError(f"{SIGNATURE_PIXELS!r} is not the network's probabilities through "
                              f"{described}: max |probability difference| {diff:.2e} > "
                              f"{tolerance:.0e}")
        diffs["calibration"] = diff
    return diffs


def write_warmup_requests(path: Path, faces: np.ndarray, model_name: str = "fer",
                          tta: bool = False, explain: bool = False,
                          num_classes: int = NUM_CLASSES) -> int:
    """TF Serving's warm-up file: PredictionLog records replayed when a version loads, so
    its first real request does not pay for graph tracing. A batch of 1 and of 8 for each
    pixel signature, a batch of 2 for each image signature (the TTA ones with ``tta``, the
    explain ones with ``explain``), the ``num_classes`` ids for ``class_names``. Returns the
    number of records."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    requests = []
    for name in served_signatures(tta, explain):
        if SIGNATURES[name].lookup:
            requests.append((name, tf.make_tensor_proto(np.arange(num_classes, dtype=np.int64))))
        elif SIGNATURES[name].input == PIXELS:
            requests += [(name, tf.make_tensor_proto(to_model_input(faces[:n]))) for n in (1, 8)]
        else:
            requests.append((name, tf.make_tensor_proto([png_bytes(f) for f in faces[:2]])))
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, tensor in requests:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
            request.inputs[SIGNATURES[signature].input.name].CopyFrom(tensor)
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return len(requests)


def sample_faces(dataset_dir: str | Path, model: keras.Model, n: int = 64,
                 seed: int = 0) -> np.ndarray:
    """Real faces for the self-check, from test (or val): one for every class the model
    predicts on a seeded pool of 512, so each class name it can return is checked, then
    random others up to ``n``."""
    data = FaceDataset.load(dataset_dir)
    _, pool = held_out_split(data)
    rng = np.random.default_rng(seed)
    candidates = rng.permutation(len(pool))[:512]
    predicted = model.predict(to_model_input(pool.images[candidates]), verbose=0).argmax(axis=1)
    _, first = np.unique(predicted, return_index=True)  # one face per predicted class
    rest = np.setdiff1d(candidates, candidates[first])[: max(n - len(first), 0)]
    return pool.images[np.concatenate([candidates[first], rest])]


def export(model_dir: str | Path, dataset_dir: str | Path, output_dir: str | Path,
           metrics: dict[str, Any] | None = None,
           endpoints: EndpointBuilder | None = None,
           tta: str = "none") -> dict[str, Any]:
    """Export the Keras model in ``model_dir`` as a verified SavedModel at ``output_dir``.

    ``serving_default`` and ``predict_images`` serve one pass of the network. ``tta``
    (``"flip"``, ``"centre"``, ``"crops"``; :func:`components.train.tta.with_tta`) adds
    ``serving_tta`` and ``predict_images_tta``, which average the views: a choice for
    callers, not a cost every request pays. The served labels are the dataset's label set; ``endpoints``
    replaces the contract's signature builder (tests). The self-check compares each
    signature with its Keras model. The
    SavedModel is written beside ``output_dir``, verified, then renamed into place; on any
    mismatch it is deleted and :class:`ExportError` raised.
    """
    check_tta(tta)
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ExportError(f"{output_dir} already exists and is not empty")
    model = load_trained(model_dir)
    names = FaceDataset.load(dataset_dir).class_names
    if model.output_shape[-1] != len(names):
        raise ExportError(f"the model has {model.output_shape[-1]} outputs, the dataset's "
                          f"label set {len(names)} classes ({', '.join(names)})")
    endpoints = endpoints or functools.partial(serving_endpoints, class_names=names)
    tta_model = None if tta == "none" else with_tta(model, tta)
    faces = sample_faces(dataset_dir, model)
    staging = output_dir.with_name(f".{output_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        write_saved_model(model, staging, endpoints, tta_model)
        diffs = verify_saved_model(staging, model, faces, tta_model=tta_model,
                                   class_names=names)
        extra = staging / ASSETS_EXTRA
        extra.mkdir()
        (extra / LABELS_FILE).write_text("\n".join(names) + "\n")
        training = Path(model_dir) / "summary.json"  # the training run's own metrics
        record = {**(metrics or {}), "tta": tta}
        if training.is_file():
            record["training"] = json.loads(training.read_text())
        write_json(extra / METRICS_FILE, record)
        explain = gradcam_model(model) is not None
        write_warmup_requests(extra / WARMUP_FILE, faces, tta=tta_model is not None,
                              explain=explain, num_classes=len(names))
        if output_dir.exists():
            output_dir.rmdir()
        staging.rename(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"path": str(output_dir), "signatures": served_signatures(tta != "none", explain),
            "class_names": list(names), "verified_on": len(faces),
            "max_probability_difference": diffs, "tta": tta}
