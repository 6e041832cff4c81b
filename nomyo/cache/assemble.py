"""What the client got -> an `Entry`, or nothing when the answer is not whole.

The cache stores only what it can replay faithfully: a successful answer (status 200, no error
object or line), and for a stream one that reached its end (Ollama's `done: true` line, OpenAI's
`data: [DONE]`). A stream the client left, or the backend broke, never becomes an entry.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..dialects.openai import DONE, SSEParser
from .entry import CONTENT, THINKING, Entry
from .request import ROUTES

OLLAMA_DELIVERY = frozenset({"model", "created_at", "message", "response", "thinking", "done"})
REASONING_FIELDS = ("reasoning_content", "reasoning")


class Incomplete(ValueError):
    """The answer is not one to store (cut short, an error, or not the route's shape)."""


@dataclass(slots=True)
class Answer:
    """One exchange's answer as the client received it (from the tee sink)."""

    route: str
    streamed: bool
    content_type: str = ""
    body: bytes = b""  # a non-streamed answer
    chunks: Sequence[bytes] = ()  # a streamed answer, as written to the client
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    complete: bool = True  # False: the client left or the backend broke off
    status: int = 200


def assemble(answer: Answer) -> Entry:
    """The entry for `answer`; raises Incomplete when it must not be stored."""

    if not answer.complete or answer.status != 200:
        raise Incomplete("the exchange did not end successfully")
    dialect, kind = ROUTES.get(answer.route, ("", ""))
    if not kind:
        raise Incomplete(f"{answer.route} is not cached")
    entry = Entry(route=answer.route, streamed=answer.streamed)
    if kind == "embed":
        _embedding(entry, _one_object(answer))
    elif dialect == "ollama":
        for obj in _ollama_objects(answer):
            _ollama_piece(entry, obj)
        if "done_reason" not in entry.final and not entry.final.get("_done"):
            raise Incomplete("the stream has no final done line")
        entry.final.pop("_done", None)
    else:
        _openai(entry, answer)
    _counts(entry, answer)
    return entry


def _object(raw: bytes, what: str) -> dict[str, Any]:
    """One JSON object that is not an error (`what` names it in the refusal)."""

    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Incomplete(f"{what} is not JSON") from None
    if not isinstance(obj, dict) or obj.get("error"):
        raise Incomplete(f"{what} is an error")
    return obj


def _one_object(answer: Answer) -> dict[str, Any]:
    return _object(answer.body if not answer.streamed else b"".join(answer.chunks), "the answer")


def _embedding(entry: Entry, obj: dict[str, Any]) -> None:
    if not any(isinstance(obj.get(name), list) for name in ("embeddings", "embedding", "data")):
        raise Incomplete("the answer has no embeddings")
    entry.body = obj
    usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else {}
    entry.prompt_tokens = _count(obj.get("prompt_eval_count")) or _count(usage.get("prompt_tokens"))


def _ollama_objects(answer: Answer) -> Iterator[dict[str, Any]]:
    if not answer.streamed:
        yield _one_object(answer)
        return
    for line in b"".join(answer.chunks).split(b"\n"):
        if line.strip():
            yield _object(line, "a stream line")


def _ollama_piece(entry: Entry, obj: dict[str, Any]) -> None:
    message = obj.get("message") if isinstance(obj.get("message"), dict) else obj
    text_field = "content" if "message" in obj else "response"
    _add(entry, THINKING, message.get("thinking"))
    _add(entry, CONTENT, message.get(text_field))
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        entry.tool_calls.extend(calls)
    if obj.get("done") is True:
        entry.final = {k: v for k, v in obj.items() if k not in OLLAMA_DELIVERY}
        entry.final["_done"] = True


def _add(entry: Entry, kind: str, text: Any) -> None:
    if isinstance(text, str) and text:
        entry.parts.append([kind, text])


def _openai(entry: Entry, answer: Answer) -> None:
    if not answer.streamed:
        obj = _one_object(answer)
        _openai_object(entry, obj, "message")
        return
    parser = SSEParser()
    events = [event for chunk in answer.chunks for event in parser.feed(chunk)] + parser.close()
    if DONE not in (e.strip() for e in events):
        raise Incomplete("the stream has no [DONE]")
    calls: dict[int, dict[str, Any]] = {}
    for event in events:
        if event.strip() == DONE:
            break
        _openai_object(entry, _object(event, "a stream event"), "delta", calls)
    entry.tool_calls = [calls[i] for i in sorted(calls)]
    if "finish_reason" not in entry.final:
        raise Incomplete("the stream has no finish_reason")


def _openai_object(entry: Entry, obj: dict[str, Any], field: str, calls: dict | None = None) -> None:
    choices = obj.get("choices")
    if not isinstance(choices, list) or len(choices) > 1:
        raise Incomplete("not one choice")
    for name in ("system_fingerprint", "usage"):
        if obj.get(name) is not None:
            entry.final[name] = obj[name]
    if not choices:
        return  # the usage chunk
    choice = choices[0] if isinstance(choices[0], dict) else {}
    part = choice.get(field) if isinstance(choice.get(field), dict) else {}
    for name in REASONING_FIELDS:
        if isinstance(part.get(name), str):
            entry.final["reasoning_field"] = name
            _add(entry, THINKING, part[name])
    _add(entry, CONTENT, part.get("content") if "text" not in choice else choice["text"])
    if isinstance(part.get("tool_calls"), list):
        _tool_calls(entry, part["tool_calls"], calls)
    if choice.get("finish_reason") is not None:
        entry.final["finish_reason"] = choice["finish_reason"]
    elif calls is None:
        entry.final.setdefault("finish_reason", None)


def _tool_calls(entry: Entry, pieces: list[Any], calls: dict | None) -> None:
    """Whole calls (an answer) are kept as they are; streamed pieces are joined by index."""

    if calls is None:
        entry.tool_calls = pieces
        return
    for piece in pieces:
        if not isinstance(piece, dict):
            continue
        call = calls.setdefault(piece.get("index", len(calls)),
                                {"id": None, "type": "function", "function": {"name": None, "arguments": ""}})
        function = piece.get("function") if isinstance(piece.get("function"), dict) else {}
        call["id"] = piece.get("id") or call["id"]
        call["function"]["name"] = function.get("name") or call["function"]["name"]
        call["function"]["arguments"] += function.get("arguments") or ""


def _counts(entry: Entry, answer: Answer) -> None:
    usage = entry.final.pop("usage", None)
    usage = usage if isinstance(usage, dict) else {}
    prompt = _count(entry.final.get("prompt_eval_count")) or _count(usage.get("prompt_tokens"))
    completion = _count(entry.final.get("eval_count")) or _count(usage.get("completion_tokens"))
    entry.prompt_tokens = prompt or entry.prompt_tokens or answer.prompt_tokens or 0
    entry.completion_tokens = completion or answer.completion_tokens or 0


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
