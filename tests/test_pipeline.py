"""The exchange pipeline's seams: sinks (client, collector, tee) and internal calls.

A tee is what the response cache will use: the client gets the answer as always, and the router
keeps a byte-identical copy, marked complete only when the stream really ended. Internal calls
are what the ensemble and the cache's embeddings use: routed, leased, failed over, timed out and
accounted like a client's request, under their purpose, with no web request behind them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import orjson
import pytest
from aiohttp import web

from nomyo.call import Dialect
from nomyo.errors import RouterError
from nomyo.handlers.common import read_call
from nomyo.keys import ROUTER
from nomyo.sinks import ClientSink, Tee
from tests.conftest import RunningRouter, eventually
from tests.fakes.openai_backend import FakeOpenAI
from tests.test_openai_api import endpoint

CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
COPIES = web.AppKey("copies", list)


async def teed(request: web.Request) -> web.StreamResponse:
    """Serves `/teed/<route>` as the router serves `<route>`, through a Tee whose copy is kept."""

    call = await read_call(request)
    path = request.path.removeprefix("/teed")
    dialect = Dialect.of_path(path)
    asked = call.payload.get("stream")
    stream = asked is True if dialect is Dialect.OPENAI else asked is not False
    call = dataclasses.replace(call, path=path, dialect=dialect, stream=stream)
    tee = Tee(ClientSink(request))
    request.app[COPIES].append(tee.copy.answer)
    await request.app[ROUTER].exchange(call, tee)
    return tee.primary.response


async def teeing_router(start_router, backends) -> RunningRouter:
    """The real app, plus `/teed/...` routes that deliver through a Tee; `copies` are kept."""

    kept: list = []

    def add_teed_routes(app: web.Application) -> None:
        app[COPIES] = kept
        app.router.add_post("/teed/{route:.+}", teed)

    router = await start_router(backends, prepare_app=add_teed_routes)
    router.copies = kept
    return router


async def test_tee_copy_is_byte_identical_to_what_the_client_got(fakes, backends, start_router, http):
    """A streamed chat, a whole chat, an OpenAI SSE stream and an Ollama chat translated from
    one through a tee: each copy holds exactly the client's bytes and is marked complete."""

    a = await fakes("a", loaded=["llama3:latest"], token_delay=0.001)
    gpu = await backends(FakeOpenAI("gpu", token_delay=0.001))
    router = await teeing_router(start_router, [a, endpoint(gpu)])
    app_copies = router.copies
    tiny = {"model": "tiny", "messages": CHAT["messages"]}
    for route, body in (("/api/chat", CHAT), ("/api/chat", {**CHAT, "stream": False}),
                        ("/v1/chat/completions", {**tiny, "stream": True}), ("/api/chat", tiny)):
        async with http.post(router.url + "/teed" + route, data=orjson.dumps(body)) as resp:
            assert resp.status == 200
            got = await resp.read()
        copy = app_copies[-1]
        assert copy.body == got and copy.complete and copy.status == 200
        assert copy.streamed == (body.get("stream") is not False)
        if route.startswith("/v1"):
            assert copy.body.endswith(b"data: [DONE]\n\n")
        else:
            assert (copy.lines()[-1] if copy.streamed else copy.json())["done"] is True
    assert len(app_copies[0].chunks) > 1 and app_copies[0].lines()[-1]["done"] is True


async def test_tee_copy_of_a_stream_the_client_left_is_never_complete(fakes, start_router, http):
    """The client reads one line and leaves: the copy is not marked complete (a cache must not
    keep it), the backend sees its connection close, and the slot is free."""

    a = await fakes("a", loaded=["llama3:latest"], token_delay=0.05, reply="one two three four five six")
    router = await teeing_router(start_router, [a])
    resp = await http.post(router.url + "/teed/api/chat", data=orjson.dumps(CHAT))
    await resp.content.readline()
    resp.close()
    await a.wait_until(lambda: a.disconnects == 1)
    await eventually(lambda: router.ledger.total_inflight() == 0, what="slot freed")
    copy = router.copies[-1]
    assert not copy.complete and copy.streamed and copy.chunks


