"""What a client of each dialect receives, read the way the client reads it.

Fault and load tests send the same request in several dialects and then ask one question of the
answer: did it arrive whole (a `done` line, `data: [DONE]`, a whole JSON answer), or was the client
told clearly what went wrong (an HTTP error, a final `{"error": ...}` line, an SSE error event)?
A stream that just stops, or bytes that are not the dialect's format, are neither.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp
import orjson

MODEL = "llama3"
MODEL_KEY = "llama3:latest"
INFERENCE_PATHS = ("/api/chat", "/api/generate", "/v1/chat/completions")
HANG = 20.0  # no answer in this long is a hang (only to stop a test that would never end)


@dataclass(frozen=True)
class Dialect:
    """One way to ask for a chat: the path and whether the answer is a stream."""

    name: str
    path: str
    stream: bool

    @property
    def openai(self) -> bool:
        return self.path.startswith("/v1/")

    def body(self, text: str = "hello there", tokens: int | None = None) -> dict:
        body: dict = {"model": MODEL, "messages": [{"role": "user", "content": text}], "stream": self.stream}
        if self.openai:
            if self.stream:
                body["stream_options"] = {"include_usage": True}  # the client sees what is counted
            if tokens is not None:
                body["max_tokens"] = tokens
        elif tokens is not None:
            body["options"] = {"num_predict": tokens}
        return body

    def __str__(self) -> str:
        return self.name


NATIVE_STREAM = Dialect("native-stream", "/api/chat", True)
NATIVE_WHOLE = Dialect("native-whole", "/api/chat", False)
OPENAI_STREAM = Dialect("openai-stream", "/v1/chat/completions", True)
DIALECTS = (NATIVE_STREAM, NATIVE_WHOLE, OPENAI_STREAM)
STREAMING = (NATIVE_STREAM, OPENAI_STREAM)


@dataclass
class Answer:
    """What the client got."""

    dialect: Dialect
    status: int
    headers: dict = field(default_factory=dict)
    pieces: list[str] = field(default_factory=list)  # generated text, chunk by chunk
    error: str | None = None  # what the client was told went wrong
    complete: bool = False  # the answer ended the way the dialect ends a good answer
    counts: tuple[int, int] | None = None  # (prompt, completion) tokens the answer itself reported
    garbage: list[bytes] = field(default_factory=list)  # lines/events that are not the dialect's format
    broken: str | None = None  # the connection to the router broke before the answer ended
    raw: bytes = b""

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def clear(self) -> bool:
        """Either whole and well-formed, or an error the client can read: never a silent cut."""

        if self.garbage or self.broken:
            return False
        return (self.complete and self.error is None) or (self.error is not None and not self.complete)

    def describe(self) -> str:
        return (f"{self.dialect} status={self.status} complete={self.complete} error={self.error!r} "
                f"broken={self.broken!r} garbage={self.garbage!r} text={self.text!r}")


def read_answer(dialect: Dialect, status: int, headers, data: bytes, broken: str | None = None) -> Answer:
    answer = Answer(dialect, status, dict(headers), raw=data, broken=broken)
    if status >= 400:
        _read_error(answer, data)
    elif dialect.openai and dialect.stream and headers.get("Content-Type", "").startswith("text/event-stream"):
        _read_events(answer, data)
    elif headers.get("Content-Type", "").startswith("application/x-ndjson"):
        _read_lines(answer, data)
    else:
        _read_whole(answer, data)
    return answer


def _loads(answer: Answer, data: bytes):
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        answer.garbage.append(data)
        return None


def _message(error) -> str:
    if isinstance(error, dict):
        return str(error.get("message"))
    return str(error)


def _read_error(answer: Answer, data: bytes) -> None:
    obj = _loads(answer, data)
    if isinstance(obj, dict) and obj.get("error"):
        answer.error = _message(obj["error"])
    elif obj is not None:
        answer.garbage.append(data)


def _read_lines(answer: Answer, data: bytes) -> None:
    """Ollama NDJSON: content lines, then a `done` line (or an `error` line)."""

    for line in data.split(b"\n"):
        if not line.strip():
            continue
        obj = _loads(answer, line)
        if not isinstance(obj, dict):
            continue
        if "error" in obj:
            answer.error = _message(obj["error"])
        elif obj.get("done") is True:
            answer.complete = True
            answer.counts = (obj.get("prompt_eval_count", 0), obj.get("eval_count", 0))
        else:
            content = (obj.get("message") or {}).get("content") or obj.get("response") or ""
            if content:
                answer.pieces.append(content)


def _read_whole(answer: Answer, data: bytes) -> None:
    """One JSON answer, Ollama's or OpenAI's."""

    obj = _loads(answer, data)
    if not isinstance(obj, dict):
        return
    if "error" in obj:
        answer.error = _message(obj["error"])
    elif "choices" in obj:
        answer.pieces.append(obj["choices"][0]["message"]["content"])
        answer.complete = True
        usage = obj.get("usage") or {}
        answer.counts = (usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
    elif obj.get("done") is True:
        answer.pieces.append((obj.get("message") or {}).get("content") or obj.get("response") or "")
        answer.complete = True
        answer.counts = (obj.get("prompt_eval_count", 0), obj.get("eval_count", 0))
    else:
        answer.garbage.append(data)


def _read_events(answer: Answer, data: bytes) -> None:
    """OpenAI SSE: `data: {chunk}` events, a usage chunk, then `data: [DONE]` (or an error event)."""

    for event in data.split(b"\n\n"):
        event = event.strip(b"\n")
        if not event or event.startswith(b":"):
            continue
        if not event.startswith(b"data: "):
            answer.garbage.append(event)
            continue
        payload = event.removeprefix(b"data: ")
        if payload == b"[DONE]":
            answer.complete = True
            continue
        obj = _loads(answer, payload)
        if not isinstance(obj, dict):
            continue
        if obj.get("error"):
            answer.error = _message(obj["error"])
            continue
        for choice in obj.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if content:
                answer.pieces.append(content)
        if isinstance(obj.get("usage"), dict):
            answer.counts = (obj["usage"].get("prompt_tokens", 0), obj["usage"].get("completion_tokens", 0))
    if answer.error is not None:
        answer.complete = False  # an error event ends a stream that did not finish


async def ask(http: aiohttp.ClientSession, url: str, dialect: Dialect, body: dict | None = None,
              timeout: float = HANG) -> Answer:
    """Send one request and read the whole answer, as the client would."""

    body = dialect.body() if body is None else body
    async with asyncio.timeout(timeout), http.post(url + dialect.path, data=orjson.dumps(body)) as resp:
        broken = None
        try:
            data = await resp.read()
        except aiohttp.ClientPayloadError as exc:
            data, broken = b"", str(exc)
        return read_answer(dialect, resp.status, resp.headers, data, broken)


async def token_rows(http: aiohttp.ClientSession, url: str) -> dict[str, tuple[int, int, int]]:
    """`/api/token_counts` per backend: (input, output, requests) for the one model under test."""

    async with http.get(url + "/api/token_counts") as resp:
        assert resp.status == 200
        body = await resp.json()
    rows = {}
    for row in body["breakdown"]:
        assert row["model"] == MODEL_KEY and row["total_tokens"] == row["input_tokens"] + row["output_tokens"]
        rows[row["endpoint"]] = (row["input_tokens"], row["output_tokens"], row["requests"])
    return rows


def inference_requests(fake) -> int:
    """Chat requests a fake backend received (whatever became of them)."""

    return sum(1 for r in fake.requests if r.path in INFERENCE_PATHS)
