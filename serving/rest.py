"""TF Serving's REST API (``g3doc/api_rest.md``) over a :class:`ModelStore`, on Starlette.

Routes: ``GET /v1/models/{name}[/versions/{v}|/labels/{l}]`` (status),
``GET .../metadata``, ``POST ...:predict`` (row ``instances`` or columnar ``inputs``,
``{"b64": ...}`` for bytes). Errors are ``{"error": "..."}`` with TF Serving's codes. A JSON
body is accepted with or without a ``Content-Type`` header.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any

import numpy as np
from google.protobuf import json_format
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from tensorflow_serving.apis import get_model_metadata_pb2

from serving.contract import SIGNATURE_PIXELS
from serving.handling import Handling
from serving.limits import (
    InferenceGate,
    Limits,
    ServingError,
    short,
    signature_error,
)
from serving.model_store import LoadedVersion, ModelStore
from serving.telemetry import METRICS_PATH, Telemetry
from serving.v2 import v2_routes
from serving.web.app import PageBackend, web_routes

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


def batch_size(inputs: dict[str, Any]) -> int:
    """The number of faces or images in a request's inputs (0 when it cannot tell)."""
    first = next(iter(inputs.values()), None)
    try:
        return len(first) if first is not None else 0
    except TypeError:
        return 1


def create_app(stores: dict[str, ModelStore], limits: Limits | None = None,
               gate: InferenceGate | None = None, telemetry: Telemetry | None = None,
               web: PageBackend | None = None) -> Starlette:
    """The Starlette app over ``stores`` (model name -> store): TF Serving's REST routes
    (status, metadata, predict), the Open Inference Protocol's (:mod:`serving.v2`) and the
    Prometheus metrics; requests held to ``limits``, inferences through ``gate``, counted
    by ``telemetry``; with ``web``, the web page at ``/`` (:mod:`serving.web`)."""
    limits = limits or Limits()
    handling = Handling(limits, gate or InferenceGate(limits), telemetry or Telemetry())

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
    if web is not None:  # --- the web page (serving.web): it calls the routes above ---
        routes += web_routes(web)
    app = Starlette(routes=routes, exception_handlers={
        ServingError: serving_error, HTTPException: http_error, Exception: internal_error})
    app.router.redirect_slashes = False  # a redirect would be built from the client's Host
    return app
