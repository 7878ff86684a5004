"""TF Serving's REST API (``g3doc/api_rest.md``) over a :class:`ModelStore`, on Starlette.

Routes: ``GET /v1/models/{name}[/versions/{v}|/labels/{l}]`` (status),
``GET .../metadata``, ``POST ...:predict`` (row ``instances`` or columnar ``inputs``,
``{"b64": ...}`` for bytes). Errors are ``{"error": "..."}`` with TF Serving's codes. A JSON
body is accepted with or without a ``Content-Type`` header.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import json_format
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from tensorflow_serving.apis import get_model_metadata_pb2

from serving.contract import SIGNATURE_PIXELS
from serving.fastjson import BatchTooLarge, JSONLimitError, parse_json
from serving.limits import (
    InferenceGate,
    Limits,
    ServingError,
    batch_error,
    check_json_depth,
    short,
    signature_error,
)
from serving.model_store import LoadedVersion, ModelStore
from serving.telemetry import METRICS_PATH, RequestRecord, Telemetry
from serving.v2 import v2_routes

log = logging.getLogger(__name__)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def decode_b64(value: Any) -> Any:
    """Replace every ``{"b64": "..."}`` with its bytes, as TF Serving does."""
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, TypeError, ValueError) as exc:
                raise ServingError(400, f"invalid base64 in 'b64' value: {exc}") from exc
        return {k: decode_b64(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_b64(v) for v in value]
    return value


def parse_predict_body(body: dict[str, Any],
                       input_names: list[str]) -> tuple[dict[str, Any], bool]:
    """``(inputs by name, row format?)`` from a predict body for a signature's inputs."""
    if ("instances" in body) == ("inputs" in body):
        raise ServingError(400, "the request must have exactly one of 'instances' (row "
                                "format) or 'inputs' (columnar format)")
    tensor = body.get("instances", body.get("inputs"))
    if isinstance(tensor, np.ndarray):  # numbers only, parsed into one array
        if len(input_names) != 1:
            raise ServingError(400, f"the request must name the inputs {input_names}")
        if "instances" in body and not tensor.size:
            raise ServingError(400, "'instances' must be a non-empty list")
        return {input_names[0]: tensor}, "instances" in body
    if "instances" in body:
        instances = decode_b64(body["instances"])
        if not isinstance(instances, list) or not instances:
            raise ServingError(400, "'instances' must be a non-empty list")
        if any(isinstance(i, dict) for i in instances):  # named inputs ({"b64"} is decoded)
            keys = set(instances[0]) if isinstance(instances[0], dict) else set()
            if not keys or any(not isinstance(i, dict) or set(i) != keys for i in instances):
                raise ServingError(400, "every instance must be an object naming the same inputs")
            return {k: [i[k] for i in instances] for k in keys}, True
        if len(input_names) != 1:
            raise ServingError(400, f"instances must name the inputs {input_names}")
        return {input_names[0]: instances}, True
    inputs = decode_b64(body["inputs"])
    if isinstance(inputs, dict):  # named inputs
        return inputs, False
    if len(input_names) != 1:
        raise ServingError(400, f"'inputs' must be an object naming the inputs {input_names}")
    return {input_names[0]: inputs}, False


def _jsonable(array: np.ndarray) -> Any:
    if array.dtype.kind in "SO":
        return np.vectorize(lambda b: b.decode("utf-8", "replace") if isinstance(b, bytes) else b,
                            otypes=[object])(array).tolist()
    return array.tolist()


def format_predict_response(outputs: dict[str, np.ndarray], row: bool) -> dict[str, Any]:
    """TF Serving's JSON for a predict's ``outputs``: ``predictions``, one entry per row, for a
    row-format request (``row``); else ``outputs``, by output name."""
    if not row:
        return {"outputs": {k: _jsonable(v) for k, v in outputs.items()}}
    names = sorted(outputs)
    n = len(next(iter(outputs.values())))
    columns = {k: _jsonable(outputs[k]) for k in names}
    if len(names) == 1:
        return {"predictions": columns[names[0]]}
    return {"predictions": [{k: columns[k][i] for k in names} for i in range(n)]}


def metadata_response(store: ModelStore, loaded: LoadedVersion) -> dict[str, Any]:
    """The REST metadata response of the version ``loaded`` of ``store``'s model: its model spec
    and signature definitions as JSON."""
    defs = get_model_metadata_pb2.SignatureDefMap(signature_def=loaded.signature_defs)
    return {
        "model_spec": {"name": store.name, "signature_name": "", "version": str(loaded.version)},
        "metadata": {"signature_def": json_format.MessageToDict(
            defs, preserving_proto_field_name=True)},
    }


