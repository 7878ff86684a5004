"""TF Serving's REST API (``g3doc/api_rest.md``) over a :class:`ModelStore`, on Starlette.

Routes: ``GET /v1/models/{name}[/versions/{v}|/labels/{l}]`` (status),
``GET .../metadata``, ``POST ...:predict`` (row ``instances`` or columnar ``inputs``,
``{"b64": ...}`` for bytes). Errors are ``{"error": "..."}`` with TF Serving's codes. A JSON
body is accepted with or without a ``Content-Type`` header.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import simdjson
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from tensorflow_serving.apis import get_model_metadata_pb2

from serving.contract import SIGNATURE_PIXELS
from serving.model_store import LoadedVersion, ModelStore, ServingError

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


# The keys whose value is a tensor, in the row and the columnar format.
TENSOR_KEYS = ("instances", "inputs")
_NUMBER_CHARS = b"0123456789.eE+-"
_NOISE = _NUMBER_CHARS + b" \t\n\r"  # numbers and JSON whitespace


def _first_path_shape(node: simdjson.Array) -> tuple[int, ...]:
    """The shape read along the first element at each level."""
    shape, item = [], node
    while isinstance(item, simdjson.Array):
        shape.append(len(item))
        if not shape[-1]:
            break
        item = item[0]
    return tuple(shape)


@functools.lru_cache(maxsize=32)
def _skeleton(shape: tuple[int, ...]) -> bytes:
    """The text of a rectangular array of ``shape`` with its numbers deleted."""
    skeleton = b""
    for n in reversed(shape):
        skeleton = b"[" + b",".join([skeleton] * n) + b"]"
    return skeleton


def _body_is_rectangular(body: bytes, doc: simdjson.Object, tensor_key: str,
                         shape: tuple[int, ...]) -> bool:
    """Whether ``body`` minus numbers and whitespace reads exactly like ``doc``'s keys, in
    order, with string values and a rectangular ``tensor_key`` of ``shape``.

    Exact: with everything before the tensor equal, the tensor's own text starts where the
    skeleton does and, being balanced, ends where it does. Cheaper than re-serialising the
    tensor (``mini``); ``False`` for a body it cannot judge this way (values other than
    strings, escapes written differently), which the caller then checks the slow way.
    """
    parts = []
    for key in doc.keys():
        value = doc[key]
        if key == tensor_key:
            text = _skeleton(shape)
        elif isinstance(value, str):
            text = json.dumps(value, ensure_ascii=False).encode().translate(None, _NOISE)
        else:
            return False
        parts.append(json.dumps(key, ensure_ascii=False).encode().translate(None, _NOISE)
                     + b":" + text)
    return body.translate(None, _NOISE) == b"{" + b",".join(parts) + b"}"


def numeric_array(node: simdjson.Array,
                  rectangular: Callable[[tuple[int, ...]], bool] | None = None,
                  ) -> np.ndarray | None:
    """A rectangular all-number JSON array as one float64 ndarray, or ``None``.

    ``rectangular(shape)``: a cheap exact check of the structure, if the caller has one;
    when it says no, the array's minified text, numbers deleted, must be the skeleton of
    its shape. (An innermost ``[x]`` then reads like ``[]``: the number of values must also
    be the product of the shape.)
    """
    try:
        flat = np.frombuffer(node.as_buffer(of_type="d"), dtype=np.float64)
    except (TypeError, ValueError):  # strings, objects, booleans, nulls
        return None
    shape = _first_path_shape(node)
    if int(np.prod(shape)) != flat.size:
        return None
    if not ((rectangular is not None and rectangular(shape))
            or node.mini.translate(None, _NUMBER_CHARS) == _skeleton(shape)):
        return None
    return flat.reshape(shape)


_parsers = threading.local()


def _parse(body: bytes) -> Any:
    """simdjson's parse with this thread's parser, reused: its buffers are already sized
    and paged in (a fresh parser per request costs as much again as the parse). A parser
    refuses to parse while a document it made is still referenced; then take a fresh one.
    """
    parser = getattr(_parsers, "parser", None)
    if parser is not None:
        try:
            return parser.parse(body)
        except RuntimeError:  # a previous document still alive (e.g. held by a traceback)
            pass
    _parsers.parser = simdjson.Parser()
    return _parsers.parser.parse(body)


def parse_json(body: bytes) -> Any:
    """The request body as Python values, a numeric tensor as one ndarray.

    simdjson parses the body, and a rectangular all-number ``instances``/``inputs`` array
    becomes a float64 array directly instead of a Python list per row and number: on a
    batch of 32 faces that is 2 ms instead of 25, held under the GIL. Anything else takes
    the standard library's path (and its error messages).
    """
    try:
        doc = _parse(body)
    except (ValueError, TypeError, UnicodeDecodeError):
        return json.loads(body)
    if not isinstance(doc, simdjson.Object):
        return json.loads(body)
    parsed: dict[str, Any] = {}
    for key in doc.keys():
        value = doc[key]  # lazy: items() would build Python lists
        array = None
        if key in TENSOR_KEYS and isinstance(value, simdjson.Array):
            array = numeric_array(value, functools.partial(_body_is_rectangular, body, doc, key))
        if array is not None:
            parsed[key] = array
        elif isinstance(value, simdjson.Object):
            parsed[key] = value.as_dict()
        elif isinstance(value, simdjson.Array):
            parsed[key] = value.as_list()
        else:
            parsed[key] = value
    return parsed


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
    if not row:
        return {"outputs": {k: _jsonable(v) for k, v in outputs.items()}}
    names = sorted(outputs)
    n = len(next(iter(outputs.values())))
    columns = {k: _jsonable(outputs[k]) for k in names}
    if len(names) == 1:
        return {"predictions": columns[names[0]]}
    return {"predictions": [{k: columns[k][i] for k in names} for i in range(n)]}


def metadata_response(store: ModelStore, loaded: LoadedVersion) -> dict[str, Any]:
    defs = get_model_metadata_pb2.SignatureDefMap(signature_def=loaded.signature_defs)
    return {
        "model_spec": {"name": store.name, "signature_name": "", "version": str(loaded.version)},
        "metadata": {"signature_def": json_format.MessageToDict(
            defs, preserving_proto_field_name=True)},
    }


def create_app(stores: dict[str, ModelStore],
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Starlette:
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

    async def read_json(request: Request) -> Any:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_body_bytes:
            raise ServingError(413, f"request body of {int(length):,} bytes exceeds the "
                                    f"limit of {max_body_bytes:,} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                raise ServingError(413, f"request body exceeds the limit of "
                                        f"{max_body_bytes:,} bytes")
        try:
            return parse_json(bytes(body))  # whatever the Content-Type, as TF Serving
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ServingError(400, f"JSON Parse error: {exc}") from exc

    async def predict(request: Request) -> JSONResponse:
        store = store_for(request)
        loaded = store.get(**selector(request))
        body = await read_json(request)
        if not isinstance(body, dict):
            raise ServingError(400, "the request body must be a JSON object")
        signature = body.get("signature_name", SIGNATURE_PIXELS)
        if not isinstance(signature, str) or signature not in loaded.signatures:
            raise ServingError(400, f'Serving signature name: "{signature}" not found in '
                               f"signature def (has: {', '.join(sorted(loaded.signatures))})")
        _, spec = loaded.signatures[signature].structured_input_signature
        inputs, row = parse_predict_body(body, list(spec))
        outputs = await run_in_threadpool(loaded.predict, signature, inputs)
        return JSONResponse(format_predict_response(outputs, row))

    async def serving_error(request: Request, exc: ServingError) -> JSONResponse:
        return _error(exc.status, exc.message)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, f"Malformed request: {request.method} {request.url.path}")

    base = "/v1/models/{name}"
    routes = []
    for prefix in ("", "/versions/{version:int}", "/labels/{label}"):
        routes += [
            Route(base + prefix, status, methods=["GET"]),
            Route(base + prefix + "/metadata", metadata, methods=["GET"]),
            Route(base + prefix + ":predict", predict, methods=["POST"]),
        ]
    return Starlette(routes=routes, exception_handlers={ServingError: serving_error,
                                                         HTTPException: http_error})
