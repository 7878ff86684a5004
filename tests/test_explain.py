"""Explanations: Grad-CAM maps that are about the face, that depend on what the network
learnt, that the export checks and fer-serve serves; and the evaluation report's section.

The localisation and randomisation checks need a network that has learnt something: the
session's ``trained_model`` (two epochs on 210 faces) is at chance, and its maps are nearly
uniform (mean value 0.86 of a peak of 1). They use the released model instead, rebuilt in
Keras from the weights of the bundled SavedModel (``serving/model/fer/1``, macro F1 0.66
on FER2013's test split) and checked to be that network: no training, a few seconds.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from scipy.stats import spearmanr

from components.dataset import to_model_input
from components.evaluate import REPORT_HTML, evaluate, format_evaluation
from components.explain import gradcam_model
from components.explanation_report import (
    EXPLANATIONS_DIR,
    GALLERY_FACES,
    GALLERY_PAIRS,
    MEAN_HEATMAPS_NPZ,
)
from components.export import ExportError, export, serving_endpoints
from components.train.models import load_trained
from serving.contract import (
    BUNDLED_MODEL_BASE,
    CLASS_NAMES,
    HEATMAPS,
    MODEL_FILE,
    PROBABILITIES,
    SIGNATURE_EXPLAIN,
    SIGNATURE_EXPLAIN_IMAGES,
)
from tests.helpers import face_pixels, real_faces

PER_CLASS = 10  # real test faces per class in the localisation and randomisation checks


def faces_of_every_class(n: int = PER_CLASS) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` FER2013 test faces of each class [7n,48,48] uint8, and their labels."""
    files = [f for name in CLASS_NAMES for f in real_faces("test", name, n)]
    return np.stack([face_pixels(f) for f in files]), np.repeat(np.arange(len(CLASS_NAMES)), n)


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> tuple[Path, keras.Model]:
    """The released network as a trained model directory and its Keras model: the
    architecture its training record names, the bundled SavedModel's weights, its prior
    adjustment; checked against the bundled ``serving_default`` (which averages the test-time
    augmentation views the record names) on real faces."""
    from components.train.calibrate import with_prior_adjustment
    from components.train.models import build_model, load_initial_weights
    from components.train.tta import with_tta

    version = BUNDLED_MODEL_BASE / "1"
    record = json.loads((version / "assets.extra" / "metrics.json").read_text())
    training = record["training"]
    model = build_model(training["architecture"], **training["config"]["model_kwargs"])
    assert load_initial_weights(model, version) == len(model.weights)
    if training.get("logit_adjustment"):
        model = with_prior_adjustment(model, training["logit_adjustment"]["prior"],
                                      training["logit_adjustment"]["tau"])
    faces, _ = faces_of_every_class(2)
    bundled = tf.saved_model.load(str(version)).signatures["serving_default"]
    served = bundled(pixels=tf.constant(to_model_input(faces)))[PROBABILITIES].numpy()
    np.testing.assert_allclose(with_tta(model, record["tta"]).predict(
        to_model_input(faces), verbose=0), served, atol=1e-5)
    model_dir = tmp_path_factory.mktemp("released")
    model.save(model_dir / MODEL_FILE)
    return model_dir, model



