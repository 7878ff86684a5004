"""Production serving files: models.config (TF Serving's proto), Dockerfiles, fer-serve flags."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from components.deploy import deploy
from serving.model_store import VersionPolicy
from serving.server import (
    LocalServer,
    build_parser,
    main,
    model_stores,
    stores_from_config,
)
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[1]


def test_models_config_parses_as_tf_serving_config():
    (store,) = stores_from_config(ROOT / "serving" / "models.config", 1.0).values()
    assert store.name == "fer" and store.base_path == "/models/fer"
    assert store.policy == VersionPolicy("latest", num_versions=2)
    assert store.version_labels == {"stable": 1}


def test_server_runs_from_the_models_config(exported_model, second_exported_model, tmp_path):
    base = tmp_path / "serving"
    deploy(exported_model, str(base), "fer")
    deploy(second_exported_model, str(base), "fer")
    config = tmp_path / "models.config"
    text = (ROOT / "serving" / "models.config").read_text()
    config.write_text(text.replace('"/models/fer"', '"serving/fer"'))  # relative to the file
    stores = stores_from_config(config, 0.5)
    server = LocalServer(stores, "127.0.0.1", free_port(), 0).start()
    try:
        url = f"http://127.0.0.1:{server.rest_port}/v1/models/fer"
        statuses = requests.get(url, timeout=10).json()["model_version_status"]
        assert [(s["version"], s["state"]) for s in statuses] == [("2", "AVAILABLE"),
                                                                   ("1", "AVAILABLE")]
        stable = requests.get(url + "/labels/stable/metadata", timeout=10).json()
        assert stable["model_spec"]["version"] == "1"
        assert requests.get(url + "/metadata", timeout=10).json()["model_spec"]["version"] == "2"
    finally:
        server.stop()


def test_bad_config_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "bad.config").write_text("model_config_list { config { nme: 'x' } }")
    assert main(["--model_config_file", str(tmp_path / "bad.config")]) == 2
    assert "cannot read model config" in capsys.readouterr().err


def run_fer_serve(*flags: str) -> tuple[dict, str, int]:
    """Start ``fer-serve`` as a process on free ports, return its model status, then stop it."""
    rest, grpc_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.server", *flags, f"--rest_api_port={rest}",
         f"--port={grpc_port}", "--rest_api_host=127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(300):
            try:
                r = requests.get(f"http://127.0.0.1:{rest}/v1/models/fer", timeout=1)
                break
            except requests.ConnectionError:
                if proc.poll() is not None:
                    pytest.fail(proc.stdout.read())
                time.sleep(0.1)
        status = r.json()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    return status, out, proc.returncode


def test_fer_serve_command_serves(exported_model, tmp_path):
    deploy(exported_model, str(tmp_path / "serving"), "fer")
    status, out, code = run_fer_serve("--model_name=fer",
                                      f"--model_base_path={tmp_path / 'serving' / 'fer'}",
                                      "--file_system_poll_wait_seconds=1")
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    assert code == 0
    assert "loaded version 1" in out and "(7 warm-up requests)" in out


def test_fer_serve_with_no_model_named_serves_the_bundled_one(exported_model, tmp_path, caplog):
    args = build_parser().parse_args([])
    with pytest.raises(ValueError, match="no model is bundled with this package"):
        model_stores(args, bundled=tmp_path / "model" / "fer")
    deploy(exported_model, str(tmp_path / "model"), "fer")  # what `fer-pipeline release` ships
    with caplog.at_level("INFO", logger="fer-serve"):
        (store,) = model_stores(args, bundled=tmp_path / "model" / "fer").values()
    assert (store.name, store.base_path) == ("fer", str(tmp_path / "model" / "fer"))
    assert "serving the bundled model" in caplog.text
    named = model_stores(build_parser().parse_args(["--model_base_path", "/elsewhere"]),
                         bundled=tmp_path / "model" / "fer")
    assert named["fer"].base_path == "/elsewhere"


@pytest.mark.parametrize("dockerfile", ["Dockerfile.serve", "Dockerfile.train"])
def test_hadolint_passes(dockerfile):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(ROOT / dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_serving_image_is_pinned_and_ships_the_configs():
    text = (ROOT / "Dockerfile.serve").read_text()
    assert "FROM tensorflow/serving:2.21.0\n" in text
    assert ("COPY serving/models.config serving/batching.config serving/monitoring.config "
            "/config/") in text
    assert "--model_config_file=/config/models.config" in text
    assert "--monitoring_config_file=/config/monitoring.config" in text
    assert "ENV MODEL_NAME=fer" in text
