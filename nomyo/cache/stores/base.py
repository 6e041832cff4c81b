"""The one small interface every store keeps (memory, SQLite, Redis).

A store keeps opaque entry bytes under an exact key, with what invalidation and the semantic
index need beside them: the normalised model, the caller's scope, the context key and the
embedding. Stores do not interpret entries, and they may fail: the cache guards every call.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)
class Record:
    """One stored entry and its labels."""

    key: str
    value: bytes
    model: str = ""
    scope: str = ""
    context: str = ""
    vector: bytes | None = None  # float32 little-endian, when the entry was embedded
    expires_at: float | None = None  # wall-clock seconds; None: never
    words: str = ""  # the last user message's word_order (semantic matches check it)

    @property
    def size(self) -> int:
        return len(self.value) + len(self.vector or b"") + len(self.key)

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or time.time())


@dataclass(slots=True)
class Totals:
    entries: int = 0
    bytes: int = 0
    evictions: int = 0


class Store(Protocol):
    """Where entries live. Every method may raise; none is called unguarded."""

    name: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def get(self, key: str) -> bytes | None:
        """The entry's bytes, or None when absent or expired."""

    async def put(self, record: Record) -> list[str]:
        """Store (or replace) `record`; the keys evicted to make room (for the semantic index)."""

    async def delete(self, keys: list[str]) -> None: ...

    async def invalidate(self, model: str | None = None, scope: str | None = None) -> int:
        """Drop every entry (of `model`, of `scope`, or both); how many were dropped."""

    async def totals(self) -> Totals: ...

    def vectors(self) -> AsyncIterator[Record]:
        """Every live record that has a vector (`value` left empty): rebuilds the semantic index."""


def tag(label: str) -> str:
    """A short, fixed-width, key-safe stand-in for a model name or scope (Redis key names)."""

    return hashlib.sha256(label.encode()).hexdigest()[:16]
