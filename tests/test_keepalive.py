"""Early headers and keep-alive lines while a streaming request waits (queue or cold load)."""

from __future__ import annotations

import asyncio

import ollama
import openai
import orjson
import pytest

from nomyo.errors import SERVER_BUSY
from tests.conftest import eventually
from tests.fakes.ollama_v1 import FakeOllamaV1

CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}


async def hold_the_only_slot(http, router, fake):
    """Start a stream on the fake's only slot and keep it open until `fake.gate` is set."""
    fake.gate = asyncio.Event()
    task = asyncio.create_task(http.post(router.url + "/api/chat", data=orjson.dumps(CHAT)))
    await fake.wait_until(lambda: fake.active == 1)
    return task


async def test_waiting_stream_gets_headers_and_empty_chunks_then_the_answer(fakes, start_router, http):
    """1. the only slot is busy; 2. a second stream waits in the router's queue; 3. after 0.1 s
    it has its 200 headers and an empty-content chunk every 0.1 s; 4. when the slot frees the
    real tokens follow on the same stream, and the ollama client reads the whole text."""
    a = await fakes("a", loaded=["llama3:latest"])
    router = await start_router([a], slots=1, keepalive_interval=0.1)
    holder = await hold_the_only_slot(http, router, a)
    async with http.post(router.url + "/api/chat", data=orjson.dumps(CHAT)) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "application/x-ndjson"
        early = [orjson.loads(await resp.content.readline()) for _ in range(3)]
        assert all(line["message"] == {"role": "assistant", "content": ""} and not line["done"] for line in early)
        a.gate.set()
        rest = [orjson.loads(line) for line in (await resp.read()).splitlines()]
    assert "".join(line["message"]["content"] for line in rest) == "Hello from a"
    assert rest[-1]["done"]
    (await holder).close()


async def test_the_ollama_client_reads_through_keep_alive_chunks(fakes, start_router):
    a = await fakes("a", load_delay=0.5)  # a cold load: nothing comes for half a second
    router = await start_router([a], keepalive_interval=0.1)
    parts = [p async for p in await ollama.AsyncClient(host=router.url).chat(
        model="llama3", messages=[{"role": "user", "content": "hi"}], stream=True)]
    assert sum(1 for p in parts if p.message.content == "" and not p.done) >= 3
    assert "".join(p.message.content for p in parts) == "Hello from a"


async def test_an_error_after_early_headers_ends_the_stream_in_the_dialect(fakes, start_router, http):
    """The wait outlasts queue_timeout after the headers went out: the 503 becomes the last line,
    which the ollama client raises as the error it is."""
    a = await fakes("a", loaded=["llama3:latest"])
    router = await start_router([a], slots=1, keepalive_interval=0.1, queue_timeout=0.35)
    holder = await hold_the_only_slot(http, router, a)
    async with http.post(router.url + "/api/chat", data=orjson.dumps(CHAT)) as resp:
        assert resp.status == 200
        lines = [orjson.loads(line) for line in (await resp.read()).splitlines()]
    assert lines[-1] == {"error": SERVER_BUSY}
    assert all(line["message"]["content"] == "" for line in lines[:-1]) and len(lines) >= 3
    with pytest.raises(ollama.ResponseError, match="server busy"):
        async for _ in await ollama.AsyncClient(host=router.url).chat(
                model="llama3", messages=[{"role": "user", "content": "hi"}], stream=True):
            pass
    a.gate.set()
    (await holder).close()


async def test_openai_stream_gets_sse_comments_while_waiting(start_router, http):
    a = FakeOllamaV1("a", loaded=["llama3:latest"], strict_host=True)
    await a.start()
    try:
        router = await start_router([a], slots=1, keepalive_interval=0.1)
        holder = await hold_the_only_slot(http, router, a)
        body = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        async with http.post(router.url + "/v1/chat/completions", json=body) as raw:
            assert raw.headers["Content-Type"].startswith("text/event-stream")
            assert await raw.content.readline() == b": keep-alive\n"
            a.gate.set()
            rest = await raw.read()
        assert b"Hello" in rest and rest.endswith(b"data: [DONE]\n\n")
        (await holder).close()
        await eventually(lambda: a.active == 0)
        a.gate = None
        client = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0)
        stream = await client.chat.completions.create(model="llama3", messages=[{"role": "user", "content": "hi"}],
                                                      stream=True)
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "Hello from a"
        await router.settled()
    finally:
        await a.stop()


async def test_off_by_default(fakes, start_router, http):
    a = await fakes("a", loaded=["llama3:latest"])
    router = await start_router([a], slots=1, queue_timeout=0.3)
    holder = await hold_the_only_slot(http, router, a)
    async with http.post(router.url + "/api/chat", data=orjson.dumps(CHAT)) as resp:
        assert resp.status == 503 and (await resp.json()) == {"error": SERVER_BUSY}
    a.gate.set()
    (await holder).close()
