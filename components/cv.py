"""k-fold cross-validation: architectures compared on the mean of k seeded, stratified folds.

With ``folds`` >= 2 the pool (the train and val items together; test is never touched) is
split into ``folds`` stratified folds, the same ones for every architecture (the run's
seed). Each architecture is trained once per fold: that fold is its val split (early
stopping, calibration, scores), the other folds its train split. :func:`cv_table` ranks
the architectures by their mean val macro F1 over the folds, and :func:`select_with_cv`
picks the best; what goes on to the evaluation is, by ``cv_final``:

* ``retrain``: the winner as a run without folds trains it: on the pool's original train
  split, its original val split held out for early stopping, the logit adjustment and the
  temperature (fitted on faces it trained on, those would mean nothing). :func:`cv_plan`
  schedules that training for every architecture beside its folds, because kfp.local
  cannot hand an artifact out of a ``dsl.If`` branch (``dsl.OneOf`` takes parameters only
  there), so a training after the selection could not reach the evaluation;
* ``ensemble``: the average of the winner's fold models
  (:func:`components.train.ensemble.ensemble`), its logit adjustment tuned on the original
  val split, whose faces most of its members trained on: its val figures are optimistic,
  the CV mean is the estimate to trust (test is untouched either way).

This module imports neither TensorFlow nor Keras at its top: the command line checks the
settings with :func:`check_cv` in milliseconds.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from components.dataset import TRAIN, VAL, FaceDataset, read_json, write_json
from serving.contract import SUMMARY_FILE

RETRAIN, ENSEMBLE = "retrain", "ensemble"
CV_FINAL = (RETRAIN, ENSEMBLE)
WHOLE = -1  # a train task's fold when it trains on the splits as they are
CV_KEY = "cv_fold"  # where a fold model's summary.json records its fold


def cv_enabled(folds: int) -> bool:
    """Whether ``folds`` asks for cross-validation (0 and 1: off)."""
    return int(folds) >= 2


def check_cv(folds: int, cv_final: str = RETRAIN, ensemble: bool = False,
             teacher: str = "") -> None:
    """Raise ValueError naming what is wrong with the cross-validation settings."""
    if int(folds) != folds or folds < 0:
        raise ValueError(f"folds must be a whole number >= 0 (0 or 1: off), got {folds}")
    if cv_final not in CV_FINAL:
        raise ValueError(f"cv_final must be one of {', '.join(CV_FINAL)}, got {cv_final!r}")
    if not cv_enabled(folds):
        return
    if ensemble:
        raise ValueError("folds and ensemble do not go together: with folds, cv_final "
                         "'ensemble' serves the average of the winner's fold models")
    if teacher:
        raise ValueError("folds and a teacher do not go together: the teacher's predictions "
                         "cover the train split only, and a fold trains on val faces too")


def cv_plan(architectures: Sequence[str], folds: int, cv_final: str = RETRAIN,
            ensemble: bool = False, teacher: str = "") -> list[dict[str, Any]]:
    """The run's train tasks, ``{"architecture", "fold"}`` each: one per architecture
    (fold :data:`WHOLE`) without folds; with them, one per architecture and fold, plus the
    whole-split training of each architecture for ``cv_final`` "retrain"."""
    check_cv(folds, cv_final, ensemble, teacher)
    if not architectures:
        raise ValueError("no architecture to train")
    if not cv_enabled(folds):
        return [{"architecture": a, "fold": WHOLE} for a in architectures]
    extra = [WHOLE] if cv_final == RETRAIN else []
    return [{"architecture": a, "fold": f} for a in architectures
            for f in [*range(int(folds)), *extra]]


def fold_ids(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each item's fold, 0..folds-1: every class shuffled (seeded) and dealt round the
    folds, continuing from where the previous class stopped, so that the folds are
    stratified and differ in size by at most one item."""
    if not cv_enabled(folds):
        raise ValueError(f"cross-validation needs folds >= 2, got {folds}")
    if len(labels) < folds:
        raise ValueError(f"{len(labels)} items cannot make {folds} folds")
    rng = np.random.default_rng(seed)
    ids = np.empty(len(labels), dtype=np.int64)
    start = 0
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        ids[members] = (start + np.arange(len(members))) % folds
        start += len(members)
    return ids


