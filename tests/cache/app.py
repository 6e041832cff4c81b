"""A tiny aiohttp app standing where the exchange pipeline will call the cache: a lookup before
the (scripted) backend call, the tee after it, and the cache's endpoints. Real clients talk to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from nomyo.cache.assemble import Answer
from nomyo.cache.cache import ResponseCache
from nomyo.cache.request import strip_nomyo_raw
from nomyo.errors import RouterError, render
from nomyo.handlers import cache as cache_handlers
from nomyo.keys import CACHE
from tests.cache.answers import answer_for

ROUTES = ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/v1/chat/completions",
          "/v1/completions", "/v1/embeddings")


@dataclass
class ScriptedBackend:
    """Answers like a real server; counts calls; can be slow, fail, or break off mid-stream."""

    calls: int = 0
    bodies: list[bytes] = field(default_factory=list)
    delay: float = 0.0
    fail: str = ""  # "error": a 500 before any byte; "cut": the stream stops halfway
    gate: asyncio.Event | None = None  # when set, each call waits for it
    plan: list[str] = field(default_factory=list)  # per call, in order: "error" or "" (overrides `fail`)

    async def answer(self, route: str, raw: bytes, payload: dict) -> tuple[str, list[bytes]]:
        self.calls += 1
        self.bodies.append(raw)
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.delay)
        outcome = self.plan.pop(0) if self.plan else self.fail
        if outcome == "error":
            raise RouterError(502, "the backend failed")
        return answer_for(route, payload)


ROUTER_COUNTS = (5, 4)  # what the pipeline counted (used when the answer itself carries no counts)
BACKEND = web.AppKey("backend", ScriptedBackend)


async def _send(request: web.Request, content_type: str, body, status: str) -> web.StreamResponse:
    headers = {"Content-Type": content_type, "X-Nomyo-Cache": status}
    if isinstance(body, bytes):
        return web.Response(body=body, headers=headers)
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    async for chunk in body:
        await response.write(chunk)
    await response.write_eof()
    return response


async def _relay(request, req, backend: ScriptedBackend, cache: ResponseCache, raw: bytes, payload: dict):
    content_type, chunks = await backend.answer(request.path, strip_nomyo_raw(raw, payload), payload)
    complete = backend.fail != "cut"
    if complete is False:
        chunks = chunks[: len(chunks) // 2]
    streamed = content_type in ("application/x-ndjson", "text/event-stream")
    sent: list[bytes] = []

    async def tee() -> AsyncIterator[bytes]:
        for chunk in chunks:
            sent.append(chunk)
            yield chunk

    response = await _send(request, content_type, tee() if streamed else b"".join(chunks), req.status)
    answer = Answer(request.path, streamed, content_type, b"".join(chunks) if not streamed else b"",
                    sent, ROUTER_COUNTS[0], ROUTER_COUNTS[1], complete=complete)
    await cache.store(req, answer)
    return response


async def handle(request: web.Request) -> web.StreamResponse:
    cache: ResponseCache = request.app[CACHE]
    backend: ScriptedBackend = request.app[BACKEND]
    raw = await request.read()
    payload = orjson.loads(raw)
    try:
        req = cache.request(request.path, payload, request.headers.get("X-Test-Scope", ""), request.headers)
    except RouterError as exc:
        return render(request.path, exc)
    hit = await cache.lookup(req)
    if hit is not None:
        return await _send(request, *cache.replay(hit, req), "hit")
    async with cache.flight(req) as flight:
        if flight.entry is not None:
            return await _send(request, *cache.replay(flight.entry, req), "hit")
        try:
            return await _relay(request, req, backend, cache, raw, payload)
        except RouterError as exc:
            return render(request.path, exc)


@web.middleware
async def errors(request: web.Request, handler) -> web.StreamResponse:
    """What the router's error middleware does for these handlers: RouterError in the dialect."""

    try:
        return await handler(request)
    except RouterError as exc:
        return render(request.path, exc)


def build_cache_app(cache: ResponseCache, backend: ScriptedBackend | None = None) -> web.Application:
    app = web.Application(middlewares=[errors])
    app[CACHE] = cache
    app[BACKEND] = backend or ScriptedBackend()
    for route in ROUTES:
        app.router.add_post(route, handle)
    cache_handlers.add_routes(app)

    async def lifecycle(app: web.Application):
        await cache.start()
        yield
        await cache.close()

    app.cleanup_ctx.append(lifecycle)
    return app
