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
import re
from collections.abc import Mapping
from typing import Protocol

import aiohttp
import orjson

from .dialects.from_openai import ToOllama
from .dialects.ollama import NDJSON, answer_counts, answer_load_seconds
from .dialects.openai import DONE, SSE, SSEParser, UsageMeter, error_message, generates, sse_event
from .errors import openai_error_body
from .upstream import response_headers

log = logging.getLogger("nomyo.framing")
CONTENT_LINE = re.compile(rb'"done"\s*:\s*false')  # a key: a JSON string value is never followed by ':'
MAX_LINE = 16 << 20  # a final line with a long `context` runs to a few MB; beyond this it is not Ollama


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
    """What the relay learns about an NDJSON stream from its chunks: how many content lines
    (`"done": false`) went through (a cut stream counts a token each) and the last complete
    line, which is parsed once at the end: `done: true` there means the stream is complete, and
    it carries the counts. Nothing is matched as exact bytes, so any JSON spelling (`"done": true`,
    as Python servers write it) reads alike. Per chunk this costs one scan of the bytes whose
    line ended in it and a copy of the last line."""

    __slots__ = ("_final", "_parsed", "_partial", "last", "lines", "overflow")

    def __init__(self) -> None:
        self.lines = 0
        self.last = b""  # the last complete line (without its newline)
        self._partial: list[bytes] = []  # the line still being received
        self.overflow = False  # a line too long to keep came (not Ollama talking)
        self._parsed = False
        self._final: dict | None = None

    def see(self, chunk: bytes) -> None:
        end = chunk.rfind(b"\n")
        if end == -1:
            self._keep(chunk)
            return
        if self._partial:  # the line that began in earlier chunks ends in this one
            head = b"".join(self._partial) + chunk[:end]
            self.lines += len(CONTENT_LINE.findall(head))
            self.last = head[head.rfind(b"\n") + 1:]
        else:
            self.lines += len(CONTENT_LINE.findall(chunk, 0, end))
            self.last = chunk[chunk.rfind(b"\n", 0, end) + 1:end]
        self._partial = [chunk[end + 1:]] if end + 1 < len(chunk) else []
        self._parsed = False

    def _keep(self, piece: bytes) -> None:
        if sum(map(len, self._partial)) + len(piece) > MAX_LINE:
            self.overflow = True
            self._partial = []
        else:
            self._partial.append(piece)

    def final(self) -> dict | None:
        """The last complete line as an object, if it is one (parsed once)."""

        if not self._parsed:
            self._parsed = True
            try:
                obj = orjson.loads(self.last) if self.last.strip() else None
            except orjson.JSONDecodeError:
                obj = None
            self._final = obj if isinstance(obj, dict) else None
        return self._final

    @property
    def unfinished(self) -> bool:
        return any(piece.strip() for piece in self._partial)

    @property
    def complete(self) -> bool:
        """The `done: true` line came, whole (a line ends with its newline)."""

        final = self.final()
        return final is not None and final.get("done") is True and not self.unfinished

    @property
    def ended_in_error(self) -> bool:
        final = self.final()
        return final is not None and "error" in final and not self.unfinished

    def counts(self) -> tuple[int, int]:
        """The backend's own counts, else one token per content line relayed."""

        found = answer_counts(self.final()) if self.complete else None
        return found or (0, self.lines)

    def load_seconds(self) -> float | None:
        return answer_load_seconds(self.final()) if self.complete else None


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
        return self.end.load_seconds()

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