def fold_dataset(dataset: FaceDataset, folds: int, fold: int, seed: int) -> FaceDataset:
    """``dataset`` with its pool (train and val items) split into ``folds`` stratified,
    seeded folds: fold ``fold`` becomes val, the others train; test is left as it is."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in 0..{folds - 1}, got {fold}")
    pool = np.flatnonzero((dataset.splits == TRAIN) | (dataset.splits == VAL))
    splits = dataset.splits.astype("<U8").copy()
    splits[pool] = np.where(fold_ids(dataset.labels[pool], folds, seed) == fold, VAL, TRAIN)
    return FaceDataset(dataset.images, dataset.labels, splits, dataset.source_ids,
                       dataset.class_names)


def train_variant(dataset_dir: str | Path, class_weights_path: str | Path | None,
                  output_dir: str | Path, config: Any, folds: int = 0,
                  fold: int = WHOLE) -> dict[str, Any]:
    """Train ``config`` (a TrainConfig) like :func:`components.train.train.train`, on fold
    ``fold`` of ``folds`` (split with ``config.seed``) when it is one, else on the splits as
    they are. A fold model's summary records its fold under :data:`CV_KEY`, and its
    checkpoints, if any, go to a directory of their own. Returns the summary."""
    from components.train.train import train

    if fold == WHOLE or not cv_enabled(folds):
        return train(dataset_dir, class_weights_path, output_dir, config)
    if config.checkpoint_dir:
        config = replace(config, checkpoint_dir=f"{config.checkpoint_dir}-fold{fold}of{folds}")
    data = fold_dataset(FaceDataset.load(dataset_dir), int(folds), int(fold), config.seed)
    print(f"[train] {config.architecture}: fold {fold} (folds 0-{folds - 1})", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data.save(tmp)
        summary = train(tmp, class_weights_path, output_dir, config)
    summary[CV_KEY] = {"fold": int(fold), "folds": int(folds), "seed": config.seed}
    write_json(Path(output_dir) / SUMMARY_FILE, summary)
    return summary


def cv_table(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per architecture, the mean and (sample) standard deviation over its folds of val
    macro F1 and val accuracy, from ``results`` (``architecture``, ``fold``,
    ``val_macro_f1``, ``val_accuracy`` each); best mean macro F1 first (then accuracy)."""
    by_arch: dict[str, list[Mapping[str, Any]]] = {}
    for r in results:
        by_arch.setdefault(r["architecture"], []).append(r)
    table = []
    for arch, rows in by_arch.items():
        rows = sorted(rows, key=lambda r: r["fold"])
        row: dict[str, Any] = {"architecture": arch, "folds": len(rows)}
        for key in ("val_macro_f1", "val_accuracy"):
            values = np.array([float(r[key]) for r in rows])
            row[f"{key}_mean"] = float(values.mean())
            row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            row[f"{key}_by_fold"] = values.tolist()
        table.append(row)
    table.sort(key=lambda r: (-r["val_macro_f1_mean"], -r["val_accuracy_mean"],
                              r["architecture"]))
    return table


def format_cv_table(table: Sequence[Mapping[str, Any]]) -> str:
    """The CV table as aligned text, a line per architecture, best first."""
    header = ("architecture", "val macro F1 mean ± std", "accuracy mean ± std", "folds")
    rows = [(r["architecture"], f"{r['val_macro_f1_mean']:.4f} ± {r['val_macro_f1_std']:.4f}",
             f"{r['val_accuracy_mean']:.4f} ± {r['val_accuracy_std']:.4f}", str(r["folds"]))
            for r in table]
    return "\n".join(f"  {a:<16} {f1:<25} {acc:<21} {k}" for a, f1, acc, k in [header, *rows])


def markdown_selection(selection: Mapping[str, Any]) -> str:
    """The selection as Markdown (the KFP UI shows it): the CV table when there is one,
    then the leaderboard."""
    lines = []
    cv = selection.get("cv")
    if cv:
        lines += [f"## Cross-validation: {cv['folds']} folds, seed {cv['seed']}", "",
                  "| architecture | val macro F1 mean ± std | val accuracy mean ± std | folds |",
                  "|---|---|---|---|"]
        lines += [f"| {r['architecture']} | {r['val_macro_f1_mean']:.4f} ± "
                  f"{r['val_macro_f1_std']:.4f} | {r['val_accuracy_mean']:.4f} ± "
                  f"{r['val_accuracy_std']:.4f} | {r['folds']} |" for r in cv["table"]]
        lines.append("")
    lines += [f"## Leaderboard (winner: {selection['winner']})", "",
              "| model | val macro F1 | val accuracy | epochs |", "|---|---|---|---|"]
    for r in selection["leaderboard"]:
        name = r["architecture"] + ("" if r.get("fold") is None else f" fold {r['fold']}")
        lines.append(f"| {name} | {r['val_macro_f1']:.4f} | {r['val_accuracy']:.4f} | "
                     f"{r.get('epochs_run') or '-'} |")
    return "\n".join(lines) + "\n"


