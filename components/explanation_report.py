"""The evaluation report's explanations: where the network looks, per class and on its most
confident mistakes (Grad-CAM, :mod:`components.explain`).

Two parts, drawn into the evaluation's HTML page (pictures embedded) and written as PNGs to
``explanations/`` beside it:

* the mean Grad-CAM heatmap of each class over (up to :data:`MEAN_FACES_PER_CLASS` of) its
  held-out faces, **for the true class**: where the network finds evidence of the emotion a
  face shows, drawn over the class's mean face (the arrays in ``mean_heatmaps.npz``);
* a gallery of the most confident mistakes of the most-confused class pairs (up to
  :data:`GALLERY_PAIRS` pairs x :data:`GALLERY_FACES` faces): each face, with the heatmap of
  the class it was taken for and that of its true class.

The heatmaps are the ones the exported model's ``explain`` signature serves: the same
:func:`components.explain.gradcam` over the same Keras model (the single pass, without
test-time augmentation), run here in-process in batches of one traced graph. A model
without a convolutional feature map (an ensemble of whole networks) is exported without
that signature; its section says so and draws nothing.

The plotting functions take arrays and return PNG paths; only :func:`explain_evaluation`
needs TensorFlow, imported when it runs.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from components.report import html_page
from serving.contract import CLASS_NAMES, IMAGE_SIZE, SIGNATURE_EXPLAIN

EXPLANATIONS_DIR = "explanations"  # beside the evaluation's metrics.json
MEAN_HEATMAPS_NPZ = "mean_heatmaps.npz"  # heatmaps [7,48,48], faces [7,48,48], counts [7]
MEAN_FACES_PER_CLASS = 100  # held-out faces per class averaged (a seeded random choice)
GALLERY_PAIRS = 3  # most-confused (true, predicted) pairs shown
GALLERY_FACES = 4  # most confident mistakes shown per pair
BATCH = 64
OVERLAY_ALPHA = 0.45


def class_heatmaps(model: Any, faces: np.ndarray, classes: np.ndarray,
                   batch: int = BATCH) -> np.ndarray | None:
    """The Grad-CAM heatmaps the ``explain`` signature serves for ``model`` (a Keras model),
    of ``classes`` [N,K] (class ids, K per face) for the gray ``faces`` [N,48,48] (0-255):
    [N,K,48,48] in [0, 1], computed ``batch`` faces at a time through one traced graph.
    ``None`` when the model has no convolutional feature map (no explain signature)."""
    import tensorflow as tf

    from components.dataset import to_model_input
    from components.explain import gradcam, gradcam_model

    grad_model = gradcam_model(model)
    if grad_model is None:
        return None
    explain = tf.function(lambda pixels: gradcam(grad_model, pixels)[1], reduce_retracing=True,
                          input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 1],
                                                         tf.float32)])
    classes = np.asarray(classes, dtype=np.int64).reshape(len(faces), -1)
    out = np.zeros((len(faces), classes.shape[1], IMAGE_SIZE, IMAGE_SIZE), np.float32)
    for start in range(0, len(faces), batch):
        maps = explain(tf.constant(to_model_input(faces[start:start + batch]))).numpy()
        rows = np.arange(len(maps))[:, None]
        out[start:start + batch] = maps[rows, classes[start:start + batch]]
    return out


def _overlay(ax: Any, face: np.ndarray, heatmap: np.ndarray | None, title: str) -> None:
    ax.imshow(face, cmap="gray", vmin=0, vmax=255)
    if heatmap is not None:
        ax.imshow(heatmap, cmap="jet", alpha=OVERLAY_ALPHA, vmin=0, vmax=1)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_class_heatmap(mean_face: np.ndarray, mean_heatmap: np.ndarray, title: str,
                       path: Path) -> Path:
    """A class's mean heatmap (values 0-1, drawn on a fixed 0-1 scale so that classes
    compare) over its mean face (0-255), under ``title``, as a PNG at ``path``; returns
    ``path``."""
    fig = Figure(figsize=(1.9, 2.1), dpi=100)
    _overlay(fig.subplots(), mean_face, mean_heatmap, title)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_mistake(face: np.ndarray, predicted_map: np.ndarray, true_map: np.ndarray,
                 true_name: str, predicted_name: str, confidence: float, path: Path) -> Path:
    """A misclassified ``face`` (0-255) beside the heatmaps (0-1) of the class it was taken
    for (``predicted_name``, with ``confidence``) and of its true class, as a PNG at
    ``path``; returns ``path``."""
    fig = Figure(figsize=(4.8, 1.95), dpi=100)
    axes = fig.subplots(1, 3)
    _overlay(axes[0], face, None, f"true {true_name}")
    _overlay(axes[1], face, predicted_map, f"{predicted_name} {confidence:.0%} (predicted)")
    _overlay(axes[2], face, true_map, f"{true_name} (true)")
    fig.tight_layout()
    fig.savefig(path)
    return path


def _mean_faces(labels: np.ndarray, per_class: int, seed: int,
                num_classes: int) -> list[np.ndarray]:
    """Per class, the (sorted) indices of up to ``per_class`` of its faces, seeded."""
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in range(num_classes):
        members = np.flatnonzero(labels == cls)
        if len(members) > per_class:
            members = np.sort(rng.choice(members, size=per_class, replace=False))
        chosen.append(members)
    return chosen


def _mistakes(labels: np.ndarray, probabilities: np.ndarray, most_confused: list[dict[str, Any]],
              pairs: int, per_pair: int, class_names: Sequence[str]
              ) -> list[tuple[int, int, int]]:
    """``(face index, true, predicted)`` of the most confident mistakes of the first
    ``pairs`` most-confused pairs, ``per_pair`` each, most confident first."""
    predicted = probabilities.argmax(axis=1)
    picked = []
    for pair in most_confused[:pairs]:
        true, pred = class_names.index(pair["true"]), class_names.index(pair["predicted"])
        wrong = np.flatnonzero((labels == true) & (predicted == pred))
        order = wrong[np.argsort(-probabilities[wrong, pred], kind="stable")]
        picked += [(int(i), true, pred) for i in order[:per_pair]]
    return picked


def explain_evaluation(model: Any, images: np.ndarray, labels: np.ndarray,
                       probabilities: np.ndarray, most_confused: list[dict[str, Any]],
                       output_dir: str | Path, per_class: int = MEAN_FACES_PER_CLASS,
                       pairs: int = GALLERY_PAIRS, per_pair: int = GALLERY_FACES,
                       seed: int = 0, class_names: Sequence[str] = CLASS_NAMES
                       ) -> dict[str, Any]:
    """The explanations of an evaluation: for the Keras ``model`` evaluated on the held-out
    ``images`` [N,48,48] with true ``labels`` (ids of ``class_names``) and its
    ``probabilities`` [N,K] (the
    ``most_confused`` pairs of :func:`components.evaluate.classification_metrics`), the mean
    true-class heatmap per class over up to ``per_class`` faces each, and the gallery of the
    most confident mistakes of the first ``pairs`` pairs, ``per_pair`` faces each. Writes
    the PNGs and ``mean_heatmaps.npz`` to ``output_dir/explanations/``.

    Returns the record the report draws (paths relative to ``output_dir``): ``available``,
    ``note``, ``class_map`` ("true"), ``mean_heatmaps`` (per class: ``class``, ``faces``,
    ``image``), ``gallery`` (per mistake: ``true``, ``predicted``, ``confidence``,
    ``image``). A model without an explain signature gets ``available`` False, a ``note``
    saying why, and no files.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    probabilities = np.asarray(probabilities)
    record: dict[str, Any] = {"available": False, "signature": SIGNATURE_EXPLAIN,
                              "class_map": "true", "mean_heatmaps": [], "gallery": []}
    names = tuple(class_names)
    chosen = _mean_faces(labels, per_class, seed, len(names))
    mistakes = _mistakes(labels, probabilities, most_confused, pairs, per_pair, names)
    # one pass over every face shown: per face the maps of two classes, (true, true) for
    # the means and (predicted, true) for the mistakes
    means = np.concatenate(chosen).astype(np.int64)
    order = np.concatenate([means, np.array([i for i, _, _ in mistakes], np.int64)])
    classes = np.concatenate([np.repeat(labels[means, None], 2, axis=1),
                              np.array([[p, t] for _, t, p in mistakes], np.int64).reshape(-1, 2)])
    maps = class_heatmaps(model, images[order], classes)
    if maps is None:
        record["note"] = (f"no heatmaps: the model ({getattr(model, 'name', 'model')}) has no "
                          f"convolutional feature map of its own (an ensemble averages whole "
                          f"networks), so it is exported without the {SIGNATURE_EXPLAIN!r} "
                          f"signature")
        return record
    output_dir = Path(output_dir)
    folder = output_dir / EXPLANATIONS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    counts = np.array([len(c) for c in chosen])
    mean_maps = np.zeros((len(names), IMAGE_SIZE, IMAGE_SIZE), np.float32)
    mean_faces = np.zeros_like(mean_maps)
    start = 0
    for cls, n in enumerate(counts):
        if n:
            mean_maps[cls] = maps[start:start + n, 0].mean(axis=0)
            mean_faces[cls] = images[chosen[cls]].astype(np.float32).mean(axis=0)
            path = plot_class_heatmap(mean_faces[cls], mean_maps[cls],
                                      f"{names[cls]} ({n} faces)",
                                      folder / f"mean_heatmap_{cls}_{names[cls]}.png")
            record["mean_heatmaps"].append({"class": names[cls], "faces": int(n),
                                            "image": str(path.relative_to(output_dir))})
        start += n
    np.savez_compressed(folder / MEAN_HEATMAPS_NPZ, heatmaps=mean_maps, faces=mean_faces,
                        counts=counts)
    for k, ((i, true, pred), pair_maps) in enumerate(zip(mistakes, maps[start:]), start=1):
        confidence = float(probabilities[i, pred])
        path = plot_mistake(images[i], pair_maps[0], pair_maps[1], names[true],
                            names[pred], confidence,
                            folder / f"mistake_{k:02d}_{names[true]}_as_"
                                     f"{names[pred]}.png")
        record["gallery"].append({"true": names[true], "predicted": names[pred],
                                  "confidence": round(confidence, 4),
                                  "image": str(path.relative_to(output_dir))})
    record["available"] = True
    record["note"] = (f"Grad-CAM of the {SIGNATURE_EXPLAIN!r} signature (one pass, no TTA). "
                      f"Mean heatmap per class: the map of the true class, averaged over up "
                      f"to {per_class} held-out faces of that class, over their mean face. "
                      f"Gallery: the most confident mistakes of the {pairs} most-confused "
                      f"pairs ({per_pair} each), with the map of the predicted class and of "
                      f"the true class. Scale 0 (blue) to 1 (red).")
    return record


