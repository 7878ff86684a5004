"""Soak: does ``fer-serve`` survive malformed requests and sustained load, and stay lean?

    python -m benchmarks.soak [--requests 10000] [--load-seconds 600] [--clients 4]
                              [--model-base PATH] [--server-arg=--flag=value ...] [--verbose]

Starts ``fer-serve`` in a subprocess on 127.0.0.1 (free ports; by default the model bundled
in serving/model/fer), then:

1. **Malformed corpus.** Replays ``--requests`` malformed requests (80% REST, 20% gRPC; see
   :mod:`benchmarks.soak_corpus`: bad JSON, JSON nested past 1,024 levels, integers beyond
   64 bits, wrong shapes and types, NaN/Infinity pixels, oversized batches, 30 MB of tiny
   instances, bad base64, decompression bombs, unknown paths, methods, models and
   signatures, Host header games, bodies over the 32 MiB limit; over gRPC odd dtypes,
   DT_INT16 overflow, dims [2000,48,48,1] with one float, dims [10^9,...], negative dims,
   tensor_content of the wrong length, ...) from 4 threads, each with a 30 s client
   timeout, recording per request its status (HTTP code, gRPC code name, "timeout",
   "connection error") and latency. Between categories (and every 250 requests) the server
   must be alive and answer ``GET /v1/models/<model>``; when it is not, that is a death,
   charged to the category in flight (a server still busy with an earlier request that
   timed out may die later: the report shows the request in flight and the log's last
   lines), and the server is restarted (``--max-restarts``) so the run goes on.
2. **Sustained load.** ``--load-seconds`` of valid predictions from ``--clients`` threads,
   in turn: REST ``serving_default`` with 1 and with 8 real faces, REST ``predict_images``
   with a JPEG face, gRPC Predict with 1 face (faces from ../shared/fer2013/test). Meanwhile
   a probe calls ``GET /v1/models/<model>`` and ``GET /v2/health/ready`` every 0.5 s.
3. **Memory.** The server's RSS (VmRSS) after warm-up (after the corpus and a short run of
   the load itself, just before the load), at the end, and the peak of a 1 s sampling.

Acceptance (the verdict, exit status 0 on PASS, 1 otherwise): 0 server deaths; 0 REST 5xx
other than 503; 0 gRPC UNKNOWN / INTERNAL; 0 hangs (client timeouts) and 0 requests over
5 s, other than those the limits time out by design; 0 connections dropped without an
answer; no redirect to a foreign Host; every valid load request answered 200 / OK (or 503 /
UNAVAILABLE, shed); probe p99 <= 100 ms; RSS growth over the load <= 10%. Malformed
requests answered 200 (legal variants such as a pixel of 300) are counted, not failed.

Everything is bounded: the corpus size, the load's duration, the restarts, the whole run
(``--timeout``); the server is stopped at the end, on Ctrl-C and on errors.
"""

from __future__ import annotations

import argparse
import base64
import functools
import itertools
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import requests

from benchmarks.soak_corpus import EVIL_HOST, Case, grpc_corpus, rest_corpus
from serving.contract import PROBABILITIES, SIGNATURE_IMAGES

ROOT = Path(__file__).resolve().parents[1]
FER_TEST = ROOT.parent / "shared" / "fer2013" / "test"
HOST = "127.0.0.1"

SLOW_S = 5.0  # a malformed request answered later than this is a failure
PROBE_P99_MS = 100.0
RSS_GROWTH = 0.10
CHECK_EVERY = 250  # corpus requests between health checks within a category
GRPC_FINE = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "UNAVAILABLE",
             "FAILED_PRECONDITION", "OUT_OF_RANGE", "UNIMPLEMENTED", "CANCELLED", "ABORTED",
             "PERMISSION_DENIED", "UNAUTHENTICATED", "ALREADY_EXISTS"}
GRPC_BAD = {"UNKNOWN", "INTERNAL", "DATA_LOSS"}
CONNECTION_LIKE = {"connection error", "closed", "reset", "no reply", "timeout", "UNAVAILABLE",
                   "CANCELLED"}
# Failure kinds, in the order the report lists them.
FAILURE_KINDS = ("death", "5xx", "UNKNOWN/INTERNAL", "hang", "slow", "dropped",
                 "open redirect", "load error")


def free_port(taken: Iterable[int] = ()) -> int:
    """A port on 127.0.0.1 nobody listens on now (and not one of ``taken``)."""
    while True:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in set(taken):
            return port