def selection_metrics(selection: Mapping[str, Any]) -> dict[str, float]:
    """The selection's figures as KFP metrics: each architecture's CV means and standard
    deviations with folds, else each variant's val macro F1 and accuracy."""
    cv = selection.get("cv")
    if cv:
        return {f"{r['architecture']}_cv_{key}": r[key] for r in cv["table"]
                for key in ("val_macro_f1_mean", "val_macro_f1_std", "val_accuracy_mean",
                            "val_accuracy_std")}
    return {f"{r['architecture']}_{key}": r[key] for r in selection["leaderboard"]
            for key in ("val_macro_f1", "val_accuracy")}


def select_with_cv(model_dirs: Sequence[str | Path], output_dir: str | Path,
                   dataset_dir: str | Path | None = None, use_ensemble: bool = False,
                   logit_adjustment: bool = True, tta: str = "none",
                   cv_final: str = RETRAIN) -> dict[str, Any]:
    """The pipeline's step after training. Without fold models among ``model_dirs``:
    :func:`components.train.ensemble.combine`, as without cross-validation. With them: the
    architecture with the best CV mean val macro F1 wins, and its whole-split model
    (``cv_final`` "retrain") or the ensemble of its fold models ("ensemble") is written to
    ``output_dir``. Returns the selection: ``winner``, ``leaderboard`` (best first) and,
    with folds, ``cv`` (the table, the folds, what was served)."""
    from components.train.ensemble import combine, ensemble, leaderboard_row

    summaries = {str(d): read_json(Path(d) / SUMMARY_FILE) for d in model_dirs}
    folded = {d: s for d, s in summaries.items() if s.get(CV_KEY)}
    if not folded:
        return combine(list(model_dirs), output_dir, dataset_dir, use_ensemble,
                       logit_adjustment, tta)
    check_cv(2, cv_final, use_ensemble)
    table = cv_table([{**s, "fold": s[CV_KEY]["fold"]} for s in folded.values()])
    winner = table[0]["architecture"]
    rank = {r["architecture"]: i for i, r in enumerate(table)}
    first = next(iter(folded.values()))[CV_KEY]
    if cv_final == RETRAIN:
        whole = {s["architecture"]: d for d, s in summaries.items() if not s.get(CV_KEY)}
        if winner not in whole:
            raise ValueError(f"no whole-split model of the winner {winner} to serve")
        board = sorted((leaderboard_row(summaries[d], d) for d in whole.values()),
                       key=lambda r: rank.get(r["architecture"], len(rank)))
        shutil.copytree(whole[winner], output_dir, dirs_exist_ok=True)
        served = winner
    else:
        members = sorted((d for d, s in folded.items() if s["architecture"] == winner),
                         key=lambda d: folded[d][CV_KEY]["fold"])
        if dataset_dir is None:
            raise ValueError("an ensemble needs the dataset (its val split calibrates it)")
        summary = ensemble(members, dataset_dir, output_dir, logit_adjustment, tta)
        board = [{"architecture": ENSEMBLE, "dir": str(output_dir),
                  "val_macro_f1": summary["val_macro_f1"],
                  "val_accuracy": summary["val_accuracy"], "epochs_run": None}]
        board += [{**leaderboard_row(folded[d], d), "fold": folded[d][CV_KEY]["fold"]}
                  for d in members]
        served = ENSEMBLE
    cv = {"folds": first["folds"], "seed": first["seed"], "final": cv_final,
          "served": served, "table": table}
    summary_path = Path(output_dir) / SUMMARY_FILE
    write_json(summary_path, {**read_json(summary_path), "cross_validation": cv})
    return {"winner": winner, "leaderboard": board, "cv": cv}


def describe_selection(selection: Mapping[str, Any]) -> str:
    """The selection's CV table and how the winner was served, as the run summary shows
    them ("" without cross-validation)."""
    cv = selection.get("cv")
    if not cv:
        return ""
    how = ("retrained on the train split, val held out for early stopping"
           if cv["final"] == RETRAIN else
           f"served as the ensemble of its {cv['folds']} fold models")
    heading = (f"cross-validation: {cv['folds']} stratified folds of train + val "
               f"(seed {cv['seed']}), best mean val macro F1 wins")
    return "\n".join([heading, format_cv_table(cv["table"]),
                      f"cv winner: {selection['winner']} ({how})"])
