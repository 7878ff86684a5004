"""k-fold cross-validation (components.cv): the folds, the CV table, the selection on it, the
compiled pipeline, and one real kfp.local run of the smoke profile with three folds."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from components.cv import (
    CV_KEY,
    WHOLE,
    check_cv,
    cv_plan,
    cv_table,
    describe_selection,
    fold_dataset,
    format_cv_table,
    markdown_selection,
    select_with_cv,
    train_variant,
)
from components.dataset import TEST, TRAIN, VAL, FaceDataset, write_json
from pipeline.cli import main
from serving.contract import SUMMARY_FILE


@pytest.fixture(scope="module")
def pool_data(prepared) -> FaceDataset:
    """The real small subset after the data steps: train, val and test splits."""
    return FaceDataset.load(prepared / "dataset")


def pool_index(data: FaceDataset) -> np.ndarray:
    return np.flatnonzero((data.splits == TRAIN) | (data.splits == VAL))


def test_the_folds_partition_the_pool_stratified_and_leave_test_alone(pool_data):
    pool = pool_index(pool_data)
    vals = []
    for fold in range(3):
        split = fold_dataset(pool_data, 3, fold, seed=7)
        # test: the same items, still test; the rest of the pool is train
        np.testing.assert_array_equal(split.splits == TEST, pool_data.splits == TEST)
        np.testing.assert_array_equal(split.images, pool_data.images)
        np.testing.assert_array_equal(split.labels, pool_data.labels)
        assert set(split.splits[pool].tolist()) == {TRAIN, VAL}
        val = np.flatnonzero(split.splits == VAL)
        vals.append(set(val.tolist()))
        # stratified: each class's share of the fold is a third of it, to one item
        for cls in range(pool_data.num_classes):
            in_pool = int((pool_data.labels[pool] == cls).sum())
            assert abs((pool_data.labels[val] == cls).sum() - in_pool / 3) < 1, cls
    assert vals[0].isdisjoint(vals[1]) and vals[1].isdisjoint(vals[2])
    assert vals[0].isdisjoint(vals[2])
    assert set().union(*vals) == set(pool.tolist())  # every pool item is val exactly once
    assert max(map(len, vals)) - min(map(len, vals)) <= 1


def test_the_folds_are_seeded(pool_data):
    again = fold_dataset(pool_data, 3, 1, seed=7).splits
    np.testing.assert_array_equal(fold_dataset(pool_data, 3, 1, seed=7).splits, again)
    assert not np.array_equal(fold_dataset(pool_data, 3, 1, seed=8).splits, again)
    with pytest.raises(ValueError, match="fold must be in 0..2"):
        fold_dataset(pool_data, 3, 3, seed=7)
    with pytest.raises(ValueError, match="folds >= 2"):
        fold_dataset(pool_data, 1, 0, seed=7)


def fold_results(arch: str, f1s: list[float], accs: list[float]) -> list[dict]:
    return [{"architecture": arch, "fold": i, "val_macro_f1": f, "val_accuracy": a}
            for i, (f, a) in enumerate(zip(f1s, accs))]


def test_the_table_is_mean_and_std_over_folds_best_mean_first():
    # "spiky" has the best single fold (0.60) but the lower mean
    results = (fold_results("spiky", [0.60, 0.20, 0.25], [0.50, 0.40, 0.45])
               + fold_results("steady", [0.40, 0.42, 0.44], [0.41, 0.43, 0.45]))
    table = cv_table(results[::-1])  # in any order
    assert [r["architecture"] for r in table] == ["steady", "spiky"]
    steady, spiky = table
    assert steady["folds"] == 3 and steady["val_macro_f1_by_fold"] == [0.40, 0.42, 0.44]
    assert steady["val_macro_f1_mean"] == pytest.approx(0.42)
    assert steady["val_macro_f1_std"] == pytest.approx(np.std([0.40, 0.42, 0.44], ddof=1))
    assert spiky["val_accuracy_mean"] == pytest.approx(0.45)
    assert spiky["val_accuracy_std"] == pytest.approx(0.05)
    text = format_cv_table(table)
    assert "val macro F1 mean ± std" in text and "accuracy mean ± std" in text
    assert "0.4200 ± 0.0200" in text.splitlines()[1]  # steady, first


def test_the_plan_lists_a_train_task_per_architecture_and_fold():
    assert cv_plan(["a", "b"], 0) == [{"architecture": "a", "fold": WHOLE},
                                      {"architecture": "b", "fold": WHOLE}]
    assert cv_plan(["a"], 1) == [{"architecture": "a", "fold": WHOLE}]  # 1: off
    assert [(p["architecture"], p["fold"]) for p in cv_plan(["a", "b"], 3)] == [
        ("a", 0), ("a", 1), ("a", 2), ("a", WHOLE), ("b", 0), ("b", 1), ("b", 2), ("b", WHOLE)]
    assert [p["fold"] for p in cv_plan(["a"], 3, "ensemble")] == [0, 1, 2]


@pytest.mark.parametrize("args, message", [
    ((-1,), "folds must be"), ((3, "average"), "cv_final must be one of"),
    ((3, "retrain", True), "folds and ensemble"), ((3, "retrain", False, "bundled"), "teacher")])
def test_bad_cv_settings_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        check_cv(*args)
    check_cv(0, "retrain", True, "bundled")  # without folds, ensemble and teacher are fine


def fake_model(root: Path, arch: str, fold: int, f1: float, acc: float) -> Path:
    """A train task's output as the selection reads it: its summary.json (and a marker)."""
    d = root / f"{arch}-{fold}"
    summary = {"architecture": arch, "val_macro_f1": f1, "val_accuracy": acc, "epochs_run": 1}
    if fold != WHOLE:
        summary[CV_KEY] = {"fold": fold, "folds": 3, "seed": 5}
    write_json(d / SUMMARY_FILE, summary)
    (d / "marker.txt").write_text(f"{arch} {fold}")
    return d


