"""The contract between training and serving: the one place that names it.

Everything that both sides must agree on lives here and nowhere else: the labels, the image
size, the file names of the artifacts, and the SavedModel's signatures (their names, inputs
and outputs with dtypes and shapes). The pipeline's components (which write models) and the
serving side (which loads and calls them) both import this module; it imports nothing but
the standard library, so serving never imports the components, and a client can read the
contract without TensorFlow.

Signatures (what TF Serving loads):

* ``serving_default``: ``pixels`` float32 [N,48,48,1], values 0-255;
* ``predict_images``: ``image_bytes`` string [N], encoded JPEG/PNG/GIF/BMP of any size,
  colour or gray (decoded, made gray and resized in the graph; REST clients send
  ``{"b64": "..."}``);

each returns ``probabilities`` float32 [N,K], ``class_id`` int64 [N], ``class_name``
string [N], from one pass of the network; K is the size of the model's label set
(FER2013's seven unless it was trained on another, see :func:`check_class_names`). A model
exported with test-time augmentation also offers ``serving_tta`` and ``predict_images_tta``:
the same inputs and outputs, the probabilities averaged over the views (more accurate, one
network pass per view). A convolutional model also offers ``explain`` (pixels) and ``explain_images`` (encoded
images): the single-pass outputs plus ``heatmaps`` float32 [N,K,48,48], per face and class
the Grad-CAM map in [0, 1] of where the network looked. ``class_names`` (``class_id``
int64 [N] -> ``class_name`` string [N]) names any class id, so a client of plain TF Serving
learns the whole label set (ids 0..K-1) through the same contract; a model without it (the
bundled one) serves FER2013's seven. ``assets.extra/`` holds ``labels.txt``,
``metrics.json`` and TF Serving's warm-up records.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# --- labels and faces ---------------------------------------------------------------------

#: FER2013's ``emotion`` ids, in order: the label set every model serves by default.
CLASS_NAMES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise",
                                "neutral")
NUM_CLASSES = len(CLASS_NAMES)
#: What a class name may be: it travels as a line of ``labels.txt``, a CSV column and a
#: file name.
CLASS_NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")


def check_class_names(names: Sequence[str]) -> tuple[str, ...]:
    """A label set, checked: two or more distinct lower-case names (letters, digits, ``_``),
    in class-id order. Raises ``ValueError`` naming the problem."""
    names = tuple(names)
    bad = [n for n in names if not isinstance(n, str) or not CLASS_NAME_PATTERN.fullmatch(n)]
    if bad:
        raise ValueError(f"class names must be lower-case letters, digits and '_' "
                         f"(starting with a letter, at most 32): {bad}")
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"a label set needs two or more distinct class names, got "
                         f"{list(names)}")
    return names


def served_class_names(width: int | None, named: Sequence[str] | None = None
                       ) -> tuple[str, ...]:
    """The class names of a served model whose probabilities have ``width`` columns: those
    its ``class_names`` signature gave (``named``), else FER2013's when the width is 7 (or
    unknown), else numbered ``class_0``...."""
    if named is not None and (width in (None, -1) or len(named) == width):
        return tuple(named)
    if width in (None, -1, NUM_CLASSES):
        return CLASS_NAMES
    return tuple(f"class_{k}" for k in range(width))


#: Faces are IMAGE_SIZE x IMAGE_SIZE gray pixels, values 0-255.
IMAGE_SIZE = 48
FACE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)
#: The range of a pixel value, inclusive.
PIXEL_RANGE = (0.0, 255.0)

# --- artifact files -----------------------------------------------------------------------

MODEL_FILE = "model.keras"  # a trained Keras model (train, select, ensemble)
SUMMARY_FILE = "summary.json"  # the training run's figures, beside MODEL_FILE
METRICS_FILE = "metrics.json"  # evaluation metrics and gate decision; in assets.extra too
ASSETS_EXTRA = "assets.extra"  # a SavedModel's side files, which TF Serving ignores
LABELS_FILE = "labels.txt"  # one class name a line, in class-id order
WARMUP_FILE = "tf_serving_warmup_requests"  # the name TF Serving reads at load


def read_labels(version_dir: str | Path) -> tuple[str, ...]:
    """The class names a SavedModel version directory lists in ``assets.extra/labels.txt``,
    in class-id order; FER2013's when it lists none."""
    path = Path(version_dir) / ASSETS_EXTRA / LABELS_FILE
    names = tuple(path.read_text().split()) if path.is_file() else ()
    return names or CLASS_NAMES


