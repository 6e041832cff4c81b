"""What the router knows about its backends: immutable status snapshots, one per backend.

Each status is replaced whole, never edited: the poller swaps in what a poll saw, the breaker
marks a backend down, and the router notes a model that just answered as loaded, each with one
`set_status`, so a routing decision always reads a consistent snapshot without taking a lock and
without any I/O. The fleet also keeps an index model -> backends, rebuilt on every status change,
so that a decision looks only at the backends that have the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from yarl import URL

from .call import Reach
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
    breaker: str = "closed"  # closed | open | half-open (see breaker.py)

    @property
    def routable(self) -> bool:
        """Answers its polls and its circuit is not open: requests may go there."""

        return self.healthy and self.breaker != "open"

    def is_loaded(self, model: str, now: float) -> bool:
        expiry = self.loaded.get(model)
        return expiry is not None and expiry > now

    def down(self, error: str) -> BackendStatus:
        """The same knowledge, marked unreachable: models stay known so a 503 can say why."""

        return BackendStatus(
            healthy=False, models=self.models, loaded=MappingProxyType({}), tags=self.tags,
            ps=(), version=self.version, error=error, checked_at=time.time(), breaker=self.breaker,
        )


def _changed_models(old: BackendStatus, new: BackendStatus) -> set[str]:
    """Models whose routing options differ between two snapshots of one backend."""

    if old.healthy != new.healthy or old.breaker != new.breaker:
        return set(old.models | new.models)
    changed = set(old.models ^ new.models)
    for model in old.loaded.keys() | new.loaded.keys():
        if old.loaded.get(model) != new.loaded.get(model):
            changed.add(model)
    return changed


class Backend:
    """A configured endpoint and its latest status. The config never changes; a reload that
    changes an endpoint creates a new Backend, so in-flight requests finish on the old one."""

    __slots__ = ("_urls", "config", "name", "status")

    def __init__(self, config: EndpointConfig, status: BackendStatus | None = None):
        self.config = config
        self.name = config.name
        self.status = status or BackendStatus()
        self._urls: dict[str, URL] = {}

    def url_for(self, path: str) -> URL:
        """The parsed URL of `path` on this backend, parsed once: the client would otherwise
        parse the same string again for every request."""

        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = URL(self.config.url + path)
        return url

    def __repr__(self) -> str:
        return f"<Backend {self.name} {self.config.url} healthy={self.status.healthy}>"


class RouteOption:
    """One healthy backend as a routing option for one model, precomputed when the fleet changes
    so that a decision only adds the live counts: no allocation, no lookups beyond two dicts."""

    __slots__ = ("backend", "key", "loaded_until", "name", "ollama", "slots")

    def __init__(self, backend: Backend, model: str):
        self.backend = backend
        self.name = backend.name
        self.key = (backend.name, model)
        # half-open after a tripped circuit: one request at a time until it proves itself
        self.slots = 1 if backend.status.breaker == "half-open" else backend.config.slots_for(model)
        self.loaded_until = backend.status.loaded.get(model, 0.0)
        self.ollama = backend.config.is_ollama


class Fleet:
    """All backends of one configuration, with a model index for routing."""

    def __init__(self, backends: Iterable[Backend]):
        self.backends: dict[str, Backend] = {b.name: b for b in backends}
        self._index: dict[str, tuple[Backend, ...]] = {}
        self._options: dict[str, tuple[RouteOption, ...]] = {}
        self._ollama_options: dict[str, tuple[RouteOption, ...]] = {}
        self._listeners: list[Callable[[], None]] = []
        self.reindex()

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every status change (the table re-checks its waiters)."""

        self._listeners.append(listener)

    def set_status(self, backend: Backend, status: BackendStatus) -> None:
        """Swap in a new snapshot for `backend` (ignored if it is no longer part of this fleet)."""

        if self.backends.get(backend.name) is not backend:
            return
        old, backend.status = backend.status, status
        self._reindex_models(_changed_models(old, status))
        for listener in self._listeners:
            listener()

    def reindex(self) -> None:
        """Rebuild the whole index (a new fleet)."""

        self._index, self._options, self._ollama_options = {}, {}, {}
        self._reindex_models({m for b in self.backends.values() for m in b.status.models})

    def _reindex_models(self, models: set[str]) -> None:
        """Rebuild the index entries of `models` only: a poll usually changes few or none, and a
        fleet of 50 backends × 100 models must not rebuild 5,000 options every poll."""

        # Ollama backends first: policies keep the first of equals, so a tie goes where an /api
        # request needs no translation (loaded-ness and free slots still decide before that).
        backends = sorted(self.backends.values(), key=lambda b: not b.config.is_ollama)
        for model in models:
            found = tuple(b for b in backends if model in b.status.models)
            if not found:
                for table in (self._index, self._options, self._ollama_options):
                    table.pop(model, None)
                continue
            routable = tuple(RouteOption(b, model) for b in found if b.status.routable)
            self._index[model] = found
            self._options[model] = routable
            self._ollama_options[model] = tuple(o for o in routable if o.ollama)

    def with_model(self, model: str) -> tuple[Backend, ...]:
        """Backends that advertise `model` (healthy or not)."""

        return self._index.get(model, ())

    def options(self, model: str, reach: Reach = Reach.ANY) -> tuple[RouteOption, ...]:
        """Healthy backends that advertise `model` and are of a kind `reach` admits, as routing
        options."""

        if reach is Reach.OPENAI:
            return tuple(o for o in self._options.get(model, ()) if not o.ollama)
        return (self._ollama_options if reach is Reach.OLLAMA else self._options).get(model, ())

    def note_loaded(self, backend: Backend, model: str, until: float) -> None:
        """A request just ran `model` on `backend`: it is loaded there now, whatever the last poll
        said. Routing can prefer it at once instead of starting a second cold load elsewhere."""

        status = backend.status
        if status.loaded.get(model, 0.0) > time.time():
            return
        self.set_status(backend, replace(status, loaded=MappingProxyType({**status.loaded, model: until})))

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
                "circuit": b.status.breaker,
                "version": b.status.version,
                "error": None if b.status.healthy else b.status.error,
                "models": len(b.status.models),
                "loaded": sorted(b.status.loaded),
                "max_concurrent_connections": b.config.max_concurrent_connections,
            }
            for b in self.backends.values()
        ]
