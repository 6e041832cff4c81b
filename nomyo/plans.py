"""How one call is put to one backend and its answer made the caller's: a plan per pairing.

Routing is dialect-blind, so the backend the ledger picks decides how the call travels:
- `OllamaRelay`: an Ollama client's call to an Ollama backend, the client's bytes as sent;
- `OllamaTranslated`: an Ollama client's call to an OpenAI-compatible backend, rewritten for
  `/v1` (`dialects.to_openai`) and its answer rewritten as Ollama's (`dialects.from_openai`);
- `OpenAIRelay`: an OpenAI client's call to any backend's `/v1` API, relayed with three changes
  that make the same request work everywhere: the model spelled as that backend lists it (vLLM
  matches ids exactly), a stream asks for `usage` so the router can count (the extra usage
  chunk is taken out again if the client did not ask), and `stream_options` dropped from a
  non-streamed request (hosted APIs reject it).

A plan lives for one attempt: `prepare` says what to send (or answers by itself), `framing`
says how to relay a stream, `whole` reads and converts a non-streamed answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from .call import Call, Dialect
from .dialects.from_openai import ToOllama, created_at, embed_answer, embeddings_answer
from .dialects.ollama import JSON_UTF8, NDJSON, answer_counts, answer_load_seconds, final_counts, keeps_alive_zero
from .dialects.openai import (
    JSON,
    SSE,
    UsageMeter,
    error_message,
    estimate_tokens,
    is_error_object,
    prompt_text,
    usage_of,
)
from .dialects.to_openai import chat_request, embed_inputs, embed_request, generate_context, generate_request
from .errors import RouterError, openai_error_body
from .fleet import Backend
from .framing import Framing, NdjsonRelay, SseRelay, SseToNdjson
from .names import normalize_model
from .upstream import describe, is_json, openai_path, request_headers, response_headers

EMBED_PATHS = ("/api/embed", "/api/embeddings")
GENERATIONS = ("/api/chat", "/api/generate")


@dataclass(slots=True)
class Send:
    """What to send upstream."""

    path: str
    body: bytes
    headers: dict[str, str]
    early: bool  # the answer's headers come early (a stream, embeddings): the first-byte clock applies


@dataclass(slots=True)
class Whole:
    """A non-streamed answer, ready for the caller: `as_stream` when the caller asked for a
    stream and the backend answered in one piece (it goes out as a one-line stream)."""

    status: int
    headers: dict[str, str]
    body: bytes
    kind: str  # the outcome: ok, backend-error
    counts: tuple[int, int] | None = None
    load_seconds: float | None = None
    as_stream: bool = False


def plan_for(call: Call, backend: Backend):
    if call.dialect is Dialect.OPENAI:
        return OpenAIRelay(call, backend)
    if backend.config.is_ollama:
        return OllamaRelay(call, backend)
    return OllamaTranslated(call, backend)


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


async def read_all(upstream: aiohttp.ClientResponse, backend: Backend) -> bytes:
    try:
        return await upstream.read()
    except aiohttp.ClientError as exc:
        raise RouterError(502, f"backend {backend.name} failed mid-answer: {describe(exc)}") from None


def not_json(backend: Backend, content_type: str | None = None) -> RouterError:
    """A 200 that is not the JSON it should be (a captive portal's page, a misrouted proxy): the
    backend's failure, not an answer to hand the client."""

    what = f"a {content_type.split(';')[0]} page" if content_type else "an answer that is not JSON"
    return RouterError(502, f"backend {backend.name} sent {what} instead of an answer")


class OllamaRelay:
    """Ollama to Ollama: nothing is parsed but the end of the answer."""

    def __init__(self, call: Call, backend: Backend):
        self.call = call
        self.backend = backend

    def prepare(self) -> Send | Whole:
        # a whole generation starts only when it is complete: no first-byte limit then
        early = self.call.path not in GENERATIONS or self.call.stream
        return Send(self.call.path, self.call.raw, request_headers(self.backend, self.call.headers), early)

    def framing(self, upstream: aiohttp.ClientResponse) -> Framing | None:
        if upstream.status < 400 and upstream.headers.get("Content-Type", "").startswith(NDJSON):
            return NdjsonRelay()
        return None

    async def whole(self, upstream: aiohttp.ClientResponse) -> Whole:
        """Read, count and pass on with its status. A 200 that is not JSON is the backend's
        failure, not an answer to hand the client."""

        data = await read_all(upstream, self.backend)
        headers = response_headers(upstream)
        if upstream.status >= 400:
            return Whole(upstream.status, headers, data, "backend-error")
        content_type = upstream.headers.get("Content-Type", "")
        if not content_type.startswith("application/json"):
            raise not_json(self.backend, content_type)
        if upstream.headers.get("Content-Encoding", "identity") != "identity":
            return Whole(upstream.status, headers, data, "ok", final_counts(data))
        try:  # one parse checks the answer and reads its counts
            answer = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise not_json(self.backend) from None
        return Whole(upstream.status, headers, data, "ok", answer_counts(answer), answer_load_seconds(answer))


class OpenAIRelay:
    """An OpenAI client's call to any backend's `/v1`."""

    def __init__(self, call: Call, backend: Backend):
        self.call = call
        self.backend = backend
        self.meter = UsageMeter(estimate_tokens(prompt_text(call.payload)))
        self.added_usage = False

    def prepare(self) -> Send | Whole:
        call, path = self.call, self.call.upstream_path
        ident = model_id(self.backend, call.key, str(call.payload.get("model")))
        body, self.added_usage = upstream_body(call.payload, call.raw, ident)
        headers = request_headers(self.backend, call.headers, content_type=JSON, accept=SSE if call.stream else JSON)
        # a whole chat/completion answer starts only when it is complete: no first-byte limit then
        early = call.stream or path.endswith(("/embeddings", "/rerank"))
        return Send(openai_path(self.backend, path), body, headers, early)

    def framing(self, upstream: aiohttp.ClientResponse) -> Framing | None:
        if upstream.status < 400 and upstream.headers.get("Content-Type", "").startswith(SSE):
            want_usage = self.call.stream and not self.added_usage
            return SseRelay(self.meter, strip=self.added_usage, want_usage=want_usage)
        return None

    async def whole(self, upstream: aiohttp.ClientResponse) -> Whole:
        """Counted from its `usage`; an error becomes an OpenAI error object if the backend sent
        another shape (vLLM's older top-level errors, plain text)."""

        data = await read_all(upstream, self.backend)
        content_type = upstream.headers.get("Content-Type", JSON)
        if upstream.status < 400 and not content_type.startswith(JSON):
            raise not_json(self.backend, content_type)
        if upstream.status < 400 and not is_json(data):
            raise not_json(self.backend)
        if upstream.status >= 400:
            if not is_error_object(data):
                data = openai_error_body(upstream.status, error_message(data, upstream.status))
                content_type = JSON
            return Whole(upstream.status, {"Content-Type": content_type}, data, "backend-error")
        counts = usage_of(data) or (self.meter.prompt_estimate, 0)
        return Whole(upstream.status, {"Content-Type": content_type}, data, "ok", counts)


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


class OllamaTranslated:
    """An Ollama client's call served by an OpenAI-compatible backend."""

    def __init__(self, call: Call, backend: Backend):
        self.call = call
        self.backend = backend
        self.ident = model_id(backend, call.key, call.model)
        self.meter = UsageMeter()
        self.chat = call.path == "/api/chat"
        self.context = None

    def prepare(self) -> Send | Whole:
        call = self.call
        if call.path in EMBED_PATHS:
            return self._embed_request()
        if call.changes_loaded:
            return self._load_answer()
        kind = self.backend.config.type
        if self.chat:
            path, payload = "/chat/completions", chat_request(call.payload, self.ident, kind, call.stream)
        else:
            path, payload = generate_request(call.payload, self.ident, kind, call.stream)
            self.context = generate_context(call.payload, payload)  # the conversation, for Ollama's `context`
        self.meter.prompt_estimate = estimate_tokens(prompt_text(payload))
        return self._send(path, payload, early=call.stream)

    def _send(self, path: str, payload: dict, *, early: bool) -> Send:
        accept = SSE if self.call.stream and path != "/embeddings" else JSON
        headers = request_headers(self.backend, self.call.headers, content_type=JSON, accept=accept)
        return Send(openai_path(self.backend, path), orjson.dumps(payload), headers, early)

    def _embed_request(self) -> Send | Whole:
        """/api/embed and /api/embeddings via /v1/embeddings, the whole batch in one call."""

        inputs = embed_inputs(self.call.payload)
        if not inputs:  # Ollama loads the model and embeds nothing
            legacy = self.call.path == "/api/embeddings"
            empty = {"embedding": []} if legacy else {"model": self.call.model, "embeddings": []}
            return Whole(200, {"Content-Type": JSON_UTF8}, orjson.dumps(empty), "ok")
        self.meter.prompt_estimate = estimate_tokens("\n".join(inputs))
        return self._send("/embeddings", embed_request(self.call.payload, self.ident), early=True)

    def _load_answer(self) -> Whole:
        """An empty prompt loads (keep_alive 0: unloads) a model in Ollama; an OpenAI server
        has its models loaded already, so the router answers as Ollama would."""

        reason = "unload" if keeps_alive_zero(self.call.payload.get("keep_alive")) else "load"
        answer = {"model": self.call.model, "created_at": created_at()}
        answer |= {"message": {"role": "assistant", "content": ""}} if self.chat else {"response": ""}
        body = orjson.dumps(answer | {"done": True, "done_reason": reason})
        return Whole(200, {"Content-Type": JSON_UTF8}, body, "ok")

    def framing(self, upstream: aiohttp.ClientResponse) -> Framing | None:
        streams = upstream.status < 400 and upstream.headers.get("Content-Type", "").startswith(SSE)
        if self.call.stream and streams and self.call.path not in EMBED_PATHS:
            translator = ToOllama(self.call.model, self.chat, self.meter, started_ns=self.call.started_ns,
                                  context=self.context)
            return SseToNdjson(translator, self.backend.name)
        return None

    async def whole(self, upstream: aiohttp.ClientResponse) -> Whole:
        data = await read_all(upstream, self.backend)
        if upstream.status >= 400:  # the backend's error, in Ollama's words and with its status
            body = orjson.dumps({"error": error_message(data, upstream.status)})
            return Whole(upstream.status, {"Content-Type": JSON_UTF8}, body, "backend-error")
        obj = self._object(data)
        if self.call.path in EMBED_PATHS:
            return self._embed_answer(obj)
        translator = ToOllama(self.call.model, self.chat, self.meter, started_ns=self.call.started_ns, collect=True,
                              context=self.context)
        translator.event(obj)
        final = translator.final()
        counts = (final.get("prompt_eval_count", 0), final.get("eval_count", 0))
        if self.call.stream:  # asked for a stream, answered in one piece: a stream of that one line
            return Whole(200, {"Content-Type": NDJSON}, orjson.dumps(final) + b"\n", "ok", counts, as_stream=True)
        return Whole(200, {"Content-Type": JSON_UTF8}, orjson.dumps(final), "ok", counts)

    def _object(self, data: bytes) -> dict:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            raise RouterError(502, f"backend {self.backend.name} sent an answer that is not a JSON object")
        return obj

    def _embed_answer(self, obj: dict) -> Whole:
        try:
            if self.call.path == "/api/embeddings":
                answer = embeddings_answer(obj, self.meter)
            else:
                answer = embed_answer(obj, self.call.model, self.meter, self.call.started_ns)
        except (ValueError, TypeError) as exc:
            raise RouterError(502, f"backend {self.backend.name} sent invalid embeddings: {exc}") from None
        body = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)  # float32 vectors, as Ollama writes them
        return Whole(200, {"Content-Type": JSON_UTF8}, body, "ok", self.meter.counts())
