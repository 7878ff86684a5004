"""``fer-pipeline ensemble``: average models that earlier runs trained, then the pipeline's
own evaluate, gate, export and deploy steps, as a run would do with its single winner.

    fer-pipeline ensemble RUN_A/.../train-op/model RUN_B/.../train-op/model \\
        --dataset RUN_A/.../preprocess-op/splits --serving-base runs/serving --tta flip

The members must have been trained on the train split of ``--dataset`` (same source, seed
and fractions), so that its val split, which calibrates the ensemble, is held out for all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.deploy import deploy, find_champion
from components.evaluate import evaluate, format_evaluation
from components.export import export
from components.train.ensemble import ensemble


def ensemble_and_deploy(model_dirs: list[str], dataset_dir: str, work_dir: str | Path,
                        serving_base: str, model_name: str = "fer", tta: str = "none",
                        logit_adjustment: bool = True, f1_threshold: float = 0.0,
                        min_improvement: float = 0.0) -> dict[str, Any]:
    """Ensemble ``model_dirs`` into ``work_dir/model``, evaluate it on the held-out split
    against the champion deployed under ``serving_base``, and, when the gate passes,
    export it to ``work_dir/saved_model`` and deploy it as the next version."""
    work_dir = Path(work_dir)
    summary = ensemble(model_dirs, dataset_dir, work_dir / "model", logit_adjustment)
    champion = find_champion(serving_base, model_name)
    metrics = evaluate(work_dir / "model", dataset_dir, work_dir / "evaluation", f1_threshold,
                       min_improvement, champion, tta=tta)
    print(format_evaluation(metrics), flush=True)
    result = {"ensemble": summary, "evaluation": metrics, "deployment": None}
    if metrics["gate"]["passed"]:
        export(work_dir / "model", dataset_dir, work_dir / "saved_model", metrics, tta=tta)
        result["deployment"] = deploy(work_dir / "saved_model", serving_base, model_name)
    return result
