"""The cache's counters, and their Prometheus form (read at scrape time, never copied)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from .cache import ResponseCache

LOOKUP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass(slots=True)
class Counters:
    hits: int = 0
    semantic_hits: int = 0
    misses: int = 0
    bypasses: int = 0
    stored: int = 0
    not_stored: int = 0
    saved_prompt_tokens: int = 0
    saved_completion_tokens: int = 0
    embedding_failures: int = 0
    lookup_seconds: list = field(default_factory=list)  # observers: callables taking (kind, seconds)

    @property
    def hit_rate(self) -> float:
        asked = self.hits + self.misses
        return round(self.hits / asked, 3) if asked else 0.0

    def observe(self, kind: str, seconds: float) -> None:
        for observer in self.lookup_seconds:
            observer(kind, seconds)


class CacheCollector:
    """Counters and sizes of one cache, for the router's own registry."""

    def __init__(self, cache: ResponseCache):
        self.cache = cache

    def describe(self):
        return []

    def collect(self):
        counters, totals = self.cache.counters, self.cache.last_totals
        lookups = CounterMetricFamily("nomyo_cache_lookups", "Cache lookups by result", labels=("result",))
        lookups.add_metric(("hit",), counters.hits - counters.semantic_hits)
        lookups.add_metric(("semantic_hit",), counters.semantic_hits)
        lookups.add_metric(("miss",), counters.misses)
        lookups.add_metric(("bypass",), counters.bypasses)
        saved = CounterMetricFamily("nomyo_cache_saved_tokens", "Tokens answered from the cache instead of a "
                                    "backend", labels=("direction",))
        saved.add_metric(("input",), counters.saved_prompt_tokens)
        saved.add_metric(("output",), counters.saved_completion_tokens)
        yield lookups
        yield saved
        yield GaugeMetricFamily("nomyo_cache_entries", "Entries in the cache store", value=totals.entries)
        yield GaugeMetricFamily("nomyo_cache_bytes", "Bytes in the cache store", value=totals.bytes)
        yield CounterMetricFamily("nomyo_cache_evictions", "Entries evicted to keep the size bounds",
                                  value=totals.evictions)
        yield CounterMetricFamily("nomyo_cache_store_errors", "Cache store calls that failed or were too slow",
                                  value=self.cache.storage.errors + self.cache.storage.timeouts)


def register_cache_metrics(cache: ResponseCache, registry: CollectorRegistry) -> None:
    """Add the cache's metrics to `registry` (the router's, never prometheus_client's global)."""

    histogram = Histogram("nomyo_cache_lookup_seconds", "Time a cache lookup took (without the embedding call)",
                          ("kind",), buckets=LOOKUP_BUCKETS, registry=registry)
    children = {kind: histogram.labels(kind) for kind in ("exact", "semantic")}
    cache.counters.lookup_seconds.append(lambda kind, seconds: children[kind].observe(seconds))
    registry.register(CacheCollector(cache))
