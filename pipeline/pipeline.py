"""The FER2013 pipeline: data steps -> (teacher) -> train variants -> select -> evaluate + gate
-> export -> deploy.

With a ``teacher`` (a served model: "champion", "bundled" or a SavedModel version directory)
its probabilities for the train faces are computed once, and every variant is a student
distilled from them (``recipe.distill_weight``).

With ``folds`` >= 2 the architectures are compared by k-fold cross-validation over train +
val (:mod:`components.cv`): a train task per architecture and fold, the best CV mean val
macro F1 wins, and ``cv_final`` says what goes on: "retrain" (the winner trained on the
splits as they are) or "ensemble" (the average of its fold models).

Compile it with ``fer-pipeline compile`` (or ``python -m pipeline.pipeline``); run it locally
with ``fer-pipeline run``; submit it to a cluster with ``fer-pipeline submit``.

Run settings are the pipeline's typed parameters. How each network is trained is one of
them, ``recipe``: a :class:`~components.train.recipe.TrainConfig` as a dict (the command line
builds and checks it; the train task rebuilds it), so a new training setting needs no new
parameter here. What a cluster needs to schedule the
tasks is fixed when the pipeline is compiled: the container image every task runs on, the
train task's resources (a GPU by default), the PersistentVolumeClaims mounted into every
task (how a local cluster without GCS gets its data in and its models out), and whether
tasks may be served from KFP's execution cache (on by default). ``build_pipeline(...)``
makes that pipeline; ``fer_pipeline`` is the default one. (KFP 2.17 cannot take resources from
pipeline parameters inside a ``ParallelFor``: the loop does not receive those parameters.)
"""

from typing import List, NamedTuple

from kfp import compiler, dsl, kubernetes
from kfp.dsl import graph_component

from components.kfp_components import (
    TRAIN_IMAGE,
    class_weights_op,
    data_report_op,
    deploy_op,
    evaluate_op,
    export_op,
    ingest_op,
    preprocess_op,
    select_best_op,
    skip_deploy_op,
    teacher_op,
    train_op,
    train_plan_op,
)
from components.train.recipe import TrainConfig
from pipeline.cluster import TRAIN_IMAGE, TrainResources, parse_volume  # noqa: F401 (re-exported)

PIPELINE_NAME = "fer-pipeline"
# I/O steps (reading the source, publishing to the serving base) are retried with backoff:
# both are repeat-safe (ingest rewrites its output, deploy returns an existing version).
IO_RETRIES = 3
IO_BACKOFF = {"backoff_duration": "30s", "backoff_factor": 2.0, "backoff_max_duration": "600s"}
# The recipe a run gets when it names none: TrainConfig's defaults.
DEFAULT_RECIPE = TrainConfig().recipe()


