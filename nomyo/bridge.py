"""`/v1` requests relayed to any backend's OpenAI-compatible API, and what the translating
relay shares with it: the backend's spelling of a model, headers, opening the upstream call.

An Ollama backend serves `/v1/...` under its root; an OpenAI-compatible endpoint is configured
by its `/v1` base, so the same request goes to `{url}/v1/chat/completions` or to
`{url}/chat/completions`. The client's body is relayed as sent, with three exceptions that make
the same request work on every backend: the model is spelled as that backend lists it (vLLM
matches ids exactly; the router matches them as Ollama does), a stream asks for `usage` so the
router can count tokens (the extra usage chunk is removed again if the client did not ask for
it), and `stream_options` on a non-streamed request is dropped (hosted APIs reject it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from .access import AccessRecord
from .dialects.openai import (
    DONE,
    JSON,
    SSE,
    SSEParser,
    UsageMeter,
    error_message,
    estimate_tokens,
    generates,
    is_error_object,
    prompt_text,
    sse_event,
    usage_of,
)
from .errors import RouterError, openai_error_body
from .fleet import Backend
from .keepalive import end_stream, open_stream
from .names import normalize_model
from .upstream import IdleWatch, Timing, describe, is_json
from .upstream import open_upstream as open_backend

log = logging.getLogger("nomyo.bridge")
PASSED_HEADERS = ("User-Agent", "OpenAI-Beta", "X-Request-Id")


def model_id(backend: Backend, key: str, spelled: str) -> str:
    """The model as `backend` names it. Ollama resolves names itself (case, `:latest`); an
    OpenAI-compatible server wants the exact id it listed."""

    if backend.config.is_ollama:
        return spelled
    for entry in backend.status.tags:
        ident = entry.get("id") if isinstance(entry, dict) else None
        if isinstance(ident, str) and normalize_model(ident) == key:
            return ident
    return spelled


def backend_path(backend: Backend, path: str) -> str:
    """`/chat/completions` etc. under the backend's OpenAI API (`/v1` of an Ollama server)."""

    return "/v1" + path if backend.config.is_ollama else path


def upstream_headers(request: web.Request, backend: Backend, accept: str) -> dict[str, str]:
    """Headers for a call whose answer the router reads: uncompressed, JSON in, the backend's
    own credentials (never the client's)."""

    headers = {"Content-Type": JSON, "Accept": accept, "Accept-Encoding": "identity"}
    headers |= {name: request.headers[name] for name in PASSED_HEADERS if name in request.headers}
    if backend.config.authorization:
        headers["Authorization"] = backend.config.authorization
    return headers


async def open_upstream(request: web.Request, session: aiohttp.ClientSession, backend: Backend, path: str,
                        body: bytes, *, stream: bool, timing: Timing) -> aiohttp.ClientResponse:
    """POST `body` to `path` on `backend`. Raises BackendUnreachable / BackendBusy when nothing
    could be sent (the router then tries another backend), RouterError 502 for other failures."""

    headers = upstream_headers(request, backend, SSE if stream else JSON)
    try:
        # a whole chat/completion answer starts only when it is complete: no first-byte limit then
        early = stream or path.endswith(("/embeddings", "/rerank"))
        return await open_backend(session, backend, "POST", path, body, headers, timing, early=early)
    except aiohttp.ClientError as exc:
        raise RouterError(502, f"backend {backend.name} failed: {describe(exc)}") from None


async def read_all(upstream: aiohttp.ClientResponse, backend: Backend) -> bytes:
    try:
        return await upstream.read()
    except aiohttp.ClientError as exc:
        raise RouterError(502, f"backend {backend.name} failed mid-answer: {describe(exc)}") from None


def first_byte(access: AccessRecord) -> None:
    if access.first_byte_at is None:
        access.first_byte_at = time.perf_counter()


# -- /v1 relayed ----------------------------------------------------------------------------------


