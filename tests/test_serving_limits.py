"""No request crashes, stalls or starves the server: each trigger found by trying it as an
attacker would (issue 14), sent exactly, against a real server on 127.0.0.1 with real
TensorFlow; the limits on both APIs; metrics, the request log and the V2 protocol."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import struct
import threading
import time
import zlib

import grpc
import numpy as np
import pytest
import requests
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from components.deploy import deploy
from serving.server import build_parser
from tests.helpers import deploy_and_serve, face_pixels, real_faces


def start_limited(exported_model, root, serve):
    """A server with a batch limit of 16 and a request log at ``root/requests.jsonl``."""
    return deploy_and_serve(exported_model, root, serve, max_batch_size=16,
                            request_log=str(root / "requests.jsonl"))


@pytest.fixture(scope="module")
def server(exported_model, tmp_path_factory, serve_module):
    """One server for the tests that do not count what it served: each must leave it up."""
    return start_limited(exported_model, tmp_path_factory.mktemp("limits"), serve_module)


@pytest.fixture
def fresh_server(exported_model, tmp_path, serve):
    """A server of this test's own, whose metrics and request log start empty."""
    return start_limited(exported_model, tmp_path, serve)


def url(server, path=""):
    return f"http://127.0.0.1:{server.rest_port}/v1/models/fer{path}"


def post(server, body, path=":predict", **kw):
    return requests.post(url(server, path), data=body, timeout=60, **kw)


def alive(server) -> bool:
    return requests.get(url(server), timeout=10).status_code == 200


def zero_faces(n: int) -> bytes:
    """``{"instances": [...]}`` with ``n`` faces of zeros, written compactly."""
    face = "[" + ",".join(["[" + ",".join(["[0]"] * 48) + "]"] * 48) + "]"
    return ('{"instances":[' + ",".join([face] * n) + "]}").encode()


