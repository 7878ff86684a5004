"""The local server's REST API against TF Serving's documented contract, on a real server."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import requests
import tensorflow as tf
from PIL import Image

from serving.contract import CLASS_NAMES
from tests.helpers import deploy_and_serve, face_pixels, real_faces


@pytest.fixture(scope="module")
def server(exported_model, tmp_path_factory, serve_module):
    """One server for the module: every test here only reads from it."""
    return deploy_and_serve(exported_model, tmp_path_factory.mktemp("rest"), serve_module,
                            labels={"stable": 1}, max_body_bytes=1_000_000)


@pytest.fixture(scope="module")
def reference(exported_model):
    """In-process answers of the same SavedModel, to compare the server's with."""
    loaded = tf.saved_model.load(str(exported_model))
    faces = np.stack([face_pixels(f) for f in real_faces("test", "sad", 3)])
    probs = loaded.signatures["serving_default"](
        pixels=tf.constant(faces[..., None], tf.float32))["probabilities"].numpy()
    return faces, probs


def url(server, path=""):
    return f"http://127.0.0.1:{server.rest_port}/v1/models/fer{path}"


def post(server, path, body, **kw):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(url(server, path), data=data, timeout=30, **kw)


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def test_status(server):
    r = requests.get(url(server), timeout=10)
    assert r.status_code == 200
    assert r.json() == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert requests.get(url(server, "/versions/1"), timeout=10).json() == r.json()
    assert requests.get(url(server, "/labels/stable"), timeout=10).json() == r.json()


def test_the_class_names_signature_names_the_label_set(server):
    r = post(server, ":predict", {"signature_name": "class_names", "instances": [6, 0, 3]})
    assert r.status_code == 200 and r.json() == {"predictions": ["neutral", "angry", "happy"]}
    from serving.client import RestClient

    assert RestClient(f"http://127.0.0.1:{server.rest_port}").class_names() == CLASS_NAMES
    # an id outside the label set is the caller's mistake, said as such; the server stays up
    r = post(server, ":predict", {"signature_name": "class_names", "instances": [7]})
    assert r.status_code == 400 and "error" in r.json()
    assert requests.get(url(server), timeout=10).status_code == 200


@pytest.mark.parametrize("path", ["/metadata", "/versions/1/metadata", "/labels/stable/metadata"])
def test_metadata(server, path):
    meta = requests.get(url(server, path), timeout=10).json()
    assert meta["model_spec"] == {"name": "fer", "signature_name": "", "version": "1"}
    defs = meta["metadata"]["signature_def"]["signature_def"]
    assert set(defs) == {"serving_default", "predict_images", "explain", "explain_images",
                         "class_names"}
    pixels = defs["serving_default"]["inputs"]["pixels"]
    assert pixels["dtype"] == "DT_FLOAT"
    assert [int(d["size"]) for d in pixels["tensor_shape"]["dim"]] == [-1, 48, 48, 1]
    assert defs["predict_images"]["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert set(defs["serving_default"]["outputs"]) == {"probabilities", "class_id", "class_name"}


def test_predict_row_format(server, reference):
    faces, probs = reference
    r = post(server, ":predict", {"instances": faces[..., None].tolist()})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert len(predictions) == 3
    np.testing.assert_allclose([p["probabilities"] for p in predictions], probs, atol=1e-5)
    assert [p["class_id"] for p in predictions] == probs.argmax(axis=1).tolist()
    assert [p["class_name"] for p in predictions] == [CLASS_NAMES[i] for i in probs.argmax(1)]


@pytest.mark.parametrize("path", [":predict", "/versions/1:predict", "/labels/stable:predict"])
def test_predict_named_instances_and_versions(server, reference, path):
    faces, probs = reference
    body = {"signature_name": "serving_default",
            "instances": [{"pixels": f[..., None].tolist()} for f in faces]}
    r = post(server, path, body)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose([p["probabilities"] for p in r.json()["predictions"]], probs,
                               atol=1e-5)


@pytest.mark.parametrize("named", [False, True], ids=["unnamed", "named"])
def test_predict_columnar_format(server, reference, named):
    faces, probs = reference
    inputs = {"pixels": faces[..., None].tolist()} if named else faces[..., None].tolist()
    r = post(server, ":predict", {"inputs": inputs})
    assert r.status_code == 200, r.text
    outputs = r.json()["outputs"]
    np.testing.assert_allclose(outputs["probabilities"], probs, atol=1e-5)
    assert outputs["class_id"] == probs.argmax(axis=1).tolist()
    assert outputs["class_name"] == [CLASS_NAMES[i] for i in probs.argmax(axis=1)]


def test_predict_b64_images(server, reference):
    faces, probs = reference
    pngs = []
    for f in faces:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, "PNG")
        pngs.append(buf.getvalue())
    r = post(server, ":predict", {"signature_name": "predict_images",
                                  "instances": [b64(p) for p in pngs]})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose([p["probabilities"] for p in r.json()["predictions"]], probs,
                               atol=1e-4)
    jpeg = real_faces("test", "sad", 1)[0].read_bytes()  # the original file, JPEG
    r = post(server, ":predict", {"signature_name": "predict_images",
                                  "inputs": {"image_bytes": [b64(jpeg)]}})
    assert r.status_code == 200 and len(r.json()["outputs"]["probabilities"]) == 1