def rss_bytes(pid: int) -> int | None:
    """The resident set size of ``pid`` (VmRSS), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


# --- the server ----------------------------------------------------------------------------

class Server:
    """``fer-serve`` in a subprocess on fresh ports, its output in a log file; restartable."""

    def __init__(self, model: str, model_base: str | None, extra: Sequence[str],
                 log_path: Path, startup_timeout: float):
        self.model = model
        self.model_base = model_base
        self.extra = list(extra)
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.rest_port = self.grpc_port = 0
        self.generation = 0  # bumped at each start: clients remake their connections
        self.version = ""

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        """Start the server and wait until it serves the model; RuntimeError if it does not
        within ``startup_timeout``."""
        self.rest_port = free_port()
        self.grpc_port = free_port([self.rest_port])
        cmd = [sys.executable, "-m", "serving.server", "--rest_api_port", str(self.rest_port),
               "--port", str(self.grpc_port), "--rest_api_host", HOST, "--model_name", self.model]
        if self.model_base:
            cmd += ["--model_base_path", self.model_base]
        cmd += self.extra
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- soak: starting {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        self.generation += 1
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fer-serve exited with {self.proc.returncode} while "
                                   f"starting: {self.log_tail()}")
            try:
                r = requests.get(f"{self.url}/v1/models/{self.model}", timeout=2)
                versions = [s.get("version") for s in r.json().get("model_version_status", [])
                            if s.get("state") == "AVAILABLE"] if r.ok else []
                if versions:
                    self.version = str(max(versions, key=int))
                    return
            except (requests.RequestException, ValueError, AttributeError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"fer-serve did not serve {self.model} within "
                           f"{self.startup_timeout:.0f} s: {self.log_tail()}")

    def alive(self, wait: float = 0.0) -> bool:
        """Whether the process runs (after up to ``wait`` seconds for it to finish dying)."""
        if self.proc is None:
            return False
        if wait <= 0:
            return self.proc.poll() is None
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            return True
        return False

    def answers(self, timeout: float = 10.0, tries: int = 3) -> bool:
        """Whether the process runs and ``GET /v1/models/<model>`` answers 200."""
        for _ in range(tries):
            if not self.alive():
                return False
            try:
                if requests.get(f"{self.url}/v1/models/{self.model}", timeout=timeout).ok:
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.5)
        return False

    def rss(self) -> int | None:
        return rss_bytes(self.proc.pid) if self.proc else None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; idempotent."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 3, width: int = 200) -> str:
        """The last ``lines`` non-empty lines of the server's output, each cut to ``width``."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        tail = [ln.strip()[:width] for ln in text.splitlines() if ln.strip()][-lines:]
        return " | ".join(tail)


# --- sending one request -------------------------------------------------------------------

@dataclass
class Outcome:
    """What one request got: ``status`` (an HTTP code, a gRPC code name, or "timeout",
    "connection error", "closed", "reset", "no reply"), its latency, a sample of the answer."""

    case: Case
    status: str
    latency: float
    sample: str = ""
    location: str = ""
    died: bool = False  # the server was found dead right after this request


class Clients:
    """Per-thread HTTP sessions and gRPC stubs for the server's current generation."""

    def __init__(self, server: Server):
        self.server = server
        self._local = threading.local()

    def get(self) -> SimpleNamespace:
        import grpc
        from tensorflow_serving.apis import (
            model_service_pb2_grpc,
            prediction_service_pb2_grpc,
        )

        mine = getattr(self._local, "clients", None)
        if mine is None or mine.generation != self.server.generation:
            if mine is not None:
                mine.session.close()
                mine.channel.close()
            channel = grpc.insecure_channel(self.server.grpc_target, options=[
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024)])
            mine = SimpleNamespace(
                generation=self.server.generation, session=requests.Session(), channel=channel,
                predict=prediction_service_pb2_grpc.PredictionServiceStub(channel),
                models=model_service_pb2_grpc.ModelServiceStub(channel))
            self._local.clients = mine
        return mine

    def fresh_session(self) -> requests.Session:
        mine = self.get()
        mine.session.close()
        mine.session = requests.Session()
        return mine.session


def _answer_sample(content: bytes) -> str:
    return content[:160].decode("utf-8", "replace").replace("\n", " ")


