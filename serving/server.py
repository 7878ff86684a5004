"""fer-serve: TensorFlow Serving's REST and gRPC contract, pip-installable, serving the model
directories the pipeline deploys. Flags are named like tensorflow_model_server's:

  fer-serve                                  the model bundled with the package, as "fer"
  fer-serve --model_name=fer --model_base_path=runs/serving/fer
  fer-serve --model_config_file=serving/models.config

Both APIs listen on 127.0.0.1 unless --rest_api_host names another address (0.0.0.0 for
every interface). The limits hold for both APIs. Metrics: GET /monitoring/prometheus/metrics;
KServe V2 (Open Inference Protocol) routes under /v2. The web page for people is at / on the
REST port (--no_web_page turns it off). Quiet by default: --verbose (or
FER_VERBOSE=1) shows TensorFlow's own log lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.contract import BUNDLED_MODEL_BASE
from serving.limits import InferenceGate, Limits
from serving.storage import local_versions

if TYPE_CHECKING:  # TensorFlow loads when a server is built, not for --help
    from serving.model_store import ModelStore

log = logging.getLogger("fer-serve")


def stores_from_config(path: str | Path, poll_seconds: float) -> dict[str, ModelStore]:
    """Model stores from a TF Serving ``model_config_list`` text proto."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    from serving.model_store import ModelStore, VersionPolicy

    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(Path(path).read_text(), config)
    except (OSError, text_format.ParseError) as exc:
        raise ValueError(f"cannot read model config {path}: {exc}") from exc
    stores = {}
    for model in config.model_config_list.config:
        which = model.model_version_policy.WhichOneof("policy_choice")
        if which == "specific":
            policy = VersionPolicy("specific", versions=tuple(model.model_version_policy.specific.versions))
        elif which == "all":
            policy = VersionPolicy("all")
        else:
            n = model.model_version_policy.latest.num_versions if which == "latest" else 1
            policy = VersionPolicy("latest", num_versions=n or 1)
        base = model.base_path
        if "://" not in base and not Path(base).is_absolute():
            base = str((Path(path).parent / base).resolve())
        stores[model.name] = ModelStore(model.name, base, policy, dict(model.version_labels),
                                        poll_seconds)
    if not stores:
        raise ValueError(f"{path} configures no model")
    return stores


