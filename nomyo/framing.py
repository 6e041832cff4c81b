"""How each kind of upstream stream is read and re-framed for the client, one chunk at a time.

A framing turns the backend's bytes into the client's (`feed`, then `close` at the end of the
upstream answer) and says what it learned: whether the stream ended properly, whether the
backend ended it with its own error, the token counts, and how an error is written in the
client's dialect. The one stream loop (`stream.py`) drives any of them:
- `NdjsonRelay`: Ollama's NDJSON as is (nothing parsed; the end is read off the last bytes);
- `SseRelay`: OpenAI SSE as is, with the usage chunk the router asked for taken out again, or
  one added where the client asked for usage and the backend sent none;
- `SseToNdjson`: OpenAI SSE translated to Ollama NDJSON, event by event.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

import aiohttp
import orjson

from .dialects.from_openai import ToOllama
from .dialects.ollama import NDJSON, final_counts, load_seconds
from .dialects.openai import DONE, SSE, SSEParser, UsageMeter, error_message, generates, sse_event
from .errors import openai_error_body
from .upstream import response_headers

log = logging.getLogger("nomyo.framing")
DONE_MARK = b'"done":true'  # 11 bytes
CONTENT_MARK = b'"done":false'  # 12 bytes
TAIL = 1024  # bytes of a stream's end kept for its counts (they sit in the last ~200)


class Framing(Protocol):
    def headers(self, upstream: aiohttp.ClientResponse) -> Mapping[str, str]: ...

    def feed(self, chunk: bytes) -> bytes: ...

    def close(self) -> bytes: ...

    @property
    def complete(self) -> bool: ...

    @property
    def backend_failed(self) -> bool: ...

    def counts(self) -> tuple[int, int]: ...

    def load_seconds(self) -> float | None: ...

    def error_line(self, message: str) -> bytes: ...


def ndjson_error(message: str) -> bytes:
    return orjson.dumps({"error": message}) + b"\n"


def sse_error(message: str) -> bytes:
    return sse_event(openai_error_body(502, message, "backend_failed"))


class StreamEnd:
    """What the relay learns about an NDJSON stream from its chunks, without parsing lines:
    whether the final `done: true` line came, whether the backend ended with its own error line,
    how many content lines (`done: false`) went through (a cut stream counts a token each), and
    the stream's last kilobyte (the counts are at the very end).

    The markers cannot occur inside a JSON string (quotes are escaped there). Each is also looked
    for across the seam between the stream so far and the new chunk, in a window whose halves are
    each one byte shorter than the marker, so nothing is counted twice. Every step copies at most a few
    kilobytes, whatever the chunk size."""

    __slots__ = ("done", "lines", "tail")

    def __init__(self) -> None:
        self.done = False
        self.lines = 0
        self.tail = b""

    def see(self, chunk: bytes) -> None:
        if not self.done and (DONE_MARK in chunk or DONE_MARK in self.tail[-10:] + chunk[:10]):
            self.done = True
        self.lines += chunk.count(CONTENT_MARK) + (self.tail[-11:] + chunk[:11]).count(CONTENT_MARK)
        self.tail = (self.tail + chunk[-TAIL:])[-TAIL:]

    @property
    def complete(self) -> bool:
        """The `done: true` line came, whole (a line ends with its newline)."""

        return self.done and self.tail.endswith(b"\n")

    @property
    def ended_in_error(self) -> bool:
        return self.tail.rstrip(b"\n").rsplit(b"\n", 1)[-1].startswith(b'{"error"')

    def counts(self) -> tuple[int, int]:
        """The backend's own counts, else one token per content line relayed."""

        found = final_counts(self.tail) if self.complete else None
        return found or (0, self.lines)


class NdjsonRelay:
    """Ollama's stream, relayed byte for byte."""

    __slots__ = ("end",)

    def __init__(self) -> None:
        self.end = StreamEnd()

    def headers(self, upstream: aiohttp.ClientResponse) -> Mapping[str, str]:
        return response_headers(upstream)

    def feed(self, chunk: bytes) -> bytes:
        self.end.see(chunk)
        return chunk

    def close(self) -> bytes:
        return b""

    @property
    def complete(self) -> bool:
        return self.end.complete

    @property
    def backend_failed(self) -> bool:
        return not self.end.complete and self.end.ended_in_error

    def counts(self) -> tuple[int, int]:
        return self.end.counts()

    def load_seconds(self) -> float | None:
        return load_seconds(self.end.tail)

    def error_line(self, message: str) -> bytes:
        return ndjson_error(message)