def send_rest(clients: Clients, case: Case) -> tuple[str, str, str]:
    """(status, sample, Location) of an HTTP request through ``requests``; a connection error
    is tried once more on a fresh connection (a kept-alive one may have been closed)."""
    url = clients.server.url + case.path
    for attempt in range(2):
        session = clients.get().session if attempt == 0 else clients.fresh_session()
        try:
            r = session.request(case.method, url, data=case.body,
                                headers=dict(case.headers) or None,
                                timeout=(5, case.read_timeout), allow_redirects=False)
            return str(r.status_code), _answer_sample(r.content), r.headers.get("location", "")
        except requests.Timeout:
            return "timeout", "", ""
        except requests.ConnectionError as exc:
            error = str(exc)[:160]
        except requests.RequestException as exc:  # e.g. a redirect loop: not the server's fault
            return "client error", str(exc)[:160], ""
    return "connection error", error, ""


def send_raw(server: Server, case: Case) -> tuple[str, str, str]:
    """(status, sample, Location) of ``case.raw`` written to a socket as it is."""
    assert case.raw is not None
    data = case.raw.replace(b"{HOST}", f"{HOST}:{server.rest_port}".encode())
    try:
        sock = socket.create_connection((HOST, server.rest_port), timeout=5)
    except OSError as exc:
        return "connection error", str(exc)[:160], ""
    with sock:
        try:
            sock.sendall(data)
            chunk = b"%x\r\n" % 2**20 + b"0" * 2**20 + b"\r\n"
            for _ in range(case.stream_mib):
                sock.sendall(chunk)
            if case.stream_mib:
                sock.sendall(b"0\r\n\r\n")
            if case.half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:  # refused part way (a limit): read what the server said
            pass
        sock.settimeout(case.read_timeout)
        reply = b""
        try:
            while b"\r\n\r\n" not in reply and len(reply) < 65536:
                got = sock.recv(65536)
                if not got:
                    break
                reply += got
        except TimeoutError:
            if not reply:
                return "no reply", "", ""
        except ConnectionResetError:
            if not reply:
                return "reset", "", ""
        except OSError as exc:
            if not reply:
                return "connection error", str(exc)[:160], ""
    if not reply:
        return "closed", "", ""
    head, _, rest = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) < 2 or not parts[1].isdigit():
        return "garbled", _answer_sample(reply), ""
    location = next((ln.split(":", 1)[1].strip() for ln in lines[1:]
                     if ln.lower().startswith("location:")), "")
    return parts[1], _answer_sample(rest), location


def send_grpc(clients: Clients, case: Case) -> tuple[str, str, str]:
    """(gRPC code name, details, "") of one RPC."""
    import grpc

    mine = clients.get()
    call = {"Predict": mine.predict.Predict, "GetModelMetadata": mine.predict.GetModelMetadata,
            "GetModelStatus": mine.models.GetModelStatus}[case.method]
    try:
        call(case.message, timeout=case.read_timeout)
        return "OK", "", ""
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return "timeout", "", ""
        return code.name, (exc.details() or "")[:160], ""


def send(clients: Clients, case: Case) -> Outcome:
    """Send ``case``; note whether the server died with it."""
    generation = clients.server.generation
    start = time.perf_counter()
    try:
        if case.api == "gRPC":
            status, sample, location = send_grpc(clients, case)
        elif case.raw is not None:
            status, sample, location = send_raw(clients.server, case)
        else:
            status, sample, location = send_rest(clients, case)
    except Exception as exc:  # noqa: BLE001 (a client-side bug must not end the run: shown)
        status, sample, location = "client error", f"{type(exc).__name__}: {exc}"[:160], ""
    outcome = Outcome(case, status, time.perf_counter() - start, sample, location)
    if status in CONNECTION_LIKE and generation == clients.server.generation:
        outcome.died = not clients.server.alive(wait=1.0)
    return outcome


def failure(outcome: Outcome) -> str | None:
    """The failure kind of a malformed request's outcome (see FAILURE_KINDS), None if fine."""
    case, status = outcome.case, outcome.status
    if EVIL_HOST in outcome.location:
        return "open redirect"
    if outcome.died:
        return "death"
    if status in case.tolerate:
        return None
    if status in ("timeout", "no reply"):
        return "hang"
    if status in ("connection error", "closed", "reset", "garbled"):
        return "dropped"
    if status.isdigit():
        if int(status) >= 500 and int(status) != 503:
            return "5xx"
    elif status in GRPC_BAD:
        return "UNKNOWN/INTERNAL"
    if is_slow(outcome):
        return "slow"
    return None


def is_slow(outcome: Outcome) -> bool:
    """Answered, but after more than SLOW_S (hangs and outcomes tolerated by design aside)."""
    return (outcome.latency > SLOW_S and not outcome.case.slow_ok
            and outcome.status not in ("timeout", "no reply")
            and outcome.status not in outcome.case.tolerate)


# --- phase 1: the corpus -------------------------------------------------------------------

