"""A cached answer, normalised: what any replay of it needs, and nothing of its delivery.

An entry is stored as compact JSON. Reading one back checks its shape: whatever a store hands
back that is not an entry (a corrupt row, another program's key) is a `CorruptEntry`, which the
cache treats as a miss.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

FORMAT = 1
CONTENT, THINKING = "c", "t"


class CorruptEntry(ValueError):
    """Stored bytes that are not an entry of this format."""


@dataclass(slots=True)
class Entry:
    """One answer in its route's dialect.

    `parts` are the text pieces in the order the client got them, one per streamed chunk
    (`[CONTENT|THINKING, text]`), so a replay can chunk as the original did; an answer that was
    not streamed has one piece of each kind. `tool_calls` are in the dialect's own shape
    (complete, not in pieces). `final` holds the dialect's closing fields (Ollama's done_reason
    and metrics, generate's `context`; OpenAI's finish_reason, system_fingerprint, the name of
    its reasoning field). Embedding answers keep their whole `body`."""

    route: str
    streamed: bool
    parts: list[list[str]] = field(default_factory=list)
    tool_calls: list[Any] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    body: dict[str, Any] | None = None
    created: float = field(default_factory=time.time)

    def text(self, kind: str = CONTENT) -> str:
        return "".join(text for part_kind, text in self.parts if part_kind == kind)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_bytes(self) -> bytes:
        return orjson.dumps({
            "v": FORMAT, "route": self.route, "streamed": self.streamed, "parts": self.parts,
            "tool_calls": self.tool_calls, "final": self.final, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "body": self.body, "created": self.created,
        })

    @classmethod
    def from_bytes(cls, raw: bytes) -> Entry:
        try:
            data = orjson.loads(raw)
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise CorruptEntry(f"not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("v") != FORMAT:
            raise CorruptEntry("not a cache entry of this version")
        try:
            entry = cls(route=data["route"], streamed=data["streamed"], parts=data["parts"],
                        tool_calls=data["tool_calls"], final=data["final"],
                        prompt_tokens=data["prompt_tokens"], completion_tokens=data["completion_tokens"],
                        body=data["body"], created=data["created"])
        except (KeyError, TypeError) as exc:
            raise CorruptEntry(f"a field is missing: {exc}") from None
        _check_shape(entry)
        return entry


def _check_shape(entry: Entry) -> None:
    checks = (
        isinstance(entry.route, str), isinstance(entry.streamed, bool), isinstance(entry.final, dict),
        isinstance(entry.tool_calls, list), isinstance(entry.body, dict | None),
        isinstance(entry.prompt_tokens, int), isinstance(entry.completion_tokens, int),
        isinstance(entry.parts, list) and all(
            isinstance(p, list) and len(p) == 2 and p[0] in (CONTENT, THINKING) and isinstance(p[1], str)
            for p in entry.parts),
    )
    if not all(checks):
        raise CorruptEntry("a field has the wrong type")
