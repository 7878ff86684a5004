"""What a client may ask of the server, and the checks that hold it to that.

The limits an operator sets (``fer-serve`` flags of the same names, named like
``tensorflow_model_server``'s where it has one) and the checks both APIs run before any
work: a batch too large, an image whose header promises too many pixels, JSON nested too
deep, values that are not finite or out of range, more inferences than the machine can
run at once. Each refusal is a :class:`ServingError` with TF Serving's status and a short
message that names the limit and never echoes the input. No TensorFlow here.
"""

from __future__ import annotations

import io
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

import numpy as np

#: Error messages are cut to this many characters: a message names the problem, it never
#: carries the request back.
MAX_MESSAGE_CHARS = 300


def short(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message`` made safe to send: valid UTF-8 (a lone surrogate is written as its
    escape) and at most ``limit`` characters."""
    text = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit - 1] + "…"


class ServingError(Exception):
    """A request the server cannot answer; ``status`` is the HTTP status it maps to (and
    through it the gRPC code). The message is :func:`short`."""

    def __init__(self, status: int, message: str):
        message = short(message)
        super().__init__(message)
        self.status = status
        self.message = message


def _limit(default: int, text: str) -> int:
    return field(default=default, metadata={"help": text})


def signature_error(name: object, known: object) -> ServingError:
    """The refusal (400) of a signature name the model does not have, in TF Serving's words
    (the name cut short: it is the client's text)."""
    shown = name[:64] if isinstance(name, str) else "?"
    return ServingError(400, f'Serving signature name: "{shown}" not found in signature def '
                             f"(has: {', '.join(sorted(known))})")


@dataclass(frozen=True)
class Limits:
    """The operator's limits on what one request may ask; defaults are safe on a small
    CPU node. Each field is a ``fer-serve`` flag of the same name, its help in the
    field's metadata."""

    max_batch_size: int = _limit(64, "faces (or images) in one request, over either API")
    max_image_pixels: int = _limit(
        25_000_000, "pixels (width x height) of one encoded image, read from its header "
        "before it is decoded")
    max_request_pixels: int = _limit(100_000_000, "pixels of all the images of one request")
    max_json_depth: int = _limit(32, "nesting of a REST JSON body (a face is 4 levels)")
    max_body_bytes: int = _limit(32 * 1024 * 1024, "bytes of a REST request body")
    rest_api_timeout_in_ms: int = _limit(
        30_000, "time to receive a REST request's body; slower ones are answered 408")
    max_concurrent_inferences: int = _limit(
        2, "inferences run at once over both APIs; more wait in line")
    queue_timeout_in_ms: int = _limit(
        2_000, "how long a request waits in line before it is answered 503 (gRPC "
        "UNAVAILABLE)")

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 1:
                raise ValueError(f"{f.name} must be >= 1, got {getattr(self, f.name)}")


# --- JSON ---------------------------------------------------------------------------------

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_DEPTH_STEP = np.zeros(256, np.int8)
_DEPTH_STEP[[ord("["), ord("{")]] = 1
_DEPTH_STEP[[ord("]"), ord("}")]] = -1
_CHUNK = 1 << 22


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in the JSON text ``body`` (brackets inside
    strings do not count), without parsing it: linear, in C, a few ms per MB."""
    text = _STRING.sub(b"", body)
    deepest = level = 0
    for start in range(0, len(text), _CHUNK):  # chunks bound the cumulative sum's memory
        steps = _DEPTH_STEP[np.frombuffer(text, np.uint8, min(_CHUNK, len(text) - start),
                                          start)]
        running = np.cumsum(steps, dtype=np.int64) + level
        if running.size:
            deepest = max(deepest, int(running.max()))
            level = int(running[-1])
    return deepest


def check_json_depth(body: bytes, limits: Limits) -> None:
    """Refuse (400) a body nested deeper than ``limits.max_json_depth``."""
    depth = json_depth(body)
    if depth > limits.max_json_depth:
        raise ServingError(400, f"JSON nested {depth} levels deep; the limit is "
                                f"{limits.max_json_depth} (--max_json_depth)")


# --- tensors ------------------------------------------------------------------------------


def batch_error(name: str, size: int, limits: Limits) -> ServingError:
    """The refusal (400) of a batch of ``size`` over ``max_batch_size``."""
    return ServingError(400, f"input {name!r}: batch of {size:,} exceeds the limit of "
                             f"{limits.max_batch_size} (--max_batch_size); send smaller "
                             f"requests")


def check_batch(name: str, size: int, limits: Limits) -> None:
    """Refuse (400) an input whose batch (first dimension) exceeds ``max_batch_size``."""
    if size > limits.max_batch_size:
        raise batch_error(name, size, limits)


def check_numbers(name: str, array: np.ndarray, value_range: tuple[float, float] | None) -> None:
    """Refuse (400) numbers that are NaN, infinite, or outside ``value_range`` (inclusive)."""
    if array.dtype.kind != "f" and value_range is None:
        return
    values = array.astype(np.float64, copy=False)
    finite = np.isfinite(values)
    if not finite.all():
        raise ServingError(400, f"input {name!r}: NaN or infinite values ("
                                f"{int((~finite).sum()):,} of {values.size:,})")
    if value_range is not None and values.size:
        low, high = float(values.min()), float(values.max())
        if low < value_range[0] or high > value_range[1]:
            raise ServingError(400, f"input {name!r}: values must be in "
                                    f"[{value_range[0]:g}, {value_range[1]:g}], got "
                                    f"{low:g} to {high:g}")


def image_pixels(data: bytes) -> int | None:
    """Width x height from an encoded image's header (no decoding), ``None`` when the bytes
    are no image format Pillow knows (the model's decoder then says what is wrong)."""
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        except Image.DecompressionBombError as exc:  # over twice Pillow's own limit
            found = re.search(r"\((\d+) pixels\)", str(exc))  # "Image size (N pixels) ..."
            return int(found.group(1)) if found else 2 ** 62
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            return None
    return width * height


def check_images(name: str, blobs: list[bytes], limits: Limits) -> None:
    """Refuse (400) images whose headers promise more pixels than the limits allow, before
    any is decoded (a 500 KB PNG can hold 500 million pixels)."""
    total = 0
    for index, data in enumerate(blobs):
        pixels = image_pixels(data) if isinstance(data, bytes) else None
        if pixels is None:
            continue
        if pixels > limits.max_image_pixels:
            raise ServingError(400, f"input {name!r}: image {index} has {pixels:,} pixels; the "
                                    f"limit is {limits.max_image_pixels:,} (--max_image_pixels)")
        total += pixels
    if total > limits.max_request_pixels:
        raise ServingError(400, f"input {name!r}: the images hold {total:,} pixels together; "
                                f"the limit is {limits.max_request_pixels:,} "
                                f"(--max_request_pixels)")


# --- concurrency --------------------------------------------------------------------------


class InferenceGate:
    """At most ``max_concurrent_inferences`` inferences at once; a request that cannot start
    within ``queue_timeout_in_ms`` is refused with 503 rather than queued without bound."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self._slots = threading.BoundedSemaphore(limits.max_concurrent_inferences)

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one inference slot for the ``with`` block; :class:`ServingError` (503) when
        none frees up in time."""
        if not self._slots.acquire(timeout=self.limits.queue_timeout_in_ms / 1000):
            raise ServingError(503, f"server busy: {self.limits.max_concurrent_inferences} "
                                    f"inferences running and none finished within "
                                    f"{self.limits.queue_timeout_in_ms} ms; retry later")
        try:
            yield
        finally:
            self._slots.release()
