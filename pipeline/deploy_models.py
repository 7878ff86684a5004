"""``fer-pipeline deploy``: the pipeline's evaluate, gate, export and deploy steps for models
that earlier runs trained: one as it is, or several averaged into an ensemble first.

    fer-pipeline deploy RUN_A/.../train-op/model RUN_B/.../train-op/model \\
        --dataset RUN_A/.../preprocess-op/splits --serving-base runs/serving --tta crops

Use it to serve a trained model with another test-time augmentation, or to combine the
winners of separate runs. The models must have been trained on the train split of
``--dataset`` (same source, seed and fractions), so that its val split, which calibrates an
ensemble, and its test split, which gates it, are held out for all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.deploy import deploy
from components.evaluate import evaluate_candidate, format_evaluation
from components.export import export
from components.train.ensemble import ensemble, require_trained


def evaluate_and_deploy(model_dirs: list[str], dataset_dir: str, work_dir: str | Path,
                        serving_base: str, model_name: str = "fer", tta: str = "none",
                        logit_adjustment: bool = True, f1_threshold: float = 0.0,
                        min_improvement: float = 0.0,
                        classic_baseline: bool = False,
                        max_latency_ms: float = 0.0,
                        min_win_probability: float = 0.0) -> dict[str, Any]:
    """Evaluate the model in ``model_dirs`` (several: their ensemble, built in
    ``work_dir/model``) on the held-out split against the champion deployed under
    ``serving_base``; when the gate passes, export it to ``work_dir/saved_model`` and deploy
    it as the next version. ``logit_adjustment`` applies to an ensemble only (its tau is
    chosen for ``tta``): a single model keeps what it was trained with.
    ``classic_baseline``: also fit HOG + linear SVM and report it beside the model, as the
    pipeline's parameter of that name does. ``max_latency_ms``: the gate's latency budget
    (0: none); ``min_win_probability``: the probability of beating the champion (paired, on
    the same faces) the gate requires (0: none)."""
    if not model_dirs:
        raise ValueError("no trained model given")
    require_trained(model_dirs)
    work_dir = Path(work_dir)
    summary = None
    model_dir = Path(model_dirs[0])
    if len(model_dirs) > 1:
        model_dir = work_dir / "model"
        summary = ensemble(model_dirs, dataset_dir, model_dir, logit_adjustment, tta)
    metrics = evaluate_candidate(model_dir, dataset_dir, work_dir / "evaluation", serving_base,
                                 model_name, f1_threshold, min_improvement, tta,
                                 classic_baseline, max_latency_ms, min_win_probability)
    print(format_evaluation(metrics), flush=True)
    result = {"ensemble": summary, "evaluation": metrics, "deployment": None}
    if metrics["gate"]["passed"]:
        export(model_dir, dataset_dir, work_dir / "saved_model", metrics, tta=tta)
        result["deployment"] = deploy(work_dir / "saved_model", serving_base, model_name)
    return result
