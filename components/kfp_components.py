"""Thin KFP wrappers: map artifacts to paths, call the step's logic, record metadata.

No logic lives here (and no ``from __future__ import annotations``: KFP reads the
annotations as types). Each wrapper is a lightweight Python component whose body imports
the installed project, so the same definition runs locally under
``kfp.local.SubprocessRunner(use_venv=False)`` and on a cluster on the training image.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Output

# The image every component runs on in a cluster (Dockerfile.train); set in one place.
TRAIN_IMAGE = "ghcr.io/fer-pipeline/fer-train:0.1.0"


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def ingest_op(source: str, data_format: str, dataset: Output[Dataset], metrics: Output[Metrics]):
    """Read FER2013 (CSV or image folders; local, .zip or gs://) into a dataset artifact."""
    from components.ingest import ingest

    manifest = ingest(source, dataset.path, data_format)
    dataset.metadata.update({"source": source, "format": manifest["format"],
                             "counts": manifest["counts"]})
    for key in ("items_read", "accepted", "rejected"):
        metrics.log_metric(key, manifest[key])


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def preprocess_op(dataset: Input[Dataset], val_fraction: float, test_fraction: float, seed: int,
                  drop_duplicates: bool, max_train_per_class: int, splits: Output[Dataset]):
    """Assign train/val/test, report duplicates, record the normalisation."""
    from components.preprocess import preprocess

    report = preprocess(dataset.path, splits.path, val_fraction, test_fraction, seed,
                        drop_duplicates, max_train_per_class)
    splits.metadata.update({"split_rule": report["split_rule"], "counts": report["counts"],
                            "evaluation_split": report["evaluation_split"]})


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def class_weights_op(dataset: Input[Dataset], mode: str, weights: Output[Artifact]):
    """Per-class loss weights from the train split, as JSON keyed by class id."""
    from components.class_weights import class_weights

    result = class_weights(dataset.path, weights.path, mode)
    weights.metadata.update({"mode": mode, **{str(k): v for k, v in result.items()}})


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def data_report_op(dataset: Input[Dataset], weights: Input[Artifact], report: Output[HTML],
                   summary: Output[Markdown]):
    """Class distribution, sample faces and summary, as KFP UI artifacts."""
    import shutil
    import tempfile

    from components.class_weights import load_class_weights
    from components.report import data_report

    with tempfile.TemporaryDirectory() as tmp:
        paths = data_report(dataset.path, tmp, load_class_weights(weights.path))
        shutil.copyfile(paths["html"], report.path)
        shutil.copyfile(paths["markdown"], summary.path)