@dataclass
class Death:
    phase: str  # a category, or "load"
    returncode: int | None
    in_flight: str  # the request that found it dead
    log: str
    restarted: bool = True


@dataclass
class CorpusResult:
    outcomes: list[Outcome] = field(default_factory=list)
    deaths: list[Death] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # by category, after a death or --timeout
    incomplete: str = ""


class RestartBudget:
    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def take(self) -> bool:
        self.used += 1
        return self.used <= self.limit


def _handle_death(server: Server, phase: str, in_flight: str, budget: RestartBudget,
                  deaths: list[Death], verbose: bool) -> bool:
    """Record that the server died (or stopped answering) in ``phase``; restart it if the
    budget allows. True when it serves again."""
    alive = server.alive()
    death = Death(phase, None if alive else server.proc.returncode,
                  in_flight + (" (alive but not answering; killed)" if alive else ""),
                  server.log_tail())
    deaths.append(death)
    if verbose:
        print(f"  ! server died in {phase} (rc {death.returncode}); in flight: {in_flight}",
              file=sys.stderr, flush=True)
    if not budget.take():
        server.stop()
        death.restarted = False
        return False
    try:
        server.restart()
    except RuntimeError as exc:
        death.restarted = False
        death.log += f" | restart failed: {exc}"
        return False
    return True


def _replay(clients: Clients, dead: threading.Event, case: Case) -> Outcome | None:
    """Send ``case`` unless the server died in this chunk already (set ``dead`` if it did)."""
    if dead.is_set():
        return None
    outcome = send(clients, case)
    if outcome.died:
        dead.set()
    return outcome


def run_corpus(server: Server, clients: Clients, cases: Iterable[Case], workers: int,
               deadline: float, budget: RestartBudget, verbose: bool) -> CorpusResult:
    """Replay ``cases`` (grouped by category) from ``workers`` threads; check the server
    between categories and every CHECK_EVERY requests; restart it when it died."""
    result = CorpusResult()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="corpus")
    try:
        for category, group in itertools.groupby(cases, key=lambda c: c.category):
            group = list(group)
            for start in range(0, len(group), CHECK_EVERY):
                chunk = group[start:start + CHECK_EVERY]
                if result.incomplete or time.monotonic() > deadline:
                    result.incomplete = result.incomplete or "stopped at --timeout"
                    result.skipped[category] += len(chunk)
                    continue
                dead = threading.Event()
                t0 = time.monotonic()
                outcomes = list(pool.map(functools.partial(_replay, clients, dead), chunk))
                done = [o for o in outcomes if o is not None]
                result.outcomes += done
                result.skipped[category] += len(outcomes) - len(done)
                if verbose:
                    print(f"  {category:<28} {len(done):>5} requests "
                          f"{time.monotonic() - t0:6.1f} s", file=sys.stderr, flush=True)
                if not dead.is_set() and server.answers():
                    continue
                in_flight = next((f"{o.case.note} -> {o.status}" for o in done if o.died),
                                 "(found at the health check)")
                if dead.is_set():  # the rest of this category would only kill it again
                    rest = len(group) - start - len(chunk)
                    result.skipped[category] += rest
                if not _handle_death(server, category, in_flight, budget, result.deaths,
                                     verbose):
                    result.incomplete = "server down (restarts exhausted or failed)"
                if dead.is_set():
                    break
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return result


# --- phase 2: sustained load ---------------------------------------------------------------

@dataclass
class LoadKind:
    """One kind of valid request of the load: ``send(clients, i)`` -> status."""

    name: str
    send: Callable[[Clients, int], str]


def load_faces(source: Path, per_class: int = 3) -> tuple[list[Any], list[bytes]]:
    """Up to ``per_class`` faces a class from ``source/<class>/*.jpg``: as float32 [48,48,1]
    arrays (0-255) and as the JPEG files' bytes."""
    import numpy as np
    from PIL import Image

    files = [f for d in sorted(p for p in source.iterdir() if p.is_dir())
             for f in sorted(d.glob("*.jpg"))[:per_class]]
    if not files:
        raise FileNotFoundError(f"no faces under {source}/<class>/*.jpg")
    faces = []
    for f in files:
        with Image.open(f) as im:
            faces.append(np.asarray(im.convert("L").resize((48, 48)),
                                    dtype=np.float32)[..., None])
    return faces, [f.read_bytes() for f in files]


