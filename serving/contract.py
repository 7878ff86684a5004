"""The SavedModel signature contract shared by export, the local server and the clients.

* ``serving_default``: ``pixels`` float32 [N,48,48,1], values 0-255;
* ``predict_images``: ``image_bytes`` string [N], encoded JPEG/PNG/GIF/BMP of any size;

both return ``probabilities`` float32 [N,7], ``class_id`` int64 [N], ``class_name`` string [N].
``assets.extra/`` holds ``labels.txt``, ``metrics.json`` and TF Serving's warm-up records.
"""

from __future__ import annotations

from pathlib import Path

SIGNATURE_PIXELS = "serving_default"
SIGNATURE_IMAGES = "predict_images"
PIXELS_INPUT = "pixels"
IMAGES_INPUT = "image_bytes"
SIGNATURE_INPUTS = {SIGNATURE_PIXELS: PIXELS_INPUT, SIGNATURE_IMAGES: IMAGES_INPUT}
OUTPUT_NAMES = ("probabilities", "class_id", "class_name")

ASSETS_EXTRA = "assets.extra"
LABELS_FILE = "labels.txt"
METRICS_FILE = "metrics.json"
WARMUP_FILE = "tf_serving_warmup_requests"  # the name TF Serving reads at load

# The released model, shipped in the package: a TF Serving model base (``fer/<version>/``)
# that ``fer-serve`` serves and ``fer-pipeline predict`` runs when no server is named.
BUNDLED_MODEL_NAME = "fer"
BUNDLED_MODEL_BASE = Path(__file__).resolve().parent / "model" / BUNDLED_MODEL_NAME