async def test_internal_call_is_routed_and_accounted_under_its_purpose(fakes, start_router, caplog, http):
    """`router.call` goes where the model is loaded, returns the collected answer with its
    outcome, and is counted like a client's request: usage store, metrics, access line."""

    caplog.set_level(logging.INFO, logger="nomyo.access")
    a, b = await fakes("a", loaded=["llama3:latest"]), await fakes("b")
    router = await start_router([a, b])
    answer = await router.router.call("/api/chat", {**CHAT, "stream": False}, caller="moe")
    assert answer.complete and answer.json()["message"]["content"] == "Hello from a"
    assert (answer.outcome.backend, answer.outcome.kind, answer.outcome.caller) == ("a", "ok", "moe")
    assert answer.outcome.completion_tokens > 0
    streamed = await router.router.call("/api/generate", {"model": "llama3", "prompt": "x"}, caller="moe")
    assert streamed.streamed and streamed.complete and streamed.lines()[-1]["done"] is True
    await eventually(lambda: router.router.usage.totals().get(("a", "llama3:latest"), (0, 0, 0))[2] == 2,
                     what="two requests counted for a")
    assert "POST /api/chat model=llama3 backend=a status=200" in caplog.text and "caller=moe" in caplog.text
    async with http.get(router.url + "/metrics") as resp:
        assert 'nomyo_caller_requests_total{caller="moe"} 2.0' in await resp.text()


async def test_internal_call_fails_over_and_speaks_openai(fakes, backends, start_router):
    """A backend that resets the connection is left for the next one, as for a client; an
    internal call in the OpenAI dialect goes to an OpenAI-compatible backend as is, and an Ollama
    one to the same backend is translated."""

    a, b = await fakes("a", loaded=["llama3:latest"]), await fakes("b")
    router = await start_router([a, b])
    a.reset_next()
    answer = await router.router.call("/api/chat", {**CHAT, "stream": False}, caller="test")
    assert answer.json()["message"]["content"] == "Hello from b" and answer.outcome.backend == "b"
    gpu = await backends(FakeOpenAI("gpu"))
    other = await start_router([endpoint(gpu)])
    body = {"model": "tiny", "messages": CHAT["messages"]}
    openai_answer = await other.router.call("/v1/chat/completions", body, caller="test")
    assert openai_answer.json()["choices"][0]["message"]["content"] == "Hello from gpu"
    ollama_answer = await other.router.call("/api/chat", {**body, "stream": False}, caller="test")
    assert ollama_answer.json()["message"]["content"] == "Hello from gpu"


async def test_internal_stream_call_yields_chunks_as_they_come(fakes, start_router):
    """`stream_call` hands over the first chunk while the backend is still generating."""

    a = await fakes("a", loaded=["llama3:latest"])
    a.gate = asyncio.Event()
    router = await start_router([a])
    chunks = router.router.stream_call("/api/chat", CHAT, caller="test")
    first = orjson.loads(await anext(chunks))
    assert first["done"] is False and a.active == 1
    a.gate.set()
    rest = b"".join([chunk async for chunk in chunks])
    assert orjson.loads(rest.splitlines()[-1])["done"] is True


async def test_cancelled_internal_calls_free_their_slots_at_once(fakes, start_router):
    """Cancelling a collected call, or leaving a streamed one early, frees the slot before the
    next line runs, and the backend sees the connection close."""

    a = await fakes("a", loaded=["llama3:latest"])
    router = await start_router([a], slots=2)
    a.hang()
    task = asyncio.create_task(router.router.call("/api/chat", CHAT, caller="test"))
    await a.wait_until(lambda: a.active == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert router.ledger.total_inflight() == 0
    a.release()
    a.gate = asyncio.Event()
    chunks = router.router.stream_call("/api/chat", CHAT, caller="test")
    await anext(chunks)
    await chunks.aclose()
    assert router.ledger.total_inflight() == 0
    await a.wait_until(lambda: a.disconnects == 2)


async def test_internal_call_errors_are_raised_to_the_caller(fakes, start_router, caplog):
    caplog.set_level(logging.INFO, logger="nomyo.access")
    a = await fakes("a")
    router = await start_router([a])
    with pytest.raises(RouterError) as info:
        await router.router.call("/api/chat", {"model": "nope", "messages": []}, caller="moe")
    assert info.value.status == 404
    assert "model=nope status=- " in caplog.text and "outcome=rejected caller=moe" in caplog.text


async def test_client_sink_streams_chunk_by_chunk(fakes, start_router, http):
    """The client's sink writes each backend chunk as it comes: the first line is read while
    the backend holds the rest."""

    a = await fakes("a", loaded=["llama3:latest"])
    a.gate = asyncio.Event()
    router = await start_router([a])
    async with http.post(router.url + "/api/chat", data=orjson.dumps(CHAT)) as resp:
        first = orjson.loads(await resp.content.readline())
        assert first["done"] is False and a.active == 1
        a.gate.set()
        assert orjson.loads((await resp.read()).splitlines()[-1])["done"] is True

