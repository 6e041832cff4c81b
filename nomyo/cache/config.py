"""The response cache's configuration: the original router's `cache_*` keys plus ours.

The original's keys (cache_enabled, cache_backend, cache_ttl, cache_similarity,
cache_history_weight, cache_db_path, cache_redis_url, cache_max_entries) keep their meaning, so
an existing file works unchanged; every key is documented in etc/nomyo/config.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..yaml_fields import FieldReader

BACKENDS = ("memory", "sqlite", "redis")
DEFAULTS = ("all", "opt-in")
DEFAULT_DB_PATH = "/var/lib/nomyo/cache.db"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# Measured with multilingual-e5-small (tests/cache/test_cache_semantic.py, tests/cache/pairs.py):
# paraphrases score 0.97-0.996, questions that differ in one fact score up to 0.962 ("raw eggs" /
# "raw chicken"); 0.95, the first guess, would serve wrong answers. Another embedding model
# has its own scale: measure it with the same pairs before lowering this.
DEFAULT_SIMILARITY = 0.97
PREFIX_AUTO = "auto"

CACHE_KEYS = frozenset({
    "cache_enabled", "cache_backend", "cache_ttl", "cache_similarity", "cache_history_weight",
    "cache_db_path", "cache_redis_url", "cache_max_entries", "cache_max_bytes",
    "cache_embedding_model", "cache_embedding_timeout", "cache_embedding_prefix", "cache_default",
    "cache_nondeterministic", "cache_lookup_timeout",
})


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """What the cache does; built by `read_cache_config`, never mutated."""

    enabled: bool = False
    backend: str = "memory"
    ttl: float | None = 3600.0  # seconds; None: entries live until evicted or invalidated
    similarity: float = DEFAULT_SIMILARITY  # 1.0: exact matches only
    history_weight: float = 0.3
    db_path: str = DEFAULT_DB_PATH
    redis_url: str = DEFAULT_REDIS_URL
    max_entries: int = 10_000
    max_bytes: int = 256 * 1024 * 1024
    embedding_model: str | None = None  # None: exact matches only
    embedding_timeout: float = 1.0
    embedding_prefix: str = PREFIX_AUTO
    default: str = "all"  # "opt-in": only requests with "nomyo": {"cache": true}
    nondeterministic: bool = False
    lookup_timeout: float = 0.005  # a store lookup slower than this is abandoned as a miss

    @property
    def semantic(self) -> bool:
        return self.enabled and self.embedding_model is not None and self.similarity < 1.0


def _flag(top: FieldReader, key: str, default: bool) -> bool:
    value = top.node.get(key) if hasattr(top.node, "get") else None
    if value is None:
        return default
    if not isinstance(value, bool):
        raise top.error(key, f"must be true or false, got {value!r}")
    return value


def _fraction(top: FieldReader, key: str, default: float) -> float:
    value = top.number(key, default, minimum=0)
    if value > 1:
        raise top.error(key, f"must be between 0 and 1, got {value!r}")
    return value


def _ttl(top: FieldReader) -> float | None:
    if "cache_ttl" in top.node and top.node["cache_ttl"] is None:
        return None  # null: forever
    value = top.number("cache_ttl", 3600.0, minimum=0)
    return value or None  # 0 also means forever, as a TTL of nothing would cache nothing


def read_cache_config(top: FieldReader) -> CacheConfig:
    """The `cache_*` keys of the top-level mapping `top` (errors say file:line: key)."""

    url = top.string("cache_redis_url", DEFAULT_REDIS_URL)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise top.error("cache_redis_url", f"must be a redis://, rediss:// or unix:// URL, got {url!r}")
    return CacheConfig(
        enabled=_flag(top, "cache_enabled", False),
        backend=top.string("cache_backend", "memory", choices=BACKENDS),
        ttl=_ttl(top),
        similarity=_fraction(top, "cache_similarity", DEFAULT_SIMILARITY),
        history_weight=_fraction(top, "cache_history_weight", 0.3),
        db_path=top.string("cache_db_path") or DEFAULT_DB_PATH,
        redis_url=url,
        max_entries=top.number("cache_max_entries", 10_000, kind=int, minimum=1),
        max_bytes=top.number("cache_max_bytes", 256 * 1024 * 1024, kind=int, minimum=1024),
        embedding_model=top.string("cache_embedding_model") or None,
        embedding_timeout=top.number("cache_embedding_timeout", 1.0, minimum=0.01),
        embedding_prefix=top.string("cache_embedding_prefix", PREFIX_AUTO),
        default=top.string("cache_default", "all", choices=DEFAULTS),
        nondeterministic=_flag(top, "cache_nondeterministic", False),
        lookup_timeout=top.number("cache_lookup_timeout", 0.005, minimum=0.0001),
    )
