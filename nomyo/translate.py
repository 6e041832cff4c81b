"""Ollama requests served by OpenAI-compatible backends: translate, send, translate back.

Routing is dialect-blind: `/api/chat` for a model that only a vLLM or llama.cpp server has goes
there. `ollama_sender` decides per chosen backend: an Ollama backend gets the client's bytes
through the plain relay; any other gets the request rewritten for `/v1` (`dialects.to_openai`)
and its answer rewritten as Ollama's (`dialects.from_openai`), a stream event by event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
from aiohttp import web

from .access import AccessRecord
from .bridge import first_byte, model_id, open_upstream, read_all
from .dialects.from_openai import ToOllama, created_at, embed_answer, embeddings_answer
from .dialects.ollama import NDJSON, is_load_or_unload, keeps_alive_zero
from .dialects.openai import DONE, SSE, SSEParser, UsageMeter, error_message, estimate_tokens, prompt_text
from .dialects.to_openai import chat_request, embed_inputs, embed_request, generate_context, generate_request
from .errors import RouterError
from .fleet import Backend
from .keepalive import end_stream, open_stream
from .relay import relay
from .responses import json_response
from .upstream import IdleWatch

log = logging.getLogger("nomyo.translate")
Sender = Callable[[Backend], Awaitable[web.StreamResponse]]


def ollama_sender(request: web.Request, router, access: AccessRecord, path: str, payload: dict,
                  raw: bytes, key: str, spelled: str) -> Sender:
    """How to send one /api request to whichever backend the table picks."""

    async def send(backend: Backend) -> web.StreamResponse:
        if backend.config.is_ollama:
            early = path in ("/api/embed", "/api/embeddings") or payload.get("stream") is not False
            return await relay(request, router.session, backend, path, raw, access, early=early,
                               timing=router.timing)
        exchange = Exchange(request, router, backend, access, payload, spelled)
        return await exchange.run(path, model_id(backend, key, spelled))

    return send


class Exchange:
    """One Ollama request translated for one OpenAI-compatible backend."""

    def __init__(self, request: web.Request, router, backend: Backend, access: AccessRecord,
                 body: dict, model: str):
        self.request = request
        self.router = router
        self.backend = backend
        self.access = access
        self.body = body
        self.model = model  # as the client spelled it: Ollama echoes that
        self.started_ns = time.perf_counter_ns()

    async def run(self, path: str, ident: str) -> web.StreamResponse:
        if path in ("/api/embed", "/api/embeddings"):
            return await self._embed(path, ident)
        chat = path == "/api/chat"
        if is_load_or_unload(path, self.body):
            return self._load_answer(chat)
        stream = self.body.get("stream") is not False
        kind = self.backend.config.type
        if chat:
            upath, payload = "/chat/completions", chat_request(self.body, ident, kind, stream)
        else:
            upath, payload = generate_request(self.body, ident, kind, stream)
        meter = UsageMeter(estimate_tokens(prompt_text(payload)))
        upstream = await self._open(upath, payload, stream)
        try:
            self.access.status = upstream.status
            if upstream.status >= 400:
                return await self._error(upstream)
            translator = ToOllama(self.model, chat, meter, started_ns=self.started_ns, collect=not stream,
                                  context=None if chat else generate_context(self.body, payload))
            if stream and upstream.headers.get("Content-Type", "").startswith(SSE):
                return await self._stream(upstream, translator)
            return await self._whole(upstream, translator, stream)
        finally:
            upstream.release()

    async def _open(self, path: str, payload: dict, stream: bool) -> aiohttp.ClientResponse:
        return await open_upstream(self.request, self.router.session, self.backend, path, orjson.dumps(payload),
                                   stream=stream, timing=self.router.timing)

    def _load_answer(self, chat: bool) -> web.Response:
        """An empty prompt loads (keep_alive 0: unloads) a model in Ollama; an OpenAI server
        has its models loaded already, so the router answers as Ollama would."""

        reason = "unload" if keeps_alive_zero(self.body.get("keep_alive")) else "load"
        answer = {"model": self.model, "created_at": created_at()}
        answer |= {"message": {"role": "assistant", "content": ""}} if chat else {"response": ""}
        self.access.status, self.access.outcome = 200, "ok"
        return json_response(answer | {"done": True, "done_reason": reason})

    async def _error(self, upstream: aiohttp.ClientResponse) -> web.Response:
        """The backend's error, in Ollama's words and with its status."""

        data = await read_all(upstream, self.backend)
        self.access.outcome = "backend-error"
        return json_response({"error": error_message(data, upstream.status)}, upstream.status)

    async def _json(self, upstream: aiohttp.ClientResponse) -> dict:
        data = await read_all(upstream, self.backend)
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            raise RouterError(502, f"backend {self.backend.name} sent an answer that is not a JSON object")
        return obj

    async def _whole(self, upstream: aiohttp.ClientResponse, translator: ToOllama, stream: bool) -> web.StreamResponse:
        """A non-streamed answer as one Ollama object (a stream of that one line if the client
        asked for a stream and the backend did not stream)."""

        translator.collect = True
        translator.event(await self._json(upstream))
        final = translator.final()
        self._count(final)
        if not stream:
            return json_response(final)
        response = await open_stream(self.request, 200, {"Content-Type": NDJSON})
        await response.write(orjson.dumps(final) + b"\n")
        await response.write_eof()
        return response

    def _count(self, final: dict) -> None:
        self.access.outcome = "ok"
        self.access.count((final.get("prompt_eval_count", 0), final.get("eval_count", 0)))

    async def _stream(self, upstream: aiohttp.ClientResponse, translator: ToOllama) -> web.StreamResponse:
        """SSE events in, NDJSON lines out, as they come; the done line once the backend is done."""

        response = await open_stream(self.request, 200, {"Content-Type": NDJSON})
        parser = SSEParser()
        ended, failure = False, None
        watch = IdleWatch(upstream, self.router.timing.idle)
        try:
            async for chunk in upstream.content.iter_any():
                if not ended:  # after [DONE], read on to the end so the connection is reused
                    watch.writing = True
                    ended, failure = await self._forward(response, parser.feed(chunk), translator)
                    watch.writing = False
                watch.touch()
                if failure:
                    break
            else:
                if not ended:
                    ended, failure = await self._forward(response, parser.close(), translator)
        except asyncio.CancelledError:
            self._cut(translator, "client-disconnected")
            raise
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            self._cut(translator, "client-disconnected")
            return response
        except aiohttp.ClientError as exc:
            failure = f"backend {self.backend.name} failed mid-stream: {watch.reason(exc)}"
            log.warning("%s", failure)
        finally:
            watch.stop()
        if failure:
            self._cut(translator, "backend-failed-mid-stream")
            return await end_stream(response, orjson.dumps({"error": failure}) + b"\n")
        final = translator.final(ended=ended or translator.finish is not None)
        self._count(final)
        return await end_stream(response, orjson.dumps(final) + b"\n")

    async def _forward(self, response: web.StreamResponse, payloads: list[bytes],
                       translator: ToOllama) -> tuple[bool, str | None]:
        """Translate and write the events of one network chunk: (stream ended, error message)."""

        lines: list[dict] = []
        ended, failure = False, None
        for payload in payloads:
            if payload.strip() == DONE:
                ended = True
                break
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                log.warning("backend %s sent an event that is not JSON; skipped", self.backend.name)
                continue
            if isinstance(obj, dict) and obj.get("error"):
                failure = error_message(payload, 500)
                break
            lines.extend(translator.event(obj))
        if lines:
            await response.write(b"".join(orjson.dumps(line) + b"\n" for line in lines))
            first_byte(self.access)
        return ended, failure

    def _cut(self, translator: ToOllama, outcome: str) -> None:
        self.access.outcome = outcome
        self.access.count(translator.meter.counts())

    async def _embed(self, path: str, ident: str) -> web.Response:
        """/api/embed and /api/embeddings via /v1/embeddings, the whole batch in one call."""

        legacy = path == "/api/embeddings"
        inputs = embed_inputs(self.body)
        if not inputs:  # Ollama loads the model and embeds nothing
            self.access.status, self.access.outcome = 200, "ok"
            return json_response({"embedding": []} if legacy else {"model": self.model, "embeddings": []})
        meter = UsageMeter(estimate_tokens("\n".join(inputs)))
        upstream = await self._open("/embeddings", embed_request(self.body, ident), False)
        try:
            self.access.status = upstream.status
            if upstream.status >= 400:
                return await self._error(upstream)
            obj = await self._json(upstream)
        finally:
            upstream.release()
        try:
            answer = embeddings_answer(obj, meter) if legacy else embed_answer(obj, self.model, meter, self.started_ns)
        except (ValueError, TypeError) as exc:
            raise RouterError(502, f"backend {self.backend.name} sent invalid embeddings: {exc}") from None
        self.access.outcome = "ok"
        self.access.count(meter.counts())
        return json_response(answer)
