"""Reports for people: the data report (class distribution chart, sample faces, and a summary
as text, Markdown and HTML), training curves, and HTML pages for the KFP UI.

The HTML embeds its pictures, so it renders on its own as a KFP UI artifact.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from components.dataset import SPLITS, TRAIN, FaceDataset, read_json
from components.ingest.ingest import MANIFEST_FILE
from components.preprocess import REPORT_FILE
from serving.contract import CLASS_NAMES

DISTRIBUTION_PNG = "class_distribution.png"
SAMPLES_PNG = "sample_faces.png"
_SPLIT_COLOURS = {"train": "#4C72B0", "val": "#DD8452", "test": "#55A868", "unsplit": "#8172B3"}


def data_report(dataset_dir: str | Path, output_dir: str | Path,
                class_weights: dict[int, float] | None = None, samples_per_class: int = 8,
                seed: int = 0) -> dict[str, Path]:
    """Write the charts and summaries for a preprocessed dataset; return their paths."""
    dataset_dir, output_dir = Path(dataset_dir), Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    dataset = FaceDataset.load(dataset_dir)
    manifest = read_json(dataset_dir / MANIFEST_FILE)
    report = read_json(dataset_dir / REPORT_FILE)

    paths = {
        "distribution": plot_class_distribution(report["counts"], output_dir / DISTRIBUTION_PNG),
        "samples": plot_sample_faces(dataset, output_dir / SAMPLES_PNG, samples_per_class, seed),
    }
    text = format_summary(manifest, report, class_weights)
    paths["markdown"] = output_dir / "report.md"
    paths["markdown"].write_text(_markdown(text, paths))
    paths["html"] = output_dir / "report.html"
    paths["html"].write_text(html_page("FER2013 data report", text,
                                       [paths["distribution"], paths["samples"]]))
    return paths


def plot_class_distribution(counts: dict[str, dict[str, int]], path: Path) -> Path:
    """A bar chart of ``counts`` (``{split: {class_name: n}}``), one bar per class and split,
    saved at ``path``; returns ``path``."""
    fig = Figure(figsize=(9, 4.5), dpi=100)
    ax = fig.subplots()
    splits = list(counts)
    names = _class_names(counts)
    width = 0.8 / len(splits)
    x = np.arange(len(names))
    for k, split in enumerate(splits):
        values = [counts[split].get(name, 0) for name in names]
        bars = ax.bar(x + (k - (len(splits) - 1) / 2) * width, values, width,
                      label=f"{split} ({sum(values):,})", color=_SPLIT_COLOURS.get(split))
        ax.bar_label(bars, fontsize=7, padding=1)
    ax.set_xticks(x, [f"{i} {n}" for i, n in enumerate(names)])
    ax.set_ylabel("faces")
    ax.set_title("Class distribution per split")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_sample_faces(dataset: FaceDataset, path: Path, per_class: int, seed: int) -> Path:
    """A grid: one row per class, ``per_class`` random faces (from train when present)."""
    rng = np.random.default_rng(seed)
    source = dataset.split(TRAIN) if (dataset.splits == TRAIN).any() else dataset
    names = dataset.class_names
    fig = Figure(figsize=(per_class * 0.9 + 1.2, len(names) * 0.95), dpi=100)
    axes = fig.subplots(len(names), per_class, squeeze=False)
    for cls, row in enumerate(axes):
        members = np.flatnonzero(source.labels == cls)
        chosen = rng.choice(members, size=min(per_class, len(members)), replace=False)
        for k, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if k < len(chosen):
                ax.imshow(source.images[chosen[k]], cmap="gray", vmin=0, vmax=255)
        row[0].set_ylabel(names[cls], rotation=0, ha="right", va="center")
    fig.suptitle("Sample faces per class")
    fig.tight_layout()
    fig.savefig(path)
    return path


def format_summary(manifest: dict[str, Any], report: dict[str, Any] | None = None,
                   class_weights: dict[int, float] | None = None) -> str:
    """The plain-text summary the CLI prints: items, rejects, splits, duplicates, weights."""
    lines = [
        f"source:   {manifest['source']} ({manifest['format']})",
        f"items:    {manifest['items_read']:,} read = {manifest['accepted']:,} accepted "
        f"+ {manifest['rejected']:,} rejected",
    ]
    for code, n in manifest["rejection_reasons"].items():
        lines.append(f"  rejected {n:,} x {code}")
    for item in manifest["rejected_items"][:10]:
        lines.append(f"    {item['item']}: {item['reason']}")
    if manifest["rejected"] > 10:
        lines.append(f"    ... {manifest['rejected'] - 10:,} more in manifest.json")
    if manifest["ignored_files"]:
        lines.append(f"ignored:  {len(manifest['ignored_files'])} non-data file(s): "
                     + ", ".join(manifest["ignored_files"][:5]))
    lines += ["", "accepted, by the source's split:", _counts_table(manifest["counts"])]
    if report:
        dup = report["duplicates"]
        lines += [
            "",
            "final splits:",
            _counts_table(report["counts"]),
            "",
            f"splits:   {report['split_rule']} (seed {report['seed']}); "
            f"evaluation on {report['evaluation_split']}",
            f"duplicates: {dup['groups']:,} groups of identical images, "
            f"{dup['cross_split_groups']:,} across splits, "
            f"{dup['train_items_also_in_val_or_test']:,} train items also in val/test "
            f"({dup['dropped_from_train']:,} dropped), "
            f"{dup['groups_with_conflicting_labels']:,} with conflicting labels",
        ]
    if class_weights:
        names = manifest.get("class_names", CLASS_NAMES)
        lines.append("class weights: " + ", ".join(
            f"{names[i]} {w:.3f}" for i, w in sorted(class_weights.items())))
    return "\n".join(lines)


def _class_names(counts: dict[str, dict[str, int]]) -> list[str]:
    """The label set of a ``{split: {class_name: n}}`` table (every class listed, in id
    order); FER2013's when it is empty."""
    return list(next(iter(counts.values()), None) or CLASS_NAMES)