def bomb_png(side: int) -> bytes:
    """A gray PNG of side x side zero pixels: a few hundred KB that decode to side² bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


# --- REST: every trigger of the issue, exactly --------------------------------------------

def test_a_thousand_faces_are_refused_by_the_batch_limit_not_by_dying(server):
    r = post(server, zero_faces(1000))  # 9.3 MB, once std::bad_alloc and a dead process
    assert r.status_code == 400
    assert "batch of 1,000 exceeds the limit of 16 (--max_batch_size)" in r.json()["error"]
    assert alive(server)
    ok = post(server, zero_faces(16))
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 16


DEEP = [
    ("objects nested 1025 deep", b'{"a":' * 1025 + b"1" + b"}" * 1025, "JSON nested 1025"),
    ("arrays nested 1000 deep", b"[" * 1000 + b"]" * 1000, "JSON nested 1000"),
    ("65 nested arrays", b'{"instances":' + b"[" * 65 + b"1" + b"]" * 65 + b"}",
     "JSON nested 66"),
    ("integer beyond 64 bits", b'{"instances":[[-999999999999999999999999999999]]}',
     "JSON Parse error"),
    ("lone surrogate in the signature name",
     b'{"signature_name":"\\ud800","instances":[[1,2]]}', 'Serving signature name: "\\ud800"'),
]


@pytest.mark.parametrize("case, body, message", DEEP, ids=[d[0] for d in DEEP])
def test_bodies_that_once_got_500_get_a_short_400(server, case, body, message):
    r = post(server, body)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/json"
    assert message in r.json()["error"]
    assert alive(server)


PIXELS = [("NaN", "NaN", "NaN or infinite"), ("Infinity", "Infinity", "NaN or infinite"),
          ("-Infinity", "-Infinity", "NaN or infinite"), ("null", "null", "got null"),
          ("1e39", "1e39", "values must be in [0, 255]"), ("1e400", "1e400", "NaN or infinite"),
          ("true", "true", "got true/false"), ("-5", "-5", "values must be in [0, 255]"),
          ("256", "256", "values must be in [0, 255]")]


@pytest.mark.parametrize("case, value, message", PIXELS, ids=[p[0] for p in PIXELS])
def test_pixels_that_are_not_finite_numbers_in_range_are_refused(server, case, value, message):
    face = json.dumps(np.full((48, 48, 1), 7).tolist())
    body = ('{"instances":[' + face.replace("7", value, 1) + "]}").encode()
    r = post(server, body)
    assert r.status_code == 400, (case, r.text)
    assert message in r.json()["error"]


def test_errors_never_echo_the_input(server):
    r = post(server, json.dumps({"signature_name": "predict_images",
                                 "instances": np.random.default_rng(0).random(
                                     (2, 48, 48, 1)).tolist()}))
    assert r.status_code == 400
    assert len(r.content) < 400  # was a 32.5 KB body carrying the floats back
    assert "expects strings" in r.json()["error"]


def test_many_tiny_instances_are_refused_fast_and_status_stays_responsive(server):
    body = b'{"instances":[' + b",".join([b"[0]"] * 5_000_000) + b"]}"  # 20 MB
    timings = []

    def probe():
        for _ in range(10):
            t = time.perf_counter()
            assert requests.get(url(server), timeout=10).status_code == 200
            timings.append(time.perf_counter() - t)
            time.sleep(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    r = post(server, body)
    prober.join()
    assert r.status_code == 400
    assert "batch of 5,000,000 exceeds the limit of 16" in r.json()["error"]
    assert max(timings) < 5, timings  # was 30-35 s while such a body was parsed


def test_decompression_bombs_are_refused_from_their_header(server):
    bomb = bomb_png(23_000)  # ~0.5 MB, 529 million pixels when decoded
    assert len(bomb) < 1_000_000
    body = json.dumps({"signature_name": "predict_images",
                       "instances": [{"b64": base64.b64encode(bomb).decode()}] * 3})
    r = post(server, body)
    assert r.status_code == 400
    assert "image 0 has 529,000,000 pixels; the limit is 25,000,000" in r.json()["error"]
    assert alive(server)


def test_redirects_never_use_the_clients_host_and_the_default_bind_is_loopback(server):
    r = requests.get(url(server, "/v1/models/fer/"), headers={"Host": "evil.example"}, timeout=10,
                     allow_redirects=False)
    assert r.status_code == 404 and "location" not in r.headers
    assert build_parser().parse_args([]).rest_api_host == "127.0.0.1"


# --- timeouts, overload, probes during long requests --------------------------------------

def test_a_partial_body_is_answered_408_and_an_idle_connection_closed(exported_model,
                                                                      tmp_path, serve):
    deploy(exported_model, str(tmp_path / "serving"), "fer")
    server = serve(tmp_path / "serving" / "fer", rest_api_timeout_in_ms=1500)
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as sock:
        sock.sendall(b"POST /v1/models/fer:predict HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"instances\":")
        t = time.perf_counter()
        reply = sock.recv(4096)
        assert b" 408 " in reply.split(b"\r\n")[0] and b"--rest_api_timeout_in_ms" in reply
        assert time.perf_counter() - t < 5  # was open over 70 s
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as idle:
        t = time.perf_counter()
        assert idle.recv(10) == b""  # the server closed it
        assert time.perf_counter() - t < 5  # was open over 40 s
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=10) as half:
        half.sendall(b"GET /v1/models/fer HTT")
        assert half.recv(10) == b""


def test_probes_answer_while_a_request_uploads_slowly(server):
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as slow:
        slow.sendall(b"POST /v1/models/fer:predict HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 100000\r\n\r\n{\"instances\":[")
        for path in ("/v2/health/live", "/v2/health/ready", "/v1/models/fer"):
            t = time.perf_counter()
            r = requests.get(f"http://127.0.0.1:{server.rest_port}{path}", timeout=10)
            assert r.status_code == 200 and time.perf_counter() - t < 1


def test_overload_is_refused_503_after_the_queue_timeout_on_both_apis(exported_model,
                                                                      tmp_path, serve):
    deploy(exported_model, str(tmp_path / "serving"), "fer")
    server = serve(tmp_path / "serving" / "fer", max_concurrent_inferences=1,
                   queue_timeout_in_ms=300)
    face = np.full((1, 48, 48, 1), 100.0)
    with server.gate.slot():  # the one slot is taken, as by a long inference
        t = time.perf_counter()
        r = post(server, json.dumps({"instances": face.tolist()}))
        assert r.status_code == 503 and "server busy" in r.json()["error"]
        assert 0.25 < time.perf_counter() - t < 5
        with pytest.raises(grpc.RpcError) as err:
            grpc_predict(server, tensor("pixels", types_pb2.DT_FLOAT, [1, 48, 48, 1],
                                        float_val=face.ravel().tolist()))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert requests.get(url(server), timeout=5).status_code == 200
    assert post(server, json.dumps({"instances": face.tolist()})).status_code == 200


# --- gRPC -----------------------------------------------------------------------------------

def tensor(name, dtype, dims, **values) -> tuple[str, tensor_pb2.TensorProto]:
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]), **values)
    return name, proto


def grpc_predict(server, *tensors, signature="serving_default", output_filter=()):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "fer"
    request.model_spec.signature_name = signature
    for name, proto in tensors:
        request.inputs[name].CopyFrom(proto)
    request.output_filter.extend(output_filter)
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=60)


FACE = [100.0] * (48 * 48)
GRPC = [
    ("DT_RESOURCE", tensor("pixels", types_pb2.DT_RESOURCE, [1, 48, 48, 1]),
     "dtype resource is not accepted"),
    ("DT_VARIANT", tensor("pixels", types_pb2.DT_VARIANT, [1, 48, 48, 1]),
     "dtype variant is not accepted"),
    ("undefined dtype enum", tensor("pixels", 999, [1, 48, 48, 1]), "unknown dtype enum 999"),
    ("DT_COMPLEX64", tensor("pixels", types_pb2.DT_COMPLEX64, [1, 48, 48, 1],
                            scomplex_val=[1.0, 2.0] * 2304), "dtype complex64 is not accepted"),
    ("DT_INT16 out of range", tensor("pixels", types_pb2.DT_INT16, [1, 48, 48, 1],
                                     int_val=[-301640232]), "cannot read the tensor"),
    ("2000 faces from one value", tensor("pixels", types_pb2.DT_FLOAT, [2000, 48, 48, 1],
                                         float_val=[1.0]), "batch of 2,000 exceeds the limit"),
    ("a billion faces", tensor("pixels", types_pb2.DT_FLOAT, [10 ** 9, 48, 48, 1]),
     "exceeds the limit of 16"),
    ("negative dimension", tensor("pixels", types_pb2.DT_FLOAT, [-1, 48, 48, 1]),
     "negative dimension"),
    ("short tensor_content", tensor("pixels", types_pb2.DT_FLOAT, [1, 48, 48, 1],
                                    tensor_content=b"\0" * 12), "tensor_content holds 12 bytes"),
    ("NaN pixels", tensor("pixels", types_pb2.DT_FLOAT, [1, 48, 48, 1],
                          float_val=[float("nan")] * 2304), "NaN or infinite"),
    ("pixels over 255", tensor("pixels", types_pb2.DT_FLOAT, [1, 48, 48, 1],
                               float_val=[300.0] * 2304), "values must be in [0, 255]"),
    ("wrong face size", tensor("pixels", types_pb2.DT_FLOAT, [1, 47, 48, 1],
                               float_val=[1.0] * 2256), "expected [None, 48, 48, 1]"),
]


@pytest.mark.parametrize("case, request_tensor, message", GRPC, ids=[g[0] for g in GRPC])
def test_grpc_answers_invalid_argument_never_unknown(server, case, request_tensor, message):
    with pytest.raises(grpc.RpcError) as err:
        grpc_predict(server, request_tensor)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert message in err.value.details()
    assert len(err.value.details()) <= 300


def test_grpc_refuses_unknown_output_filters_and_a_bomb(server):
    face = tensor("pixels", types_pb2.DT_FLOAT, [1, 48, 48, 1], float_val=FACE)
    with pytest.raises(grpc.RpcError) as err:
        grpc_predict(server, face, output_filter=["logits"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output_filter names unknown outputs ['logits']" in err.value.details()
    reply = grpc_predict(server, face, output_filter=["class_id"])
    assert set(reply.outputs) == {"class_id"}
    with pytest.raises(grpc.RpcError) as err:
        grpc_predict(server, tensor("image_bytes", types_pb2.DT_STRING, [1],
                                    string_val=[bomb_png(6_000)]), signature="predict_images")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "36,000,000 pixels" in err.value.details()


# --- versions, metrics, request log, V2 ---------------------------------------------------

def test_a_failed_version_is_retried_when_its_files_change(exported_model, tmp_path, serve):
    base = tmp_path / "serving" / "fer"
    broken = base / "1"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    server = serve(base, poll_seconds=0.2)
    status = requests.get(url(server), timeout=10).json()["model_version_status"][0]
    assert status["state"] == "END" and status["status"]["error_message"]
    good = tmp_path / "good"
    shutil.copytree(exported_model, good)
    shutil.rmtree(broken)
    good.rename(broken)  # replaced by a good copy; once it stayed END until a restart
    deadline = time.time() + 30
    while time.time() < deadline and not server.stores["fer"].served_versions:
        time.sleep(0.2)
    assert server.stores["fer"].served_versions == [1]
    assert requests.get(url(server), timeout=10).json()["model_version_status"][0][
        "state"] == "AVAILABLE"
    metrics = requests.get(f"http://127.0.0.1:{server.rest_port}/monitoring/prometheus/metrics",
                           timeout=10).text
    assert 'fer_serving_model_events_total{event="load_failed",model="fer"} 1.0' in metrics
    assert 'fer_serving_model_events_total{event="loaded",model="fer"} 1.0' in metrics


def metric(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_requests_latency_and_batch_sizes(fresh_server, tmp_path):
    server = fresh_server
    metrics_url = f"http://127.0.0.1:{server.rest_port}/monitoring/prometheus/metrics"
    before = requests.get(metrics_url, timeout=10)
    assert before.headers["content-type"].startswith("text/plain")
    faces = np.stack([face_pixels(f) for f in real_faces("test", "happy", 3)])[..., None]
    assert post(server, json.dumps({"instances": faces.tolist()})).status_code == 200
    assert post(server, b"{not json").status_code == 400
    grpc_predict(server, tensor("pixels", types_pb2.DT_FLOAT, [1, 48, 48, 1], float_val=FACE))
    after = requests.get(metrics_url, timeout=10).text
    ok = {"model": "fer", "version": "1", "signature": "serving_default"}
    assert metric(after, "fer_serving_requests_total", api="rest", status="200", **ok) == 1
    assert metric(after, "fer_serving_requests_total", api="rest", status="400") == 1
    assert metric(after, "fer_serving_requests_total", api="grpc", status="OK", **ok) == 1
    assert metric(after, "fer_serving_request_duration_seconds_count", api="rest") == 2
    assert metric(after, "fer_serving_request_duration_seconds_bucket", api="rest",
                  le="+Inf") == 2
    assert metric(after, "fer_serving_batch_size_sum", api="rest") == 3
    assert metric(after, "fer_serving_inflight_requests", api="rest") == 0
    assert metric(after, "fer_serving_model_versions", model="fer") == 1
    lines = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert [(x["api"], x["status"], x["batch_size"]) for x in lines] == [
        ("rest", "200", 3), ("rest", "400", 0), ("grpc", "OK", 1)]
    assert set(lines[0]) == {"time", "api", "model", "version", "signature", "status",
                             "latency_ms", "batch_size"}  # never pixels


def test_v2_infer_gives_v1s_probabilities_and_the_health_routes(server):
    base = f"http://127.0.0.1:{server.rest_port}/v2"
    assert requests.get(base + "/health/live", timeout=10).json() == {"live": True}
    assert requests.get(base + "/health/ready", timeout=10).json() == {"ready": True}
    ready = requests.get(base + "/models/fer/versions/1/ready", timeout=10)
    assert ready.status_code == 200 and ready.json() == {"name": "fer", "ready": True}
    assert requests.get(base + "/models/fer/versions/7/ready", timeout=10).status_code == 503
    meta = requests.get(base + "/models/fer", timeout=10).json()
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 48, 48, 1]}]
    faces = np.stack([face_pixels(f) for f in real_faces("test", "sad", 3)])[..., None]
    v1 = post(server, json.dumps({"instances": faces.tolist()})).json()["predictions"]
    v2 = requests.post(base + "/models/fer/infer", timeout=60, json={
        "id": "r1", "inputs": [{"name": "pixels", "shape": [3, 48, 48, 1], "datatype": "FP32",
                                "data": faces.ravel().tolist()}]}).json()
    assert v2["model_name"] == "fer" and v2["model_version"] == "1" and v2["id"] == "r1"
    outputs = {o["name"]: o for o in v2["outputs"]}
    assert outputs["probabilities"]["shape"] == [3, 7]
    np.testing.assert_allclose(np.reshape(outputs["probabilities"]["data"], (3, 7)),
                               [p["probabilities"] for p in v1], atol=1e-6)
    assert outputs["class_name"]["datatype"] == "BYTES"
    assert outputs["class_name"]["data"] == [p["class_name"] for p in v1]
    jpeg = (real_faces("test", "sad", 1)[0]).read_bytes()
    images = requests.post(base + "/models/fer/versions/1/infer", timeout=60, json={
        "inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                    "data": [base64.b64encode(jpeg).decode()]}],
        "outputs": [{"name": "class_id"}]}).json()
    assert [o["name"] for o in images["outputs"]] == ["class_id"]
    bad = requests.post(base + "/models/fer/infer", timeout=60, json={
        "inputs": [{"name": "pixels", "shape": [1, 48, 48, 1], "datatype": "FP32",
                    "data": [1.0]}]})
    assert bad.status_code == 400 and "needs 2,304" in bad.json()["error"]
    big = requests.post(base + "/models/fer/infer", timeout=60, json={
        "inputs": [{"name": "pixels", "shape": [17, 48, 48, 1], "datatype": "FP32",
                    "data": [0.0] * (17 * 2304)}]})
    assert big.status_code == 400 and "exceeds the limit of 16" in big.json()["error"]


def test_the_readme_documents_every_limit_with_its_default_and_every_metric():
    import dataclasses
    from pathlib import Path

    from serving.limits import Limits
    from serving.telemetry import Telemetry

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for f in dataclasses.fields(Limits):
        assert f"| `--{f.name}` | {f.default:,} |" in readme, f.name
    for collector in Telemetry().registry.collect():
        name = collector.name + ("_total" if collector.type == "counter" else "")
        assert f"`{name}`" in readme, name
