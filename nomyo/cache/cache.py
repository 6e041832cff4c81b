"""The response cache: what the exchange pipeline calls before and after a backend call.

    req = cache.request(route, payload, scope, headers)      # decide; a 400 for a bad `nomyo`
    hit = await cache.lookup(req)                             # exact, then semantic; never raises
    if hit: content_type, body_or_chunks = cache.replay(hit, req)
    async with cache.flight(req) as flight:                   # identical requests in flight: one call
        if flight.entry: replay it ...
        else: exchange, then `await cache.store(req, answer)` with what the client got

Every store failure is a miss (or no store) and one log line a minute; see guard.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from .assemble import Answer, Incomplete, assemble
from .config import CacheConfig
from .entry import CorruptEntry, Entry
from .guard import GuardedStore, Throttle
from .inflight import Flight, Flights
from .replay import Replay, replay
from .request import CacheRequest, build_request
from .semantic import Embedder, EmbeddingFailed, NoIndex
from .stats import Counters
from .stores.base import Record, Store, Totals, tag
from .stores.memory import MemoryStore
from .texts import embedding_prefix, same_words_reordered

log = logging.getLogger("nomyo.cache")
TOTALS_INTERVAL = 15.0
REFOLLOW_DELAY = 1.0


@dataclass(slots=True)
class Hit:
    entry: Entry
    semantic: bool = False
    similarity: float = 1.0


def make_store(config: CacheConfig) -> Store:
    if config.backend == "sqlite":
        from .stores.sqlite import SQLiteStore

        return SQLiteStore(config.db_path, config.max_entries, config.max_bytes)
    if config.backend == "redis":
        from .stores.redis import RedisStore

        return RedisStore(config.redis_url)
    return MemoryStore(config.max_entries, config.max_bytes)


class ResponseCache:
    """One router's cache: its store, semantic index, in-flight table and counters."""

    def __init__(self, config: CacheConfig, embedder: Embedder | None = None, store: Store | None = None):
        self.config = config
        self.embedder = embedder
        self.throttle = Throttle()
        self.storage = GuardedStore(store or make_store(config), config.lookup_timeout, self.throttle)
        self.index = self._semantic_index()
        self.flights = Flights()
        self.counters = Counters()
        self.last_totals = Totals()
        self.prefix = embedding_prefix(config.embedding_prefix, config.embedding_model or "")
        self._tasks: list[asyncio.Task] = []

    @property
    def semantic(self) -> bool:
        return self.config.semantic and self.embedder is not None

    def _semantic_index(self):
        """The vector index, when semantic matching is on (numpy and usearch load only then)."""

        if not self.semantic:
            return NoIndex()
        from .vector_index import SemanticIndex

        return SemanticIndex(self.config.max_entries)

    async def start(self) -> None:
        """Open the store, rebuild the semantic index from it, and keep the size figures fresh."""

        if not self.config.enabled:
            return
        await self.storage.open()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._refresh(), name="cache totals"))
        if self.semantic and hasattr(self.storage.store, "follow"):
            self._tasks.append(loop.create_task(self._follow(), name="cache vectors of other routers"))
        if self.semantic:
            async for record in self.storage.vectors():
                self._index(record)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.index.close()
        await self.storage.close()

    async def _refresh(self) -> None:
        while True:
            await self.refresh_totals()
            await asyncio.sleep(TOTALS_INTERVAL)

    async def _follow(self) -> None:
        """Index what other routers store in a shared store (Redis), for as long as we run."""

        while True:
            try:
                async for record in self.storage.store.follow():
                    if record.key not in self.index.entries:
                        self._index(record)
            except Exception as exc:  # Redis down: retried; the lookups say so in the log
                self.throttle.warn("follow", f"cache: cannot follow other routers' entries: {type(exc).__name__}")
            await asyncio.sleep(REFOLLOW_DELAY)

    async def refresh_totals(self) -> Totals:
        if not self.config.enabled:
            return self.last_totals
        totals = await self.storage.totals()
        if totals is not None:
            self.last_totals = totals
        return self.last_totals

    # ------------------------------------------------------------------------------------------
    # Before the exchange

    def request(self, route: str, payload: dict[str, Any], scope: str,
                headers: Mapping[str, str] | None = None) -> CacheRequest:
        req = build_request(self.config, route, payload, scope, headers)
        if req.bypass:
            self.counters.bypasses += 1
        return req

    async def lookup(self, req: CacheRequest) -> Hit | None:
        """The cached answer for `req`: exact first, then semantic. Counts a hit or a miss."""

        if not req.lookup:
            return None
        started = time.perf_counter()
        hit = await self._exact(req)
        self.counters.observe("exact", time.perf_counter() - started)
        if hit is None and req.context and self.semantic:
            hit = await self._semantic(req)
        self._count(hit)
        return hit

    async def _exact(self, req: CacheRequest) -> Hit | None:
        entry = await self._fetch(req.key, req.route)
        return Hit(entry) if entry is not None else None

    async def _fetch(self, key: str, route: str) -> Entry | None:
        raw = await self.storage.get(key)
        if raw is None:
            return None
        try:
            entry = Entry.from_bytes(raw)
            if entry.route != route:
                raise CorruptEntry(f"stored for {entry.route}")
        except CorruptEntry as exc:
            self.throttle.warn("corrupt", f"cache store ({self.storage.name}) returned a corrupt entry ({exc}): "
                                          "treated as a miss and dropped")
            self.index.remove(key)
            await self.storage.delete([key])
            return None
        return entry

    async def _embed(self, req: CacheRequest) -> bool:
        """Set `req.vector` (kept for storing the answer); False when the embedding failed."""

        from .vector_index import request_vector

        try:
            req.vector = await request_vector(self.embedder, req.texts, self.config.history_weight,
                                              self.prefix, self.config.embedding_timeout)
        except EmbeddingFailed as exc:
            self.counters.embedding_failures += 1
            self.throttle.warn("embedding", f"cache embedding with {self.config.embedding_model} failed, "
                                            f"exact matches only: {exc}")
            return False
        return True

    async def _semantic(self, req: CacheRequest) -> Hit | None:
        if not await self._embed(req):
            return None
        started = time.perf_counter()
        found = self.index.best(req.context, req.vector)
        hit = None
        similar = found is not None and found[1] >= self.config.similarity
        if similar and not same_words_reordered(found[2], req.words):
            entry = await self._fetch(found[0], req.route)
            if entry is None:
                self.index.remove(found[0])
            else:
                hit = Hit(entry, semantic=True, similarity=found[1])
        self.counters.observe("semantic", time.perf_counter() - started)
        return hit

    def _count(self, hit: Hit | None) -> None:
        if hit is None:
            self.counters.misses += 1
            return
        self.counters.hits += 1
        self.counters.semantic_hits += hit.semantic
        self.counters.saved_prompt_tokens += hit.entry.prompt_tokens
        self.counters.saved_completion_tokens += hit.entry.completion_tokens

    def replay(self, hit: Hit | Entry, req: CacheRequest) -> Replay:
        return replay(hit.entry if isinstance(hit, Hit) else hit, req)

    def flight(self, req: CacheRequest) -> AbstractAsyncContextManager[Flight]:
        return self.flights.join(req)

    # ------------------------------------------------------------------------------------------
    # After the exchange

    async def store(self, req: CacheRequest, answer: Answer) -> Entry | None:
        """Keep what the client got, if it was whole; hand it to the requests waiting for it."""

        if not req.store or not req.key:
            return None
        try:
            entry = assemble(answer)
        except Incomplete as exc:
            self.counters.not_stored += 1
            log.debug("not caching %s: %s", req.route, exc)
            return None
        self.flights.publish(req.key, entry)
        if not req.lookup and req.context and self.semantic:
            await self._embed(req)  # asked with no-cache: not embedded by a lookup
        expires = time.time() + self.config.ttl if self.config.ttl else None
        vector = req.vector.tobytes() if req.vector is not None else None
        record = Record(req.key, entry.to_bytes(), req.model_key, req.scope, req.context if vector else "",
                        vector, expires, req.words)
        evicted = await self.storage.put(record)
        if evicted is None:
            return entry
        self.counters.stored += 1
        for key in evicted:
            self.index.remove(key)
        if vector is not None and req.key not in evicted:
            self.index.add(req.key, req.context, req.vector, expires, req.words)
        return entry

    def _index(self, record: Record) -> None:
        if record.vector and record.context:
            self.index.add_bytes(record.key, record.context, record.vector, record.expires_at, record.words)

    # ------------------------------------------------------------------------------------------
    # Administration

    async def invalidate(self, model: str | None = None, scope: str | None = None) -> int:
        """Drop every entry, or a model's, or a scope's (both: their intersection). Raises
        StoreUnavailable when the store cannot do it (the endpoint answers 503)."""

        if not self.config.enabled:
            return 0
        dropped = await self.storage.invalidate(model, scope)
        if model is None and scope is None:
            self.index.clear()
            self.counters = _reset(self.counters)
        else:
            prefix_scope = tag(scope) if scope is not None else None
            prefix_model = tag(model) if model is not None else None
            for key in list(self.index.entries):
                scope_tag, model_tag, _ = key.split(":", 2)
                if prefix_scope in (None, scope_tag) and prefix_model in (None, model_tag):
                    self.index.remove(key)
        await self.refresh_totals()
        return dropped

    async def stats(self) -> dict[str, Any]:
        """`GET /api/cache/stats`: the original's fields, then ours."""

        totals = await self.refresh_totals()
        c = self.counters
        return {
            "enabled": self.config.enabled, "hits": c.hits, "misses": c.misses, "hit_rate": c.hit_rate,
            "semantic": self.semantic, "backend": self.config.backend,
            "similarity_threshold": self.config.similarity, "history_weight": self.config.history_weight,
            "entries": totals.entries, "bytes": totals.bytes, "semantic_hits": c.semantic_hits,
            "evictions": totals.evictions, "bypasses": c.bypasses, "coalesced": self.flights.coalesced,
            "saved_tokens": {"input": c.saved_prompt_tokens, "output": c.saved_completion_tokens},
            "embedding_failures": c.embedding_failures,
            "store_errors": self.storage.errors + self.storage.timeouts,
        }


def _reset(old: Counters) -> Counters:
    """The original clears its counters with the entries; observers (metrics) stay attached."""

    fresh = Counters()
    fresh.lookup_seconds = old.lookup_seconds
    return fresh