def format_explanations(record: dict[str, Any]) -> str:
    """One line for the evaluation's text: what the explanation section holds."""
    if not record.get("available"):
        return f"explanations: {record.get('note') or 'none'}"
    faces = sum(m["faces"] for m in record["mean_heatmaps"])
    return (f"explanations: mean Grad-CAM heatmap of the {record['class_map']} class for "
            f"{len(record['mean_heatmaps'])} classes ({faces:,} faces), "
            f"{len(record['gallery'])} confident mistakes in the gallery ({EXPLANATIONS_DIR}/)")


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def explanation_html(record: dict[str, Any], output_dir: str | Path) -> str:
    """The report's section for :func:`explain_evaluation`'s ``record`` (pictures under
    ``output_dir`` embedded): the per-class mean heatmaps and the gallery of mistakes, or
    the note when the model has no explain signature."""
    output_dir = Path(output_dir)
    parts = ["<section id='explanations'><h2>Where the network looks (Grad-CAM)</h2>",
             f"<p class='note'>{html.escape(record.get('note') or '')}</p>"]
    if record.get("available"):
        row = "<div style='display:flex;flex-wrap:wrap;gap:6px'>"
        parts.append(f"<h3>Mean heatmap per class (map of the {record['class_map']} "
                     f"class)</h3>{row}")
        for m in record["mean_heatmaps"]:
            caption = f"{m['class']}: {m['faces']} faces"
            parts.append(f"<figure class='mean-heatmap' style='margin:0'>"
                         f"{_img(output_dir / m['image'], 'mean heatmap ' + m['class'])}"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        parts.append(f"</div><h3>Most confident mistakes</h3>{row}")
        if not record["gallery"]:
            parts.append("<p>no mistakes to show</p>")
        for g in record["gallery"]:
            caption = f"true {g['true']}, predicted {g['predicted']} ({g['confidence']:.0%})"
            parts.append(f"<figure class='mistake' style='margin:0'>"
                         f"{_img(output_dir / g['image'], caption)}"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        parts.append("</div>")
    parts.append("</section>")
    return "".join(parts)


def evaluation_page(title: str, text: str, images: list[Path], record: dict[str, Any],
                    output_dir: str | Path) -> str:
    """:func:`components.report.html_page` of ``text`` and ``images`` with the explanation
    section of ``record`` (:func:`explanation_html`) at its end: the evaluation's HTML."""
    head, tail = html_page(title, text, images).rsplit("</body>", 1)
    return f"{head}{explanation_html(record, output_dir)}</body>{tail}"
