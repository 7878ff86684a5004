"""Hot swap: the pipeline's deploy step publishes new versions while the local server runs."""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest
import requests
import tensorflow as tf

from components.deploy import deploy
from serving.client import ClientError, GrpcClient, RestClient
from tests.helpers import face_pixels, real_faces


def expected_probs(saved_model, faces):
    loaded = tf.saved_model.load(str(saved_model))
    return loaded.signatures["serving_default"](
        pixels=tf.constant(faces[..., None], tf.float32))["probabilities"].numpy()


def wait_for(predicate, timeout):
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if predicate():
            return time.perf_counter() - start
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s")


def test_new_version_is_swapped_in_without_failed_requests(exported_model, second_exported_model,
                                                           tmp_path, serve):
    base = str(tmp_path / "serving")
    faces = np.stack([face_pixels(f) for f in real_faces("test", "fear", 4)])
    v1, v2 = expected_probs(exported_model, faces), expected_probs(second_exported_model, faces)
    assert np.abs(v1 - v2).max() > 1e-3  # two really different models

    deploy(exported_model, base, "fer")
    poll = 0.5
    server = serve(tmp_path / "serving" / "fer", poll_seconds=poll)
    rest = RestClient(f"http://127.0.0.1:{server.rest_port}", "fer")
    grpc_client = GrpcClient(f"127.0.0.1:{server.grpc_port}", "fer")
    np.testing.assert_allclose(rest.predict_pixels(faces)["probabilities"], v1, atol=1e-5)

    failures, seen, stop = [], [], threading.Event()

    def hammer(client):
        while not stop.is_set():
            try:
                probs = client.predict_pixels(faces)["probabilities"]
            except ClientError as exc:
                failures.append(str(exc))
                continue
            if np.allclose(probs, v1, atol=1e-5):
                seen.append(1)
            elif np.allclose(probs, v2, atol=1e-5):
                seen.append(2)
            else:
                failures.append("an answer from neither version")

    threads = [threading.Thread(target=hammer, args=(c,)) for c in (rest, grpc_client, rest)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    result = deploy(second_exported_model, base, "fer")  # the pipeline's deploy step
    assert result["version"] == 2
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/fer"
    took = wait_for(lambda: requests.get(url, timeout=5).json()["model_version_status"][0]
                    == {"version": "2", "state": "AVAILABLE",
                        "status": {"error_code": "OK", "error_message": ""}}, timeout=poll + 10)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()

    print(f"version 2 AVAILABLE {took:.2f} s after deploy (poll interval {poll} s); "
          f"{len(seen)} requests during the switch")
    assert failures == []
    assert seen.count(1) > 0 and seen.count(2) > 0
    assert set(seen[-10:]) == {2}  # once swapped, every answer comes from version 2
    statuses = requests.get(url, timeout=5).json()["model_version_status"]
    assert [(s["version"], s["state"]) for s in statuses] == [("2", "AVAILABLE"), ("1", "END")]
    np.testing.assert_allclose(grpc_client.predict_pixels(faces)["probabilities"], v2, atol=1e-5)
    grpc_client.close()


def test_a_broken_new_version_keeps_the_old_one_serving(exported_model, tmp_path, serve, caplog):
    base = tmp_path / "serving"
    deploy(exported_model, str(base), "fer")
    server = serve(base / "fer", poll_seconds=0.3)
    broken = base / "fer" / "2"
    shutil.copytree(exported_model, broken)
    (broken / "saved_model.pb").write_bytes(b"not a saved model")
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/fer"
    wait_for(lambda: any(s["version"] == "2" and s["state"] == "END"
                         for s in requests.get(url, timeout=5).json()["model_version_status"]),
             timeout=10)
    statuses = {s["version"]: s for s in requests.get(url, timeout=5).json()["model_version_status"]}
    assert statuses["1"]["state"] == "AVAILABLE"
    assert statuses["2"]["status"]["error_message"]  # says why it failed
    faces = np.stack([face_pixels(f) for f in real_faces("test", "fear", 2)])
    probs = RestClient(f"http://127.0.0.1:{server.rest_port}").predict_pixels(faces)["probabilities"]
    np.testing.assert_allclose(probs, expected_probs(exported_model, faces), atol=1e-5)
    assert "version 2 of fer failed to load" in caplog.text and "still serving [1]" in caplog.text


def test_server_waits_for_a_first_version(exported_model, tmp_path, serve):
    server = serve(tmp_path / "serving" / "fer", poll_seconds=0.3)  # nothing deployed yet
    rest = RestClient(f"http://127.0.0.1:{server.rest_port}", "fer")
    faces = np.stack([face_pixels(f) for f in real_faces("test", "fear", 1)])
    for call in (lambda: rest.predict_pixels(faces), rest.status):
        with pytest.raises(ClientError) as info:  # like TF Serving: 404 until a version loads
            call()
        assert info.value.status == 404
    deploy(exported_model, str(tmp_path / "serving"), "fer")

    def available():
        try:
            return rest.status()[0]["state"] == "AVAILABLE"
        except ClientError:
            return False

    wait_for(available, timeout=10)
    assert rest.predict_pixels(faces)["probabilities"].shape == (1, 7)
