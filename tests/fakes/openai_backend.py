"""A scriptable OpenAI-compatible server, shaped like vLLM or llama.cpp's llama-server.

A real aiohttp server on a real port serving `/v1/models`, `/v1/chat/completions`,
`/v1/completions`, `/v1/embeddings` and `/v1/rerank`. Streams are SSE (`data: {...}\\n\\n`, ending
`data: [DONE]`), one event per token with real delays. The two flavours differ where the real
servers do (reference §19): vLLM opens a chat stream with `{"role":"assistant","content":""}`,
puts `finish_reason` on the last token and sends `usage` only when asked; llama-server opens with
`"content": null`, ends with an empty-delta finish chunk carrying `timings`, and always reports
usage on the last completions chunk. `usage=False` behaves like llama-cpp-python's stream (no
counts at all); `flavour="llama-cpp-python"` is that server: no usage in streams, no timings,
`/extras/tokenize`. Errors are OpenAI error objects (`legacy_errors`: vLLM's older top-level shape).

Options that make it less flattering: `spaced` (JSON written `"a": 1` as Python servers write it),
`sse_space=False` (`data:{...}` without the space). llama-server extras: `/props`, `/tokenize`,
`vision` (models that read images), and `router_mode` (llama-server's multi-model mode: `/models`
with each model's `status`, only `loaded` models answer, `/models/load` and `/models/unload`,
`/props?model=` that loads the model unless `autoload=false`). Tools, `response_format`,
reasoning and images are answered as `answering` describes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import struct
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from .answering import called_tool, openai_format, openai_images, openai_thinks, structured, with_images


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
                 usage: bool = True, legacy_errors: bool = False, spaced: bool = False, sse_space: bool = True,
                 router_mode: bool = False, loaded=None, vision=(), n_ctx: int = 2048):
        self.name, self.models, self.flavour, self.api_key = name, list(models), flavour, api_key
        self.reply, self.token_delay, self.embedding_dim = reply, token_delay, embedding_dim
        self.usage = usage and flavour != "llama-cpp-python"
        self.legacy_errors, self.spaced, self.sse_space = legacy_errors, spaced, sse_space
        self.router_mode, self.vision, self.n_ctx = router_mode, set(vision), n_ctx
        self.loaded = set(self.models if loaded is None else loaded)  # router mode: which are loaded
        self.autoloads = 0  # router mode: models loaded because someone asked /props without autoload=false
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
        app.router.add_get("/models", self._models)
        app.router.add_get("/props", self._props)
        app.router.add_post("/models/load", self._load)
        app.router.add_post("/models/unload", self._unload)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/extras/tokenize", self._tokenize)
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

    def dumps(self, value: Any) -> bytes:
        return json.dumps(value).encode() if self.spaced else orjson.dumps(value)

    def answer(self, value: Any, status: int = 200) -> web.Response:
        return web.Response(status=status, body=self.dumps(value), content_type="application/json")

    def error(self, status: int, message: str, kind: str = "BadRequestError") -> web.Response:
        if self.legacy_errors:
            body = {"object": "error", "message": message, "type": kind, "param": None, "code": status}
        elif self.flavour == "llama-server":
            body = {"error": {"code": status, "message": message, "type": "invalid_request_error"}}
        else:
            body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
        return self.answer(body, status)

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
        return self.answer({"object": "list", "data": [self._model_entry(m) for m in self.models]})

    def _model_entry(self, model: str) -> dict:
        entry: dict[str, Any] = {"id": model, "object": "model", "created": 1729000000}
        if self.flavour == "vllm":
            return entry | {"owned_by": "vllm", "root": model, "parent": None, "max_model_len": 4096}
        if self.flavour != "llama-server":
            return entry | {"owned_by": "me"}
        inputs = ["text", "image"] if model in self.vision else ["text"]
        entry |= {"owned_by": "llamacpp", "architecture": {"input_modalities": inputs, "output_modalities": ["text"]}}
        if self.router_mode:
            entry["status"] = {"value": "loaded" if model in self.loaded else "unloaded"}
        if model in self.loaded:
            entry["meta"] = {"n_params": 1_500_000, "n_ctx_train": 512, "n_embd": 64, "size": 6_000_000}
        return entry

    # -- llama-server extras --------------------------------------------------------------------

    async def _props(self, request: web.Request) -> web.Response:
        if self.flavour != "llama-server":
            return web.Response(status=404, text="404 Not Found")
        model = request.query.get("model") if self.router_mode else self.models[0]
        if model is None:
            return self.answer({"role": "router", "build_info": "b6000-fake"})
        if model not in self.models:
            return self.error(404, "model not found")
        if model not in self.loaded:
            if request.query.get("autoload") == "false":
                return self.error(400, "model is not loaded")
            self.loaded.add(model)
            self.autoloads += 1
        settings = {"id": 0, "n_ctx": self.n_ctx, "params": {"n_predict": -1, "temperature": 0.8}}
        return self.answer({"default_generation_settings": settings, "total_slots": 2,
                            "model_path": f"/models/{model}.gguf", "chat_template": "{{ messages }}",
                            "chat_template_caps": {"supports_tools": True, "supports_tool_calls": True},
                            "modalities": {"vision": model in self.vision, "audio": False},
                            "build_info": "b6000-fake", "is_sleeping": False})

    async def _load(self, request: web.Request) -> web.Response:
        return self._set_loaded(await request.json(), True)

    async def _unload(self, request: web.Request) -> web.Response:
        return self._set_loaded(await request.json(), False)

    def _set_loaded(self, body: dict, loaded: bool) -> web.Response:
        model = body.get("model")
        if not self.router_mode or model not in self.models:
            return self.error(404 if self.router_mode else 400, "not in router mode" if not self.router_mode
                              else "model not found")
        (self.loaded.add if loaded else self.loaded.discard)(model)
        return self.answer({"success": True})

    async def _tokenize(self, request: web.Request) -> web.Response:
        """llama-server's `/tokenize` (`content`) and llama-cpp-python's `/extras/tokenize` (`input`)."""
        body = await request.json()
        native = request.path == "/tokenize"
        if native != (self.flavour == "llama-server"):
            return web.Response(status=404, text="404 Not Found")
        text = str(body.get("content") if native else body.get("input") or "")
        return self.answer({"tokens": list(range(1, len(text.split()) + 1))})

    # -- generation -----------------------------------------------------------------------------

    def _plan(self, body: dict) -> tuple[list[str], str]:
        text = with_images(self.reply.format(name=self.name, model=body["model"]), openai_images(body))
        tokens = words(structured(openai_format(body.get("response_format")), text) or text)
        if self.router_mode:
            self.loaded.add(body["model"])  # llama-server's router loads a model on its first request
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
        return called_tool(body.get("tools"), self.tool_call)

    def _reasoning(self, body: dict) -> str:
        return self.reasoning or ("Let me think about this." if openai_thinks(body) else "")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        tokens, finish = self._plan(body)
        tool = self._tool(body)
        if body.get("stream"):
            return await self._stream(request, body, self._chat_events(body, tokens, finish, tool))
        message: dict[str, Any] = {"role": "assistant", "content": None if tool else "".join(tokens)}
        if self._reasoning(body):
            message["reasoning_content"] = self._reasoning(body)
        if tool:
            message["tool_calls"] = [{"id": "call_fake1", "type": "function",
                                      "function": {"name": tool[0], "arguments": orjson.dumps(tool[1]).decode()}}]
            finish = "tool_calls"
        answer = self._head("chat.completion") | {"model": body["model"], "choices": [
            {"index": 0, "message": message, "logprobs": self._logprobs(body, tokens), "finish_reason": finish}]}
        answer["usage"] = self._usage(body, len(tokens))
        if self.flavour == "llama-server":
            answer["timings"] = self._timings(body, len(tokens))
        return self.answer(answer)

    @staticmethod
    def _logprobs(body: dict, tokens: list[str]) -> dict | None:
        """Chat logprobs as OpenAI and vLLM write them: `top_logprobs` is `[]` unless asked for."""
        if not body.get("logprobs"):
            return None
        top = body.get("top_logprobs") or 0
        return {"content": [{"token": t, "logprob": -0.5, "bytes": list(t.encode()),
                             "top_logprobs": [{"token": t, "logprob": -0.5, "bytes": list(t.encode())}][:top]}
                            for t in tokens]}

    def _chat_events(self, body: dict, tokens: list[str], finish: str, tool) -> list[dict]:
        head = self._head("chat.completion.chunk") | {"model": body["model"]}
        first = {"role": "assistant", "content": None if self.flavour == "llama-server" else ""}
        if self.flavour == "llama-cpp-python":
            first = {"role": "assistant"}
        deltas = [first] + [{"reasoning_content": w} for w in words(self._reasoning(body))]
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
            events.append(head | {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
            if self.flavour == "llama-server":
                events[-1]["timings"] = self._timings(body, len(tokens))
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
            return self.answer(answer)
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
            await response.write(self._event(self.dumps(event)))
            if i == 1 and self.gate is not None:
                await self.gate.wait()
        await response.write(self._event(b"[DONE]"))
        await response.write_eof()
        return response

    def _event(self, payload: bytes) -> bytes:
        return (b"data: " if self.sse_space else b"data:") + payload + b"\n\n"

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
        return self.answer({"object": "list", "data": data, "model": body["model"],
                                  "usage": {"prompt_tokens": count, "total_tokens": count}})

    async def _rerank(self, request: web.Request) -> web.Response:
        body = await request.json()
        query = set(str(body.get("query", "")).split())
        results = []
        for i, doc in enumerate(body.get("documents") or []):
            overlap = len(query & set(str(doc).split()))
            results.append({"index": i, "document": {"text": doc}, "relevance_score": 1 - math.exp(-overlap)})
        results.sort(key=lambda r: -r["relevance_score"])
        return self.answer({"id": "rerank-fake", "model": body["model"], "usage": {"total_tokens": 7},
                                  "results": results[: body.get("top_n") or len(results)]})
