"""The pipeline: compiled IR YAML, and end-to-end local runs with kfp.local on real faces."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
import yaml
from kfp import components

from components.export import SIGNATURE_IMAGES, SIGNATURE_PIXELS
from components.ingest.readers import decode_face
from components.train.recipe import (
    RecipeError,
    TrainConfig,
    default_value,
    field_type,
    recipe_fields,
    variant_config,
)
from pipeline.cli import main
from pipeline.local_run import format_run_summary, run_local
from pipeline.profiles import PROFILES, profile_parameters
from tests.helpers import real_faces

STEPS = ["ingest-op", "preprocess-op", "class-weights-op", "data-report-op", "teacher-op", "train-op",
         "select-best-op", "evaluate-op", "export-op", "deploy-op", "skip-deploy-op"]


def test_compile_writes_ir_yaml_that_loads_back(tmp_path, capsys):
    out = tmp_path / "fer_pipeline.yaml"
    assert main(["compile", "--output", str(out), "--source", "gs://bucket/fer2013",
                 "--serving-base", "gs://bucket/serving"]) == 0
    spec = yaml.safe_load(out.read_text())
    assert spec["pipelineInfo"]["name"] == "fer-pipeline"
    assert set(STEPS) <= {name.removeprefix("exec-") for name in spec["deploymentSpec"]["executors"]}
    conditions = [task["triggerPolicy"]["condition"]
                  for comp in spec["components"].values() for task in
                  comp.get("dag", {}).get("tasks", {}).values() if "triggerPolicy" in task]
    assert "inputs.parameter_values['pipelinechannel--evaluate-op-passed'] == true" in conditions
    assert "parameterIterator" in out.read_text()  # the ParallelFor over architectures
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["source"]["defaultValue"] == "gs://bucket/fer2013"
    assert defaults["recipe"]["defaultValue"] == {
        **TrainConfig().recipe(), **PROFILES["full"]["recipe"]}
    loaded = components.load_component_from_file(str(out))
    assert loaded.name == "fer-pipeline"
    assert {"source", "serving_base", "architectures", "f1_threshold", "min_improvement",
            "model_name", "seed"} <= set(loaded.component_spec.inputs)


def test_recipe_flags_become_pipeline_parameters(tmp_path):
    out = tmp_path / "cpu.yaml"
    assert main(["compile", "-o", str(out), "--profile", "cpu", "--optimizer", "sgd",
                 "--label-smoothing", "0.2", "--tta", "crops"]) == 0
    defaults = {k: v.get("defaultValue") for k, v in
                yaml.safe_load(out.read_text())["root"]["inputDefinitions"]["parameters"].items()}
    assert defaults["architectures"] == PROFILES["cpu"]["architectures"]
    recipe = defaults["recipe"]
    assert (recipe["optimizer"], recipe["label_smoothing"], recipe["tta"]) == ("sgd", 0.2,
                                                                               "crops")
    assert recipe["schedule"] == "cosine" and recipe["augmentation"] == "light"
    assert defaults["model_options"] == PROFILES["cpu"]["model_options"]
    assert defaults["classic_baseline"] is True
    # The train (inside the loop), export (inside the condition) and evaluate tasks take it.
    text = out.read_text()
    assert "pipelinechannel--recipe" in text
    tasks = yaml.safe_load(text)["root"]["dag"]["tasks"]
    evaluate = tasks["evaluate-op"]["inputs"]["parameters"]
    assert evaluate["classic_baseline"] == {"componentInputParameter": "classic_baseline"}
    assert evaluate["recipe"] == {"componentInputParameter": "recipe"}
    select = tasks["select-best-op"]["inputs"]
    assert select["parameters"]["ensemble"] == {"componentInputParameter": "ensemble"}
    assert "dataset" in select["artifacts"]


def test_model_options_become_a_pipeline_parameter(tmp_path, capsys):
    out = tmp_path / "options.yaml"
    options = '{"configurable_cnn": {"filters": [64, 128, 256], "dropout": 0.1}}'
    assert main(["compile", "-o", str(out), "--profile", "cpu", "--model-options", options]) == 0
    spec = yaml.safe_load(out.read_text())
    assert spec["root"]["inputDefinitions"]["parameters"]["model_options"]["defaultValue"] == \
        json.loads(options)
    assert "pipelinechannel--model_options" in out.read_text()  # the train task takes it


@pytest.mark.parametrize("bad, message", [
    ("{", "not JSON"), ('{"resnet9000": {}}', "unknown architecture(s) resnet9000"),
    ('{"configurable_cnn": 3}', "expected {")])
def test_bad_model_options_are_refused(bad, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["compile", "-o", str(tmp_path / "p.yaml"), "--model-options", bad])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("name", list(PROFILES))
def test_every_profile_names_known_settings(name):
    from components.train.models import MODEL_BUILDERS, build_model

    params = PROFILES[name]
    assert set(params["architectures"]) <= set(MODEL_BUILDERS), name
    TrainConfig.from_dict(params["recipe"])  # raises on a bad setting
    for arch, kwargs in params.get("model_options", {}).items():  # builders take them
        assert arch in params["architectures"], (name, arch)
        assert build_model(arch, **kwargs).count_params() > 0


def test_profiles_and_overrides():
    params = profile_parameters("smoke", {"epochs": 3}, f1_threshold=None)
    assert params["recipe"]["epochs"] == 3
    assert params["recipe"]["batch_size"] == PROFILES["smoke"]["recipe"]["batch_size"]
    assert params["f1_threshold"] == PROFILES["smoke"]["f1_threshold"]
    with pytest.raises(ValueError, match="unknown profile"):
        profile_parameters("huge")
    with pytest.raises(RecipeError, match="set per run or variant") as err:
        profile_parameters("smoke", {"seed": 3})
    assert err.value.field == "seed"


def reaching_value(f):
    """A valid value other than the default for a recipe field, and the flags it needs."""
    kind, default = field_type(f.name), default_value(f.name)
    if kind is bool:
        return not default, []
    if f.metadata.get("choices"):
        return next(c for c in reversed(f.metadata["choices"]) if c != default), []
    if kind is dict:
        return {"rotation": 5.0}, []
    if kind is str:
        return "/models/fer/1", []
    if kind is int:
        needs = {"warmup_epochs": ["--schedule", "cosine"],  # warm-up is cosine's
                 "freeze_base_epochs": ["--warmup-epochs", "0"]}  # within the first phase
        return default + 1, needs.get(f.name, [])
    return (default or 0.05) * 2, []


def flag_for(f, value) -> list[str]:
    flag = "--" + f.name.replace("_", "-")
    if isinstance(value, bool):
        return [flag if value else "--no-" + flag[2:]]
    return [flag, json.dumps(value) if isinstance(value, dict) else str(value)]


@pytest.mark.parametrize("f", recipe_fields(), ids=lambda f: f.name)
def test_every_recipe_field_reaches_the_train_task(f, tmp_path, monkeypatch):
    """Nothing in the CLI, the pipeline or the component names recipe fields: each one,
    present or future, travels from a flag of run, compile and submit to the train task's
    TrainConfig."""
    value, extra = reaching_value(f)
    if f.name != "epochs":  # room for warm-up and frozen epochs in every profile
        extra += ["--epochs", "20"]
    argv = [*flag_for(f, value), *extra]
    # compile: the flag becomes the recipe parameter's default in the YAML...
    out = tmp_path / "p.yaml"
    assert main(["compile", "-o", str(out), *argv]) == 0
    recipe = yaml.safe_load(out.read_text())["root"]["inputDefinitions"]["parameters"][
        "recipe"]["defaultValue"]
    # ... and the train component rebuilds it (KFP turns ints into doubles on the way).
    config = variant_config(recipe, "baseline_cnn", 7, {}, "")
    assert getattr(config, f.name) == value
    # run and submit build the same parameters from the same flags.
    seen = []
    monkeypatch.setattr("pipeline.local_run.run_local",
                        lambda params, root, verbose: seen.append(params) or {})
    monkeypatch.setattr("pipeline.local_run.format_run_summary", lambda summary: "")
    monkeypatch.setattr("pipeline.submit.submit",
                        lambda host, params, **kw: seen.append(params) or {
                            "run_id": "r", "url": "u", "experiment": "e"})
    assert main(["run", *argv]) == 0
    assert main(["submit", "--host", "http://127.0.0.1:1", "--source", "gs://b/f",
                 "--serving-base", "gs://b/s", *argv]) == 0
    assert [p["recipe"][f.name] for p in seen] == [value, value]


@pytest.mark.parametrize("command", ["run", "compile", "submit"])
@pytest.mark.parametrize("argv, named", [
    (["--epochs", "0"], "epochs must be >= 1"),
    (["--warmup-epochs", "2", "--schedule", "plateau", "--epochs", "9"], "warmup_epochs needs"),
    (["--label-smoothing", "1.5"], "label_smoothing must be in"),
    (["--augmentation-kwargs", '{"rotation": 5}', "--batch-size", "-3"], "batch_size"),
])
def test_an_invalid_recipe_exits_2_naming_the_field_before_any_step(command, argv, named,
                                                                    tmp_path, capsys):
    extra = {"run": ["--pipeline-root", str(tmp_path / "kfp")],
             "compile": ["-o", str(tmp_path / "p.yaml")],
             "submit": ["--host", "http://127.0.0.1:1", "--source", "gs://b/f",
                        "--serving-base", "gs://b/s"]}[command]
    assert main([command, *extra, *argv]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "kfp").exists() and not (tmp_path / "p.yaml").exists()


def test_unknown_architecture_is_refused_before_running(capsys, tmp_path):
    code = main(["run", "--architectures", "baseline_cnn,resnet9000", "--pipeline-root",
                 str(tmp_path)])
    assert code == 2
    assert "unknown architecture(s) resnet9000" in capsys.readouterr().err


def test_a_failing_task_is_a_clear_error(tmp_path, capsys):
    code = main(["run", "--source", str(tmp_path / "missing"), "--pipeline-root",
                 str(tmp_path / "kfp"), "--serving-base", str(tmp_path / "serving")])
    captured = capsys.readouterr()
    assert code == 1
    assert "Inner task failed: 'ingest-op'" in captured.err
    assert 'source does not exist' in captured.out  # the task's own log names the problem
    assert not (tmp_path / "serving").exists()


def check_served_model(version_dir):
    loaded = tf.saved_model.load(str(version_dir))
    pixels = np.stack([decode_face(f.read_bytes()) for f in real_faces("test", "fear", 4)])
    pixels = pixels[..., None].astype(np.float32)  # Pillow's pixels, as ingest decodes
    by_pixels = loaded.signatures[SIGNATURE_PIXELS](pixels=tf.constant(pixels))["probabilities"]
    jpegs = tf.constant([f.read_bytes() for f in real_faces("test", "fear", 4)])
    by_bytes = loaded.signatures[SIGNATURE_IMAGES](image_bytes=jpegs)["probabilities"]
    for probs in (by_pixels, by_bytes):
        assert probs.shape == (4, 7)
        np.testing.assert_allclose(probs.numpy().sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(by_pixels, by_bytes, atol=1e-4)


def test_end_to_end_local_run_deploys_then_refuses_a_non_improving_model(small_fer, tmp_path,
                                                                        capsys):
    params = profile_parameters("smoke", source=str(small_fer),
                                serving_base=str(tmp_path / "serving"), model_name="fer",
                                max_train_per_class=0, f1_threshold=0.0, seed=11,
                                model_options={"baseline_cnn": {"dense_units": 64}},
                                recipe={"logit_adjustment": True})
    first = run_local(params, tmp_path / "kfp", verbose=False)
    quiet = capsys.readouterr().out.splitlines()
    # what a person reads: a line per step, the steps' own lines, an epoch line; no executor
    # dumps, no colours, no "Skipping conditional task"; the full log is in run.log
    assert len(quiet) < 40, "\n".join(quiet)
    assert any(line.split()[:2] == ["train", "done"] for line in quiet)
    assert any("[train] baseline_cnn epoch 1/1: loss" in line for line in quiet)
    assert not any("\x1b[" in line or "Skipping" in line or "executor_input" in line
                   for line in quiet)
    assert first["log"] == str(tmp_path / "kfp" / "run.log")
    assert "Got executor_input" in (tmp_path / "kfp" / "run.log").read_text()
    assert first["deployment"]["created"] and first["deployment"]["version"] == 1
    assert first["gate"]["passed"] and first["gate"]["champion_version"] is None
    assert first["selection"]["winner"] == "baseline_cnn"
    version_dir = tmp_path / "serving" / "fer" / "1"
    check_served_model(version_dir)
    # The builder arguments and the recipe reached the train task and travel with the model.
    record = json.loads((version_dir / "assets.extra" / "metrics.json").read_text())
    assert record["training"]["config"]["model_kwargs"] == {"dense_units": 64}
    assert record["training"]["config"]["logit_adjustment"] is True
    assert 0.0 <= record["training"]["logit_adjustment"]["tau"] <= 2.0
    text = format_run_summary(first)
    assert "gate:     PASSED" in text and f"deployed: version 1 at {version_dir}" in text

    # Same data, same seed: the same model, which does not beat the champion it now is.
    second = run_local(params, tmp_path / "kfp", verbose=True)
    assert len(capsys.readouterr().out.splitlines()) > 10 * len(quiet)  # --verbose: all of it
    assert not second["gate"]["passed"] and second["gate"]["champion_version"] == 1
    assert second["deployment"]["created"] is False
    assert "does not beat champion version 1" in second["deployment"]["reason"]
    assert sorted(p.name for p in (tmp_path / "serving" / "fer").iterdir()) == ["1"]


def test_a_local_run_distils_a_student_from_a_served_teacher(small_fer, exported_model,
                                                            tmp_path):
    params = profile_parameters("smoke", {"distill_weight": 0.6}, source=str(small_fer),
                                serving_base=str(tmp_path / "serving"), f1_threshold=0.0,
                                seed=13, teacher=str(exported_model),
                                checkpoint_root=str(tmp_path / "ckpt"),
                                model_options={"baseline_cnn": {"dense_units": 32}})
    run = run_local(params, tmp_path / "kfp")
    # the teacher's predictions were made once, kept as the teacher step's artifact (and in
    # the checkpoint root's cache), and the student learnt from them
    [predictions] = list((tmp_path / "kfp").rglob("teacher-op/predictions/teacher.npz"))
    assert list((tmp_path / "ckpt" / "teacher").glob("teacher-*/teacher.npz"))
    [row] = run["selection"]["leaderboard"]
    teacher_name = f"{exported_model.parent.name}/{exported_model.name}"
    assert row["teacher"] == teacher_name and row["teacher_val_macro_f1"] is not None
    assert f"distilled from {teacher_name}" in format_run_summary(run)
    # the student is what was exported and deployed
    version_dir = tmp_path / "serving" / "fer" / "1"
    check_served_model(version_dir)
    training = json.loads((version_dir / "assets.extra" / "metrics.json").read_text())[
        "training"]
    assert training["distillation"]["weight"] == 0.6
    assert training["distillation"]["train_items"] == training["train_items"]
    # the record names no machine directory: paths are reduced to their last part
    assert training["config"]["teacher_predictions"] == predictions.parent.name
    assert "/" not in training["config"]["checkpoint_dir"]
    assert str(tmp_path) not in json.dumps(training)


def test_a_local_run_can_serve_the_ensemble_of_its_variants(small_fer, tmp_path):
    params = profile_parameters("smoke", source=str(small_fer),
                                serving_base=str(tmp_path / "serving"), f1_threshold=0.0,
                                seed=12, architectures=["baseline_cnn", "configurable_cnn"],
                                model_options={"baseline_cnn": {"dense_units": 32},
                                               "configurable_cnn": {"filters": [8, 16]}},
                                ensemble=True, recipe={"logit_adjustment": True})
    run = run_local(params, tmp_path / "kfp")
    board = run["selection"]["leaderboard"]
    assert run["selection"]["winner"] == "ensemble"
    assert sorted(r["architecture"] for r in board[1:]) == ["baseline_cnn", "configurable_cnn"]
    assert board[1]["val_macro_f1"] >= board[2]["val_macro_f1"]  # members best first
    version_dir = tmp_path / "serving" / "fer" / "1"
    check_served_model(version_dir)
    training = json.loads((version_dir / "assets.extra" / "metrics.json").read_text())["training"]
    assert training["architecture"] == "ensemble"
    assert sorted(m["architecture"] for m in training["members"]) == ["baseline_cnn",
                                                                      "configurable_cnn"]
    assert "ensemble" in format_run_summary(run)


def _readme_cell(text: str):
    """A README flag-table cell as a value, or ``...`` when it is prose to skip."""
    text = text.strip().strip("`")
    if text in ("no", "yes"):
        return text == "yes"
    if text in ('""', "none"):
        return {"": "", "none": None}[text.strip('"') or ""]
    try:
        return float(text)
    except ValueError:
        pass
    return text if text.isidentifier() else ...


def test_the_readmes_flag_table_matches_the_profiles_and_the_recipe():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = [line.split("|")[1:-1] for line in readme.splitlines()
            if line.startswith("| `--") and line.count("|") == 6]
    profiles = {name: profile_parameters(name) for name in ("smoke", "cpu", "full")}
    checked = 0
    for flag, param, *values in rows:
        name = param.strip().split("`")[1] if "`" in param else ""
        if "," in flag or not name:
            continue
        previous = None
        for profile, cell in zip(("smoke", "cpu", "full"), values):
            value = previous if cell.strip() == "same" else _readme_cell(cell)
            previous = value
            params = profiles[profile]
            actual = params["recipe"][name] if name in params["recipe"] else params.get(name, ...)
            if value is ... or actual is ... or isinstance(actual, (dict, list)):
                continue
            if value is None and isinstance(actual, str) and actual == "none":
                value = "none"  # a choice named none, not a missing value
            if name in ("teacher", "checkpoint_root"):
                actual = actual or ("" if name == "teacher" else None)
            if isinstance(actual, bool) or isinstance(value, bool):
                assert bool(actual) == value, (profile, name, actual, value)
            elif isinstance(actual, (int, float)) and isinstance(value, float):
                assert float(actual) == value, (profile, name, actual, value)
            else:
                assert actual == value, (profile, name, actual, value)
            checked += 1
    assert checked >= 36  # every row of plain values, in each profile
