"""The vectors of one context: exact search while few, an HNSW graph (usearch) when many.

Measured on one core (tests/bench/cache.py, idle machine): a numpy product over 100,000
384-dimension vectors takes 19 ms at the median and 22 ms at p99, ten times the 2 ms budget;
usearch's HNSW answers in 0.86 ms / 1.17 ms (p50/p99; 0.93 / 1.21 ms after a fifth of the
entries were removed), finding the exact nearest vector for every near-duplicate query.
Below FLAT_LIMIT vectors the exact product is faster than a graph and needs no building, so
every context starts flat. Growing past the limit, or a graph whose deletions (TTL, LRU,
invalidation) outnumber its live nodes, is rebuilt in a worker thread from a snapshot while the
old structure keeps answering; changes made meanwhile are replayed on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine

import numpy as np
from usearch.index import Index

FLAT_LIMIT = 2048
CONNECTIVITY = 16
EXPANSION_ADD = 64
EXPANSION_SEARCH = 64


class FlatVectors:
    """Rows of a matrix; a removal moves the last row into the hole."""

    def __init__(self, dim: int):
        self.dim = dim
        self.matrix = np.zeros((16, dim), dtype=np.float32)
        self.labels: list[int] = []
        self.row: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def add(self, label: int, vector: np.ndarray) -> None:
        if label in self.row:
            self.matrix[self.row[label]] = vector
            return
        if len(self.labels) == len(self.matrix):
            self.matrix = np.concatenate([self.matrix, np.zeros_like(self.matrix)])
        self.matrix[len(self.labels)] = vector
        self.row[label] = len(self.labels)
        self.labels.append(label)

    def remove(self, label: int) -> None:
        row = self.row.pop(label, None)
        if row is None:
            return
        last = len(self.labels) - 1
        if row != last:
            self.matrix[row] = self.matrix[last]
            self.labels[row] = self.labels[last]
            self.row[self.labels[row]] = row
        self.labels.pop()

    def best(self, vector: np.ndarray) -> tuple[int, float] | None:
        if not self.labels:
            return None
        scores = self.matrix[: len(self.labels)] @ vector
        index = int(np.argmax(scores))
        return self.labels[index], float(scores[index])

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array(self.labels, dtype=np.uint64), self.matrix[: len(self.labels)].copy()


class GraphVectors:
    """usearch's HNSW with inner product (the vectors are unit length: cosine)."""

    def __init__(self, dim: int, labels: np.ndarray, vectors: np.ndarray, threads: int = 1):
        self.dim = dim
        self.index = Index(ndim=dim, metric="ip", dtype="f32", connectivity=CONNECTIVITY,
                           expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH)
        if len(labels):
            self.index.add(labels, vectors, threads=threads)
        self.removed = 0

    def __len__(self) -> int:
        return len(self.index)

    def add(self, label: int, vector: np.ndarray) -> None:
        if self.index.contains(label):
            self.remove(label)
        self.index.add(label, vector, threads=1)

    def remove(self, label: int) -> None:
        if self.index.contains(label):
            self.index.remove(label)
            self.removed += 1

    def best(self, vector: np.ndarray) -> tuple[int, float] | None:
        if not len(self.index):
            return None
        matches = self.index.search(vector, 1, threads=1)
        if not len(matches.keys):
            return None
        return int(matches.keys[0]), 1.0 - float(matches.distances[0])

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        labels = np.array(self.index.keys, dtype=np.uint64)
        return labels, np.asarray(self.index.get(labels), dtype=np.float32).reshape(len(labels), self.dim)


class VectorIndex:
    """One context's vectors behind add/remove/best, flat or graph as its size asks."""

    def __init__(self, dim: int):
        self.dim = dim
        self.impl: FlatVectors | GraphVectors = FlatVectors(dim)
        self.journal: list[tuple[str, int, np.ndarray | None]] | None = None  # set while rebuilding

    def __len__(self) -> int:
        return len(self.impl)

    def add(self, label: int, vector: np.ndarray) -> None:
        self.impl.add(label, vector)
        if self.journal is not None:
            self.journal.append(("add", label, vector))

    def remove(self, label: int) -> None:
        self.impl.remove(label)
        if self.journal is not None:
            self.journal.append(("remove", label, None))

    def best(self, vector: np.ndarray) -> tuple[int, float] | None:
        return self.impl.best(vector)

    def needs_rebuild(self) -> bool:
        if self.journal is not None:
            return False
        if isinstance(self.impl, FlatVectors):
            return len(self.impl) > FLAT_LIMIT
        return self.impl.removed > max(len(self.impl), FLAT_LIMIT)

    def rebuild(self) -> Coroutine[None, None, None]:
        """Snapshot now (so no second rebuild starts), build the graph from the snapshot in a
        worker thread, then replay on it what changed meanwhile. Returns the coroutine to run."""

        labels, vectors = self.impl.snapshot()
        self.journal = []
        return self._build(labels, vectors)

    async def _build(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        try:
            graph = await asyncio.to_thread(GraphVectors, self.dim, labels, vectors)
            for action, label, vector in self.journal or ():
                graph.add(label, vector) if action == "add" else graph.remove(label)
            self.impl = graph
        finally:
            self.journal = None
