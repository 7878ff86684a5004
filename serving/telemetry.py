"""What the server tells its operator: Prometheus metrics and an optional request log.

Metrics are served in Prometheus' text format at TF Serving's path,
``/monitoring/prometheus/metrics`` on the REST port, from a registry of the server's own
(two servers in one process never mix their figures):

* ``fer_serving_requests_total{model,version,signature,api,status}``: requests answered;
  ``status`` is the HTTP code over REST and the gRPC code name over gRPC;
* ``fer_serving_request_duration_seconds{model,api}``: latency histogram, receipt to reply;
* ``fer_serving_batch_size{model,api}``: faces or images per predict request;
* ``fer_serving_inflight_requests{api}``: predict requests being answered now;
* ``fer_serving_model_events_total{model,event}``: versions ``loaded``, ``unloaded`` and
  ``load_failed``; ``fer_serving_model_versions{model}``: versions served now.

The request log (``--request_log_file``) is one JSON object a line per predict request:
time, api, model, version, signature, status, latency in ms, batch size. Never pixels,
images or probabilities.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

METRICS_PATH = "/monitoring/prometheus/metrics"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class RequestRecord:
    """One predict request, as the metrics count it and the request log writes it."""

    api: str  # rest | grpc | v2
    model: str
    version: str  # "" when no version was resolved
    signature: str
    status: str  # "200", "400", ... or "OK", "INVALID_ARGUMENT", ...
    latency_ms: float
    batch_size: int  # 0 when the request was refused before its inputs were read


class Telemetry:
    """The server's metrics registry and request log; thread-safe."""

    def __init__(self, request_log: str | Path | None = None):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fer_serving_requests", "Predict requests answered.",
            ["model", "version", "signature", "api", "status"], registry=self.registry)
        self.latency = Histogram(
            "fer_serving_request_duration_seconds", "Predict latency, receipt to reply.",
            ["model", "api"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch = Histogram(
            "fer_serving_batch_size", "Faces or images per predict request.",
            ["model", "api"], buckets=BATCH_BUCKETS, registry=self.registry)
        self.inflight = Gauge(
            "fer_serving_inflight_requests", "Predict requests being answered now.",
            ["api"], registry=self.registry)
        self.model_events = Counter(
            "fer_serving_model_events", "Model versions loaded, unloaded or failed to load.",
            ["model", "event"], registry=self.registry)
        self.model_versions = Gauge(
            "fer_serving_model_versions", "Versions of the model served now.",
            ["model"], registry=self.registry)
        self._log_path = Path(request_log) if request_log else None
        self._log_lock = threading.Lock()
        self._log = self._log_path.open("a", encoding="utf-8") if self._log_path else None

    def record(self, record: RequestRecord) -> None:
        """Count one answered predict request and, with a request log, write its line."""
        self.requests.labels(record.model, record.version, record.signature, record.api,
                             record.status).inc()
        self.latency.labels(record.model, record.api).observe(record.latency_ms / 1000)
        if record.batch_size:
            self.batch.labels(record.model, record.api).observe(record.batch_size)
        if self._log is not None:
            line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **asdict(record),
                               "latency_ms": round(record.latency_ms, 3)})
            with self._log_lock:
                self._log.write(line + "\n")
                self._log.flush()

    @contextmanager
    def in_flight(self, api: str) -> Iterator[None]:
        """Count a predict request as in flight for the ``with`` block."""
        gauge = self.inflight.labels(api)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def model_event(self, model: str, event: str, served: int) -> None:
        """A model store's event (``loaded``, ``unloaded``, ``load_failed``), with the number
        of versions it serves after it."""
        self.model_events.labels(model, event).inc()
        self.model_versions.labels(model).set(served)

    def close(self) -> None:
        """Close the request log."""
        if self._log is not None:
            with self._log_lock:
                self._log.close()
                self._log = None
