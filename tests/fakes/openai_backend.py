"""A scriptable OpenAI-compatible server, shaped like vLLM or llama.cpp's llama-server.

A real aiohttp server on a real port serving `/v1/models`, `/v1/chat/completions`,
`/v1/completions`, `/v1/embeddings` and `/v1/rerank`. Streams are SSE (`data: {...}\\n\\n`, ending
`data: [DONE]`), one event per token with real delays. The two flavours differ where the real
servers do (reference §19): vLLM opens a chat stream with `{"role":"assistant","content":""}`,
puts `finish_reason` on the last token and sends `usage` only when asked; llama-server opens with
`"content": null`, ends with an empty-delta finish chunk carrying `timings`, and always reports
usage on the last completions chunk. `usage=False` behaves like llama-cpp-python's stream (no
counts at all). Errors are OpenAI error objects (`legacy_errors`: vLLM's older top-level shape).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import struct
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict


@dataclass
class Seen:
    """One request as the fake received it."""

    path: str
    json: Any
    headers: CIMultiDict


def words(text: str) -> list[str]:
    """The fake's tokens: words with their leading space."""

    parts = text.split(" ")
    return [parts[0]] + [" " + p for p in parts[1:]] if text else []


def prompt_tokens(body: dict) -> int:
    count = 0
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        count += len(str(content or "").split())
    inputs = body.get("prompt") or body.get("input") or ""
    for text in inputs if isinstance(inputs, list) else [inputs]:
        count += len(str(text).split())
    return count


def raw_vector(text: str, dim: int) -> list[float]:
    """Deterministic, not normalised (as llama-cpp-python returns them)."""

    digest = hashlib.sha256(text.encode()).digest()
    return [round((digest[i % 32] - 128) / 16.0, 4) for i in range(dim)]