def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per pair of maps, the Spearman rank correlation of their pixels (0 where one of them
    is constant: it ranks nothing)."""
    return np.array([0.0 if x.std() == 0 or y.std() == 0 else spearmanr(x.ravel(), y.ravel())[0]
                     for x, y in zip(a, b)])


def predicted_class_maps(model: keras.Model, faces: np.ndarray,
                         classes: np.ndarray | None = None) -> np.ndarray:
    """The explain signature's heatmaps [N,48,48] of ``model`` (in-process, the same Grad-CAM
    graph) for ``faces``, of ``classes`` (default: the class ``model`` predicts)."""
    from components.explanation_report import class_heatmaps

    if classes is None:
        classes = model.predict(to_model_input(faces), verbose=0).argmax(axis=1)
    return class_heatmaps(model, faces, classes[:, None])[:, 0]


# --- the maps are about the face ---------------------------------------------------------

FACE = 32  # a face's side in its 48x48 frame: 16 px of flat background on two sides
MARGIN = 48 - FACE


def framed(face: np.ndarray, offset: int) -> np.ndarray:
    """``face`` shrunk to FACE x FACE, at (offset, offset) of a 48x48 frame of its mean grey."""
    small = np.asarray(Image.fromarray(face).resize((FACE, FACE), Image.BICUBIC))
    frame = np.full((48, 48), round(float(face.mean())), np.uint8)
    frame[offset:offset + FACE, offset:offset + FACE] = small
    return frame


def test_the_heatmap_is_not_uniform_and_peaks_on_the_face_wherever_it_is(released):
    """70 real test faces (10 per class), each shrunk and framed with a flat margin, once at
    the top left and once at the bottom right of the frame; the map of the predicted class.

    What a map that ignores the face cannot do: a map that stays put while the face moves
    (uniform, or centred) peaks in the part of the frame that only the face covers at most
    half of the time (those parts are disjoint for the two placements), and leans towards
    the face as often as away from it. The released model's maps (measured: mean map value
    0.19 of its peak 1; 64% of the mass on the face's 44% of the frame; peak on the face's
    own part 0.66; lean towards the face in 80% of the maps, by 0.27 of the mass on average)
    clear each bound with margin. (The session's two-epoch model does not: its maps are
    nearly uniform, mean value 0.86, lean 0.00.)
    """
    _, model = released
    faces, _ = faces_of_every_class()
    boxes = {}
    for offset in (0, MARGIN):
        box = np.zeros((48, 48), bool)
        box[offset:offset + FACE, offset:offset + FACE] = True
        boxes[offset] = box
    frames = np.stack([framed(f, offset) for offset in (0, MARGIN) for f in faces])
    both = predicted_class_maps(model, frames).reshape(2, len(faces), 48, 48)
    means, mass, peaks, lean = [], [], [], []
    for maps, (offset, other) in zip(both, ((0, MARGIN), (MARGIN, 0))):
        assert (maps.max(axis=(1, 2)) > maps.min(axis=(1, 2))).all()  # no flat map
        own, away = boxes[offset] & ~boxes[other], boxes[other] & ~boxes[offset]
        total = maps.sum(axis=(1, 2))
        means.append(maps.mean(axis=(1, 2)))
        mass.append((maps * boxes[offset]).sum(axis=(1, 2)) / total)
        peaks.append([own.flat[k] for k in maps.reshape(len(maps), -1).argmax(axis=1)])
        lean.append(((maps * own).sum(axis=(1, 2)) - (maps * away).sum(axis=(1, 2))) / total)
    means, mass, peaks, lean = map(np.concatenate, (means, mass, peaks, lean))
    area = boxes[0].mean()
    print(f"mean map value {means.mean():.2f}; mass on the face {mass.mean():.2f} (area "
          f"{area:.2f}); peak on the face's own part {peaks.mean():.2f}; lean > 0 in "
          f"{(lean > 0).mean():.2f}, mean {lean.mean():.2f}")
    assert np.median(means) < 0.4  # concentrated: a uniform map's mean value is 1
    assert mass.mean() > area + 0.1
    assert peaks.mean() >= 0.58
    assert (lean > 0).mean() >= 0.65 and lean.mean() >= 0.15


# --- the maps depend on what the network learnt (Adebayo et al., 2018) --------------------

def randomised(model: keras.Model, part: str) -> keras.Model:
    """A copy of ``model`` with freshly initialised weights: all of them, or (``"head"``)
    those of its dense layers only, the top of Adebayo et al.'s cascading randomisation."""
    keras.utils.set_random_seed(0)
    copy = keras.models.clone_model(model)  # new layers, new initial weights
    if part == "head":
        copy.set_weights(model.get_weights())
        for layer in copy.layers:
            if isinstance(layer, keras.layers.Dense):
                layer.kernel.assign(layer.kernel_initializer(layer.kernel.shape))
                layer.bias.assign(np.zeros(layer.bias.shape, np.float32))
    fresh, learnt = (m.get_layer("predictions").get_weights()[0] for m in (copy, model))
    assert not np.allclose(fresh, learnt)
    return copy


