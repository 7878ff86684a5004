"""gRPC through the stock tensorflow_serving stubs, and the clients."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.client import ClientError, GrpcClient, RestClient
from serving.contract import CLASS_NAMES
from tests.helpers import deploy_and_serve, face_pixels, real_faces


@pytest.fixture(scope="module")
def server(exported_model, tmp_path_factory, serve_module):
    """One server for the module: every test here only reads from it."""
    return deploy_and_serve(exported_model, tmp_path_factory.mktemp("grpc"), serve_module,
                            labels={"stable": 1})


@pytest.fixture
def stub(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


def faces(n=4):
    return np.stack([face_pixels(f) for f in real_faces("test", "angry", n)])


def test_predict_with_stock_stub(stub, exported_model):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "fer"
    request.model_spec.signature_name = "serving_default"
    request.inputs["pixels"].CopyFrom(tf.make_tensor_proto(faces()[..., None].astype(np.float32)))
    response = stub.Predict(request, timeout=30)
    assert response.model_spec.version.value == 1
    probs = tf.make_ndarray(response.outputs["probabilities"])
    assert probs.shape == (4, 7)
    expected = tf.saved_model.load(str(exported_model)).signatures["serving_default"](
        pixels=tf.constant(faces()[..., None], tf.float32))["probabilities"].numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    names = [n.decode() for n in tf.make_ndarray(response.outputs["class_name"])]
    ids = tf.make_ndarray(response.outputs["class_id"])
    assert names == [CLASS_NAMES[i] for i in ids] and ids.tolist() == probs.argmax(1).tolist()


def test_predict_images_with_version_and_label(stub):
    for spec_kw in ({"version": 1}, {"label": "stable"}, {}):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "fer"
        request.model_spec.signature_name = "predict_images"
        if "version" in spec_kw:
            request.model_spec.version.value = spec_kw["version"]
        if "label" in spec_kw:
            request.model_spec.version_label = spec_kw["label"]
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(
            [f.read_bytes() for f in real_faces("test", "angry", 2)]))
        response = stub.Predict(request, timeout=30)
        assert tf.make_ndarray(response.outputs["probabilities"]).shape == (2, 7)


def test_metadata_with_stock_stub(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "fer"
    response = stub.GetModelMetadata(request, timeout=30)
    defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(defs)
    assert set(defs.signature_def) == {"serving_default", "predict_images", "explain",
                                       "explain_images", "class_names"}
    assert defs.signature_def["serving_default"].inputs["pixels"].dtype == tf.float32.as_datatype_enum
    assert response.model_spec.version.value == 1


def test_model_status_with_stock_stub(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "fer"
        response = stub.GetModelStatus(request, timeout=30)
    (status,) = response.model_version_status
    assert status.version == 1 and status.state == 30  # AVAILABLE


@pytest.mark.parametrize("mutate, code, message", [
    (lambda r: setattr(r.model_spec, "name", "other"), grpc.StatusCode.NOT_FOUND,
     "Could not find any versions of model other"),
    (lambda r: r.model_spec.version.__setattr__("value", 5), grpc.StatusCode.NOT_FOUND,
     "Specific(fer, 5)"),
    (lambda r: setattr(r.model_spec, "signature_name", "nope"), grpc.StatusCode.INVALID_ARGUMENT,
     'Serving signature name: "nope" not found'),
    (lambda r: r.inputs["pixels"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 48, 48), np.float32))),
     grpc.StatusCode.INVALID_ARGUMENT, "has shape [1, 48, 48]"),
])
def test_grpc_errors_and_server_stays_up(stub, mutate, code, message):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "fer"
    request.inputs["pixels"].CopyFrom(tf.make_tensor_proto(faces(1)[..., None].astype(np.float32)))
    mutate(request)
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=30)
    assert info.value.code() == code
    assert message in info.value.details()
    ok = predict_pb2.PredictRequest()
    ok.model_spec.name = "fer"
    ok.inputs["pixels"].CopyFrom(tf.make_tensor_proto(faces(1)[..., None].astype(np.float32)))
    assert stub.Predict(ok, timeout=30).model_spec.version.value == 1


def test_rest_and_grpc_clients_agree(server):
    rest = RestClient(f"http://127.0.0.1:{server.rest_port}", "fer")
    grpc_client = GrpcClient(f"127.0.0.1:{server.grpc_port}", "fer")
    a, b = rest.predict_pixels(faces()), grpc_client.predict_pixels(faces())
    np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=1e-6)
    assert a["class_name"] == b["class_name"]
    jpegs = [f.read_bytes() for f in real_faces("test", "angry", 4)]
    c, d = rest.predict_images(jpegs), grpc_client.predict_images(jpegs)
    np.testing.assert_allclose(c["probabilities"], d["probabilities"], atol=1e-6)
    assert rest.status()[0]["state"] == "AVAILABLE"
    assert "signature_def" in rest.metadata()["metadata"]
    grpc_client.close()


def test_clients_raise_clear_errors(server):
    with pytest.raises(ClientError, match="404: Could not find any versions of model nope"):
        RestClient(f"http://127.0.0.1:{server.rest_port}", "nope").status()
    with pytest.raises(ClientError, match="NOT_FOUND"):
        GrpcClient(f"127.0.0.1:{server.grpc_port}", "fer", version=9).predict_pixels(faces(1))
    with pytest.raises(ClientError, match="cannot reach"):
        RestClient("http://127.0.0.1:9", "fer", timeout=2).status()
    with pytest.raises(ClientError, match="UNAVAILABLE|DEADLINE"):
        GrpcClient("127.0.0.1:9", "fer", timeout=2).predict_pixels(faces(1))
    with pytest.raises(ValueError, match=r"\[N,48,48\]"):
        RestClient(f"http://127.0.0.1:{server.rest_port}").predict_pixels(np.zeros((2, 10)))