def test_json_without_content_type_header(server, reference):
    faces, _ = reference
    body = json.dumps({"instances": faces[:1, ..., None].tolist()}).encode()
    request = requests.Request("POST", url(server, ":predict"), data=body).prepare()
    assert "Content-Type" not in request.headers  # as TF Serving's own example clients send
    r = requests.Session().send(request, timeout=30)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1


ERRORS = [
    ("malformed JSON", ":predict", b"{not json", 400, "JSON Parse error"),
    ("body not an object", ":predict", [1, 2], 400, "must be a JSON object"),
    ("neither instances nor inputs", ":predict", {"signature_name": "serving_default"}, 400,
     "exactly one of 'instances'"),
    ("both instances and inputs", ":predict", {"instances": [1], "inputs": [1]}, 400,
     "exactly one of 'instances'"),
    ("wrong shape", ":predict", {"instances": np.zeros((2, 48, 47, 1)).tolist()}, 400,
     "has shape [2, 48, 47, 1], expected [None, 48, 48, 1]"),
    ("ragged", ":predict", {"instances": [[[0.0]], [[0.0, 1.0]]]}, 400,
     "not a rectangular array of numbers"),
    ("wrong dtype", ":predict", {"instances": [[["a"] * 48] * 48]}, 400,
     "expects numbers, got a string"),
    ("unknown signature", ":predict", {"signature_name": "classify", "instances": [1]}, 400,
     'Serving signature name: "classify" not found'),
    ("undecodable image", ":predict",
     {"signature_name": "predict_images", "instances": [{"b64": base64.b64encode(b"nope").decode()}]},
     400, "Unknown image file format"),
    ("invalid base64", ":predict", {"signature_name": "predict_images",
                                    "instances": [{"b64": "%%%"}]}, 400, "invalid base64"),
    ("unknown input name", ":predict", {"inputs": {"pixels": [], "extra": []}}, 400,
     "signature 'serving_default' takes inputs ['pixels']; missing [], unexpected ['extra']"),
    ("unknown version", "/versions/9:predict", {"instances": [1]}, 404,
     "Servable not found for request: Specific(fer, 9)"),
    ("unknown label", "/labels/canary:predict", {"instances": [1]}, 404,
     "Unrecognized servable version label: canary"),
    ("body too large", ":predict", b"x" * 1_500_000, 413, "exceeds the limit of 1,000,000 bytes"),
]


