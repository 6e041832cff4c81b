"""Semantic matching's interfaces, without numpy: the embedder, its failure, and the stand-in
index of a cache whose matching is exact only. The vectors live in vector_index.py, loaded only
when semantic matching is on.
"""

from __future__ import annotations

from typing import Protocol


class Embedder(Protocol):
    """Turns texts into vectors (the router implements it as an internal call, caller=cache-embed)."""

    async def embed(self, texts: list[str]) -> list[list[float]]: ...


class EmbeddingFailed(RuntimeError):
    """The embedding call failed, timed out or answered something unusable."""


class NoIndex:
    """The semantic index of an exact-only cache: holds nothing, finds nothing."""

    @property
    def entries(self) -> dict:
        return {}

    def __len__(self) -> int:
        return 0

    def remove(self, key: str) -> None:
        return None

    def clear(self) -> None:
        return None

    def add(self, *args) -> None:
        return None

    def add_bytes(self, *args) -> None:
        return None

    def best(self, context, vector) -> None:
        return None

    async def close(self) -> None:
        return None
