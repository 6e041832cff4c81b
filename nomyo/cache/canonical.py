"""The canonical form of a request body: what the cache's keys are hashes of.

Two bodies that ask the same question in different spellings (key order, `1` vs `1.0`, `null`
vs absent, ollama-python's `"tools": []`) get one form; anything that can change the answer
stays in it. Images are replaced by their SHA-256 digests so the form stays small (the key is a
hash anyway, so a digest distinguishes exactly as well as the bytes).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

KEY_VERSION = 1  # bump when the canonical form changes: old entries then simply never match
# Fields that never change an answer: how it is delivered, how long the model stays loaded, and
# the router's own switch. Everything else (every option, `user`, `metadata`...) is kept.
DELIVERY_FIELDS = frozenset({"stream", "stream_options", "keep_alive", "nomyo", "model", "name"})
EMPTY_MEANS_ABSENT = frozenset({"tools", "images", "options"})


def digest(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def canonical(value: Any, field: str | None = None) -> Any:
    """`value` with sorted keys, no nulls, integral floats as ints, and images as digests."""

    if isinstance(value, dict):
        return {key: canonical(item, key) for key, item in sorted(value.items())
                if item is not None and not (key in EMPTY_MEANS_ABSENT and item in ([], {}))}
    if isinstance(value, list):
        if field == "images":
            return [digest(item) if isinstance(item, str) else canonical(item) for item in value]
        return [canonical(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and field == "url" and value.startswith("data:"):
        return digest(value)  # an OpenAI image part's inline data
    return value


def body_form(payload: dict[str, Any], drop: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The canonical body without its delivery fields (and without `drop`)."""

    return canonical({k: v for k, v in payload.items() if k not in DELIVERY_FIELDS and k not in drop})


def hash_of(*parts: Any) -> str:
    """A hex SHA-256 over the canonical JSON of `parts` (sorted keys: one spelling, one hash)."""

    return hashlib.sha256(orjson.dumps([KEY_VERSION, *parts], option=orjson.OPT_SORT_KEYS)).hexdigest()
