"""Deep ensembles: several trained models averaged into one servable model.

Networks trained from different seeds, recipes or architectures make partly independent
mistakes; averaging their softmax outputs is the cheapest accuracy gain FER2013 offers once
single networks plateau (Pramerdorfer & Kampel 2016: eight networks together 75.2%, the
best of them alone 72.7%). :func:`ensemble` loads the members' ``model.keras``, drops their
own logit adjustment (each was tuned for that member alone), averages their plain
probabilities and, when asked, appends one
:class:`~components.train.calibrate.PriorAdjustment` whose tau is chosen on the validation
split for the ensemble. The result is written like a training run's output (``model.keras``
+ ``summary.json``), so the pipeline's evaluate, export and release steps take it
unchanged; the serving contract does not change.

:func:`combine` is the pipeline's choice after training: the best member by val macro F1
(:func:`select_best`), or the ensemble of all of them.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from components.dataset import (
    TRAIN,
    VAL,
    DataError,
    FaceDataset,
    read_json,
    to_model_input,
    write_json,
)
from components.train.calibrate import PriorAdjustment, fit_one_pass_adjustment, val_scores
from components.train.models import load_trained
from components.train.recipe import check_tta
from components.train.tta import view_probabilities
from serving.contract import MODEL_FILE, PIXELS_INPUT, SUMMARY_FILE

ENSEMBLE = "ensemble"


def require_trained(model_dirs: Sequence[str | Path]) -> None:
    """Raise :class:`FileNotFoundError` naming every directory without a ``model.keras``."""
    missing = [str(d) for d in model_dirs if not (Path(d) / MODEL_FILE).is_file()]
    if missing:
        raise FileNotFoundError(f"no {MODEL_FILE} in: {', '.join(missing)}")


def without_prior_adjustment(model: keras.Model) -> keras.Model:
    """``model`` without its trailing :class:`PriorAdjustment` (``model`` if it has none)."""
    last = model.layers[-1]
    if not isinstance(last, PriorAdjustment):
        return model
    return keras.Model(model.inputs, last.input, name=model.name)


def build_ensemble(members: Sequence[keras.Model], name: str = ENSEMBLE) -> keras.Model:
    """One model whose output is the mean of the ``members``' outputs (same input, same
    classes). Each member becomes a named sub-model, ``member_<i>``."""
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
    shapes = {(tuple(m.input_shape[1:]), m.output_shape[-1]) for m in members}
    if len(shapes) != 1:
        raise ValueError("ensemble members must share input shape and number of classes, got "
                         + ", ".join(f"{s} -> {k}" for s, k in sorted(shapes)))
    input_shape, _ = shapes.pop()
    inputs = keras.Input(shape=input_shape, name=PIXELS_INPUT)
    outputs = [keras.Model(m.inputs, m.output, name=f"member_{i}")(inputs)
               for i, m in enumerate(members)]
    mean = layers.Average(name="ensemble_mean", dtype="float32")(outputs)
    return keras.Model(inputs, mean, name=name)


def ensemble(model_dirs: Sequence[str | Path], dataset_dir: str | Path,
             output_dir: str | Path, logit_adjustment: bool = True,
             tta: str = "none") -> dict[str, Any]:
    """Average the models trained in ``model_dirs`` and write the ensemble to ``output_dir``.

    ``logit_adjustment``: append a prior adjustment whose tau maximises the ensemble's val
    macro F1 (tau 0, none, is one of the choices). ``tta``: the test-time augmentation the
    ensemble will be served with; the tau and the val figures are those of its output.
    Returns the summary also written to ``summary.json``: the ensemble's and each member's
    val accuracy and macro F1.
    """
    if len(model_dirs) < 2:
        raise ValueError(f"an ensemble needs at least 2 trained models, got {len(model_dirs)}")
    check_tta(tta)
    require_trained(model_dirs)
    data = FaceDataset.load(dataset_dir)
    train_set, val_set = data.split(TRAIN), data.split(VAL)
    if len(val_set) == 0:
        raise DataError(f"{dataset_dir}: an ensemble is calibrated on val; it has no val items")

    members, rows, probabilities = [], [], []
    faces = to_model_input(val_set.images)
    for d in model_dirs:
        member = without_prior_adjustment(load_trained(d))
        views = view_probabilities(member, faces, tta)  # [V,N,K]
        summary_path = Path(d) / SUMMARY_FILE
        trained = read_json(summary_path) if summary_path.is_file() else {}
        rows.append({"dir": str(d), "architecture": trained.get("architecture", member.name),
                     "parameters": int(member.count_params()),
                     "config": trained.get("config"),
                     "epochs_run": trained.get("epochs_run"),
                     "train_seconds": trained.get("train_seconds"),
                     **val_scores(val_set.labels, views[0])})  # one pass
        members.append(member)
        probabilities.append(views)
        print(f"[ensemble] member {len(members) - 1} {rows[-1]['architecture']} "
              f"({rows[-1]['parameters']:,} parameters): val accuracy "
              f"{rows[-1]['val_accuracy']:.4f}, macro F1 {rows[-1]['val_macro_f1']:.4f}",
              flush=True)

    model = build_ensemble(members)
    val_views, adjustment = np.mean(probabilities, axis=0), None  # the ensemble's, per view
    if logit_adjustment:  # tau for the one pass (view 0), as the train step chooses it
        model, val_views, adjustment = fit_one_pass_adjustment(model, val_views, val_set.labels,
                                                               train_set.labels)
    val_proba = val_views.mean(axis=0)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save(output_dir / MODEL_FILE)
    seconds = [r["train_seconds"] for r in rows if r["train_seconds"] is not None]
    summary = {
        "architecture": ENSEMBLE,
        "members": rows,
        "parameters": int(model.count_params()),
        "train_items": len(train_set),
        "val_items": len(val_set),
        "train_seconds": round(float(sum(seconds)), 2) if seconds else None,
        **val_scores(val_set.labels, val_views[0]),  # one pass, as the train step scores it
        "val_tta": tta,
        "val_with_tta": val_scores(val_set.labels, val_proba) if tta != "none" else None,
        "logit_adjustment": adjustment,
    }
    write_json(output_dir / SUMMARY_FILE, summary)
    with_tta = summary["val_with_tta"]
    print(f"[ensemble] {len(members)} members: val accuracy {summary['val_accuracy']:.4f}, "
          f"macro F1 {summary['val_macro_f1']:.4f} in one pass"
          + (f" (logit adjustment tau {adjustment['tau']:.2f}; before it "
             f"{adjustment['val_accuracy_unadjusted']:.4f} / "
             f"{adjustment['val_macro_f1_unadjusted']:.4f})" if adjustment else "")
          + (f"; with TTA {tta}: {with_tta['val_accuracy']:.4f} / "
             f"{with_tta['val_macro_f1']:.4f}" if with_tta else ""), flush=True)
    return summary


def leaderboard_row(summary: dict[str, Any], model_dir: str | Path) -> dict[str, Any]:
    """A trained model's row of the leaderboard, from its training ``summary``."""
    distilled = summary.get("distillation") or {}
    return {"architecture": summary["architecture"], "dir": str(model_dir),
            "val_macro_f1": summary["val_macro_f1"], "val_accuracy": summary["val_accuracy"],
            "epochs_run": summary["epochs_run"], "teacher": distilled.get("teacher_name"),
            "teacher_val_macro_f1": distilled.get("teacher_val_macro_f1")}