def load_kinds(model: str, faces: list[Any], jpegs: list[bytes]) -> list[LoadKind]:
    """REST pixels x1 and x8, REST predict_images x1 (JPEG), gRPC pixels x1."""
    import grpc
    import numpy as np
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2

    def pixels_body(batch: int, i: int) -> bytes:
        chosen = [faces[(i + k) % len(faces)] for k in range(batch)]
        return json.dumps({"instances": np.stack(chosen).astype(int).tolist()},
                          separators=(",", ":")).encode()

    variants = range(max(4, len(faces)))
    rest_one = [pixels_body(1, i) for i in variants]
    rest_eight = [pixels_body(8, i) for i in variants]
    rest_image = [json.dumps({"signature_name": SIGNATURE_IMAGES, "instances": [
        {"b64": base64.b64encode(jpegs[i % len(jpegs)]).decode()}]}).encode() for i in variants]
    grpc_one = []
    for i in variants:
        r = predict_pb2.PredictRequest()
        r.model_spec.name = model
        t = r.inputs["pixels"]
        t.dtype = types_pb2.DT_FLOAT
        for d in (1, 48, 48, 1):
            t.tensor_shape.dim.add(size=d)
        t.tensor_content = faces[i % len(faces)].astype("<f4").tobytes()
        grpc_one.append(r)

    def rest(bodies: list[bytes], batch: int) -> Callable[[Clients, int], str]:
        def call(clients: Clients, i: int) -> str:
            url = f"{clients.server.url}/v1/models/{model}:predict"
            try:
                r = clients.get().session.post(url, data=bodies[i % len(bodies)], timeout=30)
            except requests.Timeout:
                return "timeout"
            except requests.RequestException:
                clients.fresh_session()
                return "connection error"
            if r.status_code == 200:
                try:
                    if len(r.json()["predictions"]) != batch:
                        return "wrong answer"
                except (ValueError, KeyError, TypeError):
                    return "wrong answer"
            return str(r.status_code)
        return call

    def grpc_call(clients: Clients, i: int) -> str:
        try:
            response = clients.get().predict.Predict(grpc_one[i % len(grpc_one)], timeout=30)
        except grpc.RpcError as exc:
            return "timeout" if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED else exc.code().name
        dims = response.outputs[PROBABILITIES].tensor_shape.dim
        return "OK" if dims and dims[0].size == 1 else "wrong answer"

    return [LoadKind("REST pixels x1", rest(rest_one, 1)),
            LoadKind("REST pixels x8", rest(rest_eight, 8)),
            LoadKind("REST images x1", rest(rest_image, 1)),
            LoadKind("gRPC pixels x1", grpc_call)]


@dataclass
class LoadResult:
    # (kind, status, seconds, whether the server was gone meanwhile), one per request
    records: list[tuple[str, str, float, bool]] = field(default_factory=list)
    probes: dict[str, list[tuple[str, float]]] = field(default_factory=lambda: defaultdict(list))
    seconds: float = 0.0
    deaths: list[Death] = field(default_factory=list)
    rss_warm: int | None = None
    rss_end: int | None = None
    restarted: bool = False


def probe_loop(server: Server, model: str, stop: threading.Event,
               probes: dict[str, list[tuple[str, float]]]) -> None:
    """Every 0.5 s: ``GET /v1/models/<model>`` and ``GET /v2/health/ready``, timed."""
    session, generation = requests.Session(), server.generation
    routes = {"status": f"/v1/models/{model}", "v2 ready": "/v2/health/ready"}
    while not stop.wait(0.5):
        if generation != server.generation:
            session.close()
            session, generation = requests.Session(), server.generation
        for name, path in routes.items():
            t0 = time.perf_counter()
            try:
                status = str(session.get(server.url + path, timeout=5).status_code)
            except requests.Timeout:
                status = "timeout"
            except requests.RequestException:
                status = "connection error"
                session.close()
                session = requests.Session()
            probes[name].append((status, time.perf_counter() - t0))
    session.close()


def run_load(server: Server, clients: Clients, kinds: list[LoadKind], seconds: float,
             n_clients: int, budget: RestartBudget, verbose: bool) -> LoadResult:
    """Warm up (the load itself, discarded: 5% of ``seconds``, 3 to 30 s), read the RSS,
    then ``seconds`` of ``n_clients`` threads sending the kinds in turn, with the probe
    running; restart the server if it dies."""
    result = LoadResult()
    warm: list[tuple[str, str, float, bool]] = []
    _drive(server, kinds, clients, n_clients, min(30.0, max(3.0, 0.05 * seconds)), warm,
           None, result, budget, verbose)
    time.sleep(1.0)
    result.rss_warm = server.rss()
    result.restarted = False  # growth is measured from here
    result.seconds = _drive(server, kinds, clients, n_clients, seconds, result.records,
                            result.probes, result, budget, verbose)
    result.rss_end = server.rss()
    return result


