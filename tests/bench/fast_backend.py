"""A fake Ollama that does as little as possible, so the benchmark measures the router, not it.

Every answer is precomputed bytes; the request body is never parsed on the fast path (a byte
substring check decides streamed or not). It serves one model, `bench:latest`, and the endpoints
the router polls. Run it as its own process:

    python -m tests.bench.fast_backend --port 11500 --chunks 256 [--token-delay 0.02]

Two body options (inside `options`, so the router passes them through untouched) change one
stream: Ollama's `num_predict` (how many lines) and the bench's own `token_delay` (seconds
between lines). The body is only parsed when it contains `"options"`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass

import orjson
import uvloop
from aiohttp import web

MODEL = "bench:latest"
DIGEST = "b" * 64
CREATED_AT = "2025-01-01T00:00:00.000000000Z"
JSON_TYPE = "application/json; charset=utf-8"
NDJSON_TYPE = "application/x-ndjson"
NOT_STREAMED = (b'"stream":false', b'"stream": false')


def _tags() -> bytes:
    return orjson.dumps({"models": [{"name": MODEL, "model": MODEL, "modified_at": CREATED_AT, "size": 1,
                                     "digest": DIGEST, "details": {}}]})


def _ps() -> bytes:
    return orjson.dumps({"models": [{"name": MODEL, "model": MODEL, "size": 1, "digest": DIGEST, "details": {},
                                     "expires_at": "2099-01-01T00:00:00Z", "size_vram": 1}]})


def _final_fields(count: int) -> dict:
    """Ollama's closing metrics (durations in ns), the part the router reads token counts from."""

    return {"done": True, "done_reason": "stop", "total_duration": 1_000_000 + count * 10_000,
            "load_duration": 1000, "prompt_eval_count": 8, "prompt_eval_duration": 10_000,
            "eval_count": count, "eval_duration": count * 10_000}


def whole_answer(count: int) -> bytes:
    """The non-streamed /api/chat answer: one message and the final metrics."""

    return orjson.dumps({"model": MODEL, "created_at": CREATED_AT,
                         "message": {"role": "assistant", "content": "tok " * count},
                         **_final_fields(count)})


def stream_lines(count: int) -> tuple[bytes, ...]:
    """`count` NDJSON lines: count-1 one-token lines, then the `done: true` line with the counts."""

    token = orjson.dumps({"model": MODEL, "created_at": CREATED_AT,
                          "message": {"role": "assistant", "content": "tok "}, "done": False}) + b"\n"
    final = orjson.dumps({"model": MODEL, "created_at": CREATED_AT,
                          "message": {"role": "assistant", "content": ""}, **_final_fields(count)}) + b"\n"
    return (token,) * max(count - 1, 0) + (final,)


@dataclass(frozen=True)
class StreamPlan:
    """How one stream is answered: which lines, and how long to wait between them."""

    lines: tuple[bytes, ...]
    delay: float


class FakeOllama:
    """The handlers, with every answer built once at start (and per distinct `num_predict`)."""

    def __init__(self, chunks: int, token_delay: float):
        self.default = StreamPlan(stream_lines(chunks), token_delay)
        self.whole = whole_answer(chunks)
        self.tags, self.ps = _tags(), _ps()
        self.version = orjson.dumps({"version": "0.12.3"})
        self._lines_by_count = {chunks: self.default.lines}

    def plan(self, body: bytes) -> StreamPlan:
        """The default plan, unless the body carries `options` (then, and only then, parse it)."""

        if b'"options"' not in body:
            return self.default
        try:
            options = orjson.loads(body).get("options") or {}
        except (orjson.JSONDecodeError, AttributeError):
            return self.default
        count = int(options.get("num_predict") or len(self.default.lines))
        delay = float(options.get("token_delay", self.default.delay))
        lines = self._lines_by_count.get(count)
        if lines is None:
            lines = self._lines_by_count[count] = stream_lines(count)
        return StreamPlan(lines, delay)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if NOT_STREAMED[0] in body or NOT_STREAMED[1] in body:
            return web.Response(body=self.whole, headers={"Content-Type": JSON_TYPE})
        plan = self.plan(body)
        response = web.StreamResponse(headers={"Content-Type": NDJSON_TYPE})
        await response.prepare(request)
        for line in plan.lines:
            await response.write(line)
            if plan.delay:
                await asyncio.sleep(plan.delay)
        await response.write_eof()
        return response

    def static(self, payload: bytes):
        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=payload, headers={"Content-Type": JSON_TYPE})

        return handler

    async def root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.root)
        app.router.add_get("/api/tags", self.static(self.tags))
        app.router.add_get("/api/ps", self.static(self.ps))
        app.router.add_get("/api/version", self.static(self.version))
        app.router.add_post("/api/chat", self.chat)
        return app


async def serve(host: str, port: int, fake: FakeOllama) -> None:
    """Serve until killed. A deep backlog: the memory test opens 1,000 upstream connections at once."""

    runner = web.AppRunner(fake.app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=4096, reuse_address=True).start()
    print(f"fast_backend listening on http://{host}:{port}", file=sys.stderr, flush=True)
    await asyncio.Event().wait()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fast_backend", description="A minimal, fast fake Ollama.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=256, help="NDJSON lines per streamed answer")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between streamed lines")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        uvloop.run(serve(args.host, args.port, FakeOllama(args.chunks, args.token_delay)))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
