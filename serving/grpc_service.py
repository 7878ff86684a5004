"""TF Serving's gRPC API over a :class:`ModelStore`: ``PredictionService.Predict`` and
``GetModelMetadata``, and ``ModelService.GetModelStatus``, on the servicer classes that
``tensorflow-serving-api`` generates, so the stock stubs work unchanged.

A request's tensors are checked before any is built: the dtype must be one the signature
can take, the shape within the batch limit and no larger than the signature's faces, the
values as many as the shape holds (a 60-byte request must not ask for a 2 GB tensor).
Errors carry TF Serving's codes (``INVALID_ARGUMENT``, ``NOT_FOUND``, ``UNAVAILABLE`` when
the server is busy), never ``UNKNOWN``.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)

from serving.contract import SIGNATURE_PIXELS
from serving.limits import (
    InferenceGate,
    Limits,
    ServingError,
    check_batch,
    signature_error,
)
from serving.model_store import LoadedVersion, ModelStore
from serving.telemetry import RequestRecord, Telemetry

log = logging.getLogger(__name__)
_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
          408: grpc.StatusCode.DEADLINE_EXCEEDED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
          429: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE}
#: The dtypes a request may send for a signature's float input (converted) or string one.
_REAL = {tf.float16, tf.bfloat16, tf.float32, tf.float64, tf.int8, tf.int16, tf.int32,
         tf.int64, tf.uint8, tf.uint16, tf.uint32, tf.uint64}


def _values_count(proto: Any, dtype: tf.DType) -> int | None:
    """How many values a TensorProto carries (``None`` when they are packed in
    ``tensor_content``)."""
    if proto.tensor_content:
        return None
    if dtype == tf.string:
        return len(proto.string_val)
    field = {tf.float32: "float_val", tf.float64: "double_val", tf.int64: "int64_val",
             tf.uint32: "uint32_val", tf.uint64: "uint64_val",
             tf.float16: "half_val", tf.bfloat16: "half_val"}.get(dtype, "int_val")
    return len(getattr(proto, field))


def tensor_from_proto(name: str, proto: Any, spec: tf.TensorSpec, limits: Limits) -> np.ndarray:
    """A request's TensorProto as an array, checked before it is built: dtype, shape
    (batch within ``limits``, no larger than ``spec`` allows), values count."""
    try:
        dtype = tf.dtypes.as_dtype(proto.dtype)
    except (TypeError, KeyError, ValueError):
        raise ServingError(400, f"input {name!r}: unknown dtype enum {proto.dtype}") from None
    accepted = {tf.string} if spec.dtype == tf.string else _REAL
    if dtype not in accepted:
        raise ServingError(400, f"input {name!r}: dtype {dtype.name} is not accepted; the "
                                f"signature takes {spec.dtype.name}")
    if proto.tensor_shape.unknown_rank:
        raise ServingError(400, f"input {name!r}: the tensor's shape is unknown")
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise ServingError(400, f"input {name!r}: negative dimension in shape {dims}")
    if dims:
        check_batch(name, dims[0], limits)
    expected = spec.shape.as_list()
    if len(dims) != len(expected) or any(e is not None and e != d
                                         for e, d in zip(expected, dims, strict=False)):
        raise ServingError(400, f"input {name!r} has shape {dims}, expected {expected} "
                                f"(None: any size)")
    size = math.prod(dims)
    count = _values_count(proto, dtype)
    if count is None:
        if len(proto.tensor_content) != size * dtype.size:
            raise ServingError(400, f"input {name!r}: tensor_content holds "
                                    f"{len(proto.tensor_content):,} bytes; shape {dims} of "
                                    f"{dtype.name} needs {size * dtype.size:,}")
    elif count not in (size, 1) or (count == 1 and size == 0):
        raise ServingError(400, f"input {name!r}: {count:,} values for shape {dims} "
                                f"({size:,} values)")
    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ServingError(400, f"input {name!r}: cannot read the tensor ({exc})") from None
_STATES = {"LOADING": 20, "AVAILABLE": 30, "UNLOADING": 40, "END": 50}


class _Base:
    def __init__(self, stores: dict[str, ModelStore], limits: Limits | None = None,
                 gate: InferenceGate | None = None, telemetry: Telemetry | None = None):
        self.stores = stores
        self.limits = limits or Limits()
        self.gate = gate or InferenceGate(self.limits)
        self.telemetry = telemetry or Telemetry()

    def _store(self, spec) -> ModelStore:
        if spec.name not in self.stores:
            raise ServingError(404, f"Could not find any versions of model {spec.name}")
        return self.stores[spec.name]

    def _loaded(self, spec) -> tuple[ModelStore, LoadedVersion]:
        store = self._store(spec)
        version = spec.version.value if spec.HasField("version") else None
        label = spec.version_label or None
        return store, store.get(version=version, label=label)

    @staticmethod
    def _abort(context: grpc.ServicerContext, exc: ServingError):
        context.abort(_CODES.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)


class PredictionService(_Base, prediction_service_pb2_grpc.PredictionServiceServicer):
    """TF Serving's gRPC ``PredictionService`` (``Predict``, ``GetModelMetadata``) over the model
    stores."""

    def Predict(self, request, context):
        started, loaded, batch, status = time.perf_counter(), None, 0, grpc.StatusCode.INTERNAL
        signature = request.model_spec.signature_name or SIGNATURE_PIXELS
        try:
            store, loaded = self._loaded(request.model_spec)
            response, batch = self._predict(request, store, loaded, signature)
            status = grpc.StatusCode.OK
            return response
        except ServingError as exc:
            status = _CODES.get(exc.status, grpc.StatusCode.INTERNAL)
            context.abort(status, exc.message)
        except Exception as exc:
            log.exception("internal error in Predict")
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")
        finally:
            if request.model_spec.name in self.stores:
                self.telemetry.record(RequestRecord(
                    "grpc", request.model_spec.name, str(loaded.version) if loaded else "",
                    signature, status.name, (time.perf_counter() - started) * 1000, batch))

    def _predict(self, request, store: ModelStore, loaded: LoadedVersion,
                 signature: str) -> tuple[Any, int]:
        """The response to a Predict request, and its batch size."""
        if signature not in loaded.signatures:
            raise signature_error(signature, loaded.signatures)
        _, specs = loaded.signatures[signature].structured_input_signature
        unknown = sorted(set(request.inputs) - set(specs))
        if unknown:
            raise ServingError(400, f"signature {signature!r} takes inputs {sorted(specs)}; "
                                    f"unexpected {[u[:32] for u in unknown[:5]]}")
        wanted = list(request.output_filter)
        outputs_known = loaded.signatures[signature].structured_outputs
        bad = sorted(set(wanted) - set(outputs_known))
        if bad:
            raise ServingError(400, f"output_filter names unknown outputs "
                                    f"{[b[:32] for b in bad[:5]]}; the signature has "
                                    f"{sorted(outputs_known)}")
        inputs = {k: tensor_from_proto(k, v, specs[k], self.limits)
                  for k, v in request.inputs.items()}
        batch = max((len(v) for v in inputs.values() if np.ndim(v)), default=0)
        with self.gate.slot():
            outputs = loaded.predict(signature, inputs, self.limits)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = store.name
        response.model_spec.version.value = loaded.version
        response.model_spec.signature_name = signature
        for name in (set(wanted) or set(outputs)):
            response.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name]))
        return response, batch

    def GetModelMetadata(self, request, context):
        try:
            if list(request.metadata_field) != ["signature_def"]:
                raise ServingError(400, "metadata_field must be ['signature_def'], got "
                                        f"{list(request.metadata_field)}")
            store, loaded = self._loaded(request.model_spec)
        except ServingError as exc:
            self._abort(context, exc)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = store.name
        response.model_spec.version.value = loaded.version
        defs = get_model_metadata_pb2.SignatureDefMap(signature_def=loaded.signature_defs)
        response.metadata["signature_def"].Pack(defs)
        return response


class ModelService(_Base, model_service_pb2_grpc.ModelServiceServicer):
    """TF Serving's gRPC ``ModelService`` (``GetModelStatus``) over the model stores."""

    def GetModelStatus(self, request, context):
        try:
            store = self._store(request.model_spec)
            spec = request.model_spec
            version = spec.version.value if spec.HasField("version") else None
            if spec.version_label:
                version = store.resolve_label(spec.version_label)
            statuses = store.statuses(version)
        except ServingError as exc:
            self._abort(context, exc)
        response = get_model_status_pb2.GetModelStatusResponse()
        for s in statuses:
            response.model_version_status.add(
                version=int(s["version"]), state=_STATES[s["state"]],
                status=status_pb2.StatusProto(error_message=s["status"]["error_message"]))
        return response


def create_grpc_server(stores: dict[str, ModelStore], address: str,
                       limits: Limits | None = None, gate: InferenceGate | None = None,
                       telemetry: Telemetry | None = None,
                       max_workers: int = 16) -> tuple[grpc.Server, int]:
    """A started-ready gRPC server bound to ``address``; returns it and the bound port.
    Requests are held to ``limits`` (a message at most ``max_body_bytes``), inferences go
    through ``gate`` and are counted by ``telemetry``."""
    limits = limits or Limits()
    shared = (limits, gate or InferenceGate(limits), telemetry or Telemetry())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                         options=[("grpc.max_receive_message_length", limits.max_body_bytes)],
                         maximum_concurrent_rpcs=max_workers * 4)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(stores, *shared), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(stores, *shared),
                                                              server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind gRPC to {address}")
    return server, port