@pytest.fixture(scope="module")
def same_model_similarity(released) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Faces, the released model's predicted classes and maps for them, and the mean
    Spearman correlation of those maps with the same model's maps for the same faces sent
    as JPEG (quality 90, as a client would): the similarity of explanations that should
    agree."""
    from components.images import jpeg_bytes_and_pixels

    _, model = released
    faces, _ = faces_of_every_class()
    classes = model.predict(to_model_input(faces), verbose=0).argmax(axis=1)
    jpegs = np.stack([jpeg_bytes_and_pixels(f)[1] for f in faces])
    maps, by_jpeg = predicted_class_maps(model, np.concatenate([faces, jpegs]),
                                         np.tile(classes, 2)).reshape(2, len(faces), 48, 48)
    return faces, classes, maps, float(spearman(maps, by_jpeg).mean())


@pytest.mark.parametrize("part", ["all", "head"])
def test_a_randomised_model_explains_differently(part, released, same_model_similarity):
    """Model randomisation (Adebayo et al., "Sanity checks for saliency maps", 2018): maps
    that survive re-initialising the weights explain the architecture or the input, not what
    was learnt. For the same faces and classes, the mean Spearman rank correlation of the
    released model's maps with those of a re-initialised copy (measured: -0.02 for all
    layers, 0.04 for the dense head alone) is far below that of the model with itself on a
    JPEG of each face (0.91). Bounds with margin on both sides: the same model >= 0.8, the
    randomised one <= 0.3 and at least 0.5 below it; a check that Grad-CAM reads the
    gradients of the network it is given."""
    _, model = released
    faces, classes, maps, same = same_model_similarity
    other = spearman(maps, predicted_class_maps(randomised(model, part), faces, classes)).mean()
    print(f"mean Spearman: same model {same:.3f}, randomised ({part}) {other:.3f}")
    assert same >= 0.8
    assert other <= 0.3 and other <= same - 0.5


# --- the export checks the explain signatures and fer-serve serves them -------------------

def test_the_export_self_check_covers_the_explain_signatures(exported_model, trained_model,
                                                             prepared):
    """The self-check that guards every export ran the explain signatures too, on real
    faces: probabilities equal to the Keras model's, heatmaps in range."""
    from components.dataset import FaceDataset
    from components.export import verify_saved_model

    faces = FaceDataset.load(prepared / "dataset").split("test").images[:16]
    diffs = verify_saved_model(exported_model, load_trained(trained_model), faces)
    assert {SIGNATURE_EXPLAIN, SIGNATURE_EXPLAIN_IMAGES} <= set(diffs)
    assert max(diffs[SIGNATURE_EXPLAIN], diffs[SIGNATURE_EXPLAIN_IMAGES]) <= 1e-4


def heatmaps_out_of_range(model, tta_model=None):
    """A deliberately wrong explain signature: its heatmaps doubled, up to 2."""
    endpoints = serving_endpoints(model, tta_model)
    explain_fn, spec = endpoints[SIGNATURE_EXPLAIN]

    def explain(pixels):
        out = explain_fn(pixels)
        return {**out, HEATMAPS: out[HEATMAPS] * 2.0}

    return {**endpoints, SIGNATURE_EXPLAIN: (explain, spec)}


def test_the_self_check_refuses_heatmaps_out_of_range(trained_model, prepared, tmp_path):
    """(A missing signature, explain included, is refused like any other: test_export.)"""
    with pytest.raises(ExportError, match="'explain' returns heatmaps of shape .* outside"):
        export(trained_model, prepared / "dataset", tmp_path / "saved_model",
               endpoints=heatmaps_out_of_range)
    assert list(tmp_path.iterdir()) == []