class _DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol with a deadline for a request's head: a connection that
    opens and sends nothing, or half a request line, is closed after ``head_timeout``
    seconds (uvicorn itself only times out idle connections between requests)."""

    head_timeout = 30.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_deadline = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def on_headers_complete(self) -> None:
        self._cancel_head_deadline()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def _cancel_head_deadline(self) -> None:
        if getattr(self, "_head_deadline", None) is not None:
            self._head_deadline.cancel()
        self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


class LocalServer:
    """REST (uvicorn) and gRPC servers over the same model stores, started in threads, held
    to the same ``limits``, sharing one inference gate and one set of metrics."""

    def __init__(self, stores: dict[str, ModelStore], host: str = "127.0.0.1",
                 rest_port: int = 8501, grpc_port: int = 8500,
                 limits: Limits | None = None, request_log: str | None = None,
                 web_page: bool = True):
        from serving.grpc_service import create_grpc_server
        from serving.rest import create_app
        from serving.telemetry import Telemetry
        from serving.web.app import ModelLink, PageBackend

        self.stores = stores
        self.host = host
        self.limits = limits or Limits()
        self.telemetry = Telemetry(request_log)
        self.gate = gate = InferenceGate(self.limits)
        for store in stores.values():
            store.on_event = self.telemetry.model_event
        self.grpc_server, self.grpc_port = create_grpc_server(
            stores, f"{host}:{grpc_port}", self.limits, gate, self.telemetry)
        timeout = self.limits.rest_api_timeout_in_ms / 1000
        protocol = type("Protocol", (_DeadlineProtocol,), {"head_timeout": timeout})
        # The web page's backend calls this server's REST API over loopback (its URL is
        # set once REST listens), for the first model; it holds no inference slot.
        self.web = (PageBackend(ModelLink(None, next(iter(stores))), self.limits,
                                self.limits.max_concurrent_inferences,
                                max(5.0, 2 * self.limits.queue_timeout_in_ms / 1000))
                    if web_page and stores else None)
        config = uvicorn.Config(create_app(stores, self.limits, gate, self.telemetry, self.web),
                                host=host, port=rest_port, log_level="warning",
                                # no dictConfig: it would close every logging handler the
                                # process already has (absl's closes its stream with it)
                                log_config=None, access_log=False,
                                timeout_keep_alive=int(max(1, timeout)),
                                http=protocol,  # httptools' C parser, with a head deadline
                                loop="uvloop")  # libuv event loop: less per-request overhead
        self.rest = uvicorn.Server(config)
        self.rest_port = rest_port
        self._rest_thread: threading.Thread | None = None

    def start(self) -> LocalServer:
        """Start the stores' pollers, the gRPC server and the REST server's thread; return the
        server once REST listens. Raises ``OSError`` when REST fails to start."""
        for store in self.stores.values():
            store.start()
        self.grpc_server.start()
        self._rest_thread = threading.Thread(target=self.rest.run, name="rest", daemon=True)
        self._rest_thread.start()
        while not self.rest.started:
            if not self._rest_thread.is_alive():
                raise OSError(f"REST server failed to start on {self.host}:{self.rest_port}")
            self._rest_thread.join(0.05)
        if self.web is not None:
            self.web.link.url = self.rest_url()
        log.info("serving %s: REST on %s:%d, gRPC on %s:%d",
                 ", ".join(f"{n} versions {s.served_versions}" for n, s in self.stores.items()),
                 self.host, self.rest_port, self.host, self.grpc_port)
        return self

    def rest_url(self) -> str:
        """The REST API's URL on this machine (loopback when it listens on every interface),
        at the port it listens on."""
        port = self.rest_port
        for server in getattr(self.rest, "servers", []):
            for sock in server.sockets or []:
                port = sock.getsockname()[1]
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def stop(self) -> None:
        """Stop the REST and gRPC servers, then the model stores (their pollers and download
        caches)."""
        self.rest.should_exit = True
        if self._rest_thread:
            self._rest_thread.join(timeout=10)
        self.grpc_server.stop(grace=2).wait()
        for store in self.stores.values():
            store.stop()
        self.telemetry.close()

    def wait(self, done: threading.Event) -> None:
        """Block until ``done`` is set (by a signal handler) or the REST server ends; stop."""
        while not done.wait(0.5):
            if self._rest_thread and not self._rest_thread.is_alive():
                break
        self.stop()


def build_parser() -> argparse.ArgumentParser:
    """The ``fer-serve`` argument parser, with flags named like ``tensorflow_model_server``'s."""
    p = argparse.ArgumentParser(prog="fer-serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_name", default="fer",
                   help="the name clients ask for (default: %(default)s)")
    p.add_argument("--model_base_path", help="directory of numbered versions, local or gs:// "
                   "(default, without --model_config_file: the bundled released model)")
    p.add_argument("--model_config_file", help="TF Serving model_config_list text proto")
    p.add_argument("--rest_api_port", type=int, default=8501, help="REST port (default: "
                   "%(default)s)")
    p.add_argument("--port", type=int, default=8500, help="gRPC port (default: %(default)s)")
    p.add_argument("--rest_api_host", default="127.0.0.1", help="address both APIs bind "
                   "(default: %(default)s; 0.0.0.0 for every interface)")
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                   help="how often to look for new versions (default: %(default)s)")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="show TensorFlow's own log lines too (also FER_VERBOSE=1)")
    p.add_argument("--request_log_file", help="append one JSON line per predict request "
                   "(time, model, version, signature, status, latency, batch size; no pixels)")
    p.add_argument("--no_web_page", action="store_true",
                   help="do not serve the web page at / on the REST port (it is served by "
                        "default, for the first model; it calls the REST API)")
    limits = p.add_argument_group("limits (both APIs)")
    for f in dataclasses.fields(Limits):
        limits.add_argument(f"--{f.name}", type=int, default=f.default,
                            help=f"{f.metadata['help']} (default: %(default)s)")
    return p


def model_stores(args: argparse.Namespace, bundled: Path = BUNDLED_MODEL_BASE,
                 ) -> dict[str, ModelStore]:
    """The models the flags name; with none, the model bundled with the package, if any."""
    from serving.model_store import ModelStore

    if args.model_config_file:
        return stores_from_config(args.model_config_file, args.file_system_poll_wait_seconds)
    base = args.model_base_path
    if not base:
        if not local_versions(bundled):
            raise ValueError("give --model_base_path or --model_config_file (no model is "
                             f"bundled with this package: {bundled} holds no version)")
        base = str(bundled)
        log.info("no --model_base_path: serving the bundled model from %s", base)
    return {args.model_name: ModelStore(args.model_name, base,
                                        poll_seconds=args.file_system_poll_wait_seconds)}


def main(argv: list[str] | None = None) -> int:
    """``fer-serve``: serve the models the flags name until SIGINT or SIGTERM; return the exit
    code (2 when the models cannot be set up or the servers not started)."""
    from serving.logs import quiet_native_logs, verbose_requested

    args = build_parser().parse_args(argv)
    if argv is None and not verbose_requested(args.verbose):  # our own process, not a test's
        quiet_native_logs()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        stores = model_stores(args)
        done = threading.Event()  # before start: a SIGTERM during start-up stops cleanly
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        limits = Limits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Limits)})
        server = LocalServer(stores, args.rest_api_host, args.rest_api_port, args.port,
                             limits, args.request_log_file,
                             web_page=not args.no_web_page).start()
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, store in stores.items():
        if not store.served_versions:
            log.warning("model %s: no loadable version under %s yet; waiting for one",
                        name, store.base_path)
    server.wait(done)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
