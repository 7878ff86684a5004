"""The KFP wrappers of the data steps: they compile, and run for real under kfp.local."""

import json

import pytest
import yaml
from kfp import compiler, dsl, local

from components.dataset import FaceDataset
from components.kfp_components import (
    TRAIN_IMAGE,
    class_weights_op,
    data_report_op,
    ingest_op,
    preprocess_op,
)

OPS = [ingest_op, preprocess_op, class_weights_op, data_report_op]


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_component_compiles_on_the_training_image(op, tmp_path):
    path = tmp_path / "c.yaml"
    compiler.Compiler().compile(op, str(path))
    spec = yaml.safe_load(path.read_text())
    (executor,) = spec["deploymentSpec"]["executors"].values()
    assert executor["container"]["image"] == TRAIN_IMAGE
    # The wrapper calls into the installed project; it installs nothing at run time.
    assert "pip install" not in " ".join(executor["container"]["command"])


@dsl.pipeline(name="fer-data-steps")
def data_steps(source: str):
    ing = ingest_op(source=source, data_format="auto")
    prep = preprocess_op(dataset=ing.outputs["dataset"], val_fraction=0.1, test_fraction=0.1,
                         seed=7, drop_duplicates=False, max_train_per_class=0)
    weights = class_weights_op(dataset=prep.outputs["splits"], mode="balanced")
    data_report_op(dataset=prep.outputs["splits"], weights=weights.outputs["weights"])


def test_data_steps_run_under_kfp_local(subset, tmp_path):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    with pytest.warns(RuntimeWarning, match="non-Python base image"):
        data_steps(source=str(subset))
    # Each output artifact exists where KFP put it, and holds what the step's logic wrote.
    run_dir = next(tmp_path.glob("fer-data-steps-*"))
    ds = FaceDataset.load(run_dir / "preprocess-op" / "splits")
    assert len(ds) == 35 and set(ds.splits.tolist()) == {"train", "val", "test"}
    assert ds.images.shape[1:] == (48, 48)
    weights = json.loads((run_dir / "class-weights-op" / "weights").read_text())
    assert sorted(weights) == [str(i) for i in range(7)]
    assert "data:image/png;base64," in (run_dir / "data-report-op" / "report").read_text()
    assert "35 read = 35 accepted" in (run_dir / "data-report-op" / "summary").read_text()
