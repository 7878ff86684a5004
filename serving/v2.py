"""The Open Inference Protocol (KServe V2) over the same model stores, beside TF Serving's V1.

Routes (JSON, as KServe's and Triton's clients and probes expect):

* ``GET /v2/health/live``: 200 ``{"live": true}`` while the server answers;
* ``GET /v2/health/ready``: 200 ``{"ready": true}`` when every model serves a version, else
  503 ``{"ready": false}`` (the readiness probe);
* ``GET /v2/models/{name}[/versions/{v}]``: the model's metadata (versions, platform, the
  inputs and outputs of ``serving_default``);
* ``GET /v2/models/{name}[/versions/{v}]/ready``: 200 or 503, ``{"name", "ready"}``;
* ``POST /v2/models/{name}[/versions/{v}]/infer``: ``{"inputs": [{"name", "shape",
  "datatype", "data"}], "outputs": [{"name"}]?, "parameters": {"signature_name"}?}``.

The input's name picks the signature: ``pixels`` (FP32 [N,48,48,1], values 0-255) runs
``serving_default``, ``image_bytes`` (BYTES [N], each element an encoded image in base64,
since JSON carries no raw bytes) runs ``predict_images``; ``parameters.signature_name``
names another (e.g. ``serving_tta``). The reply's tensors are flat ``data`` in row-major
order with their ``shape``, as the protocol has them.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serving.contract import IMAGES_INPUT, SIGNATURE_IMAGES, SIGNATURE_PIXELS
from serving.limits import ServingError, signature_error

if TYPE_CHECKING:
    from serving.handling import Handling
    from serving.model_store import LoadedVersion, ModelStore

#: TensorFlow dtype names and the protocol's datatypes.
DATATYPES = {"float32": "FP32", "float64": "FP64", "float16": "FP16", "int64": "INT64",
             "int32": "INT32", "int16": "INT16", "int8": "INT8", "uint8": "UINT8",
             "uint16": "UINT16", "bool": "BOOL", "string": "BYTES"}
NUMERIC = {"FP32", "FP64", "FP16", "INT64", "INT32", "INT16", "INT8", "UINT8", "UINT16",
           "UINT32", "UINT64"}


def _signature_for(input_name: str, parameters: Any) -> str:
    if isinstance(parameters, dict) and "signature_name" in parameters:
        name = parameters["signature_name"]
        if not isinstance(name, str):
            raise ServingError(400, "parameters.signature_name must be a string")
        return name
    return SIGNATURE_IMAGES if input_name == IMAGES_INPUT else SIGNATURE_PIXELS


def tensor_metadata(loaded: LoadedVersion, signature: str) -> dict[str, list[dict[str, Any]]]:
    """The protocol's ``inputs`` and ``outputs`` of ``signature``: name, datatype, shape
    (-1 for any size)."""
    fn = loaded.signatures[signature]
    _, inputs = fn.structured_input_signature

    def describe(name: str, spec: Any) -> dict[str, Any]:
        return {"name": name, "datatype": DATATYPES.get(spec.dtype.name, spec.dtype.name.upper()),
                "shape": [-1 if d is None else d for d in spec.shape.as_list()]}

    return {"inputs": [describe(k, v) for k, v in sorted(inputs.items())],
            "outputs": [describe(k, v) for k, v in sorted(fn.structured_outputs.items())]}


def read_infer_request(body: Any) -> tuple[str, str, Any, list[str] | None]:
    """``(signature, input name, values, requested output names or None)`` from an infer
    body; :class:`ServingError` (400) naming what is wrong."""
    if not isinstance(body, dict):
        raise ServingError(400, "the request body must be a JSON object")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ServingError(400, "'inputs' must be a list of one tensor object (name, shape, "
                                "datatype, data)")
    tensor = inputs[0]
    missing = [k for k in ("name", "shape", "datatype", "data") if k not in tensor]
    if missing:
        raise ServingError(400, f"the input tensor lacks {', '.join(missing)}")
    name, shape, datatype, data = (tensor[k] for k in ("name", "shape", "datatype", "data"))
    if not isinstance(name, str):
        raise ServingError(400, "the input's name must be a string")
    if (not isinstance(shape, list) or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise ServingError(400, "the input's shape must be a list of non-negative integers")
    if not isinstance(data, list):
        raise ServingError(400, "the input's data must be a list")
    try:
        values = np.asarray(data, dtype=object).ravel()
    except ValueError:
        raise ServingError(400, "the input's data must be a flat or rectangular list") from None
    if values.size != math.prod(shape):
        raise ServingError(400, f"the input's data holds {values.size:,} values; its shape "
                                f"{shape} needs {math.prod(shape):,}")
    if datatype == "BYTES":
        array = [_b64(v) for v in values.tolist()]
    elif datatype in NUMERIC:
        array = values.reshape(shape)  # dtype object: the model store checks every value
    else:
        raise ServingError(400, f"datatype {str(datatype)[:20]!r} is not accepted; use FP32 "
                                f"for pixels, BYTES for images")
    outputs = body.get("outputs")
    wanted = None
    if outputs is not None:
        if not isinstance(outputs, list) or not all(
                isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
            raise ServingError(400, "'outputs' must be a list of objects with a name")
        wanted = [o["name"] for o in outputs]
    return _signature_for(name, body.get("parameters")), name, array, wanted


def _b64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ServingError(400, "BYTES data must be base64 strings (encoded images)")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ServingError(400, "BYTES data must be base64 strings (encoded images); one is "
                                "not valid base64") from None


def infer_response(model: str, version: int, request_id: Any,
                   outputs: dict[str, np.ndarray], wanted: list[str] | None) -> dict[str, Any]:
    """The protocol's reply: each (wanted) output as a flat tensor with shape and datatype."""
    names = wanted if wanted is not None else sorted(outputs)
    unknown = sorted(set(names) - set(outputs))
    if unknown:
        raise ServingError(400, f"unknown outputs {unknown}; the signature has "
                                f"{sorted(outputs)}")
    tensors = []
    for name in names:
        value = np.asarray(outputs[name])
        if value.dtype.kind in "SO":
            datatype = "BYTES"
            data = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                    for v in value.ravel().tolist()]
        else:
            datatype = DATATYPES.get(value.dtype.name, value.dtype.name.upper())
            data = value.ravel().tolist()
        tensors.append({"name": name, "shape": list(value.shape), "datatype": datatype,
                        "data": data})
    reply = {"model_name": model, "model_version": str(version), "outputs": tensors}
    if request_id is not None:
        reply["id"] = request_id
    return reply


