"""Backends that spell JSON differently: Python-based Ollama-compatible servers and proxies write
`"done": true` with spaces, SSE servers write `data:` without the space. The router reads the
final line by parsing it, so such a stream keeps its counts, gets no error line appended, and
never counts against the backend."""

from __future__ import annotations

import json
import logging

import orjson
from aiohttp import web

from tests.conftest import eventually

CHAT = {"model": "py", "messages": [{"role": "user", "content": "hi"}]}


def spaced(obj: dict) -> bytes:
    return json.dumps(obj).encode() + b"\n"  # Python's default: `{"done": true, ...}`


def answer(obj: dict):
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(obj, dumps=json.dumps)

    return handler


class SmallServer:
    """An aiohttp app on a free loopback port; subclasses add their routes and say their base."""

    base = ""

    def __init__(self) -> None:
        self.url = ""
        self._runner: web.AppRunner | None = None

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}{self.base}"

    async def stop(self) -> None:
        await self._runner.cleanup()


class SpacedOllama(SmallServer):
    """An Ollama-compatible server written in Python: spaced JSON, final line split across writes."""

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/api/tags", answer({"models": [{"name": "py:latest", "model": "py:latest", "size": 1}]}))
        app.router.add_get("/api/ps", answer({"models": []}))
        app.router.add_get("/api/version", answer({"version": "0.12.3"}))
        app.router.add_post("/api/chat", self._chat)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        final = {"model": "py", "created_at": "2026-01-01T00:00:00Z",
                 "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
                 "total_duration": 5, "load_duration": 2_000_000, "prompt_eval_count": 27, "eval_count": 2}
        if body.get("stream") is False:
            return web.json_response({**final, "message": {"role": "assistant", "content": "Hi there"}},
                                     dumps=json.dumps)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for word in ("Hi", " there"):
            await response.write(spaced({"model": "py", "created_at": "2026-01-01T00:00:00Z",
                                         "message": {"role": "assistant", "content": word}, "done": False}))
        line = spaced(final)
        await response.write(line[:20])  # the final line arrives in pieces
        await response.write(line[20:])
        await response.write_eof()
        return response


async def test_spaced_final_line_keeps_its_counts_and_the_breaker_closed(backends, start_router, http, caplog):
    caplog.set_level(logging.INFO, logger="nomyo")
    fake = await backends(SpacedOllama())
    router = await start_router([{"name": "py", "url": fake.url}], breaker_threshold=1)
    for _ in range(3):
        async with http.post(router.url + "/api/chat", data=orjson.dumps(CHAT)) as resp:
            lines = [orjson.loads(line) for line in (await resp.read()).splitlines()]
        assert lines[-1]["done"] is True and all("error" not in line for line in lines)
    await eventually(lambda: "tokens=27/2 outcome=ok" in caplog.text)
    assert "failed mid-stream" not in caplog.text
    assert router.backend("py").status.breaker == "closed"
    await eventually(lambda: router.router.usage.totals().get(("py", "py:latest"), (0, 0, 0))[:2] == (81, 6))
    assert router.router.ledger.learned.load_time(("py", "py:latest")) is None  # 2 ms: no cold load


async def test_spaced_whole_answer_counts(backends, start_router, http, caplog):
    caplog.set_level(logging.INFO, logger="nomyo.access")
    fake = await backends(SpacedOllama())
    router = await start_router([{"name": "py", "url": fake.url}])
    async with http.post(router.url + "/api/chat", data=orjson.dumps({**CHAT, "stream": False})) as resp:
        assert (await resp.json())["message"]["content"] == "Hi there"
    assert "tokens=27/2 outcome=ok" in caplog.text


class TerseSSE(SmallServer):
    """An OpenAI-compatible server that writes `data:{...}` without the space, CRLF line ends,
    and spaced JSON inside."""

    base = "/v1"

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/models", answer({"object": "list", "data": [{"id": "terse", "object": "model"}]}))
        app.router.add_post("/v1/chat/completions", self._chat)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "terse"}
        for piece, finish in (("Hi", None), (" there", "stop")):
            event = {**head, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": finish}]}
            await response.write(b"data:" + json.dumps(event).encode() + b"\r\n\r\n")
        usage = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
        await response.write(b"data:" + json.dumps({**head, "choices": [], "usage": usage}).encode() + b"\r\n\r\n")
        await response.write(b"data:[DONE]\r\n\r\n")
        await response.write_eof()
        return response


async def test_sse_without_the_space_is_read_alike(backends, start_router, http, caplog):
    """The stream ends properly in both dialects, with the backend's usage, and no error."""

    caplog.set_level(logging.INFO, logger="nomyo.access")
    fake = await backends(TerseSSE())
    router = await start_router([{"name": "terse", "url": fake.url, "type": "openai"}])
    body = {"model": "terse", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with http.post(router.url + "/v1/chat/completions", data=orjson.dumps(body)) as resp:
        text = await resp.read()
    assert text.endswith(b"data: [DONE]\n\n") and b"error" not in text
    async with http.post(router.url + "/api/chat", data=orjson.dumps(body)) as resp:
        lines = [orjson.loads(line) for line in (await resp.read()).splitlines()]
    assert "".join(line["message"]["content"] for line in lines) == "Hi there"
    assert (lines[-1]["done"], lines[-1]["prompt_eval_count"], lines[-1]["eval_count"]) == (True, 9, 2)
    assert caplog.text.count("tokens=9/2 outcome=ok") == 2
