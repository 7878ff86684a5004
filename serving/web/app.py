# Length: the page's whole backend in one place: reading and checking what a person sends,
# finding and framing the faces, one call of the model over TF Serving's REST API, the
# answer as JSON, the routes, and the stand-alone server of ``fer-pipeline web``.
"""The web page's backend: Starlette routes that answer the page (:mod:`serving.web`).

Routes (``web_routes``):

* ``GET /``: the page; ``GET /web/{app.js,style.css}``: its assets, from the package;
* ``GET /web/model``: the model's name, version, class names and whether it can explain
  (its metadata has the ``explain`` signature), and the limits on what may be sent;
* ``POST /web/analyze?detector=mtcnn|haar&whole=0|1&explain=0|1``: the body is an encoded
  image (the file's bytes, any format Pillow or OpenCV reads). Its size is checked before it
  is read whole (413), its header's pixel count before it is decoded (413), and bytes that
  are no image are refused (400). The faces are found (:mod:`serving.faces`; ``whole=1``:
  the whole image is one face), framed 48x48 as the model was trained, and sent in one
  predict request (``serving_default``, or ``explain`` with ``explain=1`` when the model
  has it). The answer: the image's size, per face its box, the detector's score, the top
  emotion, its confidence, the probability of every class by name, the 48x48 crop the model
  saw and, when explained, the Grad-CAM heatmap of the top emotion (PNG data URLs).

The backend reaches the model only through TF Serving's REST API (``:predict`` and
``/metadata``), with :class:`serving.client.RestClient` in worker threads: inside
``fer-serve`` over loopback to its own REST port, in ``fer-pipeline web`` to any URL. It
holds no slot of ``fer-serve``'s inference gate while it waits (the predict it sends takes
one); its own analyses are bounded apart, and one that cannot start in time is refused (503).
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serving.client import ClientError, RestClient, probability_width
from serving.contract import (
    CLASS_ID,
    CLASS_NAME,
    HEATMAPS,
    PROBABILITIES,
    SIGNATURE_EXPLAIN,
    SIGNATURE_PIXELS,
    served_class_names,
)
from serving.faces import (
    DEFAULT_DETECTOR,
    DETECTORS,
    Face,
    detect_shrunk,
    face_crop,
    get_detector,
)
from serving.limits import Limits, image_pixels, short

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: The page's files and their media types: ``index.html`` at ``/``, the others under
#: ``/web/``.
PAGE_FILES = {"index.html": "text/html; charset=utf-8",
              "app.js": "text/javascript; charset=utf-8",
              "style.css": "text/css; charset=utf-8"}
#: What the page may load: its own files, images it made (blob:, data:) and the camera.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                               "media-src 'self' blob: mediastream:; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
NO_EXPLAIN = "explanations are not available for this model"
NO_FACE = "no face found"
#: An image at most this many pixels on its longer side, about square, is a face crop
#: already (as ``fer-pipeline predict`` judges it): classified whole.
FACE_CROP_MAX_SIDE = 128
#: Faces are looked for in the image shrunk to at most this many pixels on its longer
#: side (a 25-megapixel photo would take MTCNN many seconds and gigabytes); their boxes and
#: landmarks are scaled back, and each face is framed from the full image.
DETECT_MAX_SIDE = 1600
#: How long the model's metadata is trusted before it is asked again (a new version may
#: be served meanwhile).
INFO_SECONDS = 5.0


class PageError(Exception):
    """A request the page's backend cannot answer: its HTTP ``status``, a short message for
    people, and a ``reason`` the page tells its error states by."""

    def __init__(self, status: int, message: str, reason: str):
        message = short(message)
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason

    def response(self) -> JSONResponse:
        """The error as the JSON the page reads: ``{"error", "reason"}``."""
        return JSONResponse({"error": self.message, "reason": self.reason},
                            status_code=self.status, headers=SECURITY_HEADERS)


@dataclass(frozen=True)
class ModelInfo:
    """What the page needs to know of the served model, from its REST metadata."""

    name: str
    version: str
    classes: tuple[str, ...]
    explain: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"name": self.name, "version": self.version, "classes": list(self.classes),
                "explain": self.explain}


def model_info(name: str, metadata: dict[str, Any],
               named: tuple[str, ...] | None = None) -> ModelInfo:
    """The :class:`ModelInfo` in a TF Serving REST metadata response: the version, whether
    the ``explain`` signature is there, and the class names: ``named`` (what the model's
    ``class_names`` signature says) when they fit the probabilities' width, else the
    contract's default for that width."""
    try:
        signatures = metadata["metadata"]["signature_def"]["signature_def"]
        version = str(metadata.get("model_spec", {}).get("version", ""))
    except (KeyError, TypeError, AttributeError) as exc:
        raise PageError(502, "the model server's metadata has no signature definitions",
                        "model") from exc
    if SIGNATURE_PIXELS not in signatures:
        raise PageError(502, f"the model {name!r} has no {SIGNATURE_PIXELS} signature",
                        "model")
    classes = served_class_names(probability_width(signatures), named)
    return ModelInfo(name, version, classes, SIGNATURE_EXPLAIN in signatures)


