"""The models a local server serves: version discovery, loading, hot swap.

Like TensorFlow Serving's file-system source: every positive integer directory under the
model base path (local or ``gs://``) that holds a ``saved_model.pb`` is a version. The
version policy (``latest`` N, default 1; ``specific``; ``all``) picks which to serve. A
poller loads new versions in the background and swaps them in with one assignment, so
requests in flight finish on the version they started with and none is dropped. A version
that fails to load is reported (state ``END`` with its error) and the versions already
served stay.

Length: one job, the life of a model's versions (discover, load, warm up, swap, report),
whose parts share the store's state and lock; splitting them would spread one lock's rules
over several files.
"""

from __future__ import annotations

import gc
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from serving.contract import (
    ASSETS_EXTRA,
    PIXEL_RANGE,
    PIXELS_INPUT,
    SIGNATURE_PIXELS,
    WARMUP_FILE,
    read_labels,
)
from serving.limits import (
    Limits,
    ServingError,
    check_batch,
    check_images,
    check_numbers,
    short,
    signature_error,
)
from serving.storage import gcs_client, is_gcs_uri, local_versions, split_gcs_uri

log = logging.getLogger(__name__)
DEFAULT_LIMITS = Limits()


@dataclass
class VersionPolicy:
    """Which versions to serve: the ``num_versions`` latest (``latest``), the listed ``versions``
    (``specific``), or every one (``all``)."""

    kind: str = "latest"  # latest | specific | all
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def choose(self, available: list[int]) -> set[int]:
        """The versions to serve out of the ``available`` ones."""
        if self.kind == "all":
            return set(available)
        if self.kind == "specific":
            return set(self.versions) & set(available)
        return set(sorted(available)[-self.num_versions:])


@dataclass
class LoadedVersion:
    """One loaded SavedModel version: its signatures (callable and as definitions) and its label
    names."""

    version: int
    path: str
    signatures: dict[str, Any]  # name -> concrete function
    signature_defs: dict[str, Any]  # name -> SignatureDef proto
    labels: list[str]
    _module: Any = field(repr=False, default=None)  # keeps the loaded variables alive

    def predict(self, signature_name: str, inputs: dict[str, Any],
                limits: Limits = DEFAULT_LIMITS) -> dict[str, np.ndarray]:
        """Run the signature ``signature_name`` on ``inputs`` (input name -> values); return its
        outputs as arrays. Raises :class:`ServingError` (400) for an unknown signature or bad
        inputs: wrong names, types or shapes, a batch over ``limits.max_batch_size``, values
        that are not finite or (pixels) outside 0-255, images whose headers promise more
        pixels than the limits allow."""
        if signature_name not in self.signatures:
            raise signature_error(signature_name, self.signatures)
        fn = self.signatures[signature_name]
        _, expected = fn.structured_input_signature
        missing = sorted(set(expected) - set(inputs))
        extra = sorted(set(inputs) - set(expected))
        if missing or extra:
            raise ServingError(400, f"signature {signature_name!r} takes inputs "
                               f"{sorted(expected)}; missing {missing}, unexpected {extra}")
        tensors = {}
        for name, spec in expected.items():
            tensors[name] = _to_tensor(name, inputs[name], spec, limits)
        try:
            outputs = fn(**tensors)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as exc:
            raise ServingError(400, tf_error_message(exc.message)) from exc
        except tf.errors.ResourceExhaustedError as exc:
            raise ServingError(429, f"out of memory: {tf_error_message(exc.message)}") from exc
        return {k: v.numpy() for k, v in outputs.items()}


def tf_error_message(text: str) -> str:
    """The line of a TF runtime error that names the problem, without graph boilerplate."""
    boilerplate = ("Graph execution error", "Detected at node", "<stack traces", "\t [[", "[[")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(boilerplate)]
    return (useful or lines or ["prediction failed"])[0]


_TYPE_NAMES = {bool: "true/false", type(None): "null", str: "a string", dict: "an object",
               list: "a list"}


