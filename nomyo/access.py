"""One access line per request, and the record handlers fill in for it.

The line is written when the request ends however it ends (answered, failed, or cut off by the
client), so the journal always shows what happened to each request. It never contains the query
string or any header: that is where keys travel.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from .keys import ROUTER
from .logs import clipped

log = logging.getLogger("nomyo.access")


class AccessRecord:
    """What the handler learned about one request: model, backend, tokens, how it ended."""

    __slots__ = ("backend", "caller", "completion_tokens", "first_byte_at", "load_seconds", "model", "model_key",
                 "outcome", "prompt_tokens", "started_at", "status")

    def __init__(self) -> None:
        self.model: str | None = None  # as the client spelled it (for the log line)
        self.model_key: str | None = None  # normalised (for counting per backend and model)
        self.backend: str | None = None
        self.status: int | None = None
        self.outcome: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.caller: str | None = None
        self.started_at: float | None = None  # time.perf_counter() at arrival
        self.first_byte_at: float | None = None  # when the relay wrote the first chunk of a stream
        self.load_seconds: float | None = None  # the backend's load_duration, when it reported one

    def count(self, counts: tuple[int, int] | None) -> None:
        if counts is not None:
            self.prompt_tokens, self.completion_tokens = counts


ACCESS = web.RequestKey("access", AccessRecord)


def access_of(request: web.Request) -> AccessRecord:
    return request[ACCESS]


@web.middleware
async def access_log_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Outermost middleware: times the request and logs its line in `finally`."""

    record = AccessRecord()
    request[ACCESS] = record
    started = record.started_at = time.perf_counter()
    router = request.app[ROUTER]
    router.active_requests += 1
    try:
        response = await handler(request)
        record.status = response.status
        return response
    except asyncio.CancelledError:
        record.outcome = record.outcome or "client-disconnected"
        raise
    finally:
        router.active_requests -= 1
        seconds = time.perf_counter() - started
        account(router, request, record, seconds)
        if log.isEnabledFor(logging.INFO):
            log.info("%s", format_line(request, record, seconds))


def account(router, request: web.Request, record: AccessRecord, seconds: float) -> None:
    """Tokens of a routed request that a backend answered (also a stream cut short: what was
    generated counts), and every request in the metrics."""

    if record.backend is not None and record.model_key is not None and (record.status or 0) < 400:
        router.usage.record(record.backend, record.model_key, record.prompt_tokens, record.completion_tokens)
    router.metrics.observe(request, record, seconds)


def format_line(request: web.Request, record: AccessRecord, seconds: float) -> str:
    # client-chosen values are cut here so the fields after them survive (logs.py escapes)
    parts = [clipped(request.method, 32), clipped(request.path, 512)]
    if record.model is not None:
        parts.append(f"model={clipped(record.model, 256)}")
    if record.backend is not None:
        parts.append(f"backend={record.backend}")
    parts.append(f"status={record.status if record.status is not None else '-'}")
    parts.append(f"duration={seconds * 1000:.1f}ms")
    if record.prompt_tokens or record.completion_tokens:
        parts.append(f"tokens={record.prompt_tokens}/{record.completion_tokens}")
    parts.append(f"outcome={record.outcome or ('ok' if (record.status or 500) < 400 else 'error')}")
    if record.caller is not None:
        parts.append(f"caller={record.caller}")
    return " ".join(parts)
