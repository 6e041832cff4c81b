"""Identical requests in flight at once make one backend call; a failing or cancelled leader
leaves its waiters to go on by themselves, and nothing is left behind."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from nomyo.cache.cache import ResponseCache
from tests.cache.app import ScriptedBackend
from tests.cache.conftest import cache_config
from tests.conftest import eventually

BODY = {"model": "llama3", "messages": [{"role": "user", "content": "same question"}], "stream": False}


async def ask(http: aiohttp.ClientSession, url: str, body: dict = BODY) -> tuple[int, str, dict]:
    """(status, X-Nomyo-Cache, the answer's last object: the whole answer or the final line)."""

    async with http.post(url + "/api/chat", json=body) as response:
        lines = (await response.read()).strip().split(b"\n")
        return response.status, response.headers.get("X-Nomyo-Cache", ""), orjson.loads(lines[-1])


async def test_two_identical_requests_make_one_backend_call(cache_app):
    """Both arrive while the backend is still answering the first: one call, two full answers."""

    cache = ResponseCache(cache_config())
    backend = ScriptedBackend(gate=asyncio.Event())
    url, _ = await cache_app(cache, backend)
    async with aiohttp.ClientSession() as http:
        first = asyncio.create_task(ask(http, url))
        second = asyncio.create_task(ask(http, url, {**BODY, "stream": True}))  # same key: stream is delivery
        await eventually(lambda: not (backend.calls < 1 or cache.counters.misses < 2))
        backend.gate.set()
        (s1, h1, a1), (s2, h2, _) = await first, await second
    assert backend.calls == 1 and s1 == s2 == 200
    assert sorted([h1, h2]) == ["hit", "miss"] and a1["message"]["content"] == "It is sunny in Paris today."
    assert len(cache.flights) == 0 and cache.flights.coalesced == 1


async def test_a_failing_leader_lets_the_waiter_call_on_its_own(cache_app):
    """The first call fails (502); the request that waited for it makes its own call and succeeds."""

    cache = ResponseCache(cache_config())
    backend = ScriptedBackend(gate=asyncio.Event(), plan=["error", ""])
    url, _ = await cache_app(cache, backend)
    async with aiohttp.ClientSession() as http:
        first = asyncio.create_task(ask(http, url))
        await eventually(lambda: not (backend.calls < 1))
        second = asyncio.create_task(ask(http, url))
        await eventually(lambda: not (cache.counters.misses < 2))
        backend.gate.set()
        (status_first, _, error), (status_second, _, answer) = await first, await second
    assert status_first == 502 and error == {"error": "the backend failed"}
    assert status_second == 200 and answer["done"]
    assert backend.calls == 2 and len(cache.flights) == 0


async def test_a_cancelled_leader_leaves_no_waiter_behind(cache_app):
    """The first client hangs up while the backend works: the second request is not stuck."""

    cache = ResponseCache(cache_config())
    backend = ScriptedBackend(gate=asyncio.Event())
    url, _ = await cache_app(cache, backend)
    async with aiohttp.ClientSession() as http, aiohttp.ClientSession() as other:
        first = asyncio.create_task(ask(other, url))
        await eventually(lambda: not (backend.calls < 1))
        second = asyncio.create_task(ask(http, url))
        await eventually(lambda: not (cache.counters.misses < 2))
        first.cancel()
        await other.close()  # the leader's connection is gone: its handler is cancelled
        await eventually(lambda: not (backend.calls < 2))
        backend.gate.set()
        status, header, answer = await second
    assert status == 200 and header == "miss" and answer["done"]
    assert len(cache.flights) == 0
