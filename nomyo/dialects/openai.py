"""OpenAI's wire format: SSE framing, usage counts, error objects and model listings.

Both directions need these: `/v1` requests relayed to any backend, and Ollama requests translated
for OpenAI-compatible backends. Shapes follow ../shared/reference/ollama-api.md §15 and §19:
vLLM and hosted APIs report `usage`, llama.cpp's `llama-server` adds `timings`, and
llama-cpp-python reports neither when streaming, so the router counts for itself as a last resort.
"""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import orjson

from ..errors import bad_request
from .fields import BOOL, INTEGER, LIST, NUMBER, OBJECT, OPENAI_MESSAGE, STRING, TOOL, check_fields, check_items

SSE = "text/event-stream"
DONE = b"[DONE]"
JSON = "application/json"
MAX_SSE_LINE = 1 << 20  # an event is a few hundred bytes; a megabyte line is not SSE
CHARS_PER_TOKEN = 4  # a rough estimate, used only when a backend reports no counts at all


class LineTooLong(ValueError):
    """A backend sent an SSE line longer than any real event: it is not speaking SSE."""


class SSEParser:
    """Splits a byte stream into the `data` payloads of its events (WHATWG rules: `data:` lines,
    a blank line ends an event, `:` comments and other fields ignored, LF or CRLF). Only the
    unfinished line is kept between feeds, as pieces, so any chunking of the stream gives the same
    events and each byte is looked at once; a line over `max_line` bytes raises LineTooLong."""

    __slots__ = ("_data", "_pending", "_pending_size", "max_line")

    def __init__(self, max_line: int = MAX_SSE_LINE) -> None:
        self.max_line = max_line
        self._pending: list[bytes] = []  # the unfinished line, in pieces
        self._pending_size = 0
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """The payloads of the events completed by `chunk`."""

        if b"\n" not in chunk:
            self._hold(chunk)
            return []
        lines = chunk.split(b"\n")
        if self._pending:
            lines[0] = b"".join(self._pending) + lines[0]
            self._pending, self._pending_size = [], 0
        self._hold(lines.pop())
        events = []
        for line in lines:
            if len(line) > self.max_line:
                raise LineTooLong(f"an SSE line over {self.max_line} bytes")
            line = line.removesuffix(b"\r")
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
        return events

    def _hold(self, piece: bytes) -> None:
        if piece:
            self._pending_size += len(piece)
            if self._pending_size > self.max_line:
                raise LineTooLong(f"an SSE line over {self.max_line} bytes")
            self._pending.append(piece)

    def close(self) -> list[bytes]:
        """An event the backend left unterminated when the stream ended (some servers do)."""

        return self.feed(b"\n\n") if self._pending or self._data else []


def sse_event(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def estimate_tokens(text: str) -> int:
    """A token count for text no backend counted: about four characters a token."""

    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


class UsageMeter:
    """Token counts for one answer, from the best source seen: `usage` (OpenAI), else
    llama-server's `timings`, else the router's own count (content events; estimated prompt)."""

    __slots__ = ("events", "prompt_estimate", "timings", "usage")

    def __init__(self, prompt_estimate: int = 0):
        self.prompt_estimate = prompt_estimate
        self.usage: dict | None = None
        self.timings: dict | None = None
        self.events = 0

    def observe(self, obj: Any) -> None:
        """Note the counts an answer (or one stream event) carries."""

        if not isinstance(obj, dict):
            return
        usage = obj.get("usage")
        if isinstance(usage, dict) and _count(usage.get("prompt_tokens")) is not None:
            self.usage = usage
        timings = obj.get("timings")
        if isinstance(timings, dict):
            self.timings = timings

    def tick(self) -> None:
        """One generated event (about one token) that carried no counts."""

        self.events += 1

    def counts(self) -> tuple[int, int]:
        """(prompt tokens, completion tokens)."""

        if self.usage is not None:
            return _count(self.usage.get("prompt_tokens")) or 0, _count(self.usage.get("completion_tokens")) or 0
        if self.timings is not None:
            prompt = (_count(self.timings.get("prompt_n")) or 0) + (_count(self.timings.get("cache_n")) or 0)
            return prompt, _count(self.timings.get("predicted_n")) or 0
        return self.prompt_estimate, self.events


def generates(obj: Any) -> bool:
    """Whether a stream event carries generated text (or reasoning, or a tool call): what the
    router counts, about one token each, when the backend reports no counts."""

    choices = obj.get("choices") if isinstance(obj, dict) else None
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict) and (delta.get("content") or delta.get("reasoning_content")
                                        or delta.get("reasoning") or delta.get("tool_calls")):
            return True
        if choice.get("text"):
            return True
    return False


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def usage_of(body: bytes) -> tuple[int, int] | None:
    """Counts of a whole (non-streamed) answer, or None when it carries none."""

    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    meter = UsageMeter()
    meter.observe(obj)
    if meter.usage is None and meter.timings is None:
        return None
    return meter.counts()


