"""Shared fixtures: small real subsets of ../shared/fer2013, and a real GCS emulator."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import Killed, free_port, make_subset


@pytest.fixture(scope="session")
def subset(tmp_path_factory) -> Path:
    """3 train and 2 test real faces per class: 21 + 14 images, like ../shared/fer2013."""
    return make_subset(tmp_path_factory.mktemp("fer") / "fer2013", {"train": 3, "test": 2})


@pytest.fixture(scope="session")
def gcs_emulator():
    """A real GCS emulator (gcp-storage-emulator) on 127.0.0.1, used through google-cloud-storage."""
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    mp = pytest.MonkeyPatch()
    mp.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    yield server
    mp.undo()
    server.stop()


@pytest.fixture
def gcs_bucket(gcs_emulator, request):
    """A fresh, empty bucket on the emulator."""
    from serving.storage import gcs_client

    name = "fer-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    return gcs_client().create_bucket(name)


@pytest.fixture(scope="session")
def small_fer(tmp_path_factory) -> Path:
    """A few hundred real faces: 30 train and 10 test per class (280)."""
    return make_subset(tmp_path_factory.mktemp("small") / "fer2013", {"train": 30, "test": 10})


@pytest.fixture(scope="session")
def prepared(small_fer, tmp_path_factory) -> Path:
    """``small_fer`` through the data steps: ``dataset/`` and ``class_weights.json``."""
    from pipeline.data_steps import run_data_steps

    out = tmp_path_factory.mktemp("prepared")
    run_data_steps(str(small_fer), out, report=False, progress=False)
    return out


@pytest.fixture(scope="session")
def trained_model(prepared, tmp_path_factory) -> Path:
    """A baseline CNN trained for two epochs on ``prepared`` (real TensorFlow, real faces)."""
    from components.train.recipe import TrainConfig
    from components.train.train import train

    out = tmp_path_factory.mktemp("model")
    train(prepared / "dataset", prepared / "class_weights.json", out,
          TrainConfig(epochs=2, batch_size=32, seed=1))
    return out


@pytest.fixture(scope="session")
def exported_model(trained_model, prepared, tmp_path_factory) -> Path:
    """The trained model exported by the pipeline's export step (a self-verified SavedModel)."""
    from components.export import export

    out = tmp_path_factory.mktemp("exported") / "saved_model"
    export(trained_model, prepared / "dataset", out, {"macro_f1": 0.2})
    return out


@pytest.fixture(scope="session")
def second_exported_model(prepared, tmp_path_factory) -> Path:
    """A different model (another seed, one epoch), exported: a second version to deploy."""
    from components.export import export
    from components.train.recipe import TrainConfig
    from components.train.train import train

    root = tmp_path_factory.mktemp("second")
    train(prepared / "dataset", prepared / "class_weights.json", root / "model",
          TrainConfig(epochs=1, batch_size=32, seed=99))
    export(root / "model", prepared / "dataset", root / "saved_model", {"macro_f1": 0.3})
    return root / "saved_model"


def _servers():
    """Yield ``start(base_path, ...)``, which starts a real local server (REST + gRPC on
    127.0.0.1) over a model base path; every server started is stopped afterwards."""
    from serving.limits import Limits
    from serving.model_store import ModelStore
    from serving.server import LocalServer

    servers = []

    def start(base_path, poll_seconds=0.3, labels=None, name="fer", request_log=None,
              **limits):
        store = ModelStore(name, str(base_path), version_labels=labels, poll_seconds=poll_seconds)
        server = LocalServer({name: store}, "127.0.0.1", free_port(), 0, Limits(**limits),
                             request_log).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def serve():
    """Start a real local server over a model base path, for one test."""
    yield from _servers()


@pytest.fixture(scope="module")
def serve_module():
    """Start a real local server over a model base path, shared by a module's tests that
    only read from it (starting one costs seconds: the model loads and warms up)."""
    yield from _servers()


@pytest.fixture
def kill_after_epoch(monkeypatch):
    """``kill_after_epoch(epoch, watch=None)``: training raises :class:`Killed` once, right
    after epoch index ``epoch`` is checkpointed and logged, as if its process were killed
    there; ``watch(callback, epoch)`` is called at every epoch's end before that, in this
    run and in later ones of the test."""
    import keras

    log_epoch = keras.callbacks.CSVLogger.on_epoch_end  # runs after BackupAndRestore's save

    def arm(epoch: int, watch=None) -> None:
        fired = []

        def end_of_epoch(self, index, logs=None):
            log_epoch(self, index, logs)
            if watch is not None:
                watch(self, index)
            if index == epoch and not fired:
                fired.append(index)
                raise Killed

        monkeypatch.setattr(keras.callbacks.CSVLogger, "on_epoch_end", end_of_epoch)

    return arm
