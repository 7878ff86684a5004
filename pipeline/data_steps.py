"""The data steps outside the pipeline: ingest -> preprocess -> class weights (-> report),
as ``fer-pipeline data`` runs them and as tests prepare real datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from components.class_weights import class_weights
from components.ingest import ingest
from components.preprocess import preprocess
from components.report import data_report


def run_data_steps(source: str, out: Path, data_format: str = "auto", val_fraction: float = 0.1,
                   test_fraction: float = 0.1, seed: int = 42, drop_duplicates: bool = False,
                   weights_mode: str = "balanced", report: bool = True,
                   progress: bool = True, max_train_per_class: int = 0,
                   label_map: str = "") -> dict[str, Any]:
    """Run ingest -> preprocess -> class weights (-> data report) on ``source`` into
    ``out`` (``ingested/``, ``dataset/``, ``class_weights.json``, ``report/``). Returns
    ``{"manifest", "preprocess", "class_weights", "report"}``: each step's result."""
    manifest = ingest(source, out / "ingested", data_format, progress=progress,
                      label_map=label_map)
    prep = preprocess(out / "ingested", out / "dataset", val_fraction, test_fraction, seed,
                      drop_duplicates, max_train_per_class)
    weights = class_weights(out / "dataset", out / "class_weights.json", weights_mode)
    paths = data_report(out / "dataset", out / "report", weights) if report else {}
    return {"manifest": manifest, "preprocess": prep, "class_weights": weights,
            "report": {k: str(v) for k, v in paths.items()}}
