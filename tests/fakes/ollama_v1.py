"""FakeOllama plus Ollama's own OpenAI layer (`/v1/chat/completions`, `/v1/completions`,
`/v1/embeddings`, `/v1/models`) in the shapes of reference §15, for tests of /v1 requests routed
to Ollama and for `make demo`.

`/v1/chat/completions` behaves like `/api/chat` around its own wire format: it loads the model
(`load_delay`), takes a `num_parallel` slot, paces tokens (`token_delay`), waits on `gate` after
the first token, and obeys the scripted faults (`hang`, `fail_next`, `fail_midstream` as an SSE
error event, `cut_next`, `reset_next`, `garble_next` ("stream": a broken event, then the stream
ends without `[DONE]`)), with the same counters. `/v1/completions` loads, takes a slot and paces
tokens the same way, without scripted faults."""

from __future__ import annotations

import asyncio
import time

import orjson
from aiohttp import web

from . import ollama_formats as fmt
from .ollama_backend import ApiError, FakeOllama


def v1_error(status: int, message: str) -> web.Response:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return web.json_response(body, status=status)


class FakeOllamaV1(FakeOllama):
    """A FakeOllama that also answers Ollama's /v1 endpoints."""

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        super()._add_routes(router)
        router.add_post("/v1/chat/completions", self._v1_chat)
        router.add_post("/v1/completions", self._v1_completions)
        router.add_post("/v1/embeddings", self._v1_embeddings)
        router.add_get("/v1/models", self._v1_models)

    async def _v1_models(self, request: web.Request) -> web.Response:
        data = [{"id": name, "object": "model", "created": 1729000000, "owned_by": "library"} for name in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _v1_chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        try:
            return await self._inference(request, "", self._serve_v1_chat, body=body if isinstance(body, dict) else {})
        except ApiError as exc:
            return v1_error(exc.status, exc.message)

    async def _serve_v1_chat(self, request: web.Request, body: dict, ticket) -> web.StreamResponse:
        spec = self._spec(body.get("model") or "")
        await self._load(spec, self.keep_alive_s, ticket)
        limit = body.get("max_tokens")
        limit = limit if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0 else None
        tokens = fmt.n_tokens(fmt.word_tokens(self.reply.format(name=self.name, model=body["model"])), limit)
        head = {"id": "chatcmpl-42", "object": "chat.completion", "created": int(time.time()),
                "model": body["model"], "system_fingerprint": "fp_ollama"}
        usage = {"prompt_tokens": 3, "completion_tokens": len(tokens), "total_tokens": 3 + len(tokens)}
        fault = self._faults.popleft() if self._faults else None
        if fault and (fault.kind in ("reset", "garbage-json", "garbage-http") or not body.get("stream")):
            return await self._apply_fault(request, ticket, fault)
        async with self._slot(ticket.key):
            if not body.get("stream"):
                for _ in tokens:
                    await asyncio.sleep(self.token_delay)
                choice = {"index": 0, "message": {"role": "assistant", "content": "".join(tokens)},
                          "finish_reason": "stop"}
                return web.json_response(head | {"choices": [choice], "usage": usage})
            head["object"] = "chat.completion.chunk"
            first = tokens[0] if tokens else ""  # max_tokens 0: the role chunk alone
            deltas = [{"role": "assistant", "content": first}] + [{"content": t} for t in tokens[1:]]
            events = [head | {"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
            events.append(head | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                events.append(head | {"choices": [], "usage": usage})
            response = ticket.response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for i, event in enumerate(events):
                if fault and i == min(fault.after, len(tokens)):
                    return await self._v1_fault(request, ticket, fault, response)
                if i < len(tokens):
                    await asyncio.sleep(self.token_delay)
                await response.write(b"data: " + orjson.dumps(event) + b"\n\n")
                if i == 0 and self.gate is not None:
                    await self.gate.wait()
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response

    async def _v1_fault(self, request: web.Request, ticket, fault, response: web.StreamResponse) -> web.StreamResponse:
        """A scripted failure after the stream started, as Ollama's OpenAI layer shows it."""
        if fault.kind == "cut":
            return await self._apply_fault(request, ticket, fault, response)
        ticket.outcome = "failed"
        if fault.kind == "error":
            error = {"error": {"message": fault.error, "type": "api_error", "param": None, "code": None}}
            await response.write(b"data: " + orjson.dumps(error) + b"\n\n")
        else:  # garbage-stream
            await response.write(b"data: {\"id\": \"chatcmpl-42\", \"choi\n\n\xff\xfe not an event\n\n")
        await response.write_eof()
        return response

    async def _v1_completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        body = body if isinstance(body, dict) else {}
        try:
            return await self._inference(request, "", self._serve_v1_completions, body=body)
        except ApiError as exc:
            return v1_error(exc.status, exc.message)

    async def _serve_v1_completions(self, request: web.Request, body: dict, ticket) -> web.StreamResponse:
        """Reference §15.2: every chunk carries its text, the last one `finish_reason`."""
        spec = self._spec(body.get("model") or "")
        await self._load(spec, self.keep_alive_s, ticket)
        tokens = fmt.word_tokens(self.reply.format(name=self.name, model=body["model"]))
        head = {"id": "cmpl-7", "object": "text_completion", "created": int(time.time())}
        tail = {"model": body["model"], "system_fingerprint": "fp_ollama"}
        usage = {"prompt_tokens": 5, "completion_tokens": len(tokens), "total_tokens": 5 + len(tokens)}
        async with self._slot(ticket.key):
            if not body.get("stream"):
                for _ in tokens:
                    await asyncio.sleep(self.token_delay)
                choice = {"text": "".join(tokens), "index": 0, "finish_reason": "stop"}
                return web.json_response(head | {"choices": [choice]} | tail | {"usage": usage})
            events = [head | {"choices": [{"text": t, "index": 0, "finish_reason": None}]} | tail for t in tokens]
            events.append(head | {"choices": [{"text": "", "index": 0, "finish_reason": "stop"}]} | tail)
            if (body.get("stream_options") or {}).get("include_usage"):
                events.append(head | {"choices": []} | tail | {"usage": usage})
            response = ticket.response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for event in events:
                await asyncio.sleep(self.token_delay)
                await response.write(b"data: " + orjson.dumps(event) + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response

    async def _v1_embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "embedding": fmt.normalized_vector(t, self.embedding_dim), "index": i}
                for i, t in enumerate(inputs)]
        return web.json_response({"object": "list", "data": data, "model": body["model"],
                                  "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}})