def test_the_selection_serves_the_best_cv_mean_not_the_best_single_score(tmp_path):
    dirs = [fake_model(tmp_path, "spiky", i, f, 0.4) for i, f in enumerate([0.6, 0.2, 0.25])]
    dirs += [fake_model(tmp_path, "steady", i, f, 0.4) for i, f in enumerate([0.4, 0.42, 0.44])]
    # spiky's whole-split model also scores best on the original val split
    dirs += [fake_model(tmp_path, "spiky", WHOLE, 0.7, 0.6),
             fake_model(tmp_path, "steady", WHOLE, 0.3, 0.3)]
    result = select_with_cv(dirs, tmp_path / "best")
    assert result["winner"] == "steady"
    assert result["cv"]["table"][0]["architecture"] == "steady"
    assert (result["cv"]["folds"], result["cv"]["seed"], result["cv"]["served"]) == (
        3, 5, "steady")
    assert (tmp_path / "best" / "marker.txt").read_text() == f"steady {WHOLE}"
    assert [r["architecture"] for r in result["leaderboard"]] == ["steady", "spiky"]
    served = json.loads((tmp_path / "best" / SUMMARY_FILE).read_text())
    assert served["cross_validation"]["table"] == result["cv"]["table"]
    assert "cv winner: steady (retrained" in describe_selection(result)
    assert "| steady | 0.4200 ± 0.0200 |" in markdown_selection(result)
    # without fold models: the selection of a run without folds, best val macro F1
    plain = select_with_cv(dirs[-2:], tmp_path / "plain")
    assert plain["winner"] == "spiky" and "cv" not in plain
    assert describe_selection(plain) == ""


def test_fold_models_train_on_their_fold_and_make_the_ensemble(prepared, pool_data, tmp_path):
    from components.train.recipe import TrainConfig

    config = TrainConfig(architecture="configurable_cnn", epochs=1, batch_size=32, seed=4,
                         class_balance="none", checkpoint_dir=str(tmp_path / "ckpt" / "c"),
                         model_kwargs={"filters": [8, 16], "depth": 1, "dense_units": [16]})
    dirs = [tmp_path / f"fold{i}" for i in range(3)]
    for i, d in enumerate(dirs):
        summary = train_variant(prepared / "dataset", None, d, config, folds=3, fold=i)
        val = fold_dataset(pool_data, 3, i, seed=4).split(VAL)
        assert summary[CV_KEY] == {"fold": i, "folds": 3, "seed": 4}
        assert (summary["val_items"], summary["train_items"]) == (
            len(val), len(pool_index(pool_data)) - len(val))
    # each fold resumes only from its own checkpoints
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "c-fold0of3", "c-fold1of3", "c-fold2of3"]
    result = select_with_cv(dirs, tmp_path / "best", prepared / "dataset",
                            cv_final="ensemble")
    assert result["winner"] == "configurable_cnn" and result["cv"]["served"] == "ensemble"
    assert [r.get("fold") for r in result["leaderboard"]] == [None, 0, 1, 2]
    served = json.loads((tmp_path / "best" / SUMMARY_FILE).read_text())
    assert served["architecture"] == "ensemble" and len(served["members"]) == 3
    assert served["cross_validation"]["table"][0]["folds"] == 3
    assert "ensemble of its 3 fold models" in describe_selection(result)


def test_folds_compile_into_a_loop_over_architecture_and_fold(tmp_path):
    out = tmp_path / "cv.yaml"
    assert main(["compile", "-o", str(out), "--profile", "smoke", "--folds", "5",
                 "--cv-final", "ensemble"]) == 0
    spec = yaml.safe_load(out.read_text())
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert (defaults["folds"]["defaultValue"], defaults["cv_final"]["defaultValue"]) == (
        5, "ensemble")
    tasks = spec["root"]["dag"]["tasks"]
    [loop] = [t for t in tasks.values() if "parameterIterator" in t]
    assert loop["parameterIterator"]["items"]["inputParameter"] == (
        "pipelinechannel--train-plan-op-Output")
    body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]["train-op"]
    fold = body["inputs"]["parameters"]["fold"]
    assert fold["parameterExpressionSelector"] == 'parseJson(string_value)["fold"]'
    assert tasks["select-best-op"]["inputs"]["parameters"]["cv_final"] == {
        "componentInputParameter": "cv_final"}


