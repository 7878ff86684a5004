"""How a predict request is handled, whichever API it came by (TF Serving's REST, the
Open Inference Protocol): its JSON body read within the limits and parsed off the event
loop, its inference run in a worker thread holding a slot of the inference gate, and its
count and request-log line written when it is answered.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from serving.fastjson import BatchTooLarge, JSONLimitError, parse_json
from serving.limits import (
    InferenceGate,
    Limits,
    ServingError,
    batch_error,
    check_json_depth,
)
from serving.model_store import LoadedVersion
from serving.telemetry import RequestRecord, Telemetry


class Handling:
    """Run one predict (in a worker thread, holding an inference slot), and count it."""

    def __init__(self, limits: Limits, gate: InferenceGate, telemetry: Telemetry):
        self.limits, self.gate, self.telemetry = limits, gate, telemetry

    def _infer(self, loaded: LoadedVersion, signature: str,
               inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        with self.gate.slot():
            return loaded.predict(signature, inputs, self.limits)

    async def predict(self, loaded: LoadedVersion, signature: str,
                      inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """``loaded``'s ``signature`` on ``inputs``, off the event loop."""
        return await run_in_threadpool(self._infer, loaded, signature, inputs)

    async def read_json(self, request: Request) -> Any:
        """The request's JSON body: refused when over ``max_body_bytes`` (413), not received
        within the REST timeout (408), nested too deep, malformed, or holding a tensor with
        more items than ``max_batch_size`` (400). Parsed off the event loop."""
        limit = self.limits.max_body_bytes
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            raise ServingError(413, f"request body of {int(length):,} bytes exceeds the limit "
                                    f"of {limit:,} bytes (--max_body_bytes)")

        async def receive() -> bytes:
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise ServingError(413, f"request body exceeds the limit of {limit:,} "
                                            f"bytes (--max_body_bytes)")
            return bytes(body)

        timeout = self.limits.rest_api_timeout_in_ms
        try:
            body = await asyncio.wait_for(receive(), timeout / 1000)
        except TimeoutError:
            raise ServingError(408, f"request body not received within {timeout} ms "
                                    f"(--rest_api_timeout_in_ms)") from None
        return await run_in_threadpool(self.parse, body)

    def parse(self, body: bytes) -> Any:
        """``body`` as JSON, its depth and batch checked first."""
        check_json_depth(body, self.limits)
        try:
            return parse_json(body, self.limits.max_batch_size)
        except BatchTooLarge as exc:
            raise batch_error(exc.name, exc.size, self.limits) from None
        except JSONLimitError as exc:
            raise ServingError(400, f"JSON Parse error: {exc}") from None
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ServingError(400, f"JSON Parse error: {exc}") from None

    @contextmanager
    def counted(self, api: str, model: str, known: bool) -> Iterator[Call]:
        """Count the predict request the ``with`` block answers (and log it, with a request
        log), with what the block resolved into the :class:`Call` it gets; a request for an
        unknown model is not counted (its name is the client's text)."""
        call, started = Call(), time.perf_counter()
        try:
            yield call
            call.status = 200
        except ServingError as exc:
            call.status = exc.status
            raise
        finally:
            if known:
                self.telemetry.record(RequestRecord(
                    api, model, str(call.loaded.version) if call.loaded else "",
                    call.signature, str(call.status), (time.perf_counter() - started) * 1000,
                    call.batch))


@dataclass
class Call:
    """What answering one predict request resolved, for its count and log line."""

    loaded: LoadedVersion | None = None
    signature: str = ""
    batch: int = 0
    status: int = 500