def _drive(server: Server, kinds: list[LoadKind], clients: Clients, n_clients: int,
           seconds: float, records: list[tuple[str, str, float, bool]],
           probes: dict[str, list[tuple[str, float]]] | None, result: LoadResult,
           budget: RestartBudget, verbose: bool) -> float:
    """``seconds`` of ``n_clients`` threads sending ``kinds`` in turn into ``records`` (and
    the probe into ``probes``, if given); the server restarted if it dies. Returns the time
    it took."""
    stop = threading.Event()

    def client(k: int) -> None:
        i = k
        while not stop.is_set():
            kind = kinds[i % len(kinds)]
            generation = server.generation
            t0 = time.perf_counter()
            status = kind.send(clients, i)
            gone = generation != server.generation or not server.alive()
            records.append((kind.name, status, time.perf_counter() - t0, gone))
            if gone:
                time.sleep(0.2)  # the main thread restarts it
            i += 1

    threads = [threading.Thread(target=client, args=(k,), daemon=True, name=f"load{k}")
               for k in range(n_clients)]
    if probes is not None:
        threads.append(threading.Thread(target=probe_loop, daemon=True, name="probe",
                                        args=(server, server.model, stop, probes)))
    start = time.monotonic()
    try:
        for t in threads:
            t.start()
        while (left := start + seconds - time.monotonic()) > 0:
            time.sleep(min(1.0, left))
            if not server.alive():
                result.restarted = True
                if not _handle_death(server, "load", "(load)", budget, result.deaths, verbose):
                    break
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=35)
    return time.monotonic() - start


class RssSampler(threading.Thread):
    """The server's RSS every second; ``peak`` is the highest seen."""

    def __init__(self, server: Server):
        super().__init__(daemon=True, name="rss")
        self.server = server
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.peak = max(self.peak, self.server.rss() or 0)


# --- the report ----------------------------------------------------------------------------

def _status_order(status: str) -> tuple[int, int | str]:
    return (0, int(status)) if status.isdigit() else (1, status)


def _by_status(counts: Counter) -> str:
    return "  ".join(f"{s}: {counts[s]:,}" for s in sorted(counts, key=_status_order))


def _mb(n: int | None) -> str:
    return f"{n / 2**20:,.0f} MB" if n else "n/a"


def _ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:,.1f} ms"


@dataclass
class Verdict:
    reasons: list[str] = field(default_factory=list)  # what failed
    figures: list[str] = field(default_factory=list)  # what was measured

    def check(self, ok: bool, figure: str) -> None:
        self.figures.append(figure)
        if not ok:
            self.reasons.append(figure)