def upstream_body(payload: dict, raw: bytes, ident: str) -> tuple[bytes, bool]:
    """The body for the backend and whether the router added `include_usage` (then the usage
    chunk is the router's, not the client's). The client's bytes when nothing needs changing."""

    changes: dict[str, Any] = {}
    if payload.get("model") != ident:
        changes["model"] = ident
    options = payload.get("stream_options")
    added = False
    if payload.get("stream") is True:
        if not (isinstance(options, dict) and options.get("include_usage")):
            changes["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
            added = True
    elif "stream_options" in payload:
        changes["stream_options"] = None
    if not changes:
        return raw, False
    body = {k: v for k, v in (payload | changes).items() if not (k == "stream_options" and v is None)}
    return orjson.dumps(body), added


async def send_openai(request: web.Request, router, backend: Backend, access: AccessRecord, path: str,
                      payload: dict, raw: bytes, key: str) -> web.StreamResponse:
    """Relay one `/v1` request (`path` without `/v1`) to `backend` and its answer back."""

    ident = model_id(backend, key, str(payload.get("model")))
    body, added_usage = upstream_body(payload, raw, ident)
    stream = payload.get("stream") is True
    meter = UsageMeter(estimate_tokens(prompt_text(payload)))
    upstream = await open_upstream(request, router.session, backend, backend_path(backend, path), body,
                                   stream=stream, timing=router.timing)
    try:
        access.status = upstream.status
        content_type = upstream.headers.get("Content-Type", "")
        if upstream.status < 400 and content_type.startswith(SSE):
            events = EventRelay(meter, strip=added_usage, want_usage=stream and not added_usage)
            return await _relay_events(request, upstream, backend, access, events, router.timing.idle)
        return await _relay_answer(upstream, backend, access, meter)
    finally:
        upstream.release()


async def _relay_answer(upstream: aiohttp.ClientResponse, backend: Backend, access: AccessRecord,
                        meter: UsageMeter) -> web.Response:
    """A whole answer: counted from its `usage`; an error becomes an OpenAI error object if the
    backend sent another shape (vLLM's older top-level errors, plain text)."""

    data = await read_all(upstream, backend)
    content_type = upstream.headers.get("Content-Type", JSON)
    if upstream.status < 400 and content_type.startswith(JSON) and not is_json(data):
        access.outcome = "backend-failed"
        raise RouterError(502, f"backend {backend.name} sent an answer that is not JSON")
    if upstream.status >= 400:
        access.outcome = "backend-error"
        if not is_error_object(data):
            data = openai_error_body(upstream.status, error_message(data, upstream.status))
            content_type = JSON
    else:
        access.outcome = "ok"
        access.count(usage_of(data) or (meter.prompt_estimate, 0))
    response = web.Response(status=upstream.status, body=data)
    response.headers["Content-Type"] = content_type
    return response


async def _relay_events(request: web.Request, upstream: aiohttp.ClientResponse, backend: Backend,
                        access: AccessRecord, events: EventRelay, idle: float) -> web.StreamResponse:
    """An SSE stream, event by event as the backend sends them (one write per network chunk)."""

    headers = {"Content-Type": upstream.headers.get("Content-Type", SSE), "Cache-Control": "no-cache"}
    response = await open_stream(request, upstream.status, headers)
    parser = SSEParser()
    watch = IdleWatch(upstream, idle)
    try:
        async for chunk in upstream.content.iter_any():
            out = events.relay(parser.feed(chunk))
            if out:
                watch.writing = True
                await response.write(out)
                watch.writing = False
                first_byte(access)
            watch.touch()
        out = events.relay(parser.close())
        if out:
            await response.write(out)
    except asyncio.CancelledError:
        access.outcome = "client-disconnected"
        access.count(events.meter.counts())
        raise
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        access.outcome = "client-disconnected"
        access.count(events.meter.counts())
        return response
    except aiohttp.ClientError as exc:
        access.outcome = "backend-failed-mid-stream"
        access.count(events.meter.counts())
        return await _fail_events(response, backend, access, events, watch.reason(exc))
    finally:
        watch.stop()
    if events.failed:  # the backend's own error event went through: the stream is over
        access.outcome = "backend-failed-mid-stream"
        access.count(events.meter.counts())
        await end_stream(response, b"")
        return response
    if not events.done:
        return await _fail_events(response, backend, access, events, "the stream ended without [DONE]")
    access.outcome = "ok"
    access.count(events.meter.counts())
    await response.write_eof()
    return response


async def _fail_events(response: web.StreamResponse, backend: Backend, access: AccessRecord, events: EventRelay,
                       reason: str) -> web.StreamResponse:
    access.outcome = "backend-failed-mid-stream"
    access.count(events.meter.counts())
    message = f"backend {backend.name} failed mid-stream: {reason}"
    log.warning("%s", message)
    await end_stream(response, sse_event(openai_error_body(502, message, "backend_failed")))
    return response


class EventRelay:
    """Meters each event of a stream and frames it again. Drops the usage the client did not ask
    for; adds the router's count where the client asked for usage and the backend sent none
    (llama-cpp-python), so `include_usage` always ends with a usage chunk."""

    def __init__(self, meter: UsageMeter, *, strip: bool, want_usage: bool):
        self.meter = meter
        self.strip = strip
        self.want_usage = want_usage
        self.head: dict = {}
        self.done = False  # `data: [DONE]` came: the stream is complete
        self.failed = False  # the backend sent its own error event

    def relay(self, payloads: list[bytes]) -> bytes:
        out = []
        for payload in payloads:
            if payload.strip() == DONE:
                self.done = True
                out.append(self._missing_usage() + sse_event(DONE))
                continue
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                out.append(sse_event(payload))
                continue
            payload = self._observe(obj, payload)
            if payload is not None:
                out.append(sse_event(payload))
        return b"".join(out)

    def _observe(self, obj, payload: bytes) -> bytes | None:
        """The payload to relay (None: drop it) after metering `obj`."""

        if not isinstance(obj, dict):
            return payload
        if obj.get("error"):
            self.failed = True
            return payload
        self.meter.observe(obj)
        if generates(obj):
            self.meter.tick()
        self.head = {k: obj[k] for k in ("id", "object", "created", "model") if k in obj}
        if self.strip and obj.get("usage") is not None:
            if not obj.get("choices"):
                return None  # the usage chunk the router asked for
            return orjson.dumps({k: v for k, v in obj.items() if k != "usage"})
        return payload

    def _missing_usage(self) -> bytes:
        if not self.want_usage or self.meter.usage is not None:
            return b""
        prompt, completion = self.meter.counts()
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        return sse_event(orjson.dumps({**self.head, "choices": [], "usage": usage}))