class _Handling:
    """Run one predict (in a worker thread, holding an inference slot), and count it."""

    def __init__(self, limits: Limits, gate: InferenceGate, telemetry: Telemetry):
        self.limits, self.gate, self.telemetry = limits, gate, telemetry

    def _infer(self, loaded: LoadedVersion, signature: str,
               inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        with self.gate.slot():
            return loaded.predict(signature, inputs, self.limits)

    async def predict(self, loaded: LoadedVersion, signature: str,
                      inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """``loaded``'s ``signature`` on ``inputs``, off the event loop."""
        return await run_in_threadpool(self._infer, loaded, signature, inputs)

    async def read_json(self, request: Request) -> Any:
        """The request's JSON body: refused when over ``max_body_bytes`` (413), not received
        within the REST timeout (408), nested too deep, malformed, or holding a tensor with
        more items than ``max_batch_size`` (400). Parsed off the event loop."""
        limit = self.limits.max_body_bytes
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            raise ServingError(413, f"request body of {int(length):,} bytes exceeds the limit "
                                    f"of {limit:,} bytes (--max_body_bytes)")

        async def receive() -> bytes:
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise ServingError(413, f"request body exceeds the limit of {limit:,} "
                                            f"bytes (--max_body_bytes)")
            return bytes(body)

        timeout = self.limits.rest_api_timeout_in_ms
        try:
            body = await asyncio.wait_for(receive(), timeout / 1000)
        except TimeoutError:
            raise ServingError(408, f"request body not received within {timeout} ms "
                                    f"(--rest_api_timeout_in_ms)") from None
        return await run_in_threadpool(self.parse, body)

    def parse(self, body: bytes) -> Any:
        """``body`` as JSON, its depth and batch checked first."""
        check_json_depth(body, self.limits)
        try:
            return parse_json(body, self.limits.max_batch_size)
        except BatchTooLarge as exc:
            raise batch_error(exc.name, exc.size, self.limits) from None
        except JSONLimitError as exc:
            raise ServingError(400, f"JSON Parse error: {exc}") from None
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ServingError(400, f"JSON Parse error: {exc}") from None

    @contextmanager
    def counted(self, api: str, model: str, known: bool) -> Iterator[Call]:
        """Count the predict request the ``with`` block answers (and log it, with a request
        log), with what the block resolved into the :class:`Call` it gets; a request for an
        unknown model is not counted (its name is the client's text)."""
        call, started = Call(), time.perf_counter()
        try:
            yield call
            call.status = 200
        except ServingError as exc:
            call.status = exc.status
            raise
        finally:
            if known:
                self.telemetry.record(RequestRecord(
                    api, model, str(call.loaded.version) if call.loaded else "",
                    call.signature, str(call.status), (time.perf_counter() - started) * 1000,
                    call.batch))


@dataclass
class Call:
    """What answering one predict request resolved, for its count and log line."""

    loaded: LoadedVersion | None = None
    signature: str = ""
    batch: int = 0
    status: int = 500


def batch_size(inputs: dict[str, Any]) -> int:
    """The number of faces or images in a request's inputs (0 when it cannot tell)."""
    first = next(iter(inputs.values()), None)
    try:
        return len(first) if first is not None else 0
    except TypeError:
        return 1


def create_app(stores: dict[str, ModelStore], limits: Limits | None = None,
               gate: InferenceGate | None = None, telemetry: Telemetry | None = None,
               ) -> Starlette:
    """The Starlette app over ``stores`` (model name -> store): TF Serving's REST routes
    (status, metadata, predict), the Open Inference Protocol's (:mod:`serving.v2`) and the
    Prometheus metrics; requests held to ``limits``, inferences through ``gate``, counted
    by ``telemetry``."""
    limits = limits or Limits()
    handling = _Handling(limits, gate or InferenceGate(limits), telemetry or Telemetry())

    def store_for(request: Request) -> ModelStore:
        name = request.path_params["name"]
        if name not in stores:
            raise ServingError(404, f"Could not find any versions of model {name}")
        return stores[name]

    def selector(request: Request) -> dict[str, Any]:
        p = request.path_params
        return {"version": p.get("version"), "label": p.get("label")}

    async def status(request: Request) -> JSONResponse:
        store = store_for(request)
        sel = selector(request)
        version = store.resolve_label(sel["label"]) if sel["label"] else sel["version"]
        return JSONResponse({"model_version_status": store.statuses(version)})

    async def metadata(request: Request) -> JSONResponse:
        store = store_for(request)
        return JSONResponse(metadata_response(store, store.get(**selector(request))))

    async def predict(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        with handling.counted("rest", name, name in stores) as call:
            store = store_for(request)
            loaded = call.loaded = store.get(**selector(request))
            body = await handling.read_json(request)
            if not isinstance(body, dict):
                raise ServingError(400, "the request body must be a JSON object")
            signature = body.get("signature_name", SIGNATURE_PIXELS)
            if not isinstance(signature, str) or signature not in loaded.signatures:
                raise signature_error(signature, loaded.signatures)
            call.signature = signature
            _, spec = loaded.signatures[signature].structured_input_signature
            inputs, row = parse_predict_body(body, list(spec))
            call.batch = batch_size(inputs)
            outputs = await handling.predict(loaded, signature, inputs)
            return JSONResponse(format_predict_response(outputs, row))

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(handling.telemetry.registry),
                        media_type=CONTENT_TYPE_LATEST)

    async def serving_error(request: Request, exc: ServingError) -> JSONResponse:
        return _error(exc.status, exc.message)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, f"Malformed request: {request.method} "
                                       f"{short(request.url.path, 100)}")

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error answering %s %s", request.method,
                      short(request.url.path, 100))
        return _error(500, short(f"internal error: {type(exc).__name__}: {exc}"))

    base = "/v1/models/{name}"
    routes = []
    for prefix in ("", "/versions/{version:int}", "/labels/{label}"):
        routes += [
            Route(base + prefix, status, methods=["GET"]),
            Route(base + prefix + "/metadata", metadata, methods=["GET"]),
            Route(base + prefix + ":predict", predict, methods=["POST"]),
        ]
    routes.append(Route(METRICS_PATH, metrics, methods=["GET"]))
    routes += v2_routes(stores, handling)
    app = Starlette(routes=routes, exception_handlers={
        ServingError: serving_error, HTTPException: http_error, Exception: internal_error})
    app.router.redirect_slashes = False  # a redirect would be built from the client's Host
    return app
