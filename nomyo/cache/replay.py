"""An entry replayed in the caller's dialect and mode, as if a backend had just answered.

A streamed entry replays with its original chunking; an entry stored from a non-streamed answer
replays streamed in word slices. Streamed entries replay unstreamed as one object. The model is
spelled as the client spelled it and times are fresh; counts are the original's (the cost the
hit saved). Ollama streams end with a proper `done` line, OpenAI streams with `data: [DONE]`
(after a usage chunk when `stream_options.include_usage` asked for one).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson

from ..dialects.ollama import JSON_UTF8, NDJSON
from ..dialects.openai import JSON, SSE, sse_event
from .entry import CONTENT, THINKING, Entry
from .request import CacheRequest

WORDS = re.compile(r"\S+\s*|\s+")
WORDS_PER_SLICE = 3
Replay = tuple[str, bytes | AsyncIterator[bytes]]


def replay(entry: Entry, request: CacheRequest) -> Replay:
    """(content type, the whole body) or (content type, an async iterator of stream chunks)."""

    if request.kind == "embed":
        return _embedding(entry, request)
    ollama = request.dialect == "ollama"
    if not request.stream:
        obj = _ollama_whole(entry, request) if ollama else _openai_whole(entry, request)
        return (JSON_UTF8 if ollama else JSON), orjson.dumps(obj)
    chunks = _ollama_stream(entry, request) if ollama else _openai_stream(entry, request)
    return (NDJSON if ollama else SSE), _iterate(chunks)


async def _iterate(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def pieces(entry: Entry) -> list[list[str]]:
    """The chunks to stream: the original ones, or word slices of an unstreamed answer."""

    if entry.streamed:
        return entry.parts
    sliced = []
    for kind, text in entry.parts:
        words = WORDS.findall(text)
        sliced += [[kind, "".join(words[i:i + WORDS_PER_SLICE])] for i in range(0, len(words), WORDS_PER_SLICE)]
    return sliced


def created_at() -> str:
    """Go's RFC 3339 with nanoseconds in UTC, as Ollama writes it (trailing zeros trimmed)."""

    text = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return text + "Z"


# ----------------------------------------------------------------------------------------------
# Ollama


def _ollama_line(entry: Entry, request: CacheRequest, kind: str, text: str, **more: Any) -> dict[str, Any]:
    head = {"model": request.model, "created_at": created_at()}
    if request.kind == "chat":
        message = {"role": "assistant", "content": text if kind == CONTENT else ""}
        if kind == THINKING and text:
            message["thinking"] = text
        message.update(more.pop("message", {}))
        return {**head, "message": message, **more}
    line = {**head, "response": text if kind == CONTENT else ""}
    if kind == THINKING and text:
        line["thinking"] = text
    return {**line, **more}


def _ollama_stream(entry: Entry, request: CacheRequest) -> Iterator[bytes]:
    for kind, text in pieces(entry):
        yield orjson.dumps(_ollama_line(entry, request, kind, text, done=False)) + b"\n"
    if entry.tool_calls:
        line = _ollama_line(entry, request, CONTENT, "", message={"tool_calls": entry.tool_calls}, done=False)
        yield orjson.dumps(line) + b"\n"
    yield orjson.dumps(_ollama_line(entry, request, CONTENT, "", done=True, **entry.final)) + b"\n"


def _ollama_whole(entry: Entry, request: CacheRequest) -> dict[str, Any]:
    obj = _ollama_line(entry, request, CONTENT, entry.text(), done=True, **entry.final)
    holder = obj["message"] if request.kind == "chat" else obj
    if thinking := entry.text(THINKING):
        holder["thinking"] = thinking
    if entry.tool_calls and request.kind == "chat":
        holder["tool_calls"] = entry.tool_calls
    return obj


def _embedding(entry: Entry, request: CacheRequest) -> Replay:
    body = dict(entry.body or {})
    if "model" in body:
        body["model"] = request.model
    return (JSON_UTF8 if request.dialect == "ollama" else JSON), orjson.dumps(body)


# ----------------------------------------------------------------------------------------------
# OpenAI


def _usage(entry: Entry) -> dict[str, int]:
    return {"prompt_tokens": entry.prompt_tokens, "completion_tokens": entry.completion_tokens,
            "total_tokens": entry.tokens}


def _openai_head(entry: Entry, request: CacheRequest, whole: bool) -> dict[str, Any]:
    chat = request.kind == "chat"
    kind = ("chat.completion" if whole else "chat.completion.chunk") if chat else "text_completion"
    head = {"id": ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12), "object": kind,
            "created": int(time.time()), "model": request.model}
    if "system_fingerprint" in entry.final:
        head["system_fingerprint"] = entry.final["system_fingerprint"]
    return head


def _openai_whole(entry: Entry, request: CacheRequest) -> dict[str, Any]:
    head = _openai_head(entry, request, True)
    finish = entry.final.get("finish_reason")
    if request.kind != "chat":
        choice = {"text": entry.text(), "index": 0, "logprobs": None, "finish_reason": finish}
        return {**head, "choices": [choice], "usage": _usage(entry)}
    message: dict[str, Any] = {"role": "assistant", "content": entry.text() or (None if entry.tool_calls else "")}
    if thinking := entry.text(THINKING):
        message[entry.final.get("reasoning_field", "reasoning")] = thinking
    if entry.tool_calls:
        message["tool_calls"] = entry.tool_calls
    choice = {"index": 0, "message": message, "finish_reason": finish}
    return {**head, "choices": [choice], "usage": _usage(entry)}


def _openai_stream(entry: Entry, request: CacheRequest) -> Iterator[bytes]:
    head = _openai_head(entry, request, False)
    chat = request.kind == "chat"
    reasoning = entry.final.get("reasoning_field", "reasoning")

    def chunk(choice: dict[str, Any] | None, **more: Any) -> bytes:
        return sse_event(orjson.dumps({**head, "choices": [choice] if choice else [], **more}))

    if chat:
        yield chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
    for kind, text in pieces(entry):
        if chat:
            delta = {"content": text} if kind == CONTENT else {reasoning: text}
            yield chunk({"index": 0, "delta": delta, "finish_reason": None})
        elif kind == CONTENT:
            yield chunk({"text": text, "index": 0, "logprobs": None, "finish_reason": None})
    if entry.tool_calls and chat:
        calls = [{"index": i, **call} for i, call in enumerate(entry.tool_calls)]
        yield chunk({"index": 0, "delta": {"tool_calls": calls}, "finish_reason": None})
    finish = entry.final.get("finish_reason")
    last = {"index": 0, "delta": {}} if chat else {"text": "", "index": 0, "logprobs": None}
    yield chunk({**last, "finish_reason": finish})
    if request.include_usage:
        yield chunk(None, usage=_usage(entry))
    yield sse_event(b"[DONE]")
