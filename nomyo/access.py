"""One access line per request, and the outcome record it is written from.

Every request gets an `Outcome` (call.py) when it arrives; a routed request's pipeline fills it
in, other handlers say how they ended. The line is written when the request ends however it
ends (answered, failed, or cut off by the client), so the journal always shows what happened to
each request; internal calls write the same line with their purpose as `caller`. It never
contains the query string or any header: that is where keys travel.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from .call import Outcome
from .keys import ROUTER
from .logs import clipped
from .metrics import route_of

log = logging.getLogger("nomyo.access")
ACCESS = web.RequestKey("access", Outcome)
QUEUED_SHOWN = 0.001  # a wait for a slot shorter than this is no queueing worth a word


def access_of(request: web.Request) -> Outcome:
    return request[ACCESS]


@web.middleware
async def access_log_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Outermost middleware: times the request and logs its line in `finally`."""

    outcome = request[ACCESS] = Outcome()
    router = request.app[ROUTER]
    router.active_requests += 1
    try:
        response = await handler(request)
        outcome.status = response.status
        return response
    except asyncio.CancelledError:
        outcome.kind = outcome.kind or "client-disconnected"
        raise
    finally:
        router.active_requests -= 1
        seconds = time.perf_counter() - outcome.started_at
        account(router, route_of(request), outcome, seconds)
        write_line(request.method, request.path, outcome, seconds)


def account(router, route: str, outcome: Outcome, seconds: float) -> None:
    """Tokens of a routed request that a backend answered (also a stream cut short: what was
    generated counts), and every request in the metrics."""

    if outcome.backend is not None and outcome.model_key is not None and (outcome.status or 0) < 400:
        router.usage.record(outcome.backend, outcome.model_key, outcome.prompt_tokens, outcome.completion_tokens)
    router.metrics.observe(route, outcome, seconds)


def write_line(method: str, path: str, outcome: Outcome, seconds: float) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info("%s", format_line(method, path, outcome, seconds))


def format_line(method: str, path: str, outcome: Outcome, seconds: float) -> str:
    # client-chosen values are cut here so the fields after them survive (logs.py escapes)
    parts = [clipped(method, 32), clipped(path, 512)]
    if outcome.model is not None:
        parts.append(f"model={clipped(outcome.model, 256)}")
    if outcome.backend is not None:
        parts.append(f"backend={outcome.backend}")
    parts.append(f"status={outcome.status if outcome.status is not None else '-'}")
    parts.append(f"duration={seconds * 1000:.1f}ms")
    if outcome.queue_wait is not None and outcome.queue_wait >= QUEUED_SHOWN:
        parts.append(f"queued={outcome.queue_wait * 1000:.0f}ms")
    if outcome.ttfb is not None:
        parts.append(f"ttfb={outcome.ttfb * 1000:.1f}ms")
    if outcome.prompt_tokens or outcome.completion_tokens:
        parts.append(f"tokens={outcome.prompt_tokens}/{outcome.completion_tokens}")
    parts.append(f"outcome={outcome.kind or ('ok' if (outcome.status or 500) < 400 else 'error')}")
    if outcome.caller is not None:
        parts.append(f"caller={outcome.caller}")
    return " ".join(parts)