def report(args: argparse.Namespace, server: Server, n_rest: int, n_grpc: int,
           corpus: CorpusResult, load: LoadResult | None, peak: int) -> bool:
    """Print the report; True on PASS."""
    verdict = Verdict()
    fails: dict[str, dict[str, list[Outcome]]] = defaultdict(lambda: defaultdict(list))
    for o in corpus.outcomes:
        kind = failure(o)
        if kind and kind != "death":
            fails[kind][o.case.category].append(o)
    counts = Counter(o.status for o in corpus.outcomes)
    over = sum(1 for o in corpus.outcomes if is_slow(o))
    n5 = sum(len(v) for v in fails["5xx"].values())
    nunk = sum(len(v) for v in fails["UNKNOWN/INTERNAL"].values())
    nhang = sum(len(v) for v in fails["hang"].values())
    ndrop = sum(len(v) for v in fails["dropped"].values())
    nredir = sum(len(v) for v in fails["open redirect"].values())
    deaths = corpus.deaths + (load.deaths if load else [])
    print(f"corpus:  {len(corpus.outcomes):,} requests by status   {_by_status(counts)}")
    print(f"         5xx other than 503: {n5:,}     gRPC UNKNOWN/INTERNAL: {nunk:,}     "
          f"over 5 s: {over:,}     hangs: {nhang:,}     dropped: {ndrop:,}     "
          f"server deaths: {len(corpus.deaths)}")
    skipped = sum(corpus.skipped.values())
    if skipped or corpus.incomplete:
        print(f"         skipped {skipped:,} ({corpus.incomplete or 'after deaths'})")
    accepted = Counter(o.case.category for o in corpus.outcomes if o.status in ("200", "OK"))
    if accepted:
        print("         accepted (200/OK): " + ", ".join(
            f"{c} {n:,}" for c, n in sorted(accepted.items(), key=lambda x: -x[1])))
    if args.verbose:
        _print_categories(corpus)

    load_errors: list[tuple[str, str, float]] = []
    probe_p99: dict[str, float] = {}
    if load is not None:
        statuses = Counter(s for _, s, _, gone in load.records if not gone)
        latencies = [t for _, s, t, gone in load.records if s in ("200", "OK") and not gone]
        n = len(load.records)
        print(f"load:    {n:,} requests, {n / max(load.seconds, 1e-9):,.1f} req/s, "
              f"p50 {_ms(percentile(latencies, 50))} p99 {_ms(percentile(latencies, 99))}, "
              f"by status {_by_status(statuses)}")
        if args.verbose:
            for name in sorted({k for k, *_ in load.records}):
                lat = [t for k, s, t, _ in load.records if k == name and s in ("200", "OK")]
                print(f"         {name:<16} n={len(lat):,} p50 {_ms(percentile(lat, 50))} "
                      f"p99 {_ms(percentile(lat, 99))}")
        load_errors = [(k, s, t) for k, s, t, gone in load.records
                       if not gone and s not in ("200", "OK", "503", "UNAVAILABLE")]
        parts = []
        for name, samples in load.probes.items():
            lat = [t for _, t in samples]
            probe_p99[name] = percentile(lat, 99)
            parts.append(f"{name} p50 {_ms(percentile(lat, 50))} p99 {_ms(probe_p99[name])} "
                         f"(n={len(lat):,}; {_by_status(Counter(s for s, _ in samples))})")
        print("probes:  " + "; ".join(parts) if parts else "probes:  none")
        growth = ((load.rss_end - load.rss_warm) / load.rss_warm
                  if load.rss_warm and load.rss_end and not load.restarted else None)
        print(f"rss:     {_mb(load.rss_warm)} after warm-up, {_mb(load.rss_end)} at end"
              + (f" ({growth:+.1%})" if growth is not None else " (n/a: restarted)")
              + f", peak {_mb(peak)}")
    else:
        growth = None

    verdict.check(not deaths, f"{len(deaths)} deaths")
    load5 = sum(1 for _, s, _ in load_errors if s.isdigit() and int(s) >= 500)
    loadunk = sum(1 for _, s, _ in load_errors if s in GRPC_BAD)
    verdict.check(n5 + load5 == 0, f"{n5 + load5} 5xx")
    verdict.check(nunk + loadunk == 0, f"{nunk + loadunk} UNKNOWN")
    verdict.check(nhang == 0 and over == 0, f"{nhang} hangs, {over} over 5 s")
    if ndrop:
        verdict.check(False, f"{ndrop} dropped")
    if nredir:
        verdict.check(False, f"{nredir} redirects to {EVIL_HOST}")
    if corpus.incomplete:
        verdict.check(False, f"corpus incomplete ({corpus.incomplete})")
    if load is None:
        verdict.check(False, "no load phase")
    else:
        ok_load = sum(1 for _, s, _, gone in load.records if s in ("200", "OK") and not gone)
        verdict.check(ok_load > 0 and not load_errors,
                      f"load {ok_load:,} ok, {len(load_errors):,} errors")
        worst = max(probe_p99.values(), default=float("nan"))
        verdict.check(worst <= PROBE_P99_MS / 1000,
                      f"probe p99 {_ms(worst)} <= {PROBE_P99_MS:.0f} ms")
        verdict.check(growth is not None and growth <= RSS_GROWTH,
                      f"RSS {f'{growth:+.1%}' if growth is not None else 'n/a'} "
                      f"<= {RSS_GROWTH:.0%}")
    passed = not verdict.reasons
    print(f"verdict: {'PASS' if passed else 'FAIL'} ({', '.join(verdict.figures)})")
    if not passed:
        _print_failures(fails, deaths, load_errors, server)
    return passed


def _print_categories(corpus: CorpusResult) -> None:
    by_cat: dict[str, list[Outcome]] = defaultdict(list)
    for o in corpus.outcomes:
        by_cat[o.case.category].append(o)
    print(f"         {'category':<28} {'n':>5} {'max':>9}  statuses")
    for cat, outs in by_cat.items():
        worst = max(o.latency for o in outs)
        bad = Counter(k for o in outs if (k := failure(o)))
        flag = ("  FAIL " + ", ".join(f"{k} {n}" for k, n in bad.items())) if bad else ""
        print(f"         {cat:<28} {len(outs):>5} {worst * 1000:>7,.0f}ms  "
              f"{_by_status(Counter(o.status for o in outs))}{flag}")


