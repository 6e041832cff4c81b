"""What the router knows about its backends: immutable status snapshots, one per backend.

The poller is the only writer: it builds a new `BackendStatus` and swaps it in with one
assignment, so a routing decision always reads a consistent snapshot without taking a lock and
without any I/O. The fleet also keeps an index model -> backends, rebuilt on every status change,
so that a decision looks only at the backends that have the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .config import EndpointConfig


@dataclass(frozen=True, slots=True)
class BackendStatus:
    """One poll's view of a backend. `loaded` maps model -> expiry (epoch seconds, inf = never)."""

    healthy: bool = False
    models: frozenset[str] = frozenset()
    loaded: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    tags: tuple[dict, ...] = ()
    ps: tuple[dict, ...] = ()
    version: str | None = None
    error: str | None = "not polled yet"
    checked_at: float = 0.0
    healthy_since: float | None = None

    def is_loaded(self, model: str, now: float) -> bool:
        expiry = self.loaded.get(model)
        return expiry is not None and expiry > now

    def down(self, error: str) -> BackendStatus:
        """The same knowledge, marked unreachable: models stay known so a 503 can say why."""

        return BackendStatus(
            healthy=False, models=self.models, loaded=MappingProxyType({}), tags=self.tags,
            ps=(), version=self.version, error=error, checked_at=time.time(),
        )


class Backend:
    """A configured endpoint and its latest status. The config never changes; a reload that
    changes an endpoint creates a new Backend, so in-flight requests finish on the old one."""

    __slots__ = ("config", "status", "name")

    def __init__(self, config: EndpointConfig, status: BackendStatus | None = None):
        self.config = config
        self.name = config.name
        self.status = status or BackendStatus()

    def __repr__(self) -> str:
        return f"<Backend {self.name} {self.config.url} healthy={self.status.healthy}>"


class Fleet:
    """All backends of one configuration, with a model index for routing."""

    def __init__(self, backends: Iterable[Backend]):
        self.backends: dict[str, Backend] = {b.name: b for b in backends}
        self._index: dict[str, tuple[Backend, ...]] = {}
        self._listeners: list[Callable[[], None]] = []
        self.reindex()

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every status change (the table re-checks its waiters)."""

        self._listeners.append(listener)

    def set_status(self, backend: Backend, status: BackendStatus) -> None:
        """Swap in a new snapshot for `backend` (ignored if it is no longer part of this fleet)."""

        if self.backends.get(backend.name) is not backend:
            return
        backend.status = status
        self.reindex()
        for listener in self._listeners:
            listener()

    def reindex(self) -> None:
        index: dict[str, list[Backend]] = {}
        for backend in self.backends.values():
            for model in backend.status.models:
                index.setdefault(model, []).append(backend)
        self._index = {model: tuple(found) for model, found in index.items()}

    def with_model(self, model: str) -> tuple[Backend, ...]:
        """Backends that advertise `model` (healthy or not)."""

        return self._index.get(model, ())

    def healthy(self) -> list[Backend]:
        return [b for b in self.backends.values() if b.status.healthy]

    def describe(self) -> list[dict[str, Any]]:
        """Per-backend status for /api/config and /health."""

        return [
            {
                "name": b.name,
                "url": b.config.url,
                "type": b.config.type,
                "status": "ok" if b.status.healthy else "error",
                "version": b.status.version,
                "error": None if b.status.healthy else b.status.error,
                "models": len(b.status.models),
                "loaded": sorted(b.status.loaded),
                "max_concurrent_connections": b.config.max_concurrent_connections,
            }
            for b in self.backends.values()
        ]
