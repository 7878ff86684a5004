"""Submit the pipeline to a Kubeflow Pipelines cluster through ``kfp.Client``.

The pipeline is compiled for the cluster's image into a temporary package and sent with
``create_run_from_pipeline_package``; the run's parameters travel with it. Authentication is
whatever ``kfp.Client`` finds (an in-cluster token, kube config, or none behind a
port-forward); nothing here reads or prints credentials.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import kfp

from components.kfp_components import TRAIN_IMAGE
from pipeline.pipeline import TrainResources, compile_pipeline

# The two branches of the gate: which one ran tells what the gate decided.
DEPLOY_TASK, SKIP_TASK = "deploy-op", "skip-deploy-op"


class SubmitError(Exception):
    """The run cannot be submitted as asked."""


def run_url(host: str, run_id: str) -> str:
    """The run's page in the KFP UI behind ``host``."""
    return f"{host.rstrip('/')}/#/runs/details/{run_id}"


def gate_from_tasks(run: Any) -> str:
    """The gate's decision as the finished run shows it: which branch of ``dsl.If`` ran."""
    details = getattr(run, "run_details", None)
    tasks = {t.display_name: t.state for t in (getattr(details, "task_details", None) or [])}
    if tasks.get(DEPLOY_TASK) == "SUCCEEDED":
        return "PASSED: the candidate was deployed (deploy-op ran)"
    if tasks.get(SKIP_TASK) == "SUCCEEDED":
        return "BLOCKED: nothing was deployed (skip-deploy-op ran; its log gives the reason)"
    return "unknown: neither branch of the gate finished"


def submit(host: str, parameters: dict[str, Any], *, image: str = TRAIN_IMAGE,
           resources: TrainResources = TrainResources(),
           volumes: tuple[tuple[str, str], ...] = (),
           experiment: str = "fer", run_name: str | None = None, namespace: str | None = None,
           enable_caching: bool = True, wait: bool = False, timeout_s: float = 24 * 3600,
           poll_s: float = 10.0) -> dict[str, Any]:
    """Compile the pipeline for ``image`` and start a run of it on the cluster at ``host``.

    Returns ``{"run_id", "url", "experiment"}``, and with ``wait`` also the final
    ``"state"``, the ``"gate"`` decision and, for a run that failed, its ``"error"``.
    """
    for key in ("source", "serving_base"):
        if not parameters.get(key):
            raise SubmitError(f"the run needs a {key} that the cluster can read (a gs:// URI, "
                              f"or a path on a volume mounted with --volume)")
    client = kfp.Client(host=host, namespace=namespace)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(str(Path(tmp) / "fer_pipeline.yaml"), image=image,
                                   resources=resources, volumes=volumes,
                                   enable_caching=enable_caching)
        result = client.create_run_from_pipeline_package(
            package, arguments=parameters, run_name=run_name, experiment_name=experiment,
            namespace=namespace, enable_caching=enable_caching)
    summary: dict[str, Any] = {"run_id": result.run_id, "url": run_url(host, result.run_id),
                               "experiment": experiment}
    if wait:
        run = client.wait_for_run_completion(result.run_id, timeout=timeout_s,
                                             sleep_duration=poll_s)
        summary["state"] = str(run.state)
        summary["gate"] = gate_from_tasks(run)
        error = getattr(run, "error", None)
        if getattr(error, "message", None):
            summary["error"] = error.message
    return summary
