"""The three stores behind one interface: hits, TTL, bounds, invalidation, restarts, sharing,
and failures that degrade to misses (Redis stopped or slow, corrupt rows), never to errors."""

from __future__ import annotations

import asyncio
import logging
import sqlite3

import pytest
import redis.asyncio as aioredis

from nomyo.cache.assemble import Answer
from nomyo.cache.cache import ResponseCache
from nomyo.cache.guard import StoreUnavailable
from nomyo.names import normalize_model
from tests.cache.answers import ollama_chat
from tests.cache.conftest import cache_config


def chat(text: str, model: str = "llama3") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": True}


async def put(cache: ResponseCache, text: str, model: str = "llama3", scope: str = ""):
    req = cache.request("/api/chat", chat(text, model), scope)
    return await cache.store(req, Answer("/api/chat", True, chunks=ollama_chat(model, True)))


async def hit(cache: ResponseCache, text: str, model: str = "llama3", scope: str = "") -> bool:
    return await cache.lookup(cache.request("/api/chat", chat(text, model), scope)) is not None


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def make_cache(request, tmp_path):
    """`await make_cache(**settings)`: a started cache on each backend (closed at the end)."""

    made = []
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None

    async def make(**settings) -> ResponseCache:
        cache = ResponseCache(cache_config(backend=request.param, db_path=str(tmp_path / "cache.db"),
                                           redis_url=server.url if server else "redis://x", **settings))
        await cache.start()
        made.append(cache)
        return cache

    yield make
    for cache in made:
        await cache.close()


async def test_hit_invalidate_by_model_scope_and_all(make_cache):
    cache = await make_cache()
    await put(cache, "a", "llama3", "alice")
    await put(cache, "a", "mistral", "alice")
    await put(cache, "a", "llama3", "bob")
    assert await hit(cache, "a", "Llama3:latest", "alice") and not await hit(cache, "a", "llama3", "carol")
    assert await cache.invalidate(model=normalize_model("mistral")) == 1
    assert not await hit(cache, "a", "mistral", "alice") and await hit(cache, "a", "llama3", "alice")
    assert await cache.invalidate(scope="bob") == 1
    assert not await hit(cache, "a", "llama3", "bob") and await hit(cache, "a", "llama3", "alice")
    assert await cache.invalidate() == 1
    assert not await hit(cache, "a", "llama3", "alice")
    assert (await cache.stats())["entries"] == 0


async def test_ttl_expiry(make_cache):
    cache = await make_cache(ttl=0.3)
    await put(cache, "soon gone")
    assert await hit(cache, "soon gone")
    await asyncio.sleep(0.6)
    assert not await hit(cache, "soon gone")


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_lru_bound_by_entries_and_bytes(backend, tmp_path):
    cache = ResponseCache(cache_config(backend=backend, db_path=str(tmp_path / "c.db"), max_entries=3))
    await cache.start()
    for text in ("one", "two", "three"):
        await put(cache, text)
    assert await hit(cache, "one")  # used: "two" is now the least recently used
    await put(cache, "four")
    assert [await hit(cache, t) for t in ("one", "two", "three", "four")] == [True, False, True, True]
    assert (await cache.stats())["evictions"] == 1
    await cache.close()
    entry_size = (await put_size(tmp_path, backend))
    small = ResponseCache(cache_config(backend=backend, db_path=str(tmp_path / "d.db"), max_bytes=entry_size * 2 + 10))
    await small.start()
    for text in ("one", "two", "three"):
        await put(small, text)
    stats = await small.stats()
    assert stats["entries"] == 2 and stats["bytes"] <= entry_size * 2 + 10
    await small.close()


async def put_size(tmp_path, backend) -> int:
    probe = ResponseCache(cache_config(backend=backend, db_path=str(tmp_path / "probe.db")))
    await probe.start()
    await put(probe, "one")
    size = (await probe.stats())["bytes"]
    await probe.close()
    return size


async def test_sqlite_survives_a_restart(tmp_path):
    settings = dict(backend="sqlite", db_path=str(tmp_path / "cache.db"))
    first = ResponseCache(cache_config(**settings))
    await first.start()
    await put(first, "remember me")
    await first.close()
    second = ResponseCache(cache_config(**settings))
    await second.start()
    assert await hit(second, "remember me")
    await second.close()


async def test_corrupt_rows_are_misses_logged_once(tmp_path, caplog):
    path = str(tmp_path / "cache.db")
    cache = ResponseCache(cache_config(backend="sqlite", db_path=path))
    await cache.start()
    await put(cache, "a")
    await put(cache, "b")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE cache_entries SET value = x'00ff7b'")
    caplog.set_level(logging.WARNING, "nomyo.cache")
    assert not await hit(cache, "a") and not await hit(cache, "b")
    assert len([r for r in caplog.records if "corrupt" in r.message]) == 1
    assert (await cache.stats())["entries"] == 0  # dropped
    await cache.close()


async def test_two_routers_share_one_redis(redis_server):
    """What one router stores, another sharing the Redis server answers at once."""

    one = ResponseCache(cache_config(backend="redis", redis_url=redis_server.url))
    two = ResponseCache(cache_config(backend="redis", redis_url=redis_server.url))
    await one.start()
    await two.start()
    await put(one, "shared question", scope="team")
    assert await hit(two, "shared question", scope="team") and not await hit(two, "shared question")
    await two.invalidate(scope="team")
    assert not await hit(one, "shared question", scope="team")
    await one.close()
    await two.close()


async def test_redis_stopped_mid_run_degrades_to_misses(redis_server, caplog):
    """Redis goes away: lookups are misses, stores are skipped, one warning a minute, no error;
    Redis comes back on the same socket: the cache works again."""

    cache = ResponseCache(cache_config(backend="redis", redis_url=redis_server.url))
    await cache.start()
    await put(cache, "before")
    assert await hit(cache, "before")
    await asyncio.to_thread(redis_server.stop)
    caplog.set_level(logging.WARNING, "nomyo.cache")
    for _ in range(3):
        assert not await hit(cache, "before")
        await put(cache, "during")
    warnings = [r for r in caplog.records if r.name == "nomyo.cache"]
    assert len([r for r in warnings if "lookup failed" in r.message]) == 1
    assert len([r for r in warnings if "store failed" in r.message]) == 1
    with pytest.raises(StoreUnavailable):
        await cache.invalidate()
    await asyncio.to_thread(redis_server.start)
    await put(cache, "after")
    assert await hit(cache, "after")
    assert (await cache.stats())["store_errors"] >= 6
    await cache.close()


async def test_a_slow_redis_lookup_is_abandoned_as_a_miss(redis_server, caplog):
    """A lookup that takes longer than its budget (Redis busy: DEBUG SLEEP) is a miss."""

    cache = ResponseCache(cache_config(backend="redis", redis_url=redis_server.url, lookup_timeout=0.05))
    await cache.start()
    await put(cache, "q")
    blocker = aioredis.from_url(redis_server.url)
    sleeping = asyncio.create_task(blocker.execute_command("DEBUG", "SLEEP", "0.5"))
    await asyncio.sleep(0.05)
    caplog.set_level(logging.WARNING, "nomyo.cache")
    assert not await hit(cache, "q")
    await sleeping
    await blocker.aclose()
    assert any("took longer" in r.message for r in caplog.records)
    assert await hit(cache, "q")
    await cache.close()
