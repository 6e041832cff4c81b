"""Ollama's `context` for a generate served by an OpenAI-compatible backend.

Ollama answers a non-`raw` /api/generate with `context`: the token ids of the prompt and the
answer, which a client may send back with its next prompt as conversational memory. A chat
completions server has no token ids to give, so the router gives the conversation itself, as
integers: a marker no tokenizer uses, then the UTF-8 bytes of the messages as JSON, three bytes
to an integer. Sent back, it becomes the earlier messages of the next chat request. Clients
treat `context` as opaque, so they keep working; a `context` the router did not write (real
token ids from an Ollama backend) means nothing to a chat server and is left out.
"""

from __future__ import annotations

from typing import Any

import orjson

MARKER = 2_147_000_713  # above every vocabulary (the largest have ~260k entries), below int32's limit
LIMIT = 1 << 24  # three bytes


def encode(messages: list[dict[str, str]]) -> list[int]:
    """The conversation (roles and texts only) as `context` integers."""

    data = orjson.dumps([{"role": m["role"], "content": m["content"]} for m in messages])
    padded = data + b" " * (-len(data) % 3)  # JSON ignores the trailing spaces
    return [MARKER] + [int.from_bytes(padded[i:i + 3], "big") for i in range(0, len(padded), 3)]


def decode(context: Any) -> list[dict[str, str]]:
    """The conversation `encode` wrote; [] for anything else (not written by the router)."""

    if not isinstance(context, list) or len(context) < 2 or context[0] != MARKER:
        return []
    if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < LIMIT for n in context[1:]):
        return []
    data = b"".join(n.to_bytes(3, "big") for n in context[1:])
    try:
        messages = orjson.loads(data)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(messages, list):
        return []
    return [{"role": m["role"], "content": m["content"]} for m in messages
            if isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str)]
