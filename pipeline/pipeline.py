"""The FER2013 pipeline: data steps -> train variants -> select -> evaluate + gate -> export -> deploy.

Compile it with ``fer-pipeline compile`` (or ``python -m pipeline.pipeline``); run it locally
with ``fer-pipeline run``.
"""

from typing import List, NamedTuple

from kfp import compiler, dsl

from components.kfp_components import (
    class_weights_op,
    data_report_op,
    deploy_op,
    evaluate_op,
    export_op,
    ingest_op,
    preprocess_op,
    select_best_op,
    skip_deploy_op,
    train_op,
)

PIPELINE_NAME = "fer-pipeline"


@dsl.pipeline(name=PIPELINE_NAME,
              description="FER2013 -> trained, macro-F1-gated, versioned TF Serving model")
def fer_pipeline(
    source: str,
    serving_base: str,
    architectures: List[str] = ["baseline_cnn"],  # noqa: B006 (KFP reads the default)
    epochs: int = 30,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    f1_threshold: float = 0.5,
    min_improvement: float = 0.01,
    model_name: str = "fer",
    seed: int = 42,
    data_format: str = "auto",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    drop_duplicates: bool = False,
    max_train_per_class: int = 0,
    class_weight_mode: str = "balanced",
    checkpoint_root: str = "",
) -> NamedTuple("Outputs", leaderboard=str, decision=str, deployment=str):
    ingest = ingest_op(source=source, data_format=data_format)
    prep = preprocess_op(dataset=ingest.outputs["dataset"], val_fraction=val_fraction,
                         test_fraction=test_fraction, seed=seed, drop_duplicates=drop_duplicates,
                         max_train_per_class=max_train_per_class)
    weights = class_weights_op(dataset=prep.outputs["splits"], mode=class_weight_mode)
    data_report_op(dataset=prep.outputs["splits"], weights=weights.outputs["weights"])

    with dsl.ParallelFor(architectures) as architecture:
        trained = train_op(dataset=prep.outputs["splits"], weights=weights.outputs["weights"],
                           architecture=architecture, epochs=epochs, batch_size=batch_size,
                           learning_rate=learning_rate, seed=seed,
                           checkpoint_root=checkpoint_root)
    best = select_best_op(models=dsl.Collected(trained.outputs["model"]))

    evaluation = evaluate_op(model=best.outputs["best"], dataset=prep.outputs["splits"],
                             serving_base=serving_base, model_name=model_name,
                             f1_threshold=f1_threshold, min_improvement=min_improvement)
    evaluation.set_caching_options(False)  # the champion may change between identical runs

    with dsl.If(evaluation.outputs["passed"] == True):  # noqa: E712 (KFP condition syntax)
        exported = export_op(model=best.outputs["best"], dataset=prep.outputs["splits"],
                             evaluation=evaluation.outputs["evaluation"])
        deployed = deploy_op(saved_model=exported.outputs["saved_model"],
                             serving_base=serving_base, model_name=model_name)
        deployed.set_caching_options(False)
    with dsl.Else():
        skipped = skip_deploy_op(decision=evaluation.outputs["decision"])

    outputs = NamedTuple("Outputs", leaderboard=str, decision=str, deployment=str)
    return outputs(best.outputs["Output"], evaluation.outputs["decision"],
                   dsl.OneOf(deployed.output, skipped.output))


def compile_pipeline(path: str, pipeline_parameters: dict | None = None) -> str:
    """Write the pipeline's KFP IR YAML to ``path``."""
    compiler.Compiler().compile(fer_pipeline, path, pipeline_parameters=pipeline_parameters)
    return path


if __name__ == "__main__":
    print(compile_pipeline("fer_pipeline.yaml"))