class ModelLink:
    """The model behind the page: ``model_name`` at the TF Serving REST endpoint ``url``
    (settable: ``fer-serve`` names its own port once it listens). One client per thread;
    the metadata kept for :data:`INFO_SECONDS`."""

    def __init__(self, url: str | None, model_name: str, timeout: float = 30.0):
        self.url, self.model_name, self.timeout = url, model_name, timeout
        self._local = threading.local()
        self._info: tuple[float, str, ModelInfo] | None = None

    def client(self) -> RestClient:
        """This thread's client of the endpoint."""
        if self.url is None:
            raise PageError(503, "the model server is not listening yet; retry in a moment",
                            "unreachable")
        cached = getattr(self._local, "client", None)
        if cached is None or cached[0] != self.url:
            cached = (self.url, RestClient(self.url, self.model_name, timeout=self.timeout))
            self._local.client = cached
        return cached[1]

    def info(self, fresh: bool = False) -> ModelInfo:
        """The model's :class:`ModelInfo` (asked again after :data:`INFO_SECONDS`, or now
        with ``fresh``)."""
        now, kept = time.monotonic(), self._info
        if not fresh and kept and kept[1] == self.url and now - kept[0] < INFO_SECONDS:
            return kept[2]
        client = self.client()
        try:
            metadata = client.metadata()
            named = client.class_names_in(metadata)
        except ClientError as exc:
            raise model_error(exc, self) from exc
        except (KeyError, TypeError) as exc:  # metadata without signatures: said below
            log.debug("no class names from %s: %s", self.url, exc)
            named = None
        info = model_info(self.model_name, metadata, named)
        self._info = (now, self.url or "", info)
        return info

    def predict(self, faces: np.ndarray, explain: bool) -> dict[str, Any]:
        """The model's outputs for 48x48 faces: ``serving_default``, or ``explain`` (with
        ``heatmaps``)."""
        client = self.client()
        try:
            return client.explain_pixels(faces) if explain else client.predict_pixels(faces)
        except ClientError as exc:
            raise model_error(exc, self) from exc
        except (KeyError, IndexError, TypeError, ValueError) as exc:  # not the contract's outputs
            raise PageError(502, f"the model {self.model_name!r} answered without the "
                                 f"contract's outputs ({type(exc).__name__}: {exc})",
                            "model") from exc


def model_error(exc: ClientError, link: ModelLink) -> PageError:
    """A failed call of the model server as the page tells it: unreachable, busy, no such
    model, or refused."""
    if exc.status is None:
        return PageError(502, f"cannot reach the model server at {link.url}", "unreachable")
    if exc.status == 503:
        return PageError(503, "the model server is busy; retry in a moment", "busy")
    if exc.status == 404:
        return PageError(502, f"the model server at {link.url} serves no model named "
                              f"{link.model_name!r}", "unreachable")
    return PageError(502, f"the model server refused the request ({exc})", "model")


# --- images ---------------------------------------------------------------------------------


