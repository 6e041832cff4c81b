"""Semantic matching: the request's embedding, and the index of stored entries' embeddings.

The vector of a request is normalise(α·e(history) + (1-α)·e(last user message)), α being
`cache_history_weight`: the last message says what is asked, the history what it refers to. A
match must reach `cache_similarity` and share the request's context key (scope, model, system
prompt, tools, format, options, and the conversation before the last message, exactly): the
index is one `VectorIndex` per context, and never searched across them.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .semantic import Embedder, EmbeddingFailed
from .vectors import VectorIndex


def unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0:
        raise EmbeddingFailed("the embedding is zero or not finite")
    return (vector / norm).astype(np.float32)


async def request_vector(embedder: Embedder, texts: tuple[str, str], weight: float, prefix: str,
                         timeout: float) -> np.ndarray:
    """The request's unit vector (one embedding call for both texts, or one text if they agree)."""

    history, last = texts
    wanted = [history] if history == last or weight == 1.0 else [last] if weight == 0.0 else [history, last]
    try:
        rows = await asyncio.wait_for(embedder.embed([prefix + text for text in wanted]), timeout)
        vectors = [unit(np.asarray(row, dtype=np.float32)) for row in rows]
    except TimeoutError:
        raise EmbeddingFailed(f"no answer within {timeout:g} s") from None
    except EmbeddingFailed:
        raise
    except Exception as exc:  # whatever the embedder raised: exact-only
        raise EmbeddingFailed(f"{type(exc).__name__}: {exc}") from None
    if len(vectors) != len(wanted) or len({v.shape for v in vectors}) != 1 or vectors[0].ndim != 1:
        raise EmbeddingFailed("the embedding answer does not match the texts")
    if len(vectors) == 1:
        return vectors[0]
    return unit(weight * vectors[0] + (1.0 - weight) * vectors[1])


@dataclass(slots=True)
class Indexed:
    context: str
    label: int
    expires_at: float | None
    words: str = ""


class SemanticIndex:
    """Exact key -> vector, searchable per context; bounded like the store (oldest out first)."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self.contexts: dict[str, VectorIndex] = {}
        self.entries: OrderedDict[str, Indexed] = OrderedDict()
        self.keys: dict[int, str] = {}
        self.labels = itertools.count(1)
        self.tasks: set[asyncio.Task] = set()

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, key: str, context: str, vector: np.ndarray, expires_at: float | None, words: str = "") -> None:
        self.remove(key)
        index = self.contexts.get(context)
        if index is None or index.dim != vector.shape[0]:
            index = self.contexts[context] = VectorIndex(vector.shape[0])  # a new model's vectors
        label = next(self.labels)
        index.add(label, vector)
        self.entries[key] = Indexed(context, label, expires_at, words)
        self.keys[label] = key
        while len(self.entries) > self.max_entries:
            self.remove(next(iter(self.entries)))
        if index.needs_rebuild():
            task = asyncio.get_running_loop().create_task(index.rebuild(), name="cache vector index rebuild")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def add_bytes(self, key: str, context: str, vector: bytes, expires_at: float | None, words: str = "") -> None:
        """A stored vector (float32 bytes) back into the index (a restart, another router's entry)."""

        self.add(key, context, np.frombuffer(vector, dtype=np.float32).copy(), expires_at, words)

    def remove(self, key: str) -> None:
        found = self.entries.pop(key, None)
        if found is None:
            return
        self.keys.pop(found.label, None)
        index = self.contexts.get(found.context)
        if index is not None:
            index.remove(found.label)
            if not len(index) and index.journal is None:
                del self.contexts[found.context]

    def best(self, context: str, vector: np.ndarray) -> tuple[str, float, str] | None:
        """The nearest live entry of `context`, its cosine and its word-order guard (expired
        entries are dropped on sight)."""

        index = self.contexts.get(context)
        if index is None or index.dim != vector.shape[0]:
            return None
        for _ in range(3):  # an expired nearest entry is removed and the search repeated
            found = index.best(vector)
            if found is None:
                return None
            label, score = found
            key = self.keys.get(label)
            item = self.entries.get(key) if key is not None else None
            if item is None:
                index.remove(label)
                continue
            if item.expires_at is not None and item.expires_at <= time.time():
                self.remove(key)
                continue
            return key, score, item.words
        return None

    def clear(self) -> None:
        self.contexts.clear()
        self.entries.clear()
        self.keys.clear()

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.clear()
