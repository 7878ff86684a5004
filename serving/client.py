"""Small clients for TF Serving's REST and gRPC APIs (the local server or the real one).

    rest = RestClient("http://127.0.0.1:8501", "fer")
    rest.predict_pixels(faces)            # float [N,48,48,1] or uint8 [N,48,48], 0-255
    rest.predict_images([jpeg_bytes])     # encoded images, any size
    rest.predict_pixels(faces, tta=True)  # the TTA signature: averaged views, slower
    rest.explain_pixels(faces)            # + "heatmaps" [N,K,48,48]: Grad-CAM per class
    rest.class_names()                    # the model's label set: ("angry", ..., "neutral")
    grpc_client = GrpcClient("127.0.0.1:8500", "fer")
    local = LocalClient("serving/model/fer/1")   # in-process, no server

The predictions return ``{"probabilities": float32 [N,K], "class_id": int64 [N],
"class_name": [N] str}``, K the size of the model's label set (``class_names()``);
the remote ones raise :class:`ClientError` with the server's message on failure. Only
the gRPC and in-process clients load TensorFlow (the gRPC stubs' protos live in it): a REST
client needs requests and numpy.

Length: three clients of one contract (REST, gRPC, in-process) side by side, each a thin
mapping of the same calls (predict, TTA, explain, class names) onto its transport.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import requests

from serving.contract import (
    CLASS_ID,
    CLASS_NAME,
    FACE_SHAPE,
    HEATMAPS,
    IMAGE_SIZE,
    IMAGES_INPUT,
    PIXELS_INPUT,
    PROBABILITIES,
    SIGNATURE_CLASS_NAMES,
    SIGNATURE_EXPLAIN,
    SIGNATURE_PIXELS,
    served_class_names,
    signature_name,
)
from serving.limits import Limits, ServingError


class ClientError(Exception):
    """The server refused or could not be reached; ``status`` is the HTTP or gRPC code."""

    def __init__(self, message: str, status: Any = None):
        super().__init__(message)
        self.status = status


def as_pixels(faces: np.ndarray) -> np.ndarray:
    """uint8/float [N,48,48] or [N,48,48,1] -> float32 [N,48,48,1] (the ``pixels`` input)."""
    faces = np.asarray(faces, dtype=np.float32)
    if faces.ndim == 3:
        faces = faces[..., None]
    if faces.ndim != 4 or faces.shape[1:] != FACE_SHAPE:
        raise ValueError(f"faces must be [N,{IMAGE_SIZE},{IMAGE_SIZE}] or "
                         f"[N,{IMAGE_SIZE},{IMAGE_SIZE},1], got {faces.shape}")
    return faces


def _result(outputs: dict[str, Any]) -> dict[str, np.ndarray]:
    result = {
        PROBABILITIES: np.asarray(outputs[PROBABILITIES], dtype=np.float32),
        CLASS_ID: np.asarray(outputs[CLASS_ID], dtype=np.int64),
        CLASS_NAME: [n.decode() if isinstance(n, bytes) else str(n)
                     for n in np.asarray(outputs[CLASS_NAME], dtype=object).ravel()],
    }
    if HEATMAPS in outputs:
        result[HEATMAPS] = np.asarray(outputs[HEATMAPS], dtype=np.float32)
    return result


def probability_width(signature_defs: dict[str, Any]) -> int | None:
    """The class axis of ``serving_default``'s probabilities in a REST metadata response's
    signature definitions, or ``None`` when it does not say."""
    try:
        dims = signature_defs[SIGNATURE_PIXELS]["outputs"][PROBABILITIES]["tensor_shape"]["dim"]
        width = int(dims[-1]["size"])
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return width if width > 0 else None


class _LabelSet:
    """``class_names()`` for the clients: the label set of the model they call, asked once
    through the contract (the metadata's output width, the ``class_names`` signature)."""

    _classes: tuple[str, ...] | None = None

    def _width_and_lookup(self) -> tuple[int | None, bool]:
        raise NotImplementedError

    def _lookup(self, ids: np.ndarray) -> list[str]:
        raise NotImplementedError

    def class_names(self, fresh: bool = False) -> tuple[str, ...]:
        """The model's class names in id order: its ``class_names`` signature's answer for
        ids 0..K-1 (K its output width); FER2013's for a model without it (the bundled one).
        Asked once, or again with ``fresh`` (a new version may have been loaded)."""
        if self._classes is None or fresh:
            self._classes = self._names(*self._width_and_lookup())
        return self._classes

    def _names(self, width: int | None, lookup: bool) -> tuple[str, ...]:
        named = None
        if lookup and width:
            ids = np.arange(width, dtype=np.int64)
            try:
                named = self._lookup(ids)
            except ClientError as exc:
                if getattr(exc.status, "name", exc.status) not in (400, "INVALID_ARGUMENT"):
                    raise
                # a server whose batch limit is below K: one id per request
                named = [self._lookup(ids[i:i + 1])[0] for i in range(width)]
        return served_class_names(width, named)


def _proto_width(signature_defs: Any) -> int | None:
    """:func:`probability_width` for protobuf signature definitions (a map of name ->
    ``SignatureDef``, as gRPC metadata and a loaded SavedModel give them)."""
    if SIGNATURE_PIXELS not in signature_defs:
        return None
    outputs = signature_defs[SIGNATURE_PIXELS].outputs
    dims = outputs[PROBABILITIES].tensor_shape.dim if PROBABILITIES in outputs else []
    return int(dims[-1].size) if dims and dims[-1].size > 0 else None


class RestClient(_LabelSet):
    """A client of TF Serving's REST API at ``url`` for the model ``model_name``: its latest
    version, or the ``version`` or ``label`` named."""

    def __init__(self, url: str, model_name: str = "fer", version: int | None = None,
                 label: str | None = None, timeout: float = 30.0,
                 session: requests.Session | None = None):
        self.base = f"{url.rstrip('/')}/v1/models/{model_name}"
        if version is not None:
            self.base += f"/versions/{version}"
        elif label:
            self.base += f"/labels/{label}"
        self.timeout = timeout
        self.session = session or requests.Session()

    def _call(self, method: str, suffix: str, body: Any = None) -> dict[str, Any]:
        url = self.base + suffix
        try:
            response = self.session.request(method, url, json=body, timeout=self.timeout)
        except requests.RequestException as exc:
            raise ClientError(f"cannot reach {url}: {exc}") from exc
        try:
            payload = response.json()
        except ValueError:
            payload = {"error": response.text[:200]}
        if response.status_code != 200:
            raise ClientError(f"{method} {url} -> {response.status_code}: "
                              f"{payload.get('error', payload)}", response.status_code)
        return payload

    def status(self) -> list[dict[str, Any]]:
        """The model's version statuses (the ``model_version_status`` list)."""
        return self._call("GET", "")["model_version_status"]

    def metadata(self) -> dict[str, Any]:
        """The model's metadata response, with its signature definitions."""
        return self._call("GET", "/metadata")

    def _width_and_lookup(self) -> tuple[int | None, bool]:
        return self._width_and_lookup_in(self.metadata())

    @staticmethod
    def _width_and_lookup_in(metadata: dict[str, Any]) -> tuple[int | None, bool]:
        defs = metadata["metadata"]["signature_def"]["signature_def"]
        return probability_width(defs), SIGNATURE_CLASS_NAMES in defs

    def class_names_in(self, metadata: dict[str, Any]) -> tuple[str, ...]:
        """:meth:`class_names` for a :meth:`metadata` response already at hand (asked
        again, not from the cache: it may be a new version's)."""
        self._classes = self._names(*self._width_and_lookup_in(metadata))
        return self._classes

    def _lookup(self, ids: np.ndarray) -> list[str]:
        body = {"signature_name": SIGNATURE_CLASS_NAMES, "instances": ids.tolist()}
        return [str(n) for n in self._call("POST", ":predict", body)["predictions"]]

    def predict_pixels(self, faces: np.ndarray, tta: bool = False) -> dict[str, np.ndarray]:
        """Predictions for 48x48 faces (see :func:`as_pixels`) through the ``serving_default``
        signature, or ``serving_tta`` (the TTA average) with ``tta``."""
        body = {"signature_name": signature_name(False, tta),
                "inputs": as_pixels(faces).tolist()}
        return _result(self._call("POST", ":predict", body)["outputs"])

    def explain_pixels(self, faces: np.ndarray) -> dict[str, np.ndarray]:
        """Predictions and Grad-CAM ``heatmaps`` [N,7,48,48] for 48x48 faces, through the
        ``explain`` signature."""
        body = {"signature_name": SIGNATURE_EXPLAIN, "inputs": as_pixels(faces).tolist()}
        return _result(self._call("POST", ":predict", body)["outputs"])

    def predict_images(self, images: list[bytes], tta: bool = False) -> dict[str, np.ndarray]:
        """Predictions for encoded images of any size, sent as base64, through the
        ``predict_images`` signature, or ``predict_images_tta`` with ``tta``."""
        body = {"signature_name": signature_name(True, tta),
                "instances": [{"b64": base64.b64encode(b).decode()} for b in images]}
        rows = self._call("POST", ":predict", body)["predictions"]
        return _result({k: [r[k] for r in rows] for k in rows[0]})


class GrpcClient(_LabelSet):
    """A client of TF Serving's gRPC API at ``target`` (``host:port``) for the model
    ``model_name``: its latest version, or the ``version`` or ``label`` named."""

    def __init__(self, target: str, model_name: str = "fer", version: int | None = None,
                 label: str | None = None, timeout: float = 30.0):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.channel = grpc.insecure_channel(
            target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_name, self.version, self.label = model_name, version, label
        self.timeout = timeout

    def _spec(self, spec, signature: str = "") -> None:
        spec.name = self.model_name
        if signature:
            spec.signature_name = signature
        if self.version is not None:
            spec.version.value = self.version
        elif self.label:
            spec.version_label = self.label

    def _predict(self, signature: str, input_name: str, value: Any,
                 names_only: bool = False) -> Any:
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, signature)
        request.inputs[input_name].CopyFrom(tf.make_tensor_proto(value))
        try:
            response = self.stub.Predict(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise ClientError(f"gRPC Predict failed: {exc.code().name}: {exc.details()}",
                              exc.code()) from exc
        if names_only:
            return [n.decode() for n in tf.make_ndarray(response.outputs[CLASS_NAME])]
        return _result({k: tf.make_ndarray(v) for k, v in response.outputs.items()})

    def predict_pixels(self, faces: np.ndarray, tta: bool = False) -> dict[str, np.ndarray]:
        """Predictions for 48x48 faces (see :func:`as_pixels`) through the ``serving_default``
        signature, or ``serving_tta`` with ``tta``."""
        return self._predict(signature_name(False, tta), PIXELS_INPUT, as_pixels(faces))

    def explain_pixels(self, faces: np.ndarray) -> dict[str, np.ndarray]:
        """Predictions and Grad-CAM ``heatmaps`` [N,7,48,48] through ``explain``."""
        return self._predict(SIGNATURE_EXPLAIN, PIXELS_INPUT, as_pixels(faces))

    def predict_images(self, images: list[bytes], tta: bool = False) -> dict[str, np.ndarray]:
        """Predictions for encoded images of any size through the ``predict_images``
        signature, or ``predict_images_tta`` with ``tta``."""
        return self._predict(signature_name(True, tta), IMAGES_INPUT, images)

    def metadata(self) -> Any:
        """The model's ``GetModelMetadata`` response, with its signature definitions."""
        import grpc
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec)
        try:
            return self.stub.GetModelMetadata(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise ClientError(f"gRPC GetModelMetadata failed: {exc.code().name}: "
                              f"{exc.details()}", exc.code()) from exc

    def _width_and_lookup(self) -> tuple[int | None, bool]:
        from tensorflow_serving.apis import get_model_metadata_pb2

        defs = get_model_metadata_pb2.SignatureDefMap()
        self.metadata().metadata["signature_def"].Unpack(defs)
        return _proto_width(defs.signature_def), SIGNATURE_CLASS_NAMES in defs.signature_def

    def _lookup(self, ids: np.ndarray) -> list[str]:
        return self._predict(SIGNATURE_CLASS_NAMES, CLASS_ID, ids, names_only=True)

    def close(self) -> None:
        """Close the gRPC channel."""
        self.channel.close()


class LocalClient(_LabelSet):
    """The same calls on a SavedModel version directory loaded in this process."""

    def __init__(self, version_dir: str | Path):
        path = Path(version_dir)
        if not (path / "saved_model.pb").is_file():
            raise ClientError(f"{path} is not a SavedModel version directory "
                              "(no saved_model.pb)")
        from serving.model_store import load_version

        self.version_dir = path
        self.model = load_version(str(path), int(path.name) if path.name.isdigit() else 0)

    def _width_and_lookup(self) -> tuple[int | None, bool]:
        defs = self.model.signature_defs
        return _proto_width(defs), SIGNATURE_CLASS_NAMES in defs

    def _lookup(self, ids: np.ndarray) -> list[str]:
        out = self.model.predict(SIGNATURE_CLASS_NAMES, {CLASS_ID: ids})
        return [n.decode() if isinstance(n, bytes) else str(n) for n in out[CLASS_NAME]]

    def _predict(self, signature: str, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """The signature's outputs for ``inputs`` (one input), run in batches of the
        server's default ``max_batch_size``."""
        ((name, values),) = inputs.items()
        step = Limits().max_batch_size
        try:
            parts = [self.model.predict(signature, {name: values[start:start + step]})
                     for start in range(0, len(values) or 1, step)]
        except ServingError as exc:
            raise ClientError(str(exc), exc.status) from exc
        return _result({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})

    def predict_pixels(self, faces: np.ndarray, tta: bool = False) -> dict[str, np.ndarray]:
        """Predictions for 48x48 faces (see :func:`as_pixels`) through the ``serving_default``
        signature, or ``serving_tta`` with ``tta``."""
        return self._predict(signature_name(False, tta), {PIXELS_INPUT: as_pixels(faces)})

    def explain_pixels(self, faces: np.ndarray) -> dict[str, np.ndarray]:
        """Predictions and Grad-CAM ``heatmaps`` [N,7,48,48] through ``explain``."""
        return self._predict(SIGNATURE_EXPLAIN, {PIXELS_INPUT: as_pixels(faces)})

    def predict_images(self, images: list[bytes], tta: bool = False) -> dict[str, np.ndarray]:
        """Predictions for encoded images of any size through the ``predict_images``
        signature, or ``predict_images_tta`` with ``tta``."""
        return self._predict(signature_name(True, tta), {IMAGES_INPUT: list(images)})