class SseRelay:
    """An OpenAI stream relayed event by event (one write per network chunk). Meters each event;
    drops the usage the client did not ask for; adds the router's count where the client asked
    for usage and the backend sent none (llama-cpp-python), so `include_usage` always ends with
    a usage chunk."""

    def __init__(self, meter: UsageMeter, *, strip: bool, want_usage: bool):
        self.meter = meter
        self.strip = strip
        self.want_usage = want_usage
        self.parser = SSEParser()
        self.head: dict = {}
        self.done = False  # `data: [DONE]` came: the stream is complete
        self.failed = False  # the backend sent its own error event

    def headers(self, upstream: aiohttp.ClientResponse) -> Mapping[str, str]:
        return {"Content-Type": upstream.headers.get("Content-Type", SSE), "Cache-Control": "no-cache"}

    def feed(self, chunk: bytes) -> bytes:
        return self._relay(self.parser.feed(chunk))

    def close(self) -> bytes:
        return self._relay(self.parser.close())

    @property
    def complete(self) -> bool:
        return self.done and not self.failed

    @property
    def backend_failed(self) -> bool:
        return self.failed

    def counts(self) -> tuple[int, int]:
        return self.meter.counts()

    def load_seconds(self) -> float | None:
        return None

    def error_line(self, message: str) -> bytes:
        return sse_error(message)

    def _relay(self, payloads: list[bytes]) -> bytes:
        out = []
        for payload in payloads:
            if payload.strip() == DONE:
                self.done = True
                out.append(self._missing_usage() + sse_event(DONE))
                continue
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                out.append(sse_event(payload))
                continue
            payload = self._observe(obj, payload)
            if payload is not None:
                out.append(sse_event(payload))
        return b"".join(out)

    def _observe(self, obj, payload: bytes) -> bytes | None:
        """The payload to relay (None: drop it) after metering `obj`."""

        if not isinstance(obj, dict):
            return payload
        if obj.get("error"):
            self.failed = True
            return payload
        self.meter.observe(obj)
        if generates(obj):
            self.meter.tick()
        self.head = {k: obj[k] for k in ("id", "object", "created", "model") if k in obj}
        if self.strip and obj.get("usage") is not None:
            if not obj.get("choices"):
                return None  # the usage chunk the router asked for
            return orjson.dumps({k: v for k, v in obj.items() if k != "usage"})
        return payload

    def _missing_usage(self) -> bytes:
        if not self.want_usage or self.meter.usage is not None:
            return b""
        prompt, completion = self.meter.counts()
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        return sse_event(orjson.dumps({**self.head, "choices": [], "usage": usage}))


class SseToNdjson:
    """An OpenAI stream told as Ollama's: each event's text one NDJSON line as it comes, the
    `done` line with counts once the backend is done; the backend's error event becomes
    Ollama's error line and ends the stream. After `[DONE]` the rest is read but ignored."""

    def __init__(self, translator: ToOllama, backend: str):
        self.translator = translator
        self.backend = backend
        self.parser = SSEParser()
        self.ended = False  # `[DONE]` came
        self.failed = False
        self.final: dict | None = None

    def headers(self, upstream: aiohttp.ClientResponse) -> Mapping[str, str]:
        return {"Content-Type": NDJSON}

    def feed(self, chunk: bytes) -> bytes:
        if self.ended or self.failed:
            return b""
        return self._translate(self.parser.feed(chunk))

    def close(self) -> bytes:
        out = b"" if self.ended or self.failed else self._translate(self.parser.close())
        if self.failed:
            return out
        self.final = self.translator.final(ended=self.ended or self.translator.finish is not None)
        return out + orjson.dumps(self.final) + b"\n"

    @property
    def complete(self) -> bool:
        return self.final is not None

    @property
    def backend_failed(self) -> bool:
        return self.failed

    def counts(self) -> tuple[int, int]:
        if self.final is not None:
            return self.final.get("prompt_eval_count", 0), self.final.get("eval_count", 0)
        return self.translator.meter.counts()

    def load_seconds(self) -> float | None:
        return None

    def error_line(self, message: str) -> bytes:
        return ndjson_error(message)

    def _translate(self, payloads: list[bytes]) -> bytes:
        out: list[bytes] = []
        for payload in payloads:
            if payload.strip() == DONE:
                self.ended = True
                break
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                log.warning("backend %s sent an event that is not JSON; skipped", self.backend)
                continue
            if isinstance(obj, dict) and obj.get("error"):
                self.failed = True
                out.append(ndjson_error(error_message(payload, 500)))
                break
            out.extend(orjson.dumps(line) + b"\n" for line in self.translator.event(obj))
        return b"".join(out)
