"""FakeOllama plus Ollama's own OpenAI layer (`/v1/chat/completions`, `/v1/embeddings`,
`/v1/models`) in the shapes of reference §15, for tests of /v1 requests routed to Ollama."""

from __future__ import annotations

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
        router.add_post("/v1/embeddings", self._v1_embeddings)
        router.add_get("/v1/models", self._v1_models)

    async def _v1_models(self, request: web.Request) -> web.Response:
        data = [{"id": name, "object": "model", "created": 1729000000, "owned_by": "library"} for name in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _v1_chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        try:
            self._spec(body.get("model") or "")
        except ApiError as exc:
            return v1_error(exc.status, exc.message)
        tokens = fmt.word_tokens(self.reply.format(name=self.name, model=body["model"]))
        head = {"id": "chatcmpl-42", "object": "chat.completion", "created": int(time.time()),
                "model": body["model"], "system_fingerprint": "fp_ollama"}
        usage = {"prompt_tokens": 3, "completion_tokens": len(tokens), "total_tokens": 3 + len(tokens)}
        if not body.get("stream"):
            choice = {"index": 0, "message": {"role": "assistant", "content": "".join(tokens)}, "finish_reason": "stop"}
            return web.json_response(head | {"choices": [choice], "usage": usage})
        head["object"] = "chat.completion.chunk"
        deltas = [{"role": "assistant", "content": tokens[0]}] + [{"content": t} for t in tokens[1:]]
        events = [head | {"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
        events.append(head | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(head | {"choices": [], "usage": usage})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
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