# -- errors ---------------------------------------------------------------------------------------


def error_message(body: bytes, status: int) -> str:
    """The human message of a backend's error, whatever its shape: OpenAI's `{"error": {...}}`,
    vLLM's older top-level `{"object": "error", "message": ...}`, Ollama's `{"error": "..."}`,
    or plain text."""

    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", errors="replace").strip()
        return text[:500] or f"backend answered {status}"
    if isinstance(obj, dict):
        error = obj.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str) and error:
            return error
        if isinstance(obj.get("message"), str):
            return obj["message"]
        if isinstance(obj.get("detail"), str):
            return obj["detail"]
    return f"backend answered {status}"


def is_error_object(body: bytes) -> bool:
    """Whether `body` is already an OpenAI error object (then it is relayed untouched)."""

    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get("error"), dict) and "message" in obj["error"]


# -- request bodies -------------------------------------------------------------------------------


SAMPLING = {"stream": BOOL, "stream_options": OBJECT, "max_tokens": INTEGER, "temperature": NUMBER,
            "top_p": NUMBER, "n": INTEGER, "seed": INTEGER, "stop": (str, list), "presence_penalty": NUMBER,
            "frequency_penalty": NUMBER, "user": STRING}
# JSON types of the fields every OpenAI-compatible server types alike (the typed properties of the
# request schemas in nomyo.openapi); others are the backend's business.
FIELD_TYPES = {
    "/chat/completions": {**SAMPLING, "max_completion_tokens": INTEGER, "tools": LIST, "tool_choice": (str, dict),
                          "response_format": OBJECT, "logprobs": BOOL, "top_logprobs": INTEGER},
    "/completions": {**SAMPLING, "suffix": STRING, "logprobs": INTEGER, "echo": BOOL},
    "/embeddings": {"dimensions": INTEGER, "user": STRING},
    "/rerank": {"query": STRING, "documents": LIST, "top_n": INTEGER},
}


def check_request(path: str, payload: dict) -> None:
    """The few checks that keep a malformed /v1 request off a backend's slot (400s in
    OpenAI's words; the middleware wraps them as error objects)."""

    kind = path.removeprefix("/v1")
    check_fields(payload, FIELD_TYPES.get(kind, {"stream": BOOL}))
    if kind == "/chat/completions":
        check_items(payload, {"messages": OPENAI_MESSAGE, "tools": TOOL})
    if path.endswith("/chat/completions"):
        messages = payload.get("messages")
        if not isinstance(messages, list):
            raise bad_request("'messages' is a required property and must be an array", param="messages")
        if not messages:
            raise bad_request("[] is too short - 'messages'", param="messages")
    elif path.endswith("/completions"):
        if not isinstance(payload.get("prompt"), (str, list)):
            raise bad_request("'prompt' is a required property (a string or an array)", param="prompt")
    elif path.endswith("/embeddings"):
        inputs = payload.get("input")
        if not isinstance(inputs, (str, list)) or inputs == []:
            raise bad_request("invalid input: 'input' must be a string or a non-empty array", param="input")
        fmt = payload.get("encoding_format")
        if fmt is not None and fmt not in ("float", "base64"):
            raise bad_request(f"Invalid value for 'encoding_format' = {fmt}. Supported values: "
                              "['float', 'base64'].", param="encoding_format")
    elif path.endswith("/rerank"):
        for name in ("query", "documents"):
            if name not in payload or payload[name] is None:
                raise bad_request(f"'{name}' is a required property", param=name)


def prompt_text(payload: dict) -> str:
    """The text a request sends, for estimating its prompt tokens when nobody counts them."""

    parts: list[str] = []
    for message in payload.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    for key in ("prompt", "input", "system"):
        value = payload.get(key)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts.extend(v for v in value if isinstance(v, str))
    return "\n".join(parts)


# -- embeddings -----------------------------------------------------------------------------------


def decode_vector(value: Any) -> list[float]:
    """An embedding as floats: a list as is, a base64 string as little-endian float32."""

    if isinstance(value, str):
        raw = base64.b64decode(value)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    if isinstance(value, list):
        return [float(v) for v in value]
    raise ValueError("an embedding is neither a list of numbers nor base64")


def vectors_of(obj: Any) -> list[list[float]]:
    """Every vector of an embeddings answer, in input order (by `index`)."""

    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, list):
        raise ValueError("the answer has no 'data' list")
    items = [d for d in data if isinstance(d, dict)]
    items.sort(key=lambda d: d.get("index", 0) if isinstance(d.get("index"), int) else 0)
    return [decode_vector(d.get("embedding")) for d in items]


# -- model listings -------------------------------------------------------------------------------


def model_object(entry: dict, created_default: int) -> dict:
    """A `/v1/models` entry: the backend's own (with whatever extra it has), completed to the
    fields the openai client reads."""

    out = dict(entry)
    out.setdefault("object", "model")
    if not isinstance(out.get("created"), int):
        out["created"] = created_default
    out.setdefault("owned_by", "organization-owner")
    return out