def build_pipeline(image: str = TRAIN_IMAGE, resources: TrainResources = TrainResources(),
                   volumes: tuple[tuple[str, str], ...] = (),
                   enable_caching: bool = True,
                   io_retries: int = IO_RETRIES) -> graph_component.GraphComponent:
    """The pipeline with every task on ``image`` and with the PVCs ``volumes`` (claim, mount
    path) mounted, each train task asking for ``resources``; ``enable_caching=False`` turns
    KFP's cache off for every task; ``io_retries=0`` fails the I/O steps at once (local
    runs, where a missing source is no passing outage)."""
    if not image or any(c.isspace() for c in image):
        raise ValueError(f"image must be a container image reference, got {image!r}")
    paths = [path for _, path in volumes]
    if len(set(paths)) != len(paths):
        raise ValueError(f"two volumes share a mount path: {paths}")

    def configure(task: dsl.PipelineTask, cache: bool = True) -> dsl.PipelineTask:
        """Image, volumes and caching: what every task gets."""
        for claim, path in volumes:
            kubernetes.mount_pvc(task, pvc_name=claim, mount_path=path)
        return task.set_container_image(image).set_caching_options(enable_caching and cache)

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="FER2013 -> trained, macro-F1-gated, versioned TF Serving model")
    def fer_pipeline(
        source: str,
        serving_base: str,
        architectures: List[str] = ["baseline_cnn"],  # noqa: B006 (KFP reads the default)
        model_options: dict = {},  # noqa: B006 (KFP reads the default)
        recipe: dict = DEFAULT_RECIPE,
        f1_threshold: float = 0.5,
        min_improvement: float = 0.01,
        max_latency_ms: float = 0.0,
        min_win_probability: float = 0.0,
        model_name: str = "fer",
        seed: int = 42,
        data_format: str = "auto",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        drop_duplicates: bool = False,
        max_train_per_class: int = 0,
        class_weight_mode: str = "balanced",
        checkpoint_root: str = "",
        teacher: str = "",
        ensemble: bool = False,
        classic_baseline: bool = False,
        label_map: str = "",
        folds: int = 0,
        cv_final: str = "retrain",
    ) -> NamedTuple("Outputs", leaderboard=str, decision=str, deployment=str):
        ingest = configure(ingest_op(source=source, data_format=data_format,
                                     label_map=label_map))
        if io_retries:
            ingest.set_retry(io_retries, **IO_BACKOFF)
        prep = configure(preprocess_op(dataset=ingest.outputs["dataset"],
                                      val_fraction=val_fraction, test_fraction=test_fraction,
                                      seed=seed, drop_duplicates=drop_duplicates,
                                      max_train_per_class=max_train_per_class))
        weights = configure(class_weights_op(dataset=prep.outputs["splits"],
                                            mode=class_weight_mode))
        configure(data_report_op(dataset=prep.outputs["splits"],
                                weights=weights.outputs["weights"]))

        # Cached like the train tasks that take its output (an uncached step here would make
        # every train task a cache miss). With teacher "champion", a cached run keeps the
        # champion of the run it copies: --no-cache reads the champion again.
        taught = configure(teacher_op(dataset=prep.outputs["splits"], teacher=teacher,
                                      serving_base=serving_base, model_name=model_name,
                                      checkpoint_root=checkpoint_root))

        # One train task per architecture, or with folds >= 2 per architecture and fold
        # (components.cv): the plan lists them, and checks the CV settings before training.
        plan = configure(train_plan_op(architectures=architectures, folds=folds,
                                       cv_final=cv_final, ensemble=ensemble, teacher=teacher))
        with dsl.ParallelFor(plan.output) as variant:
            trained = resources.apply(configure(train_op(
                dataset=prep.outputs["splits"], weights=weights.outputs["weights"],
                teacher=taught.outputs["predictions"],
                architecture=variant.architecture, seed=seed, model_options=model_options,
                checkpoint_root=checkpoint_root, recipe=recipe, fold=variant.fold,
                folds=folds)))
        best = configure(select_best_op(models=dsl.Collected(trained.outputs["model"]),
                                        dataset=prep.outputs["splits"], ensemble=ensemble,
                                        recipe=recipe, cv_final=cv_final))

        # Never cached: the champion may change between identical runs.
        evaluation = configure(evaluate_op(
            model=best.outputs["best"], dataset=prep.outputs["splits"],
            serving_base=serving_base, model_name=model_name, f1_threshold=f1_threshold,
            min_improvement=min_improvement, max_latency_ms=max_latency_ms,
            min_win_probability=min_win_probability, recipe=recipe,
            classic_baseline=classic_baseline),
        cache=False)

        with dsl.If(evaluation.outputs["passed"] == True):  # noqa: E712 (KFP condition syntax)
            exported = configure(export_op(model=best.outputs["best"],
                                          dataset=prep.outputs["splits"],
                                          evaluation=evaluation.outputs["evaluation"],
                                          recipe=recipe))
            deployed = configure(deploy_op(saved_model=exported.outputs["saved_model"],
                                          serving_base=serving_base, model_name=model_name),
                                cache=False)
            if io_retries:
                deployed.set_retry(io_retries, **IO_BACKOFF)
        with dsl.Else():
            skipped = configure(skip_deploy_op(decision=evaluation.outputs["decision"]))

        outputs = NamedTuple("Outputs", leaderboard=str, decision=str, deployment=str)
        return outputs(best.outputs["Output"], evaluation.outputs["decision"],
                       dsl.OneOf(deployed.output, skipped.output))

    return fer_pipeline


fer_pipeline = build_pipeline()


def compile_pipeline(path: str, pipeline_parameters: dict | None = None,
                     image: str = TRAIN_IMAGE, resources: TrainResources = TrainResources(),
                     volumes: tuple[tuple[str, str], ...] = (),
                     enable_caching: bool = True) -> str:
    """Write the pipeline's KFP IR YAML to ``path``, every task on ``image``."""
    pipeline = build_pipeline(image, resources, volumes, enable_caching)
    compiler.Compiler().compile(pipeline, path, pipeline_parameters=pipeline_parameters)
    return path


if __name__ == "__main__":
    print(compile_pipeline("fer_pipeline.yaml"))
