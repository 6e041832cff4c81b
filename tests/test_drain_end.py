"""The drain ends streams honestly: a stream still running when `drain_timeout` runs out gets a
last line saying the router is shutting down, in its dialect, and the access line says so."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import orjson

from tests.fakes.openai_backend import FakeOpenAI
from tests.test_signals import CHAT, endpoints


async def test_streams_left_at_the_end_of_the_drain_are_told_why(fakes, backends, daemon):
    a = await fakes("a", loaded=["llama3:latest"])
    a.gate = asyncio.Event()
    gpu = await backends(FakeOpenAI("gpu"))
    gpu.gate = asyncio.Event()
    config = endpoints(a) + f"  - name: gpu\n    url: {gpu.url}/v1\n    type: openai\ndrain_timeout: 0.5\n"
    router = await daemon(config)
    async with aiohttp.ClientSession() as http:
        ollama = await http.post(router.url + "/api/chat", data=orjson.dumps(CHAT))
        first = orjson.loads(await ollama.content.readline())
        body = {"model": "tiny", "messages": CHAT["messages"], "stream": True}
        openai = await http.post(router.url + "/v1/chat/completions", data=orjson.dumps(body))
        assert (await openai.content.readline()).startswith(b"data: ")
        router.signal(signal.SIGTERM)
        rest = await asyncio.wait_for(ollama.read(), 10)
        events = await asyncio.wait_for(openai.read(), 10)
    assert first["done"] is False
    assert orjson.loads(rest.splitlines()[-1]) == {"error": "the router is shutting down"}
    last_event = orjson.loads([line for line in events.splitlines() if line.startswith(b"data: ")][-1][6:])
    assert last_event["error"]["message"] == "the router is shutting down"
    assert await router.wait() == 0
    assert router.log.count("outcome=shutdown") == 2 and "client-disconnected" not in router.log