# --- signatures ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """One named tensor of a signature: its dtype (a TensorFlow dtype name) and its shape
    (``None`` for a dimension of any size)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class Signature:
    """A SavedModel signature: its name, its one input, and its outputs."""

    name: str
    input: TensorInfo
    outputs: tuple[TensorInfo, ...]
    tta: bool = False  # averages the test-time augmentation views
    explain: bool = False  # adds the Grad-CAM heatmaps
    lookup: bool = False  # names class ids: no image in, no network run

    @property
    def output_names(self) -> tuple[str, ...]:
        """The outputs' names, in order."""
        return tuple(o.name for o in self.outputs)


SIGNATURE_PIXELS = "serving_default"
SIGNATURE_IMAGES = "predict_images"
SIGNATURE_PIXELS_TTA = "serving_tta"
SIGNATURE_IMAGES_TTA = "predict_images_tta"
SIGNATURE_EXPLAIN = "explain"
SIGNATURE_EXPLAIN_IMAGES = "explain_images"
SIGNATURE_CLASS_NAMES = "class_names"
PIXELS_INPUT = "pixels"
IMAGES_INPUT = "image_bytes"
PROBABILITIES, CLASS_ID, CLASS_NAME = "probabilities", "class_id", "class_name"
HEATMAPS = "heatmaps"

PIXELS = TensorInfo(PIXELS_INPUT, "float32", (None, *FACE_SHAPE))
IMAGE_BYTES = TensorInfo(IMAGES_INPUT, "string", (None,))
CLASS_IDS = TensorInfo(CLASS_ID, "int64", (None,))
CLASS_NAMES_OUT = TensorInfo(CLASS_NAME, "string", (None,))
# The class axis (None) has the label set's size: 7 for FER2013.
OUTPUTS = (
    TensorInfo(PROBABILITIES, "float32", (None, None)),
    CLASS_IDS,
    CLASS_NAMES_OUT,
)
OUTPUT_NAMES = tuple(o.name for o in OUTPUTS)
EXPLAIN_OUTPUTS = (*OUTPUTS, TensorInfo(HEATMAPS, "float32", (None, None, IMAGE_SIZE,
                                                               IMAGE_SIZE)))

#: Every signature an exported model may offer, by name: the single-pass ones always, the
#: TTA ones when it was exported with test-time augmentation.
SIGNATURES: dict[str, Signature] = {
    SIGNATURE_PIXELS: Signature(SIGNATURE_PIXELS, PIXELS, OUTPUTS),
    SIGNATURE_IMAGES: Signature(SIGNATURE_IMAGES, IMAGE_BYTES, OUTPUTS),
    SIGNATURE_PIXELS_TTA: Signature(SIGNATURE_PIXELS_TTA, PIXELS, OUTPUTS, tta=True),
    SIGNATURE_IMAGES_TTA: Signature(SIGNATURE_IMAGES_TTA, IMAGE_BYTES, OUTPUTS, tta=True),
    SIGNATURE_EXPLAIN: Signature(SIGNATURE_EXPLAIN, PIXELS, EXPLAIN_OUTPUTS, explain=True),
    SIGNATURE_EXPLAIN_IMAGES: Signature(SIGNATURE_EXPLAIN_IMAGES, IMAGE_BYTES, EXPLAIN_OUTPUTS,
                                        explain=True),
    SIGNATURE_CLASS_NAMES: Signature(SIGNATURE_CLASS_NAMES, CLASS_IDS, (CLASS_NAMES_OUT,),
                                     lookup=True),
}


def served_signatures(tta: bool, explain: bool = False, lookup: bool = True) -> list[str]:
    """The names of the signatures a model offers: the single-pass ones, the TTA ones when
    ``tta``, the explain ones when ``explain``, ``class_names`` when ``lookup`` (every model
    exported since label sets; not the bundled one)."""
    return [name for name, s in SIGNATURES.items()
            if (tta or not s.tta) and (explain or not s.explain) and (lookup or not s.lookup)]


def signature_name(images: bool, tta: bool = False) -> str:
    """The signature that takes encoded images (``images``) or pixels, in one pass or
    averaged over test-time augmentation views (``tta``)."""
    return {(False, False): SIGNATURE_PIXELS, (True, False): SIGNATURE_IMAGES,
            (False, True): SIGNATURE_PIXELS_TTA, (True, True): SIGNATURE_IMAGES_TTA}[
        (images, tta)]

# --- the bundled model --------------------------------------------------------------------

# The released model, shipped in the package: a TF Serving model base (``fer/<version>/``)
# that ``fer-serve`` serves and ``fer-pipeline predict`` runs when no server is named.
BUNDLED_MODEL_NAME = "fer"
BUNDLED_MODEL_BASE = Path(__file__).resolve().parent / "model" / BUNDLED_MODEL_NAME