class FakeOpenAI:
    """Scripting: `fail_next`, `cut_next`, `gate`, `tool_call`, `reasoning`. Observation:
    `requests`, `active`."""

    def __init__(self, name: str = "openai", models=("tiny",), flavour: str = "vllm", api_key: str | None = None,
                 reply: str = "Hello from {name}", token_delay: float = 0.0, embedding_dim: int = 8,
                 usage: bool = True, legacy_errors: bool = False):
        self.name, self.models, self.flavour, self.api_key = name, list(models), flavour, api_key
        self.reply, self.token_delay, self.embedding_dim = reply, token_delay, embedding_dim
        self.usage, self.legacy_errors = usage, legacy_errors
        self.tool_call: tuple[str, dict] | None = None  # answer requests with tools by calling this
        self.reasoning: str | None = None  # reasoning text sent before the answer
        self.gate: asyncio.Event | None = None  # a stream waits here after its first token
        self.requests: list[Seen] = []
        self.active = 0
        self._failures: list[tuple[int, str]] = []
        self._cuts: list[int] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeOpenAI:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/rerank", self._rerank)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def fail_next(self, status: int, message: str) -> None:
        self._failures.append((status, message))

    def cut_next(self, after_tokens: int = 1) -> None:
        """The next stream sends `after_tokens` tokens, then the connection drops."""
        self._cuts.append(after_tokens)

    def seen(self, path: str) -> list[Seen]:
        return [r for r in self.requests if r.path == path]

    # -- plumbing -------------------------------------------------------------------------------

    def error(self, status: int, message: str, kind: str = "BadRequestError") -> web.Response:
        if self.legacy_errors:
            body = {"object": "error", "message": message, "type": kind, "param": None, "code": status}
        elif self.flavour == "llama-server":
            body = {"error": {"code": status, "message": message, "type": "invalid_request_error"}}
        else:
            body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
        return web.json_response(body, status=status)

    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        raw = await request.read()
        body = orjson.loads(raw) if raw else None
        self.requests.append(Seen(request.path, body, CIMultiDict(request.headers)))
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self.error(401, "Invalid API Key", "AuthenticationError")
        if request.method == "POST":
            if not isinstance(body, dict):
                return self.error(400, "invalid JSON body")
            if self.flavour == "vllm" and body.get("model") not in self.models:
                return self.error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
            if body.get("stream_options") is not None and not body.get("stream"):
                return self.error(400, "Stream options can only be defined when `stream=True`.")
            if self._failures:
                return self.error(*self._failures.pop(0))
        self.active += 1
        try:
            return await handler(request)
        finally:
            self.active -= 1

    async def _models(self, request: web.Request) -> web.Response:
        data = []
        for model in self.models:
            entry = {"id": model, "object": "model", "created": 1729000000}
            if self.flavour == "vllm":
                entry |= {"owned_by": "vllm", "root": model, "parent": None, "max_model_len": 4096}
            else:
                entry |= {"owned_by": "llamacpp", "meta": {"n_params": 1_500_000, "n_ctx_train": 512,
                                                           "n_embd": 64, "size": 6_000_000}}
            data.append(entry)
        return web.json_response({"object": "list", "data": data})

    # -- generation -----------------------------------------------------------------------------

    def _plan(self, body: dict) -> tuple[list[str], str]:
        tokens = words(self.reply.format(name=self.name, model=body["model"]))
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        if isinstance(limit, int) and limit < len(tokens):
            return tokens[:limit], "length"
        return tokens, "stop"

    def _usage(self, body: dict, completion: int) -> dict:
        prompt = prompt_tokens(body)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _timings(self, body: dict, completion: int) -> dict:
        return {"prompt_n": prompt_tokens(body), "prompt_ms": 12.5, "predicted_n": completion, "predicted_ms": 40.0,
                "cache_n": 0}

    def _head(self, kind: str) -> dict:
        head = {"id": f"{kind}-{self.name}", "object": kind, "created": int(time.time())}
        if self.flavour == "llama-server":
            head["system_fingerprint"] = "b6000-fake"
        return head

    def _tool(self, body: dict) -> tuple[str, dict] | None:
        return self.tool_call if body.get("tools") and self.tool_call else None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        tokens, finish = self._plan(body)
        tool = self._tool(body)
        if body.get("stream"):
            return await self._stream(request, body, self._chat_events(body, tokens, finish, tool))
        message: dict[str, Any] = {"role": "assistant", "content": None if tool else "".join(tokens)}
        if self.reasoning:
            message["reasoning_content"] = self.reasoning
        if tool:
            message["tool_calls"] = [{"id": "call_fake1", "type": "function",
                                      "function": {"name": tool[0], "arguments": orjson.dumps(tool[1]).decode()}}]
            finish = "tool_calls"
        answer = self._head("chat.completion") | {"model": body["model"], "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]}
        answer["usage"] = self._usage(body, len(tokens))
        if self.flavour == "llama-server":
            answer["timings"] = self._timings(body, len(tokens))
        return web.json_response(answer)

    def _chat_events(self, body: dict, tokens: list[str], finish: str, tool) -> list[dict]:
        head = self._head("chat.completion.chunk") | {"model": body["model"]}
        first = {"role": "assistant", "content": None if self.flavour == "llama-server" else ""}
        deltas = [first] + [{"reasoning_content": w} for w in words(self.reasoning or "")]
        if tool:
            arguments = orjson.dumps(tool[1]).decode()
            deltas.append({"tool_calls": [{"index": 0, "id": "call_fake1", "type": "function",
                                           "function": {"name": tool[0], "arguments": ""}}]})
            half = len(arguments) // 2
            deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": part}}]}
                       for part in (arguments[:half], arguments[half:])]
            finish, tokens = "tool_calls", []
        deltas += [{"content": t} for t in tokens]
        events = [head | {"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
        if self.flavour == "vllm":
            events[-1]["choices"][0]["finish_reason"] = finish
        else:
            events.append(head | {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
                                  "timings": self._timings(body, len(tokens))})
        return events + self._usage_events(body, head, len(tokens))

    def _usage_events(self, body: dict, head: dict, completion: int) -> list[dict]:
        asked = (body.get("stream_options") or {}).get("include_usage")
        if not (self.usage and asked):
            return []
        return [head | {"choices": [], "usage": self._usage(body, completion)}]

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        tokens, finish = self._plan(body)
        head = self._head("text_completion") | {"model": body["model"]}
        if not body.get("stream"):
            answer = head | {"choices": [{"index": 0, "text": "".join(tokens), "logprobs": None,
                                          "finish_reason": finish}], "usage": self._usage(body, len(tokens))}
            if self.flavour == "llama-server":
                answer["timings"] = self._timings(body, len(tokens))
            return web.json_response(answer)
        events = [head | {"choices": [{"index": 0, "text": t, "logprobs": None, "finish_reason": None}]}
                  for t in tokens]
        events[-1]["choices"][0]["finish_reason"] = finish
        if self.flavour == "llama-server" and self.usage:
            events[-1] |= {"usage": self._usage(body, len(tokens)), "timings": self._timings(body, len(tokens))}
        elif self.flavour == "vllm":
            events += self._usage_events(body, head, len(tokens))
        return await self._stream(request, body, events)

    async def _stream(self, request: web.Request, body: dict, events: list[dict]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        cut = self._cuts.pop(0) if self._cuts else None
        for i, event in enumerate(events):
            if cut is not None and i == cut:
                request.transport.close()
                return response
            await asyncio.sleep(self.token_delay)
            await response.write(b"data: " + orjson.dumps(event) + b"\n\n")
            if i == 1 and self.gate is not None:
                await self.gate.wait()
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    # -- embeddings and rerank ------------------------------------------------------------------

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = []
        for i, text in enumerate(inputs):
            vector = raw_vector(str(text), body.get("dimensions") or self.embedding_dim)
            if body.get("encoding_format") == "base64":
                vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vector})
        count = prompt_tokens(body)
        return web.json_response({"object": "list", "data": data, "model": body["model"],
                                  "usage": {"prompt_tokens": count, "total_tokens": count}})

    async def _rerank(self, request: web.Request) -> web.Response:
        body = await request.json()
        query = set(str(body.get("query", "")).split())
        results = []
        for i, doc in enumerate(body.get("documents") or []):
            overlap = len(query & set(str(doc).split()))
            results.append({"index": i, "document": {"text": doc}, "relevance_score": 1 - math.exp(-overlap)})
        results.sort(key=lambda r: -r["relevance_score"])
        return web.json_response({"id": "rerank-fake", "model": body["model"], "usage": {"total_tokens": 7},
                                  "results": results[: body.get("top_n") or len(results)]})