def test_fer_serve_serves_the_explain_signatures_over_rest_and_grpc(exported_model, serve,
                                                                    tmp_path):
    """The deployed model on a real fer-serve (127.0.0.1): the heatmaps that come back over
    REST and gRPC are the SavedModel's own, for pixels and for encoded images."""
    import requests

    from components.deploy import deploy
    from serving.client import GrpcClient, RestClient

    deploy(exported_model, str(tmp_path / "serving"), "fer")
    server = serve(tmp_path / "serving" / "fer")
    files = real_faces("test", "surprise", 2) + real_faces("test", "sad", 2)
    faces = np.stack([face_pixels(f) for f in files])
    loaded = tf.saved_model.load(str(exported_model))
    expected = loaded.signatures[SIGNATURE_EXPLAIN](pixels=tf.constant(to_model_input(faces)))
    rest = RestClient(f"http://127.0.0.1:{server.rest_port}")
    grpc_client = GrpcClient(f"127.0.0.1:{server.grpc_port}")
    try:
        for got in (rest.explain_pixels(faces), grpc_client.explain_pixels(faces)):
            assert got[HEATMAPS].shape == (4, 7, 48, 48)
            np.testing.assert_allclose(got[HEATMAPS], expected[HEATMAPS], atol=1e-5)
            np.testing.assert_allclose(got[PROBABILITIES], expected[PROBABILITIES], atol=1e-5)
    finally:
        grpc_client.close()
    blobs = [f.read_bytes() for f in files]
    by_bytes = loaded.signatures[SIGNATURE_EXPLAIN_IMAGES](image_bytes=tf.constant(blobs))
    response = requests.post(f"{rest.base}:predict", timeout=30, json={
        "signature_name": SIGNATURE_EXPLAIN_IMAGES,
        "instances": [{"b64": base64.b64encode(b).decode()} for b in blobs]})
    assert response.status_code == 200, response.text
    rows = response.json()["predictions"]
    np.testing.assert_allclose([r[HEATMAPS] for r in rows], by_bytes[HEATMAPS], atol=1e-5)


# --- the evaluation report ---------------------------------------------------------------

