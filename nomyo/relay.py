"""Forward one request to the chosen backend and relay its answer back, chunk by chunk.

The client's body goes upstream as is; the backend's bytes come back as they arrive, with
`await response.write(chunk)` as the backpressure. Nothing is re-serialised: only the tail of a
stream is kept, to read the final token counts. If the client goes away, the handler is
cancelled, the upstream response is closed (the backend sees its connection drop) and the lease
frees the slot.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import orjson
from aiohttp import web

from .access import AccessRecord
from .dialects.ollama import final_counts
from .errors import RouterError
from .fleet import Backend
from .keepalive import open_stream
from .upstream import IdleWatch, Timing, describe, open_upstream

log = logging.getLogger("nomyo.relay")

# Request headers a backend may use; everything else (the router's own Authorization, cookies,
# Host, hop-by-hop headers) stays here. Host is set by aiohttp from the backend's URL, which is
# what Ollama's DNS-rebinding guard wants.
FORWARDED_REQUEST_HEADERS = ("Content-Type", "Accept", "Accept-Encoding", "User-Agent",
                             "OpenAI-Beta", "X-Request-Id")
FORWARDED_RESPONSE_HEADERS = ("Content-Type", "Content-Encoding", "Retry-After")
STREAMING_TYPES = ("application/x-ndjson", "text/event-stream")


def upstream_headers(request: web.Request, backend: Backend) -> dict[str, str]:
    headers = {name: request.headers[name] for name in FORWARDED_REQUEST_HEADERS if name in request.headers}
    key = backend.config.api_key
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def response_headers(upstream: aiohttp.ClientResponse) -> dict[str, str]:
    return {name: upstream.headers[name] for name in FORWARDED_RESPONSE_HEADERS if name in upstream.headers}


async def relay(request: web.Request, session: aiohttp.ClientSession, backend: Backend, path: str,
                body: bytes, access: AccessRecord, *, timing: Timing, method: str = "POST") -> web.StreamResponse:
    """Send `body` to `path` on `backend` and answer the client with what comes back.

    Raises BackendUnreachable / BackendBusy when nothing was sent (another backend may do)."""

    try:
        upstream = await open_upstream(session, backend, method, path, body,
                                       upstream_headers(request, backend), timing)
    except aiohttp.ClientError as exc:
        raise RouterError(502, f"backend {backend.name} failed: {describe(exc)}") from None
    try:
        access.status = upstream.status
        content_type = upstream.headers.get("Content-Type", "")
        if upstream.status < 400 and content_type.startswith(STREAMING_TYPES):
            return await _relay_stream(request, upstream, backend, access, timing.idle)
        return await _relay_whole(upstream, backend, access)
    finally:
        # Back to the pool when fully read; closed (the backend sees it) when it was cut short.
        upstream.release()


async def _relay_whole(upstream: aiohttp.ClientResponse, backend: Backend, access: AccessRecord) -> web.Response:
    """A non-streamed answer (or an error): read it, count it, pass it on with its status."""

    try:
        data = await upstream.read()
    except aiohttp.ClientError as exc:
        raise RouterError(502, f"backend {backend.name} failed mid-answer: {describe(exc)}") from None
    if upstream.status < 400:
        access.count(final_counts(data))
        access.outcome = "ok"
    else:
        access.outcome = "backend-error"
    return web.Response(status=upstream.status, body=data, headers=response_headers(upstream))


async def _relay_stream(request: web.Request, upstream: aiohttp.ClientResponse, backend: Backend,
                        access: AccessRecord, idle: float) -> web.StreamResponse:
    response = await open_stream(request, upstream.status, response_headers(upstream))
    before = last = b""  # the last two chunks (not copied): the counts are at the very end
    lines = 0  # NDJSON lines relayed: a stream cut short counts one generated token per line
    watch = IdleWatch(upstream, idle)
    try:
        async for chunk in upstream.content.iter_any():
            watch.touch()
            await response.write(chunk)
            if access.first_byte_at is None:
                access.first_byte_at = time.perf_counter()
            before, last = last, chunk
            lines += chunk.count(b"\n")
    except asyncio.CancelledError:
        access.outcome = "client-disconnected"
        access.count(final_counts(before + last) or (0, lines))
        raise
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        access.outcome = "client-disconnected"
        access.count(final_counts(before + last) or (0, lines))
        return response
    except aiohttp.ClientError as exc:
        access.outcome = "backend-failed-mid-stream"
        access.count(final_counts(before + last) or (0, lines))
        message = f"backend {backend.name} failed mid-stream: {watch.reason(exc)}"
        log.warning("%s", message)
        await _write_quietly(response, orjson.dumps({"error": message}) + b"\n")
        return response
    finally:
        watch.stop()
    access.outcome = "ok"
    access.count(final_counts(before + last) or (0, lines))
    await response.write_eof()
    return response


async def _write_quietly(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
        await response.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        pass