def _print_failures(fails: dict[str, dict[str, list[Outcome]]], deaths: list[Death],
                    load_errors: list[tuple[str, str, float]], server: Server) -> None:
    print("failures:")
    for d in deaths:
        print(f"  {'death':<16} {d.phase:<26} rc {d.returncode}; in flight: {d.in_flight[:100]}"
              + ("" if d.restarted else " (not restarted)"))
        if d.log:
            print(f"  {'':<16} log: {d.log[:400]}")
    for kind in FAILURE_KINDS:
        for cat, outs in sorted(fails.get(kind, {}).items()):
            first = outs[0]
            statuses = Counter(o.status for o in outs)
            print(f"  {kind:<16} {cat:<26} x{len(outs):<5} {_by_status(statuses)}; e.g. "
                  f"{first.case.note[:60]} -> {first.status} {first.latency:.1f} s "
                  f"{first.location and 'Location: ' + first.location} {first.sample[:120]}")
    if load_errors:
        counts = Counter((k, s) for k, s, _ in load_errors)
        print(f"  {'load error':<16} " + ", ".join(f"{k} {s} x{n}" for (k, s), n in counts.items()))
    print(f"  server log: {server.log_path}")


# --- main ----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak",
                                description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Acceptance: see the module docstring.")
    p.add_argument("--requests", type=int, default=10_000, help="malformed requests (%(default)s)")
    p.add_argument("--grpc-share", type=float, default=0.2,
                   help="share of them over gRPC (%(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=4, help="corpus threads (%(default)s)")
    p.add_argument("--load-seconds", type=float, default=600.0)
    p.add_argument("--clients", type=int, default=4, help="load threads (%(default)s)")
    p.add_argument("--source", type=Path, default=FER_TEST,
                   help="faces, <source>/<class>/*.jpg (%(default)s)")
    p.add_argument("--model-base", help="a model base path (default: the bundled model)")
    p.add_argument("--model-name", default="fer")
    p.add_argument("--server-arg", action="append", default=[], metavar="FLAG",
                   help="an extra fer-serve flag, repeatable; write --server-arg=--flag=value")
    p.add_argument("--max-restarts", type=int, default=5)
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="bound on the whole run, seconds (%(default)s)")
    p.add_argument("--verbose", action="store_true", help="per-category detail and progress")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    n_grpc = round(args.requests * args.grpc_share)
    n_rest = args.requests - n_grpc
    faces, jpegs = load_faces(args.source)

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)

    log_dir = Path(tempfile.mkdtemp(prefix="soak-"))
    server = Server(args.model_name, args.model_base, args.server_arg, log_dir / "fer-serve.log",
                    args.startup_timeout)

    def hard_stop() -> None:  # the --timeout backstop, should the phases overrun it
        print(f"soak: --timeout {args.timeout:.0f} s exceeded; stopping", file=sys.stderr,
              flush=True)
        server.stop()
        os._exit(1)
    watchdog = threading.Timer(args.timeout + 60, hard_stop)
    watchdog.daemon = True
    watchdog.start()
    sampler = RssSampler(server)
    passed = False
    try:
        cases = itertools.chain(rest_corpus(n_rest, args.seed, args.model_name),
                                grpc_corpus(n_grpc, args.seed, args.model_name))
        server.start()
        sampler.start()
        what = (f"bundled model {args.model_name}/{server.version}" if not args.model_base
                else f"model {args.model_name}/{server.version} from {args.model_base}")
        print(f"soak: fer-serve ({what}) on {HOST}, corpus {args.requests:,} requests "
              f"({n_rest:,} REST, {n_grpc:,} gRPC), load {args.load_seconds:.0f} s x "
              f"{args.clients} clients", flush=True)
        clients = Clients(server)
        budget = RestartBudget(args.max_restarts)
        corpus_deadline = started + args.timeout - args.load_seconds - 60
        corpus = run_corpus(server, clients, cases, args.workers, corpus_deadline, budget,
                            args.verbose)
        load = None
        if server.alive():
            seconds = min(args.load_seconds, started + args.timeout - 30 - time.monotonic())
            kinds = load_kinds(args.model_name, faces, jpegs)
            load = run_load(server, clients, kinds, max(seconds, 1.0), args.clients, budget,
                            args.verbose)
        sampler.stop.set()
        peak = max(sampler.peak, (load.rss_end or 0) if load else 0)
        passed = report(args, server, n_rest, n_grpc, corpus, load, peak)
        if passed:
            shutil.rmtree(log_dir, ignore_errors=True)
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
        return 130
    except (RuntimeError, FileNotFoundError) as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 1
    finally:
        sampler.stop.set()
        server.stop()
        watchdog.cancel()
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