@pytest.fixture(scope="module")
def evaluation(trained_model, prepared, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("evaluation")
    return out, evaluate(trained_model, prepared / "dataset", out, 0.0, 0.01,
                         measure_latency=False)


def embedded_pngs(page: str, css_class: str) -> list[tuple[str, bytes]]:
    """The ``(caption, PNG bytes)`` of each figure of ``css_class`` in an HTML page."""
    found = re.findall(rf"<figure class='{css_class}'[^>]*><img alt=\"[^\"]*\" "
                       r"src=\"data:image/png;base64,([^\"]+)\"><figcaption>([^<]*)</figcaption>",
                       page)
    return [(caption, base64.b64decode(data)) for data, caption in found]


def is_png(data: bytes) -> bool:
    with Image.open(io.BytesIO(data)) as img:
        return img.format == "PNG" and img.size[0] > 50


def test_the_report_shows_the_mean_heatmap_per_class_and_the_confident_mistakes(evaluation):
    out, metrics = evaluation
    record = metrics["explanations"]
    assert record["available"] and record["class_map"] == "true"
    page = (out / REPORT_HTML).read_text()
    assert "Where the network looks (Grad-CAM)" in page
    # the confusion matrix and the reliability diagram, then the heatmaps
    assert page.count("data:image/png;base64,") == 2 + 7 + len(record["gallery"])
    means = embedded_pngs(page, "mean-heatmap")
    assert [c for c, _ in means] == [f"{name}: 10 faces" for name in CLASS_NAMES]
    pairs = metrics["most_confused"][:GALLERY_PAIRS]
    mistakes = embedded_pngs(page, "mistake")
    assert len(mistakes) == sum(min(GALLERY_FACES, p["count"]) for p in pairs) > 0
    expected = [f"true {p['true']}, predicted {p['predicted']}" for p in pairs
                for _ in range(min(GALLERY_FACES, p["count"]))]
    assert [c.split(" (")[0] for c, _ in mistakes] == expected
    for item in record["gallery"]:
        assert item["true"] != item["predicted"] and 0 < item["confidence"] <= 1
    for _, data in means + mistakes:
        assert is_png(data)
    files = [m["image"] for m in record["mean_heatmaps"]] + [g["image"] for g in record["gallery"]]
    for name in files:  # the same pictures, in the output directory
        assert name.startswith(f"{EXPLANATIONS_DIR}/") and is_png((out / name).read_bytes())
    assert json.loads((out / "metrics.json").read_text())["explanations"] == record
    assert (f"explanations: mean Grad-CAM heatmap of the true class for 7 classes (70 faces), "
            f"{len(record['gallery'])} confident mistakes") in format_evaluation(metrics)


def test_the_reports_heatmaps_are_the_served_ones(evaluation, exported_model, prepared):
    """Each class's mean heatmap is the mean of the exported model's explain signature's maps
    of that class over its test faces (all 10 of each here), and the mistakes shown are the
    most confident: by the predicted class's probability, highest first in each pair."""
    from components.dataset import FaceDataset

    out, metrics = evaluation
    test = FaceDataset.load(prepared / "dataset").split("test")
    served = tf.saved_model.load(str(exported_model)).signatures[SIGNATURE_EXPLAIN](
        pixels=tf.constant(to_model_input(test.images)))
    saved = np.load(out / EXPLANATIONS_DIR / MEAN_HEATMAPS_NPZ)
    assert saved["counts"].tolist() == [10] * 7
    for cls in range(7):
        mine = served[HEATMAPS].numpy()[test.labels == cls, cls].mean(axis=0)
        np.testing.assert_allclose(saved["heatmaps"][cls], mine, atol=1e-4)
    probabilities = served[PROBABILITIES].numpy()
    predicted = probabilities.argmax(axis=1)
    for pair in metrics["most_confused"][:GALLERY_PAIRS]:
        true, pred = CLASS_NAMES.index(pair["true"]), CLASS_NAMES.index(pair["predicted"])
        wrong = np.sort(probabilities[(test.labels == true) & (predicted == pred), pred])[::-1]
        shown = [g["confidence"] for g in metrics["explanations"]["gallery"]
                 if (g["true"], g["predicted"]) == (pair["true"], pair["predicted"])]
        np.testing.assert_allclose(shown, wrong[:GALLERY_FACES], atol=1e-4)


def test_a_model_without_an_explain_signature_gets_a_note(trained_model, prepared, tmp_path):
    """An ensemble averages whole networks: no feature map of its own, no explain signature
    (the export leaves it out), so the report says so instead of drawing."""
    from components.train.ensemble import build_ensemble

    model = build_ensemble([load_trained(trained_model), load_trained(trained_model)])
    assert gradcam_model(model) is None
    (tmp_path / "model").mkdir()
    model.save(tmp_path / "model" / MODEL_FILE)
    metrics = evaluate(tmp_path / "model", prepared / "dataset", tmp_path / "out", 0.0, 0.01,
                       measure_latency=False)
    record = metrics["explanations"]
    assert not record["available"] and record["gallery"] == record["mean_heatmaps"] == []
    assert "no heatmaps" in record["note"] and "'explain'" in record["note"]
    page = (tmp_path / "out" / REPORT_HTML).read_text()
    assert "no heatmaps: the model (ensemble) has no convolutional feature map" in page
    # the confusion matrix and the reliability diagram alone
    assert page.count("data:image/png;base64,") == 2
    assert not (tmp_path / "out" / EXPLANATIONS_DIR).exists()
    assert f"explanations: {record['note']}" in format_evaluation(metrics)