def select_best(model_dirs: list[str | Path], output_dir: str | Path) -> dict[str, Any]:
    """Copy the trained model in ``model_dirs`` with the best val macro F1 to
    ``output_dir``; return ``{"winner": architecture, "leaderboard": rows, best first}``."""
    if not model_dirs:
        raise ValueError("no trained model to select from")
    board = [leaderboard_row(read_json(Path(d) / SUMMARY_FILE), d) for d in model_dirs]
    board.sort(key=lambda r: r["val_macro_f1"], reverse=True)
    shutil.copytree(board[0]["dir"], output_dir, dirs_exist_ok=True)
    return {"winner": board[0]["architecture"], "leaderboard": board}


def combine(model_dirs: Sequence[str | Path], output_dir: str | Path,
            dataset_dir: str | Path | None = None, use_ensemble: bool = False,
            logit_adjustment: bool = True, tta: str = "none") -> dict[str, Any]:
    """The pipeline's step after training: copy the best model by val macro F1 to
    ``output_dir`` (:func:`select_best`), or, with ``use_ensemble`` and two or more models,
    write their ensemble there. Returns the leaderboard, with the ensemble's row first when
    it was built."""
    if not use_ensemble or len(model_dirs) < 2:
        return select_best(list(model_dirs), output_dir)
    if dataset_dir is None:
        raise ValueError("an ensemble needs the dataset (its val split calibrates it)")
    summary = ensemble(model_dirs, dataset_dir, output_dir, logit_adjustment, tta)
    board = [leaderboard_row(r, r["dir"]) for r in summary["members"]]
    board.sort(key=lambda r: r["val_macro_f1"], reverse=True)
    board.insert(0, {"architecture": ENSEMBLE, "dir": str(output_dir),
                     "val_macro_f1": summary["val_macro_f1"],
                     "val_accuracy": summary["val_accuracy"], "epochs_run": None})
    return {"winner": ENSEMBLE, "leaderboard": board}