def check_image(data: bytes, limits: Limits) -> None:
    """Refuse, before decoding, an empty body or bytes that are no image (400), and an image
    whose header promises more pixels than ``limits.max_image_pixels`` (413)."""
    if not data:
        raise PageError(400, "no image: the request's body is empty", "not_image")
    pixels = image_pixels(data)
    if pixels is None:
        raise PageError(400, "not an image: the file is in no image format the server reads "
                             "(JPEG, PNG, GIF, BMP, WebP, TIFF)", "not_image")
    if pixels > limits.max_image_pixels:
        raise PageError(413, f"image too large: it has {pixels:,} pixels; the limit is "
                             f"{limits.max_image_pixels:,}", "too_large")


def decode_image(data: bytes) -> np.ndarray:
    """A checked image's BGR uint8 pixels, turned as its EXIF orientation says (as a browser
    shows it): by OpenCV, else by Pillow (formats OpenCV lacks); 400 when neither can."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is not None and image.size:
        return image
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            rgb = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise PageError(400, "not an image: the file cannot be decoded (damaged or cut "
                             "short?)", "not_image") from exc
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def is_face_crop(image: np.ndarray) -> bool:
    """Whether an image is framed like a face crop: small and about square."""
    h, w = image.shape[:2]
    return max(h, w) <= FACE_CROP_MAX_SIDE and 0.75 <= w / h <= 1.33


def png_data_url(image: np.ndarray) -> str:
    """A uint8 image (gray, BGR or BGRA) as a ``data:image/png;base64,...`` URL."""
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("cannot encode a PNG")
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def heatmap_png(heatmap: np.ndarray) -> str:
    """A Grad-CAM map (values 0-1) as a coloured PNG data URL whose opacity follows the
    value: laid over the face, it shows where the network looked and leaves the rest."""
    values = np.clip(np.nan_to_num(np.asarray(heatmap, np.float32)), 0.0, 1.0)
    colour = cv2.applyColorMap((values * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    alpha = (values * 210).astype(np.uint8)
    return png_data_url(np.dstack([colour, alpha]))


def find_faces(image: np.ndarray, detector: str, max_side: int = DETECT_MAX_SIDE
               ) -> list[Face]:
    """The faces ``detector`` finds in ``image``, looked for in a copy shrunk to at most
    ``max_side`` pixels on its longer side, in the full image's coordinates."""
    scale = max_side / max(image.shape[:2])
    if scale >= 1:
        return get_detector(detector).detect(image)
    return detect_shrunk(get_detector(detector), image, scale)


def clamp_box(box: tuple[int, int, int, int], width: int, height: int) -> dict[str, int]:
    """A face box ``(x, y, w, h)`` cut to the image, as JSON."""
    x, y, w, h = box
    x0, y0 = min(max(x, 0), width), min(max(y, 0), height)
    x1, y1 = min(max(x + w, 0), width), min(max(y + h, 0), height)
    return {"x": x0, "y": y0, "w": x1 - x0, "h": y1 - y0}


# --- the analysis ---------------------------------------------------------------------------


def parse_flag(value: str | None, name: str) -> bool:
    """A query flag: ``1``/``true``/``on``/``yes`` or ``0``/``false``/``off``/``no``/empty;
    400 otherwise."""
    text = (value or "").strip().lower()
    if text in ("1", "true", "on", "yes"):
        return True
    if text in ("", "0", "false", "off", "no"):
        return False
    raise PageError(400, f"{name} must be 0 or 1", "bad_request")


def parse_detector(value: str | None) -> str:
    """The ``detector`` query field: one of :data:`serving.faces.DETECTORS` (default MTCNN);
    400 otherwise."""
    name = (value or DEFAULT_DETECTOR).strip().lower()
    if name not in DETECTORS:
        raise PageError(400, f"unknown face detector {short(name, 40)!r}: choose one of "
                             f"{', '.join(DETECTORS)}", "bad_request")
    return name


