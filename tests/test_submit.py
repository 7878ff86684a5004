"""``fer-pipeline submit`` against a Kubeflow Pipelines API server.

No cluster can run here, so the KFP API server is replaced at the HTTP boundary by a small
real HTTP server on 127.0.0.1 that answers the v2beta1 REST calls ``kfp.Client`` makes
(healthz, experiments, runs) and records every request. Everything on our side of that
boundary is real: the CLI, the compiler, ``kfp.Client`` and its generated API client.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from pipeline.cli import main


class FakeKfpApi(ThreadingHTTPServer):
    """The KFP v2beta1 REST API, as far as submitting and watching one run goes."""

    def __init__(self, final_tasks: list[dict], final_state: str = "SUCCEEDED"):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str, dict]] = []
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.polls = 0
        self.final_tasks, self.final_state = final_tasks, final_state

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def bodies(self, method: str, path: str) -> list[dict]:
        return [body for m, p, body in self.requests if m == method and p == path]


class _Handler(BaseHTTPRequestHandler):
    server: FakeKfpApi

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _reply(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else {}
        self.server.requests.append((method, url.path, body))
        api = "/apis/v2beta1"
        if method == "GET" and url.path == f"{api}/healthz":
            return self._reply(200, {"multi_user": False})
        if method == "GET" and url.path == f"{api}/experiments":
            query = json.loads(parse_qs(url.query).get("filter", ["{}"])[0])
            names = [p.get("string_value") for p in query.get("predicates", [])]
            found = [e for e in self.server.experiments.values() if e["display_name"] in names]
            return self._reply(200, {"experiments": found, "total_size": len(found)})
        if method == "POST" and url.path == f"{api}/experiments":
            experiment = {**body, "experiment_id": f"exp-{len(self.server.experiments) + 1}"}
            self.server.experiments[experiment["experiment_id"]] = experiment
            return self._reply(200, experiment)
        if method == "POST" and url.path == f"{api}/runs":
            run = {**body, "run_id": f"run-{len(self.server.runs) + 1}", "state": "PENDING"}
            self.server.runs[run["run_id"]] = run
            return self._reply(200, run)
        if method == "GET" and url.path.startswith(f"{api}/runs/"):
            run = self.server.runs.get(url.path.rsplit("/", 1)[-1])
            if run is None:
                return self._reply(404, {"error": "run not found", "code": 5})
            self.server.polls += 1
            if self.server.polls < 2:
                return self._reply(200, {**run, "state": "RUNNING"})
            return self._reply(200, {**run, "state": self.server.final_state,
                                     "run_details": {"task_details": self.server.final_tasks}})
        return self._reply(404, {"error": f"unexpected {method} {url.path}", "code": 5})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")


@pytest.fixture
def kfp_api(request):
    tasks, state = getattr(request, "param", ([{"display_name": "deploy-op",
                                                "state": "SUCCEEDED"}], "SUCCEEDED"))
    server = FakeKfpApi(tasks, state)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


SUBMIT = ["submit", "--source", "gs://fer-data/fer2013", "--serving-base", "gs://fer-models/serving",
          "--image", "registry.example.com/fer-train:1.2.3", "--architectures", "baseline_cnn,vgg19",
          "--epochs", "7", "--gpus", "2", "--experiment", "fer-nightly",
          "--poll-interval", "0.05"]


def test_submit_sends_the_compiled_package_and_the_parameters(kfp_api, capsys):
    code = main([*SUBMIT, "--host", kfp_api.url, "--run-name", "nightly-1"])
    out = capsys.readouterr().out
    assert code == 0, out

    created = kfp_api.bodies("POST", "/apis/v2beta1/experiments")
    assert [e["display_name"] for e in created] == ["fer-nightly"]
    [run] = kfp_api.bodies("POST", "/apis/v2beta1/runs")
    assert run["display_name"] == "nightly-1"
    assert run["experiment_id"] == "exp-1"
    # The compiled package travels inline: the pipeline, every executor on the given image,
    # the GPU request on the train task.
    spec = run["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "fer-pipeline"
    executors = spec["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {
        "registry.example.com/fer-train:1.2.3"}
    accelerator = executors["exec-train-op"]["container"]["resources"]["accelerator"]
    assert (accelerator["resourceType"], accelerator["resourceCount"]) == ("nvidia.com/gpu", "2")
    # The run's parameters: the profile's, with the flags on top.
    params = run["runtime_config"]["parameters"]
    assert params["source"] == "gs://fer-data/fer2013"
    assert params["serving_base"] == "gs://fer-models/serving"
    assert params["architectures"] == ["baseline_cnn", "vgg19"]
    assert params["recipe"]["epochs"] == 7 and params["seed"] == 42
    assert params["recipe"]["optimizer"] == "sgd"  # the full profile's recipe under the flag
    assert "url:      " + kfp_api.url + "/#/runs/details/run-1" in out
    assert "state:" not in out  # without --wait it does not watch the run


def test_submit_wait_prints_the_final_state_and_the_gate(kfp_api, capsys):
    code = main([*SUBMIT, "--host", kfp_api.url, "--wait", "--no-cache"])
    out = capsys.readouterr().out
    assert code == 0, out
    [run] = kfp_api.bodies("POST", "/apis/v2beta1/runs")
    tasks = run["pipeline_spec"]["root"]["dag"]["tasks"]
    assert not any(t.get("cachingOptions", {}).get("enableCache") for t in tasks.values())
    assert kfp_api.polls >= 2  # it polled until the run finished
    assert "state:    SUCCEEDED" in out
    assert "gate:     PASSED" in out


@pytest.mark.parametrize("kfp_api", [([{"display_name": "skip-deploy-op", "state": "SUCCEEDED"}],
                                      "SUCCEEDED")], indirect=True)
def test_submit_wait_reports_a_blocked_gate(kfp_api, capsys):
    assert main([*SUBMIT, "--host", kfp_api.url, "--wait"]) == 0
    assert "gate:     BLOCKED" in capsys.readouterr().out


@pytest.mark.parametrize("kfp_api", [([{"display_name": "train-op", "state": "FAILED"}],
                                      "FAILED")], indirect=True)
def test_a_failed_run_exits_non_zero(kfp_api, capsys):
    assert main([*SUBMIT, "--host", kfp_api.url, "--wait"]) == 1
    assert "state:    FAILED" in capsys.readouterr().out


def test_caching_is_on_by_default(tmp_path):
    out = tmp_path / "p.yaml"
    assert main(["compile", "-o", str(out), "--image", "fer-train:local"]) == 0
    tasks = yaml.safe_load(out.read_text())["root"]["dag"]["tasks"]
    cached = {name for name, t in tasks.items() if t.get("cachingOptions", {}).get("enableCache")}
    # the teacher step too: else every train task after it would miss the cache
    assert {"ingest-op", "preprocess-op", "class-weights-op", "teacher-op"} <= cached
    assert "evaluate-op" not in cached  # the champion may change between identical runs


def test_an_invalid_recipe_is_refused_before_anything_is_sent(kfp_api, capsys):
    assert main([*SUBMIT, "--host", kfp_api.url, "--label-smoothing", "1.5"]) == 2
    assert "label_smoothing must be in [0, 1)" in capsys.readouterr().err
    assert kfp_api.requests == []  # not even the health check


def test_submit_needs_locations_the_cluster_can_read(kfp_api, capsys):
    code = main(["submit", "--host", kfp_api.url, "--source", "gs://fer-data/fer2013"])
    assert code == 2
    assert "serving_base" in capsys.readouterr().err
    assert kfp_api.bodies("POST", "/apis/v2beta1/runs") == []