@pytest.mark.parametrize("argv, message", [
    (["--folds", "3", "--ensemble", "--architectures", "baseline_cnn,deep_cnn"],
     "folds and ensemble"), (["--folds", "-2"], "folds must be")])
def test_bad_cv_flags_exit_2_before_anything_runs(argv, message, tmp_path, capsys):
    assert main(["run", "--pipeline-root", str(tmp_path / "kfp"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "kfp").exists()


ARCHITECTURES = ("baseline_cnn", "configurable_cnn")


@pytest.fixture(scope="module")
def cv_run(small_fer, tmp_path_factory):
    """``fer-pipeline run --profile smoke --folds 3`` on the small real subset, two small
    architectures: its printed output, its summary and its pipeline root."""
    root = tmp_path_factory.mktemp("cv")
    options = {"baseline_cnn": {"dense_units": 32}, "configurable_cnn": {"filters": [8, 16]}}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["run", "--profile", "smoke", "--folds", "3", "--source", str(small_fer),
                     "--max-train-per-class", "0", "--f1-threshold", "0", "--seed", "3",
                     "--architectures", ",".join(ARCHITECTURES),
                     "--model-options", json.dumps(options),
                     "--pipeline-root", str(root / "kfp"),
                     "--serving-base", str(root / "serving"),
                     "--summary-json", str(root / "summary.json")])
    assert code == 0, printed.getvalue()
    print(printed.getvalue())  # shown with -s, and when a test fails
    return printed.getvalue(), json.loads((root / "summary.json").read_text()), root


def trained_summaries(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (root / "kfp").rglob(f"model/{SUMMARY_FILE}")
            if "train-op" in str(p)]


def test_a_cv_run_trains_three_folds_per_architecture(cv_run, small_fer):
    _, _, root = cv_run
    trained = trained_summaries(root)
    for arch in ARCHITECTURES:
        folds = sorted(s[CV_KEY]["fold"] for s in trained
                       if s["architecture"] == arch and s.get(CV_KEY))
        assert folds == [0, 1, 2], arch
        whole = [s for s in trained if s["architecture"] == arch and not s.get(CV_KEY)]
        assert len(whole) == 1, arch  # the retrain candidate, on the splits as they are
    # each fold trains on two thirds of train + val and is scored on the third
    fold0 = next(s for s in trained if s.get(CV_KEY) and s[CV_KEY]["fold"] == 0)
    pool = fold0["train_items"] + fold0["val_items"]
    assert pool == 7 * 30 and abs(fold0["val_items"] - pool / 3) <= 7


def test_a_cv_run_prints_the_cv_table(cv_run):
    printed, summary, _ = cv_run
    assert "architecture" in printed and "val macro F1 mean ± std" in printed
    assert "accuracy mean ± std" in printed
    for row in summary["selection"]["cv"]["table"]:
        line = next(line for line in printed.splitlines()
                    if line.split()[:1] == [row["architecture"]] and "±" in line)
        assert f"{row['val_macro_f1_mean']:.4f} ± {row['val_macro_f1_std']:.4f}" in line
        assert f"{row['val_accuracy_mean']:.4f} ± {row['val_accuracy_std']:.4f}" in line
        assert line.split()[-1] == "3"


def test_a_cv_run_selects_and_serves_the_best_cv_mean(cv_run):
    _, summary, root = cv_run
    selection = summary["selection"]
    table = selection["cv"]["table"]
    trained = trained_summaries(root)
    for row in table:  # the table is the folds' scores, aggregated
        folds = sorted((s for s in trained
                        if s.get(CV_KEY) and s["architecture"] == row["architecture"]),
                       key=lambda s: s[CV_KEY]["fold"])
        f1s = [s["val_macro_f1"] for s in folds]
        assert row["val_macro_f1_by_fold"] == f1s
        assert row["val_macro_f1_mean"] == pytest.approx(np.mean(f1s))
    best = max(table, key=lambda r: r["val_macro_f1_mean"])["architecture"]
    assert selection["winner"] == best == table[0]["architecture"]
    # what was evaluated and deployed: the winner's whole-split training, with its CV record
    assert summary["deployment"]["created"]
    record = json.loads((Path(summary["deployment"]["path"]) / "assets.extra" /
                         "metrics.json").read_text())["training"]
    assert record["architecture"] == best and not record.get(CV_KEY)
    assert record["cross_validation"]["table"] == table