@dataclass
class PageBackend:
    """The page's work: check, decode, find and frame the faces, ask the model (through
    ``link``), answer. Held to ``limits`` (body bytes, image pixels, faces per request);
    at most ``max_concurrent`` analyses at once, the rest waiting up to
    ``queue_timeout_s`` before a 503."""

    link: ModelLink
    limits: Limits = field(default_factory=Limits)
    max_concurrent: int = 2
    queue_timeout_s: float = 5.0
    _slots: asyncio.Semaphore | None = field(default=None, init=False, repr=False)

    def analyze(self, data: bytes, detector: str = DEFAULT_DETECTOR, whole: bool = False,
                explain: bool = False) -> dict[str, Any]:
        """The page's answer for the encoded image ``data`` (see the module's docstring);
        :class:`PageError` for what cannot be answered."""
        check_image(data, self.limits)
        info = self.link.info()  # an unreachable model is said before any work is done
        image = decode_image(data)
        height, width = image.shape[:2]
        note = ""
        if not whole and is_face_crop(image):
            whole, note = True, "a small, square image: classified whole, as a face crop"
        faces = [Face((0, 0, width, height))] if whole else find_faces(image, detector)
        explained = explain and info.explain
        result: dict[str, Any] = {
            "image": {"width": width, "height": height},
            "model": info.as_dict(), "classes": list(info.classes),
            "detector": None if whole else detector, "whole_image": whole, "note": note,
            "explain": {"requested": explain, "available": info.explain,
                        "message": "" if info.explain else NO_EXPLAIN},
            "faces": [], "message": "" if faces else NO_FACE,
        }
        if not faces:
            return result
        crops = [face_crop(image, None if whole else face) for face in faces]
        outputs = self._predict(np.stack(crops), explained)
        classes = list(info.classes)
        for class_id, class_name in zip(outputs[CLASS_ID], outputs[CLASS_NAME]):
            if 0 <= int(class_id) < len(classes):
                classes[int(class_id)] = class_name  # the model's own word for it
        for k, (face, crop) in enumerate(zip(faces, crops)):
            probs = [float(p) for p in outputs[PROBABILITIES][k]]
            top = int(outputs[CLASS_ID][k])
            entry = {
                "box": clamp_box(face.box, width, height), "score": round(face.score, 4),
                "emotion": classes[top] if 0 <= top < len(classes) else str(top),
                "confidence": round(probs[top], 6) if 0 <= top < len(probs) else None,
                PROBABILITIES: {classes[c] if c < len(classes) else f"class {c}": round(p, 6)
                                for c, p in enumerate(probs)},
                "crop": png_data_url(crop),
            }
            if HEATMAPS in outputs and 0 <= top < outputs[HEATMAPS].shape[1]:
                entry["heatmap"] = heatmap_png(outputs[HEATMAPS][k, top])
            result["faces"].append(entry)
        result["classes"] = classes
        return result

    def _predict(self, faces: np.ndarray, explain: bool) -> dict[str, Any]:
        """All the faces in one request when the batch limit allows (else in the fewest)."""
        step = self.limits.max_batch_size
        parts = [self.link.predict(faces[start:start + step], explain)
                 for start in range(0, len(faces), step)]
        merged: dict[str, Any] = {}
        for key in parts[0]:
            values = [p[key] for p in parts]
            merged[key] = (np.concatenate(values) if isinstance(values[0], np.ndarray)
                           else [v for part in values for v in part])
        return merged

    async def run(self, work: Callable[..., Any], *args: Any) -> Any:
        """``work(*args)`` in a worker thread once one of the backend's slots is free (a
        503 when none frees up within ``queue_timeout_s``); waiting holds no thread."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrent)
        try:
            await asyncio.wait_for(self._slots.acquire(), self.queue_timeout_s)
        except TimeoutError:
            raise PageError(503, f"busy: {self.max_concurrent} images are being analysed; "
                                 f"retry in a moment", "busy") from None
        try:
            return await run_in_threadpool(work, *args)
        finally:
            self._slots.release()


async def read_body(request: Request, limits: Limits) -> bytes:
    """The request's body, refused (413) when over ``limits.max_body_bytes`` (by its
    ``Content-Length`` before reading, else as it arrives) and (408) when it does not
    arrive within the REST timeout."""
    limit = limits.max_body_bytes
    too_large = PageError(413, f"file too large: the limit is {limit:,} bytes", "too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large

    async def receive() -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
        return bytes(body)

    timeout = limits.rest_api_timeout_in_ms / 1000
    try:
        return await asyncio.wait_for(receive(), timeout)
    except TimeoutError:
        raise PageError(408, f"the image did not arrive within {timeout:g} s",
                        "timeout") from None


# --- routes ---------------------------------------------------------------------------------


def _answers(handler: Callable[[Request], Awaitable[Response]]
             ) -> Callable[[Request], Awaitable[Response]]:
    """``handler`` with every failure answered as JSON: a :class:`PageError` as itself,
    anything else as a 500 that is logged (the server stays up)."""

    async def answer(request: Request) -> Response:
        try:
            return await handler(request)
        except PageError as exc:
            return exc.response()
        except Exception:  # a bug: logged, answered, never the server's end
            log.exception("web page: internal error answering %s %s", request.method,
                          short(request.url.path, 100))
            return PageError(500, "internal error: the server could not analyse this image",
                             "internal").response()

    return answer


def web_routes(backend: PageBackend) -> list[Route]:
    """The page's routes (see the module's docstring) over ``backend``."""
    files = {name: (STATIC_DIR / name).read_bytes() for name in PAGE_FILES}

    def asset(name: str) -> Callable[[Request], Awaitable[Response]]:
        async def serve(request: Request) -> Response:
            return Response(files[name], media_type=PAGE_FILES[name], headers=SECURITY_HEADERS)

        return serve

    async def model(request: Request) -> Response:
        info = await backend.run(backend.link.info, True)
        limits = backend.limits
        return JSONResponse({**info.as_dict(), "detectors": list(DETECTORS),
                             "default_detector": DEFAULT_DETECTOR,
                             "limits": {"max_body_bytes": limits.max_body_bytes,
                                        "max_image_pixels": limits.max_image_pixels}},
                            headers=SECURITY_HEADERS)

    async def analyze(request: Request) -> Response:
        query = request.query_params
        detector = parse_detector(query.get("detector"))
        whole = parse_flag(query.get("whole"), "whole")
        explain = parse_flag(query.get("explain"), "explain")
        data = await read_body(request, backend.limits)
        result = await backend.run(backend.analyze, data, detector, whole, explain)
        return JSONResponse(result, headers=SECURITY_HEADERS)

    routes = [Route("/", _answers(asset("index.html")), methods=["GET"])]
    routes += [Route(f"/web/{name}", _answers(asset(name)), methods=["GET"])
               for name in PAGE_FILES if name != "index.html"]
    routes += [Route("/web/model", _answers(model), methods=["GET"]),
               Route("/web/analyze", _answers(analyze), methods=["POST"])]
    return routes


def create_web_app(url: str, model_name: str = "fer", limits: Limits | None = None,
                   timeout: float = 30.0) -> Starlette:
    """The stand-alone page (``fer-pipeline web``) in front of the TF Serving REST endpoint
    ``url`` and its model ``model_name``."""
    backend = PageBackend(ModelLink(url.rstrip("/"), model_name, timeout), limits or Limits())

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return PageError(exc.status_code, f"{request.method} {short(request.url.path, 100)}: "
                                          f"{exc.detail}", "bad_request").response()

    app = Starlette(routes=web_routes(backend), exception_handlers={HTTPException: http_error})
    app.router.redirect_slashes = False
    return app


def run_web(url: str, model_name: str = "fer", host: str = "127.0.0.1", port: int = 8080,
            limits: Limits | None = None, timeout: float = 30.0) -> int:
    """Serve the page on ``host:port`` in front of ``url`` until interrupted (blocking);
    return the exit code. Says at start whether the model answers (it may come later)."""
    import uvicorn

    if "://" not in url:
        raise ValueError(f"--url must be an http:// or https:// URL, got {url!r}")
    link = ModelLink(url.rstrip("/"), model_name, timeout)
    try:
        info = link.info()
        print(f"model {info.name!r} version {info.version} at {url} "
              f"({'explains' if info.explain else 'no explanations'})")
    except PageError as exc:
        print(f"warning: {exc.message} (the page will say so until it answers)")
    shown = f"[{host}]" if ":" in host else host
    print(f"the page: http://{shown}:{port}/  (Ctrl+C stops)", flush=True)
    uvicorn.run(create_web_app(url, model_name, limits, timeout), host=host, port=port,
                log_level="warning", log_config=None, access_log=False)
    return 0