def _counts_table(counts: dict[str, dict[str, int]]) -> str:
    order = [s for s in (*SPLITS, "unsplit") if s in counts]
    head = f"{'id':>2} {'class':<9}" + "".join(f"{s:>9}" for s in order)
    rows = [head]
    for i, name in enumerate(_class_names(counts)):
        rows.append(f"{i:>2} {name:<9}" + "".join(f"{counts[s].get(name, 0):>9,}" for s in order))
    rows.append(f"{'':>2} {'total':<9}" + "".join(f"{sum(counts[s].values()):>9,}" for s in order))
    return "\n".join(rows)


def _markdown(text: str, paths: dict[str, Path]) -> str:
    return ("# FER2013 data report\n\n```\n" + text + "\n```\n\n"
            f"![class distribution]({paths['distribution'].name})\n\n"
            f"![sample faces]({paths['samples'].name})\n")


def html_page(title: str, text: str, images: list[Path]) -> str:
    """A self-contained HTML page (pictures embedded), for KFP's HTML artifact viewer."""
    imgs = "".join(
        f'<img alt="{html.escape(p.stem)}" style="max-width:100%" '
        f'src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        for p in images)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title></head><body><h1>{html.escape(title)}</h1>"
            f"<pre>{html.escape(text)}</pre>{imgs}</body></html>\n")


def plot_history(history: dict[str, list[float]], path: Path, title: str) -> Path:
    """Loss and accuracy per epoch, train and val, from a training history (metric name ->
    one value per epoch) as a PNG at ``path``; returns ``path``."""
    fig = Figure(figsize=(10, 4), dpi=100)
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + metric)
            if values:
                ax.plot(range(1, len(values) + 1), values, style, marker="o",
                        label=f"{'val' if prefix else 'train'} {metric}")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(f"Training curves: {title}")
    fig.tight_layout()
    fig.savefig(path)
    return path