@pytest.mark.parametrize("case, path, body, status, message", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_have_tf_serving_codes_and_server_stays_up(server, case, path, body, status,
                                                          message):
    r = post(server, path, body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert set(r.json()) == {"error"}
    assert requests.get(url(server), timeout=10).status_code == 200  # still serving


def test_unknown_model_and_route(server):
    r = requests.get(f"http://127.0.0.1:{server.rest_port}/v1/models/other", timeout=10)
    assert r.status_code == 404 and r.json() == {"error": "Could not find any versions of model other"}
    r = post(server, ":classify", {"instances": [1]})  # :classify/:regress are not served
    assert r.status_code == 405
    assert r.json() == {"error": "Malformed request: POST /v1/models/fer:classify"}
    r = requests.get(url(server, "/versions/9"), timeout=10)
    assert r.status_code == 404 and "version 9" in r.json()["error"]


# Numeric tensors skip Python lists: simdjson parses them straight into one array. Whatever
# that path accepts must equal what the standard library path gives, and whatever is not a
# rectangular all-number array must fall back to it.
FAST = [[[1, 2], [3, 4]], [[1e5, -2.5e-3], [3, 4]], [[[0]], [[255]]], [[]], list(range(7))]
SLOW = [[[1, 2], [3]], [[[1], [2, 3]], [[4]]], [[1, 2], 3], [[], [1]], [[1], []],
        [[[1], [2]], [[3], [4, 5]]], [[1, True]], [[1, None]], ["a"], [{"b64": "aGk="}]]


@pytest.mark.parametrize("value", FAST, ids=[json.dumps(v)[:30] for v in FAST])
def test_rectangular_numbers_parse_into_one_array(value):
    from serving.fastjson import parse_json

    parsed = parse_json(json.dumps({"instances": value, "signature_name": "s"}).encode())
    assert isinstance(parsed["instances"], np.ndarray)
    np.testing.assert_array_equal(parsed["instances"], np.asarray(value, dtype=np.float64))
    assert parsed["signature_name"] == "s"


@pytest.mark.parametrize("others", [{"meta": {"k": [1]}}, {"signature_name": "s"}, {}],
                         ids=["object beside", "string beside", "alone"])
@pytest.mark.parametrize("value", SLOW, ids=[json.dumps(v)[:30] for v in SLOW])
def test_anything_else_takes_the_standard_path(value, others):
    from serving.fastjson import parse_json

    body = json.dumps({"inputs": value, **others}).encode()
    assert parse_json(body) == json.loads(body)


@pytest.mark.parametrize("body", [
    # a string holding the skeleton of the shape the ragged tensor's first row suggests
    b'{"signature_name": "[[,],[,]]", "instances": [[1,2],[3],[4,5,6]]}',
    b'{"instances": [[1,2],[3],[4,5,6]], "signature_name": "[[,],[,],[,]]"}',
], ids=["decoy before", "decoy after"])
def test_a_ragged_tensor_is_never_taken_for_a_rectangular_one(body):
    from serving.fastjson import parse_json

    assert parse_json(body) == json.loads(body)  # a list, refused later as ragged


@pytest.mark.parametrize("body", [
    b'{ "instances" :\n [[1, 2],\n  [3, 4]] ,\t"signature_name" : "s" }',
    b'{"signature_name": "a\\u005b\\"[", "instances": [[1, 2], [3, 4]]}',  # escapes
    b'{"instances": [[1e3, -2.5E-1], [3, 4]], "n": 1}',
], ids=["whitespace", "escaped string", "number beside"])
def test_rectangular_tensors_parse_whatever_surrounds_them(body):
    from serving.fastjson import parse_json

    parsed = parse_json(body)
    expected = json.loads(body)
    np.testing.assert_array_equal(parsed["instances"], np.asarray(expected["instances"]))
    assert {k: v for k, v in parsed.items() if k != "instances"} == \
        {k: v for k, v in expected.items() if k != "instances"}


def test_non_standard_json_numbers_behave_as_before():
    from serving.fastjson import parse_json

    body = b'{"instances": [NaN, 1e400]}'  # simdjson refuses these; json accepts them
    parsed = parse_json(body)
    assert np.isnan(parsed["instances"][0]) and parsed["instances"][1] == float("inf")


@pytest.mark.parametrize("key", ["instances", "inputs"])
def test_batch_through_the_array_path_matches_in_process(server, reference, key):
    faces, probs = reference
    r = post(server, ":predict", {key: (faces[..., None] / 1.0).tolist()})
    assert r.status_code == 200, r.text
    reply = r.json()
    got = ([p["probabilities"] for p in reply["predictions"]] if key == "instances"
           else reply["outputs"]["probabilities"])
    np.testing.assert_allclose(got, probs, atol=1e-5)


def test_integer_inputs_refuse_fractions_from_the_array_path():
    from serving.limits import Limits, ServingError
    from serving.model_store import _to_tensor

    spec = tf.TensorSpec([None], tf.int32)
    assert _to_tensor("n", np.array([1.0, 2.0]), spec, Limits()).numpy().tolist() == [1, 2]
    with pytest.raises(ServingError, match="expects integers"):
        _to_tensor("n", np.array([1.5]), spec, Limits())
    with pytest.raises(ServingError, match=r"values must be in \[-2.14748e\+09"):
        _to_tensor("n", np.array([2.0 ** 40]), spec, Limits())
