"""Run the pipeline on this machine with ``kfp.local`` (no cluster, no Docker)."""

from __future__ import annotations

import json
import re
import time
import warnings
from pathlib import Path
from typing import Any

from kfp import local

from pipeline.console import run_console
from pipeline.pipeline import build_pipeline

LOG_FILE = "run.log"  # the run's full output, under the pipeline root

# kfp.local honours retry policies: locally a failed step should fail at once.
LOCAL_PIPELINE = build_pipeline(io_retries=0)


class PipelineRunError(Exception):
    """A task of the local run failed; its own log, printed above, says why."""


def run_local(params: dict[str, Any], pipeline_root: str | Path,
              verbose: bool = True) -> dict[str, Any]:
    """Run the whole pipeline through ``kfp.local.SubprocessRunner`` in this environment.

    Local paths in ``source``, ``serving_base`` and ``checkpoint_root`` are made absolute.
    The full output goes to ``<pipeline_root>/run.log``; the terminal gets all of it with
    ``verbose``, else a line per step, the steps' own lines and a training progress bar
    (:class:`~pipeline.console.RunConsole`). Returns the run summary: per-variant metrics,
    winner, gate decision, deployment, and where the log is.
    """
    params = dict(params)
    for key in ("source", "serving_base", "checkpoint_root"):
        value = params.get(key)
        if value and "://" not in value:
            params[key] = str(Path(value).expanduser().resolve())
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               raise_on_error=True)
    start = time.perf_counter()
    log = root / LOG_FILE
    with warnings.catch_warnings(), run_console(log, verbose) as console:
        # The tasks run in this environment, where the project is installed, not in the image.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        # A cluster's resource requests (the train task's CPU, memory, GPU) mean nothing here.
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner")
        try:
            task = LOCAL_PIPELINE(**params)
        except RuntimeError as exc:  # kfp.local: "Inner task failed: <task>"
            console.step_failed()
            plain = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # drop kfp.local's colours
            raise PipelineRunError(f"{plain} Its log above says why (all of it: {log}).") from exc
    return {
        "parameters": params,
        "pipeline_root": str(root),
        "seconds": round(time.perf_counter() - start, 1),
        "log": str(log),
        "selection": json.loads(task.outputs["leaderboard"]),
        "gate": json.loads(task.outputs["decision"]),
        "deployment": json.loads(task.outputs["deployment"]),
    }


def format_run_summary(summary: dict[str, Any]) -> str:
    """The text the CLI prints for :func:`run_local`'s ``summary``: the CV table (with
    folds), each variant's val scores, the winner, its test score and gate, and the
    deployment."""
    from components.cv import describe_selection

    lines = ["", "=" * 72, f"pipeline finished in {summary['seconds']:.0f} s"]
    if cv := describe_selection(summary["selection"]):
        lines.append(cv)
    lines.append("variants:")
    for row in summary["selection"]["leaderboard"]:
        name = row["architecture"] + ("" if row.get("fold") is None else f" fold {row['fold']}")
        lines.append(f"  {name:<16} val macro F1 {row['val_macro_f1']:.4f}  "
                     f"val accuracy {row['val_accuracy']:.4f}  epochs {row['epochs_run'] or '-'}")
        if row.get("teacher"):
            teacher_f1 = row.get("teacher_val_macro_f1")
            lines.append(f"  {'':<16} distilled from {row['teacher']}"
                         + (f" (teacher val macro F1 {teacher_f1:.4f})"
                            if teacher_f1 is not None else ""))
    gate = summary["gate"]
    lines.append(f"winner:   {summary['selection']['winner']}")
    lines.append(f"test:     macro F1 {gate['macro_f1']:.4f} (threshold {gate['f1_threshold']}, "
                 f"champion {gate['champion_version'] or 'none'})")
    lines.append(f"gate:     {'PASSED' if gate['passed'] else 'BLOCKED'}: {gate['reason']}")
    dep = summary["deployment"]
    if summary.get("log"):
        lines.append(f"log:      {summary['log']}")
    if dep.get("created"):
        lines.append(f"deployed: version {dep['version']} at {dep['path']}")
    elif dep.get("version"):
        lines.append(f"deployed: nothing new; {dep['reason']} ({dep['path']})")
    else:
        lines.append(f"deployed: nothing; {dep['reason'].removeprefix('not deployed: ')}")
    return "\n".join(lines)
