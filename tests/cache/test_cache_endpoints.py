"""GET /api/cache/stats in the original's shape (plus ours), POST /api/cache/invalidate (all,
by model, by scope), and the cache's Prometheus metrics."""

from __future__ import annotations

import aiohttp
import ollama
from prometheus_client import CollectorRegistry, generate_latest

from nomyo.cache.cache import ResponseCache
from nomyo.cache.stats import register_cache_metrics
from tests.cache.conftest import cache_config

MESSAGES = [{"role": "user", "content": "hello"}]


async def test_stats_invalidate_and_metrics(cache_app):
    cache = ResponseCache(cache_config(similarity=0.9, history_weight=0.3))
    registry = CollectorRegistry()
    register_cache_metrics(cache, registry)
    url, backend = await cache_app(cache)
    client = ollama.AsyncClient(host=url)
    for _ in range(3):
        await client.chat(model="llama3", messages=MESSAGES)
    await client.chat(model="mistral", messages=MESSAGES)
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/api/cache/stats") as response:
            stats = await response.json()
        original = {k: stats[k] for k in ("enabled", "hits", "misses", "hit_rate", "semantic", "backend",
                                          "similarity_threshold", "history_weight")}
        assert original == {"enabled": True, "hits": 2, "misses": 2, "hit_rate": 0.5, "semantic": False,
                            "backend": "memory", "similarity_threshold": 0.9, "history_weight": 0.3}
        assert stats["entries"] == 2 and stats["bytes"] > 0 and stats["semantic_hits"] == 0
        assert stats["evictions"] == 0 and stats["saved_tokens"] == {"input": 52, "output": 14}
        text = generate_latest(registry).decode()
        assert 'nomyo_cache_lookups_total{result="hit"} 2.0' in text
        assert 'nomyo_cache_saved_tokens_total{direction="output"} 14.0' in text
        assert "nomyo_cache_entries 2.0" in text and 'nomyo_cache_lookup_seconds_count{kind="exact"} 4.0' in text

        async with http.post(url + "/api/cache/invalidate", json={"model": "Mistral"}) as response:
            assert (await response.json())["invalidated"] == 1
        async with http.post(url + "/api/cache/invalidate", json={"colour": "red"}) as response:
            assert response.status == 400 and "unknown field" in (await response.json())["error"]
        async with http.post(url + "/api/cache/invalidate?scope=nobody") as response:
            assert (await response.json())["invalidated"] == 0
        async with http.post(url + "/api/cache/invalidate") as response:
            assert (await response.json()) == {"status": "ok", "invalidated": 1}
        async with http.get(url + "/api/cache/stats") as response:
            stats = await response.json()
    assert stats["hits"] == stats["misses"] == stats["entries"] == 0  # the original clears counters too
    await client.chat(model="llama3", messages=MESSAGES)
    assert backend.calls == 3


async def test_invalidate_while_the_store_is_down_is_a_503(cache_app, redis_server):
    cache = ResponseCache(cache_config(backend="redis", redis_url=redis_server.url))
    url, _ = await cache_app(cache)
    redis_server.stop()
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/api/cache/invalidate") as response:
            assert response.status == 503 and "unavailable" in (await response.json())["error"]
        async with http.get(url + "/api/cache/stats") as response:
            assert response.status == 200 and (await response.json())["backend"] == "redis"
