"""TF Serving's gRPC API over a :class:`ModelStore`: ``PredictionService.Predict`` and
``GetModelMetadata``, and ``ModelService.GetModelStatus``, on the servicer classes that
``tensorflow-serving-api`` generates, so the stock stubs work unchanged."""

from __future__ import annotations

from concurrent import futures

import grpc
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
from serving.model_store import LoadedVersion, ModelStore, ServingError

_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
          413: grpc.StatusCode.RESOURCE_EXHAUSTED}
_STATES = {"LOADING": 20, "AVAILABLE": 30, "UNLOADING": 40, "END": 50}


class _Base:
    def __init__(self, stores: dict[str, ModelStore]):
        self.stores = stores

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
        context.abort(_CODES.get(exc.status, grpc.StatusCode.UNKNOWN), exc.message)


class PredictionService(_Base, prediction_service_pb2_grpc.PredictionServiceServicer):
    """TF Serving's gRPC ``PredictionService`` (``Predict``, ``GetModelMetadata``) over the model
    stores."""

    def Predict(self, request, context):  # noqa: N802 (gRPC method name)
        try:
            store, loaded = self._loaded(request.model_spec)
            signature = request.model_spec.signature_name or SIGNATURE_PIXELS
            try:
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            except (TypeError, ValueError) as exc:
                raise ServingError(400, f"cannot read input tensors: {exc}") from exc
            outputs = loaded.predict(signature, inputs)
        except ServingError as exc:
            self._abort(context, exc)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = store.name
        response.model_spec.version.value = loaded.version
        response.model_spec.signature_name = signature
        wanted = set(request.output_filter) or set(outputs)
        for name in wanted & set(outputs):
            response.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name]))
        return response

    def GetModelMetadata(self, request, context):  # noqa: N802
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

    def GetModelStatus(self, request, context):  # noqa: N802
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
                       max_workers: int = 16) -> tuple[grpc.Server, int]:
    """A started-ready gRPC server bound to ``address``; returns it and the bound port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                         options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(stores), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(stores), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind gRPC to {address}")
    return server, port
