"""A reload swaps the whole runtime, over the real daemon and SIGHUP.

Every reloadable setting takes effect for the next request (the body limit, the breaker's
threshold and cool-down, the clocks, the queue timeout), a request in flight keeps the runtime
it started with to its end, and the log says what changed.
"""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from tests.daemon_process import DaemonProcess
from tests.test_signals import CHAT, endpoints


async def circuit(http: aiohttp.ClientSession, router: DaemonProcess, name: str) -> str:
    async with http.get(router.url + "/api/config") as resp:
        return next(e["circuit"] for e in (await resp.json())["endpoints"] if e["name"] == name)


async def chat_status(http: aiohttp.ClientSession, router: DaemonProcess, body: dict = CHAT) -> tuple[int, bytes]:
    async with http.post(router.url + "/api/chat", data=orjson.dumps(body)) as resp:
        return resp.status, await resp.read()


async def test_reload_applies_body_limit_and_breaker_settings(fakes, daemon):
    """Before the reload a 3 kB body is too large and three broken streams open the circuit;
    after it (max_body_size 8192, breaker_threshold 7) the same body is served and three broken
    streams leave it closed; a later reload to threshold 1 with a 0.3 s cool-down opens it on one
    failure and lets the backend back within a second."""

    a = await fakes("a", loaded=["llama3:latest"])
    settings = "max_body_size: 2048\nbreaker_threshold: 3\nbreaker_cooldown: 30\n"
    router = await daemon(endpoints(a) + settings)
    big = {**CHAT, "stream": False, "options": {"stop": ["x" * 3000]}}
    async with aiohttp.ClientSession() as http:
        assert (await chat_status(http, router, big))[0] == 413
        await router.reload(endpoints(a) + "max_body_size: 8192\nbreaker_threshold: 7\nbreaker_cooldown: 30\n")
        assert "max_body_size: 2048 -> 8192" in router.log and "breaker_threshold: 3 -> 7" in router.log
        assert (await chat_status(http, router, big))[0] == 200
        a.cut_next(count=3)
        for _ in range(3):
            await chat_status(http, router)
        assert await circuit(http, router, "a") == "closed"
        await router.reload(endpoints(a) + "max_body_size: 8192\nbreaker_threshold: 1\nbreaker_cooldown: 0.3\n")
        a.cut_next()
        await chat_status(http, router)
        assert await circuit(http, router, "a") == "open"
        for _ in range(100):
            if await circuit(http, router, "a") != "open":
                break
            await asyncio.sleep(0.02)
        assert await circuit(http, router, "a") == "half-open"
        assert (await chat_status(http, router))[0] == 200


async def test_reload_applies_clocks_and_queue_timeout(fakes, daemon):
    """After the reload a backend that sends no headers is given up after the new first-byte
    timeout, and a request waiting for the only slot gets its 503 after the new queue timeout."""

    a = await fakes("a", loaded=["llama3:latest"])
    router = await daemon(endpoints(a) + "first_byte_timeout: 600\nqueue_timeout: 600\n")
    async with aiohttp.ClientSession() as http:
        await router.reload(endpoints(a) + "first_byte_timeout: 1.5\nqueue_timeout: 0.3\n")
        a.hang()
        holder = asyncio.create_task(chat_status(http, router))  # holds the slot, no headers yet
        await a.wait_until(lambda: a.active == 1)
        status, body = await asyncio.wait_for(chat_status(http, router), 5)
        assert status == 503 and b"server busy" in body  # waited 0.3 s for the slot
        status, body = await asyncio.wait_for(holder, 5)
        assert status == 502 and b"no answer within 1.5s" in body
        a.release()


async def test_a_request_in_flight_keeps_its_runtime(fakes, daemon):
    """A stream that started under idle_timeout 30 outlives a reload to idle_timeout 0.3 and a
    1 s pause; a stream started after the reload is cut after 0.3 s of silence."""

    a = await fakes("a", loaded=["llama3:latest"])
    router = await daemon(endpoints(a) + "idle_timeout: 30\nmax_concurrent_connections: 2\n")
    async with aiohttp.ClientSession() as http:
        a.gate = asyncio.Event()
        before = asyncio.create_task(chat_status(http, router))
        await a.wait_until(lambda: a.active == 1)
        await router.reload(endpoints(a) + "idle_timeout: 0.3\nmax_concurrent_connections: 2\n")
        assert "idle_timeout: 30.0 -> 0.3" in router.log
        after = asyncio.create_task(chat_status(http, router))
        await a.wait_until(lambda: a.active == 2)
        await asyncio.sleep(1.0)
        a.gate.set()
        status, body = await before
        assert status == 200 and orjson.loads(body.splitlines()[-1])["done"] is True
        status, body = await after
        assert status == 200 and b"no data for 0.3s" in body.splitlines()[-1]
