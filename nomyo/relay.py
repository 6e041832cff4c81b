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
from .dialects.ollama import answer_counts, answer_load_seconds, final_counts, load_seconds
from .errors import RouterError
from .fleet import Backend
from .keepalive import end_stream, open_stream
from .upstream import IdleWatch, Timing, describe, open_upstream

log = logging.getLogger("nomyo.relay")

# Request headers a backend may use; everything else (the router's own Authorization, cookies,
# Host, hop-by-hop headers) stays here. Host is set by aiohttp from the backend's URL, which is
# what Ollama's DNS-rebinding guard wants. Answers are asked for uncompressed (a backend behind a
# gzipping proxy would otherwise hide the final counts and the done line from the relay).
FORWARDED_REQUEST_HEADERS = ("Content-Type", "Accept", "User-Agent", "OpenAI-Beta", "X-Request-Id")
FORWARDED_RESPONSE_HEADERS = ("Content-Type", "Content-Encoding", "Retry-After")
STREAMING_TYPES = ("application/x-ndjson",)
DONE = b'"done":true'  # 11 bytes
CONTENT = b'"done":false'  # 12 bytes
TAIL = 1024  # bytes of a stream's end kept for its counts (they sit in the last ~200)


def upstream_headers(request: web.Request, backend: Backend) -> dict[str, str]:
    headers = {name: request.headers[name] for name in FORWARDED_REQUEST_HEADERS if name in request.headers}
    headers["Accept-Encoding"] = "identity"
    authorization = backend.config.authorization
    if authorization:
        headers["Authorization"] = authorization
    return headers


def response_headers(upstream: aiohttp.ClientResponse) -> dict[str, str]:
    return {name: upstream.headers[name] for name in FORWARDED_RESPONSE_HEADERS if name in upstream.headers}


async def relay(request: web.Request, session: aiohttp.ClientSession, backend: Backend, path: str,
                body: bytes, access: AccessRecord, *, timing: Timing, method: str = "POST",
                early: bool = True) -> web.StreamResponse:
    """Send `body` to `path` on `backend` and answer the client with what comes back.

    Raises BackendUnreachable / BackendBusy when nothing was sent (another backend may do)."""

    try:
        upstream = await open_upstream(session, backend, method, path, body,
                                       upstream_headers(request, backend), timing, early=early)
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
    """A non-streamed answer (or an error): read it, count it, pass it on with its status. A 200
    that is not JSON is the backend's failure, not an answer to hand the client."""

    try:
        data = await upstream.read()
    except aiohttp.ClientError as exc:
        raise RouterError(502, f"backend {backend.name} failed mid-answer: {describe(exc)}") from None
    if upstream.status >= 400:
        access.outcome = "backend-error"
    elif (upstream.headers.get("Content-Type", "").startswith("application/json")
          and upstream.headers.get("Content-Encoding", "identity") == "identity"):
        try:  # one parse checks the answer and reads its counts
            answer = orjson.loads(data)
        except orjson.JSONDecodeError:
            access.outcome = "backend-failed"
            raise RouterError(502, f"backend {backend.name} sent an answer that is not JSON") from None
        access.count(answer_counts(answer))
        access.load_seconds = answer_load_seconds(answer)
        access.outcome = "ok"
    else:
        access.count(final_counts(data))
        access.outcome = "ok"
    return web.Response(status=upstream.status, body=data, headers=response_headers(upstream))


class StreamEnd:
    """What the relay learns about an NDJSON stream from its chunks, without parsing lines:
    whether the final `done: true` line came, whether the backend ended with its own error line,
    how many content lines (`done: false`) went through (a cut stream counts a token each), and
    the stream's last kilobyte (the counts are at the very end).

    The markers cannot occur inside a JSON string (quotes are escaped there). Each is also looked
    for across the seam between the stream so far and the new chunk, in a window whose halves are
    each one byte shorter than the marker, so nothing is counted twice. Every step copies at most a few
    kilobytes, whatever the chunk size."""

    __slots__ = ("done", "lines", "tail")

    def __init__(self) -> None:
        self.done = False
        self.lines = 0
        self.tail = b""

    def see(self, chunk: bytes) -> None:
        if not self.done and (DONE in chunk or DONE in self.tail[-10:] + chunk[:10]):
            self.done = True
        self.lines += chunk.count(CONTENT) + (self.tail[-11:] + chunk[:11]).count(CONTENT)
        self.tail = (self.tail + chunk[-TAIL:])[-TAIL:]

    @property
    def complete(self) -> bool:
        """The `done: true` line came, whole (a line ends with its newline)."""

        return self.done and self.tail.endswith(b"\n")

    @property
    def ended_in_error(self) -> bool:
        return self.tail.rstrip(b"\n").rsplit(b"\n", 1)[-1].startswith(b'{"error"')

    def counts(self) -> tuple[int, int]:
        """The backend's own counts, else one token per content line relayed."""

        found = final_counts(self.tail) if self.complete else None
        return found or (0, self.lines)


async def _relay_stream(request: web.Request, upstream: aiohttp.ClientResponse, backend: Backend,
                        access: AccessRecord, idle: float) -> web.StreamResponse:
    response = await open_stream(request, upstream.status, response_headers(upstream))
    end = StreamEnd()
    watch = IdleWatch(upstream, idle)
    try:
        async for chunk in upstream.content.iter_any():
            watch.writing = True
            await response.write(chunk)
            watch.writing = False
            watch.touch()
            if access.first_byte_at is None:
                access.first_byte_at = time.perf_counter()
            end.see(chunk)
    except asyncio.CancelledError:
        access.outcome = "client-disconnected"
        access.count(end.counts())
        raise
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        access.outcome = "client-disconnected"
        access.count(end.counts())
        return response
    except aiohttp.ClientError as exc:
        return await _fail_stream(response, backend, access, end, watch.reason(exc))
    finally:
        watch.stop()
    if not end.complete:
        if end.ended_in_error:  # the backend's own error line (a runner failure) is already sent
            access.outcome = "backend-failed-mid-stream"
            access.count(end.counts())
            await end_stream(response, b"")
            return response
        return await _fail_stream(response, backend, access, end, "the stream ended without its final line")
    access.outcome = "ok"
    access.count(end.counts())
    access.load_seconds = load_seconds(end.tail)
    await response.write_eof()
    return response


async def _fail_stream(response: web.StreamResponse, backend: Backend, access: AccessRecord, end: StreamEnd,
                       reason: str) -> web.StreamResponse:
    """End a stream the backend broke off with an error line, as Ollama ends a failed run."""

    access.outcome = "backend-failed-mid-stream"
    access.count(end.counts())
    message = f"backend {backend.name} failed mid-stream: {reason}"
    log.warning("%s", message)
    await end_stream(response, orjson.dumps({"error": message}) + b"\n")
    return response