def _numbers(name: str, value: Any) -> np.ndarray:
    """``value`` (an array, or nested lists from JSON) as a real-number array; refuses
    booleans, nulls, strings, objects, complex numbers and ragged lists by name."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "iuf":
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind != "O":
        raise ServingError(400, f"input {name!r}: expects real numbers, got {value.dtype.name}")
    try:
        array = np.array(value, dtype=object)
    except ValueError as exc:  # ragged
        raise ServingError(400, f"input {name!r}: not a rectangular array of numbers "
                                f"({str(exc).split(';')[0]})") from None
    odd = {t for t in map(type, array.ravel().tolist()) if t not in (int, float)}
    if list in odd:
        raise ServingError(400, f"input {name!r}: not a rectangular array of numbers")
    if odd:
        kinds = ", ".join(sorted(_TYPE_NAMES.get(t, t.__name__) for t in odd))
        raise ServingError(400, f"input {name!r}: expects numbers, got {kinds}")
    try:
        return array.astype(np.float64)
    except OverflowError:
        raise ServingError(400, f"input {name!r}: a number is out of range") from None


def _to_tensor(name: str, value: Any, spec: tf.TensorSpec, limits: Limits) -> tf.Tensor:
    if spec.dtype == tf.string:
        array = np.asarray(value, dtype=object)
        items = array.ravel().tolist() if array.ndim else [value]
        if not all(isinstance(v, (bytes, str)) for v in items):
            raise ServingError(400, f"input {name!r}: expects strings (encoded images; over "
                                    f'REST as {{"b64": ...}}), got other values')
        check_batch(name, len(array) if array.ndim else 1, limits)
        check_images(name, [v.encode("utf-8", "surrogatepass") if isinstance(v, str) else v
                            for v in items], limits)
        tensor = tf.constant(array.tolist() if array.ndim else [value], dtype=tf.string)
    else:
        array = _numbers(name, value)
        if array.ndim:
            check_batch(name, array.shape[0], limits)
        if spec.dtype.is_integer and array.dtype.kind == "f":
            if not np.array_equal(array, np.round(array)):
                raise ServingError(400, f"input {name!r}: expects integers")
            info = np.iinfo(spec.dtype.as_numpy_dtype)
            check_numbers(name, array, (info.min, info.max))
        else:
            check_numbers(name, array, PIXEL_RANGE if name == PIXELS_INPUT else None)
        converted = array.astype(spec.dtype.as_numpy_dtype, copy=False)
        check_numbers(name, converted, None)  # finite after the cast (1e39 -> inf in float32)
        tensor = tf.constant(converted)
    if not spec.shape.is_compatible_with(tensor.shape):
        raise ServingError(400, f"input {name!r} has shape {tensor.shape.as_list()}, "
                           f"expected {spec.shape.as_list()} (None: any size)")
    return tensor


class _Local:
    def __init__(self, base: str):
        self.base = Path(base)

    def versions(self) -> list[int]:
        return local_versions(self.base)

    def materialize(self, version: int, cache: Path) -> str:
        return str(self.base / str(version))

    def fingerprint(self, version: int) -> tuple:
        """What changes when the version's files do: each file's path, inode, size and
        mtime (a directory replaced by a copy has new inodes)."""
        root = self.base / str(version)
        return tuple(sorted((str(p.relative_to(root)), st.st_ino, st.st_size, st.st_mtime_ns)
                            for p in root.rglob("*") if p.is_file() for st in [p.stat()]))


class _GCS:
    def __init__(self, base: str):
        bucket, prefix = split_gcs_uri(base.rstrip("/"))
        self.bucket = gcs_client().bucket(bucket)
        self.prefix = prefix + "/" if prefix else ""

    def versions(self) -> list[int]:
        tops = set()
        for blob in self.bucket.list_blobs(prefix=self.prefix):
            rel = blob.name[len(self.prefix):]
            if rel.count("/") == 1 and rel.endswith("/saved_model.pb"):
                tops.add(rel.split("/")[0])
        return sorted(int(t) for t in tops if t.isdigit() and int(t) > 0)

    def materialize(self, version: int, cache: Path) -> str:
        """Download the version into the local cache (TF reads it from there)."""
        target = cache / str(version)
        if target.exists():
            shutil.rmtree(target)
        prefix = f"{self.prefix}{version}/"
        for blob in self.bucket.list_blobs(prefix=prefix):
            dest = target / blob.name[len(prefix):]
            dest.parent.mkdir(parents=True, exist_ok=True)
            blob.download_to_filename(str(dest))
        return str(target)

    def fingerprint(self, version: int) -> tuple:
        """What changes when the version's objects do: each object's name and generation."""
        return tuple(sorted((b.name, b.generation)
                            for b in self.bucket.list_blobs(prefix=f"{self.prefix}{version}/")))


def load_version(path: str, version: int) -> LoadedVersion:
    """Load one SavedModel version and replay its TF Serving warm-up requests."""
    module = tf.saved_model.load(path)
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    defs = {k: v for k, v in proto.meta_graphs[0].signature_def.items()
            if not k.startswith("__")}
    labels = list(read_labels(path))
    loaded = LoadedVersion(version, path, dict(module.signatures), defs, labels, module)
    warmed = replay_warmup(loaded)
    log.info("loaded version %d from %s (%d warm-up requests)", version, path, warmed)
    return loaded


def replay_warmup(loaded: LoadedVersion) -> int:
    """Replay the warm-up requests saved with the version (TF Serving's file in ``assets.extra``)
    through it; return how many ran (0 when it has none)."""
    from tensorflow_serving.apis import prediction_log_pb2

    path = Path(loaded.path) / ASSETS_EXTRA / WARMUP_FILE
    if not path.is_file():
        return 0
    count = 0
    for raw in tf.data.TFRecordDataset(str(path)):
        request = prediction_log_pb2.PredictionLog.FromString(raw.numpy()).predict_log.request
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        loaded.predict(request.model_spec.signature_name or SIGNATURE_PIXELS, inputs)
        count += 1
    return count


def settle_heap() -> None:
    """Collect what the swap freed, then exempt the long-lived rest from garbage collection.

    A loaded SavedModel adds hundreds of thousands of Python objects that live as long as
    the version does. Left in the collector's generations, each full collection, which the
    many lists of a parsed JSON batch trigger, walks all of them: about 150 ms a batch-32
    REST request on a 2-core machine instead of 40. ``gc.freeze`` moves them to the permanent
    generation; ``gc.unfreeze`` first lets unloaded versions' cycles be collected.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ModelStore:
    """The versions of one model that the server serves, kept up to date by polling."""

    def __init__(self, model_name: str, base_path: str, policy: VersionPolicy | None = None,
                 version_labels: dict[str, int] | None = None, poll_seconds: float = 1.0,
                 on_event: Callable[[str, str, int], None] | None = None):
        self.name = model_name
        self.base_path = base_path
        self.policy = policy or VersionPolicy()
        self.version_labels = dict(version_labels or {})
        self.poll_seconds = poll_seconds
        self._source = _GCS(base_path) if is_gcs_uri(base_path) else _Local(base_path)
        self._cache = Path(tempfile.mkdtemp(prefix=f"fer-serve-{model_name}-"))
        self._served: dict[int, LoadedVersion] = {}
        self._states: dict[int, dict[str, Any]] = {}
        self._failed: dict[int, tuple] = {}  # version -> its files' fingerprint at failure
        #: called with (model name, event, versions served after it) for each ``loaded``,
        #: ``unloaded`` and ``load_failed``
        self.on_event = on_event
        self._lock = threading.Lock()  # one poll at a time; readers never wait
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- polling

    def _event(self, event: str, served: int) -> None:
        if self.on_event is not None:
            self.on_event(self.name, event, served)

    def _retryable(self, version: int) -> bool:
        """Whether ``version`` may be loaded: never failed, or its files changed since (as
        TF Serving retries a version whose files change)."""
        if version not in self._failed:
            return True
        try:
            changed = self._source.fingerprint(version) != self._failed[version]
        except OSError:  # mid-replacement: look again at the next poll
            return False
        if changed:
            log.info("version %d of %s changed since it failed to load; retrying", version,
                     self.name)
            del self._failed[version]
        return changed

    def poll(self) -> None:
        """Load the versions the policy wants, then unload the ones it no longer wants."""
        with self._lock:
            available = [v for v in self._source.versions() if self._retryable(v)]
            wanted = self.policy.choose(available)
            served = dict(self._served)
            for version in sorted(wanted - set(served), reverse=True):
                self._states[version] = {"state": "LOADING", "error": ""}
                before: tuple = ()
                try:
                    before = self._source.fingerprint(version)
                    loaded = load_version(self._source.materialize(version, self._cache), version)
                except Exception as exc:  # noqa: BLE001 - any load failure keeps the old version
                    try:
                        self._failed[version] = self._source.fingerprint(version)
                    except OSError:
                        self._failed[version] = before
                    self._states[version] = {"state": "END",
                                             "error": short(f"{type(exc).__name__}: {exc}")}
                    log.error("version %d of %s failed to load (%s); still serving %s", version,
                              self.name, short(str(exc)), sorted(served) or "nothing")
                    self._event("load_failed", len(served))
                    continue
                served[version] = loaded
                self._states[version] = {"state": "AVAILABLE", "error": ""}
                self._event("loaded", len(served))
            if not any(v in served for v in wanted):
                return  # nothing new loaded: keep serving what we have
            for version in set(served) - wanted:
                del served[version]
                self._states[version] = {"state": "END", "error": ""}
                log.info("unloaded version %d of %s", version, self.name)
                self._event("unloaded", len(served))
            if served != self._served:
                self._served = served  # one assignment: the swap requests see
                settle_heap()

    def start(self) -> ModelStore:
        """Load the versions to serve now, then poll for changes in a background thread; return
        the store."""
        self.poll()
        self._thread = threading.Thread(target=self._run, name=f"poll-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll()
            except Exception:
                log.exception("polling %s failed; will retry", self.base_path)

    def stop(self) -> None:
        """Stop the poller and delete the local cache of downloaded versions."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        shutil.rmtree(self._cache, ignore_errors=True)

    # ---------------------------------------------------------------- lookups

    def statuses(self, version: int | None = None) -> list[dict[str, Any]]:
        """TF Serving's status of every version seen, newest first, or of ``version`` alone;
        raises :class:`ServingError` (404) when there is none."""
        states = dict(self._states)
        if not states:
            raise ServingError(404, f"Could not find any versions of model {self.name}")
        if version is not None:
            if version not in states:
                raise ServingError(404, f"Could not find version {version} of model {self.name}")
            states = {version: states[version]}
        return [{"version": str(v), "state": s["state"],
                 "status": {"error_code": "OK" if not s["error"] else "UNKNOWN",
                            "error_message": s["error"]}}
                for v, s in sorted(states.items(), reverse=True)]

    def resolve_label(self, label: str) -> int:
        """The version the label ``label`` stands for; raises :class:`ServingError` (404) for an
        unknown label."""
        if label not in self.version_labels:
            raise ServingError(404, f"Unrecognized servable version label: {label}")
        return self.version_labels[label]

    def get(self, version: int | None = None, label: str | None = None) -> LoadedVersion:
        """The served version to answer with: ``version``, the one ``label`` stands for, or else
        the latest; raises :class:`ServingError` (404) when it is not served."""
        served = self._served
        if label is not None:
            version = self.resolve_label(label)
        if version is None:
            if not served:
                raise ServingError(404, f"Servable not found for request: Latest({self.name})")
            return served[max(served)]
        if version not in served:
            raise ServingError(404, f"Servable not found for request: Specific({self.name}, {version})")
        return served[version]

    @property
    def served_versions(self) -> list[int]:
        """The versions served now, ascending."""
        return sorted(self._served)