def v2_routes(stores: dict[str, ModelStore], handling: Handling) -> list[Route]:
    """The protocol's routes over ``stores``; ``handling`` runs and counts predictions (the
    REST app's)."""

    def store_for(request: Request) -> ModelStore:
        name = request.path_params["name"]
        if name not in stores:
            raise ServingError(404, f"Could not find any versions of model {name}")
        return stores[name]

    def version_of(request: Request) -> int | None:
        version = request.path_params.get("version")
        if version is None:
            return None
        if not version.isdigit():
            raise ServingError(400, "the model version must be a positive integer")
        return int(version)

    async def live(request: Request) -> JSONResponse:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> JSONResponse:
        is_ready = all(store.served_versions for store in stores.values())
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    async def model_metadata(request: Request) -> JSONResponse:
        store = store_for(request)
        loaded = store.get(version=version_of(request))
        return JSONResponse({"name": store.name,
                             "versions": [str(v) for v in store.served_versions],
                             "platform": "tensorflow_savedmodel",
                             **tensor_metadata(loaded, SIGNATURE_PIXELS)})

    async def model_ready(request: Request) -> JSONResponse:
        store = store_for(request)
        version = version_of(request)
        is_ready = (bool(store.served_versions) if version is None
                    else version in store.served_versions)
        return JSONResponse({"name": store.name, "ready": is_ready},
                            status_code=200 if is_ready else 503)

    async def infer(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        with handling.counted("v2", name, name in stores) as call:
            store = store_for(request)
            loaded = call.loaded = store.get(version=version_of(request))
            body = await handling.read_json(request)
            signature, input_name, values, wanted = read_infer_request(body)
            if signature not in loaded.signatures:
                raise signature_error(signature, loaded.signatures)
            call.signature, call.batch = signature, len(values)
            outputs = await handling.predict(loaded, signature, {input_name: values})
            reply = infer_response(store.name, loaded.version, body.get("id"), outputs, wanted)
            return JSONResponse(reply)

    model = "/v2/models/{name}"
    routes = [Route("/v2/health/live", live, methods=["GET"]),
              Route("/v2/health/ready", ready, methods=["GET"])]
    for prefix in (model, model + "/versions/{version}"):
        routes += [Route(prefix, model_metadata, methods=["GET"]),
                   Route(prefix + "/ready", model_ready, methods=["GET"]),
                   Route(prefix + "/infer", infer, methods=["POST"])]
    return routes
