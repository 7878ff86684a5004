"""Export: the SavedModel contract, reloaded with tf.saved_model.load, and the self-check."""

from __future__ import annotations

import io
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components.dataset import FaceDataset
from components.export import (
    SIGNATURE_IMAGES,
    SIGNATURE_PIXELS,
    ExportError,
    export,
    serving_endpoints,
)
from components.images import decode_image
from components.ingest.readers import decode_face
from serving.contract import CLASS_NAMES, SIGNATURE_CLASS_NAMES
from tests.helpers import face_pixels, real_faces


@pytest.fixture(scope="module")
def exported(trained_model, prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "saved_model"
    result = export(trained_model, prepared / "dataset", out, {"macro_f1": 0.42})
    return out, result


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_both_signatures_return_probabilities(exported, prepared):
    path, result = exported
    assert result["max_probability_difference"][SIGNATURE_PIXELS] <= 1e-4
    loaded = tf.saved_model.load(str(path))
    faces = FaceDataset.load(prepared / "dataset").split("test").images[:5]
    out = loaded.signatures[SIGNATURE_PIXELS](pixels=tf.constant(faces[..., None], tf.float32))
    assert out["probabilities"].shape == (5, 7)
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)
    assert out["class_id"].dtype == tf.int64
    names = [n.decode() for n in out["class_name"].numpy()]
    assert names == [CLASS_NAMES[i] for i in out["class_id"].numpy()]

    jpegs = [f.read_bytes() for f in real_faces("test", "happy", 3)]
    out_b = loaded.signatures[SIGNATURE_IMAGES](image_bytes=tf.constant(jpegs))
    assert out_b["probabilities"].shape == (3, 7)
    np.testing.assert_allclose(out_b["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)


def test_image_signature_takes_any_size_and_colour(exported, trained_model):
    path, _ = exported
    loaded = tf.saved_model.load(str(path))
    face = Image.open(real_faces("test", "surprise", 1)[0])
    big_rgb = face.convert("RGB").resize((200, 150))
    blobs = [encode(face, "PNG"), encode(big_rgb, "PNG"), encode(big_rgb, "JPEG"),
             encode(big_rgb.convert("RGBA"), "PNG")]
    probs = loaded.signatures[SIGNATURE_IMAGES](image_bytes=tf.constant(blobs))["probabilities"]
    model = keras.models.load_model(trained_model / "model.keras")
    # The 48x48 gray PNG is the face itself: same answer as the Keras model on its pixels.
    direct = model.predict(np.asarray(face, np.float32)[None, ..., None], verbose=0)
    np.testing.assert_allclose(probs[0], direct[0], atol=1e-4)
    # RGB and RGBA of the same picture decode to the same gray face.
    np.testing.assert_allclose(probs[1], probs[3], atol=1e-5)


def test_jpeg_bytes_and_pillow_pixels_give_the_same_prediction(exported):
    """A real FER2013 JPEG sent as its bytes to predict_images gets the prediction its pixels,
    decoded by Pillow as ingest does, get from serving_default: both paths see one face."""
    path, result = exported
    assert result["max_probability_difference"][f"{SIGNATURE_IMAGES} (JPEG)"] <= 1e-4
    loaded = tf.saved_model.load(str(path))
    files = [f for name in CLASS_NAMES for f in real_faces("test", name, 10)]
    pixels = np.stack([decode_face(f.read_bytes()) for f in files])[..., None].astype("f4")
    by_pixels = loaded.signatures[SIGNATURE_PIXELS](pixels=tf.constant(pixels))
    by_bytes = loaded.signatures[SIGNATURE_IMAGES](
        image_bytes=tf.constant([f.read_bytes() for f in files]))
    assert by_bytes["class_id"].numpy().tolist() == by_pixels["class_id"].numpy().tolist()
    np.testing.assert_allclose(by_bytes["probabilities"], by_pixels["probabilities"], atol=1e-3)
    # and the decoded pixels are Pillow's, exactly
    decoded = [decode_image(tf.constant(f.read_bytes())).numpy()[..., 0] for f in files[:20]]
    np.testing.assert_array_equal(np.stack(decoded), pixels[:20, ..., 0])


def test_assets_extra_carry_labels_and_metrics(exported):
    path, _ = exported
    assert (path / "assets.extra" / "labels.txt").read_text().split() == list(CLASS_NAMES)
    record = json.loads((path / "assets.extra" / "metrics.json").read_text())
    assert record["macro_f1"] == 0.42
    assert record["training"]["architecture"] == "baseline_cnn"  # the training run's metrics
    assert record["training"]["epochs_run"] == 2


def wrong_class_order(model, tta_model=None):
    """A deliberately wrong signature: class names off by one (id 0 -> 'disgust', ...)."""
    endpoints = serving_endpoints(model, tta_model)
    pixels_fn, spec = endpoints[SIGNATURE_PIXELS]
    wrong_names = tf.constant(CLASS_NAMES[1:] + CLASS_NAMES[:1])

    def predict_pixels(pixels):
        out = pixels_fn(pixels)
        return {**out, "class_name": tf.gather(wrong_names, out["class_id"])}

    return {**endpoints, SIGNATURE_PIXELS: (predict_pixels, spec)}


def unscaled_images(model, tta_model=None):
    """A deliberately wrong signature: image bytes fed to the model as 0-1 instead of 0-255."""
    endpoints = serving_endpoints(model, tta_model)
    pixels_fn, _ = endpoints[SIGNATURE_PIXELS]
    images_fn, spec = endpoints[SIGNATURE_IMAGES]

    def predict_images(image_bytes):
        pixels = tf.map_fn(lambda b: tf.image.convert_image_dtype(
            tf.io.decode_png(b, channels=1), tf.float32), image_bytes,
            fn_output_signature=tf.TensorSpec([48, 48, 1], tf.float32))
        return pixels_fn(pixels)

    return {**endpoints, SIGNATURE_IMAGES: (predict_images, spec)}


def missing_signature(model, tta_model=None):
    endpoints = serving_endpoints(model, tta_model)
    return {SIGNATURE_PIXELS: endpoints[SIGNATURE_PIXELS]}


@pytest.mark.parametrize("endpoints, message", [
    (wrong_class_order, "class ids or names that do not match"),
    (unscaled_images, "'predict_images' disagrees with the Keras model"),
    (missing_signature, "signature 'predict_images' is missing"),
])
def test_self_check_refuses_a_wrong_signature(endpoints, message, trained_model, prepared,
                                              tmp_path):
    out = tmp_path / "saved_model"
    with pytest.raises(ExportError, match=message):
        export(trained_model, prepared / "dataset", out, endpoints=endpoints)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_refuses_to_overwrite(exported, trained_model, prepared):
    path, _ = exported
    with pytest.raises(ExportError, match="already exists"):
        export(trained_model, prepared / "dataset", path)


def test_warmup_requests_replay_against_the_saved_model(exported):
    """The TF Serving warm-up file holds real PredictRequests that the model answers."""
    from tensorflow_serving.apis import prediction_log_pb2

    path, _ = exported
    loaded = tf.saved_model.load(str(path))
    records = list(tf.data.TFRecordDataset(str(path / "assets.extra" /
                                               "tf_serving_warmup_requests")))
    assert len(records) == 7
    signatures = []
    for raw in records:
        log = prediction_log_pb2.PredictionLog.FromString(raw.numpy())
        request = log.predict_log.request
        signatures.append(request.model_spec.signature_name)
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        out = loaded.signatures[request.model_spec.signature_name](
            **{k: tf.constant(v) for k, v in inputs.items()})
        if request.model_spec.signature_name == SIGNATURE_CLASS_NAMES:  # names ids 0..6
            assert [n.decode() for n in out["class_name"].numpy()] == list(CLASS_NAMES)
        else:
            assert out["probabilities"].shape[1] == 7
    assert signatures == [SIGNATURE_PIXELS, SIGNATURE_PIXELS, SIGNATURE_IMAGES,
                          "explain", "explain", "explain_images", SIGNATURE_CLASS_NAMES]


def test_every_weight_is_stored_once(exported, trained_model):
    """keras-team/keras#23553: tracking the model as well as the endpoints stores each
    weight twice (twice the files, twice TF Serving's memory)."""
    path, _ = exported
    stored = sum(int(np.prod(shape)) for name, shape in
                 tf.train.list_variables(str(path / "variables" / "variables"))
                 if name != "_CHECKPOINTABLE_OBJECT_GRAPH")
    model = keras.models.load_model(trained_model / "model.keras")
    assert stored == model.count_params()


def test_the_explain_signature_serves_grad_cam_heatmaps(exported, trained_model):
    """Grad-CAM through the served graph: seven maps per face in [0, 1], the same
    probabilities as serving_default, and the maps Grad-CAM's definition gives, computed
    here independently on the Keras model (the last conv activation's channels weighed by
    the mean gradient of each class's log-probability)."""
    from components.explain import feature_layer
    from components.train.models import load_trained
    from serving.contract import HEATMAPS, SIGNATURE_EXPLAIN, SIGNATURE_EXPLAIN_IMAGES

    path, _ = exported
    loaded = tf.saved_model.load(str(path))
    files = real_faces("test", "happy", 2) + real_faces("test", "angry", 2)
    faces = np.stack([face_pixels(f) for f in files])[..., None].astype(np.float32)
    explained = loaded.signatures[SIGNATURE_EXPLAIN](pixels=tf.constant(faces))
    plain = loaded.signatures[SIGNATURE_PIXELS](pixels=tf.constant(faces))
    np.testing.assert_allclose(explained["probabilities"], plain["probabilities"], atol=1e-5)
    heatmaps = explained[HEATMAPS].numpy()
    assert heatmaps.shape == (4, 7, 48, 48)
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1

    model = load_trained(trained_model)
    layer = feature_layer(model)
    assert isinstance(layer, keras.layers.Activation) and len(layer.output.shape) == 4
    probe = keras.Model(model.inputs, [layer.output, model.output])
    for k in range(7):
        with tf.GradientTape() as tape:
            features, probs = probe(tf.constant(faces), training=False)
            score = tf.math.log(tf.maximum(probs[:, k], 1e-12))
        grads = tape.gradient(score, features).numpy()
        cam = np.maximum((features.numpy() * grads.mean(axis=(1, 2), keepdims=True)).sum(-1), 0)
        peak = cam.max(axis=(1, 2), keepdims=True)
        cam = np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)
        expected = tf.image.resize(cam[..., None], [48, 48]).numpy()[..., 0]
        np.testing.assert_allclose(heatmaps[:, k], np.clip(expected, 0, 1), atol=1e-4)
    by_bytes = loaded.signatures[SIGNATURE_EXPLAIN_IMAGES](
        image_bytes=tf.constant([f.read_bytes() for f in files]))
    assert by_bytes[HEATMAPS].shape == (4, 7, 48, 48)
