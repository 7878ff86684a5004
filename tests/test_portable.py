"""Training where TensorFlow is not installed: pack here, fit with Keras 3 on JAX in a process
that cannot import TensorFlow, finish and export here (real JAX, real faces)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from components.dataset import TRAIN, VAL, FaceDataset
from components.distill import load_teacher, teacher_predictions
from components.train.portable import FIT_FILE, Pack, finish, main, pack

ROOT = Path(__file__).resolve().parents[1]

# Run in a fresh process under KERAS_BACKEND=jax, with every import of TensorFlow refused:
# fit the smoke recipe for one epoch, then write the fitted network's val probabilities as
# JAX computes them.
ON_JAX = """
import sys, importlib.abc
class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError("TensorFlow is not installed here (the test refuses it)")
sys.meta_path.insert(0, NoTensorFlow())
import numpy as np
from components.train.portable import Pack, main
pack_path, fitted, probs = sys.argv[1:4]
code = main(["fit", pack_path, fitted, "--profile", "smoke",
             "--recipe", '{"epochs": 1, "batch_size": 32, "mixed_precision": true}'])
assert code == 0, code
import keras
from components.train.models import build_model
record = __import__("json").load(open(fitted + "/fit.json"))
cfg = record["config"]
model = build_model(cfg["architecture"], input_shape=(48, 48, 1),
                    num_classes=record["num_classes"], **cfg["model_kwargs"])
model.load_weights(fitted + "/model.weights.h5")
val = Pack(pack_path).val
np.save(probs, np.asarray(model.predict(val.images[..., None].astype("float32"), verbose=0)))
print("backend", keras.backend.backend(), "tensorflow imported:", "tensorflow" in sys.modules)
"""


@pytest.fixture(scope="module")
def packed(prepared, exported_model, tmp_path_factory) -> Path:
    """A pack of ``prepared``'s train and val faces, its class weights, and the teacher
    step's predictions of ``exported_model`` over its train faces."""
    root = tmp_path_factory.mktemp("portable")
    teacher_predictions(exported_model, prepared / "dataset", root / "teacher")
    return pack(prepared / "dataset", root / "pack.npz", prepared / "class_weights.json",
                root / "teacher")


def test_the_pack_holds_train_and_val_the_class_weights_and_the_teacher(packed, prepared):
    data = FaceDataset.load(prepared / "dataset")
    read = Pack(packed)
    for name, split in ((TRAIN, read.train), (VAL, read.val)):
        want = data.split(name)
        assert np.array_equal(split.images, want.images)
        assert np.array_equal(split.labels, want.labels)
        assert list(split.source_ids) == list(want.source_ids)
    assert len(read.train) + len(read.val) < len(data)  # no test faces travel
    teacher, info = load_teacher(packed.parent / "teacher", data.split(TRAIN))
    assert np.array_equal(read.teacher, teacher) and read.teacher_info == info
    weights = json.loads((prepared / "class_weights.json").read_text())
    assert read.class_weights == {int(k): v for k, v in weights.items()}


def test_a_network_fitted_on_jax_without_tensorflow_is_finished_and_exported_here(
        packed, prepared, tmp_path):
    fitted, probs = tmp_path / "fitted", tmp_path / "jax_val.npy"
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", ON_JAX, str(packed), str(fitted), str(probs)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "backend jax tensorflow imported: False" in done.stdout
    assert "[fit] baseline_cnn on Keras" in done.stdout and "(jax)" in done.stdout
    record = json.loads((fitted / FIT_FILE).read_text())
    assert record["backend"] == "jax" and record["epochs_run"] == 1
    assert record["mixed_precision"] is None  # JAX on a CPU: float32, bfloat16 is no faster
    assert record["teacher"]["teacher_fingerprint"]  # distilled from the packed teacher

    # The same weights under TensorFlow give JAX's probabilities.
    from components.train.models import build_model

    config = record["config"]
    model = build_model(config["architecture"], input_shape=(48, 48, 1),
                        num_classes=record["num_classes"], **config["model_kwargs"])
    model.load_weights(fitted / "model.weights.h5")
    val = Pack(packed).val
    here = model.predict(val.images[..., None].astype(np.float32), verbose=0)
    np.testing.assert_allclose(here, np.load(probs), atol=1e-4)

    summary = finish(packed, fitted, tmp_path / "model")
    assert (tmp_path / "model" / "model.keras").is_file()
    assert summary["epochs_run"] == 1 and summary["architecture"] == "baseline_cnn"
    assert summary["distillation"]["fitted_on"].endswith("(jax)")
    assert summary["distillation"]["weight"] == 0.5
    assert "/" not in summary["config"]["teacher_predictions"]  # no machine path

    from components.export import export

    export(tmp_path / "model", prepared / "dataset", tmp_path / "saved_model",
           {"macro_f1": summary["val_macro_f1"]})  # raises unless its self-check passes
    assert (tmp_path / "saved_model" / "saved_model.pb").is_file()


def test_what_needs_the_train_step_is_refused_clearly(packed, tmp_path, capsys):
    assert main(["fit", str(packed), str(tmp_path / "f"), "--profile", "smoke",
                 "--recipe", '{"class_balance": "sampling"}']) == 2
    assert "class_balance 'sampling' needs the train step" in capsys.readouterr().err
    assert main(["fit", str(tmp_path / "missing.npz"), str(tmp_path / "f")]) == 2
    assert "no pack at" in capsys.readouterr().err
    assert main(["fit", str(packed), str(tmp_path / "f"), "--recipe", "{epochs"]) == 2
    assert "--recipe is not JSON" in capsys.readouterr().err
    assert main(["finish", str(packed), str(tmp_path), str(tmp_path / "m")]) == 2
    assert "not the output of `fit`" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()


def test_a_time_budget_shortens_the_schedule_to_the_epochs_that_fit(packed, tmp_path, capsys):
    # Here on TensorFlow: the fit is the same code on any backend. No epoch takes a
    # millisecond, so the budget leaves the least the schedule allows: one epoch of three.
    assert main(["fit", str(packed), str(tmp_path / "f"), "--profile", "smoke",
                 "--recipe", '{"epochs": 3, "batch_size": 32}', "--time-budget", "0.001"]) == 0
    assert "1 of 3 epochs fit in 0.001 s" in capsys.readouterr().out
    record = json.loads((tmp_path / "f" / FIT_FILE).read_text())
    assert (record["epochs_run"], record["epochs_planned"], record["time_budget"]) == (1, 3, 0.001)
    assert record["config"]["epochs"] == 1 and record["backend"] == "tensorflow"
    assert len(json.loads((tmp_path / "f" / "history.json").read_text())["loss"]) == 1
