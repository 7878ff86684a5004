"""The cluster path: the training image, the pipeline compiled for a cluster, and a whole
pipeline run with data and models in GCS (a real GCS emulator) served by fer-serve from gs://.

Images cannot be built and no cluster can run here: the Dockerfile is checked statically
(hadolint runs in test_serving_files.py), the compiled YAML is checked with kfp itself, and
the code the image runs is the code these tests run.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from kfp import components

from components import kfp_components
from components.kfp_components import TRAIN_IMAGE
from pipeline.cli import main
from pipeline.local_run import run_local
from pipeline.pipeline import TrainResources, build_pipeline
from pipeline.profiles import profile_parameters
from serving.model_store import ModelStore
from serving.server import LocalServer
from tests.helpers import face_pixels, free_port, real_faces

ROOT = Path(__file__).resolve().parents[1]


def test_training_image_is_pinned_non_root_and_installs_only_pinned_dependencies():
    text = (ROOT / "Dockerfile.train").read_text()
    assert re.search(r"^FROM tensorflow/tensorflow:2\.21\.0-gpu$", text, re.M)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] not in {"root", "0"}
    # Every pip install is either the pinned list from pyproject.toml or the project itself.
    for line in re.findall(r"pip install ([^\\\n&]+)", text):
        assert line.strip() in {"--no-compile -r /tmp/requirements.txt",
                                "--no-compile --no-deps ."}, line
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert deps and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.]+", d) for d in deps), deps
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv*", "runs", "tests"} <= set(ignored)


def test_every_component_names_the_training_image_in_one_place():
    ops = [getattr(kfp_components, name) for name in dir(kfp_components) if name.endswith("_op")]
    assert len(ops) == 12  # the ten steps, the distillation teacher and the train plan
    for op in ops:
        assert op.component_spec.implementation.container.image == TRAIN_IMAGE, op.name


def test_compile_for_a_cluster_image(tmp_path):
    out = tmp_path / "fer_pipeline.yaml"
    image = "registry.example.com/team/fer-train:2026.11"
    assert main(["compile", "-o", str(out), "--image", image, "--source", "gs://d/fer2013",
                 "--serving-base", "gs://m/serving", "--gpus", "2", "--train-memory", "32G"]) == 0
    spec = yaml.safe_load(out.read_text())
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == 12  # with the train plan (components.cv)
    assert {name: e["container"]["image"] for name, e in executors.items()} == {
        name: image for name in executors}
    # The train task asks for the GPUs, CPU and memory.
    resources = executors["exec-train-op"]["container"]["resources"]
    accelerator = resources["accelerator"]
    assert (accelerator["resourceType"], accelerator["resourceCount"]) == ("nvidia.com/gpu", "2")
    assert resources["resourceMemoryRequest"] == "32G"
    assert resources["resourceCpuRequest"] == "4"
    # Only the train task asks for accelerators.
    assert [n for n, e in executors.items() if "accelerator" in
            e["container"].get("resources", {})] == ["exec-train-op"]
    # The I/O steps retry with backoff.
    tasks = {**spec["root"]["dag"]["tasks"],
             **{n: t for c in spec["components"].values()
                for n, t in c.get("dag", {}).get("tasks", {}).items()}}
    for name in ("ingest-op", "deploy-op"):
        assert tasks[name]["retryPolicy"]["maxRetryCount"] == 3, name
        assert tasks[name]["retryPolicy"]["backoffDuration"] == "30s", name
    assert "retryPolicy" not in tasks["train-op"]
    assert components.load_component_from_file(str(out)).name == "fer-pipeline"


def test_a_cluster_without_gpus_gets_no_accelerator_request(tmp_path):
    out = tmp_path / "kind.yaml"
    assert main(["compile", "-o", str(out), "--image", "fer-train:local", "--gpus", "0",
                 "--train-cpu", "1", "--train-memory", "4G"]) == 0
    resources = yaml.safe_load(out.read_text())["deploymentSpec"]["executors"]["exec-train-op"][
        "container"]["resources"]
    assert "accelerator" not in resources
    assert (resources["resourceCpuRequest"], resources["resourceMemoryRequest"]) == ("1", "4G")


def test_volumes_are_mounted_into_every_task(tmp_path):
    out = tmp_path / "kind.yaml"
    assert main(["compile", "-o", str(out), "--image", "fer-train:local", "--gpus", "0",
                 "--volume", "fer-data:/data", "--volume", "fer-models:/models",
                 "--source", "/data/fer2013", "--serving-base", "/models"]) == 0
    spec, platform = yaml.safe_load_all(out.read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == set(spec["deploymentSpec"]["executors"])
    for name, config in executors.items():
        assert [(m["constant"], m["mountPath"]) for m in config["pvcMount"]] == [
            ("fer-data", "/data"), ("fer-models", "/models")], name
    assert spec["root"]["inputDefinitions"]["parameters"]["source"]["defaultValue"] == \
        "/data/fer2013"


@pytest.mark.parametrize("bad", ["fer-data", "fer-data:data", ":/data"])
def test_bad_volumes_are_refused(bad, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["compile", "--volume", bad])
    assert exit_.value.code == 2
    assert "a volume is CLAIM:/ABSOLUTE/PATH" in capsys.readouterr().err


def test_bad_cluster_settings_are_refused():
    with pytest.raises(ValueError, match="share a mount path"):
        build_pipeline(volumes=(("a", "/data"), ("b", "/data")))
    with pytest.raises(ValueError, match="container image"):
        build_pipeline("fer train:1")
    with pytest.raises(ValueError, match="accelerator_count must be >= 0"):
        TrainResources(accelerator_count=-1)


def upload_tree(bucket, root: Path, prefix: str) -> int:
    files = [p for p in root.rglob("*") if p.is_file()]
    for path in files:
        bucket.blob(f"{prefix}/{path.relative_to(root).as_posix()}").upload_from_filename(path)
    return len(files)


def test_gcs_end_to_end_pipeline_run_then_served_from_gcs(small_fer, gcs_bucket, tmp_path):
    """Source and serving base are gs:// URIs on a real GCS emulator; fer-serve serves the result.

    The kfp.local tasks run in subprocesses that inherit STORAGE_EMULATOR_HOST, as pods
    inherit their environment; credentials otherwise follow Application Default Credentials.
    """
    assert upload_tree(gcs_bucket, small_fer, "data/fer2013") == 280
    source = f"gs://{gcs_bucket.name}/data/fer2013"
    serving_base = f"gs://{gcs_bucket.name}/serving"
    params = profile_parameters("smoke", source=source, serving_base=serving_base,
                                max_train_per_class=0, f1_threshold=0.0, seed=5)
    summary = run_local(params, tmp_path / "kfp")
    assert summary["deployment"]["created"] is True
    assert summary["deployment"]["path"] == f"{serving_base}/fer/1"
    names = {b.name for b in gcs_bucket.list_blobs(prefix="serving/fer/1/")}
    assert "serving/fer/1/saved_model.pb" in names
    assert any(n.startswith("serving/fer/1/variables/") for n in names)
    # Nothing secret travels: the summary holds URIs and metrics only.
    assert "private_key" not in str(summary) and "token" not in str(summary).lower()

    store = ModelStore("fer", f"{serving_base}/fer", poll_seconds=0.5)
    server = LocalServer({"fer": store}, "127.0.0.1", free_port(), 0).start()
    try:
        url = f"http://127.0.0.1:{server.rest_port}/v1/models/fer"
        status = requests.get(url, timeout=10).json()["model_version_status"]
        assert [(s["version"], s["state"]) for s in status] == [("1", "AVAILABLE")]
        faces = [face_pixels(f)[..., None].tolist() for f in real_faces("test", "happy", 3)]
        reply = requests.post(url + ":predict", json={"instances": faces}, timeout=30)
        assert reply.status_code == 200, reply.text
        probs = np.array([p["probabilities"] for p in reply.json()["predictions"]])
        assert probs.shape == (3, 7)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    finally:
        server.stop()
