"""Answers that never come, answers that are not what they claim, and streams whose framing
breaks: each ends quickly with a clear error in the caller's dialect, the slot freed, and the
backend's breaker told where the fault is the transport's."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from tests.fakes.raw_backend import RawBackend

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def ollama_endpoint(fake: RawBackend) -> dict:
    return {"name": "raw", "url": fake.url}


def openai_endpoint(fake: RawBackend) -> dict:
    return {"name": "raw", "url": fake.url + "/v1", "type": "openai"}


async def post(http, url: str, body: dict) -> tuple[int, bytes]:
    async with http.post(url, data=orjson.dumps(body)) as resp:
        return resp.status, await resp.read()


async def test_an_answer_that_never_comes_is_a_504_after_response_timeout(backends, start_router, http):
    """A backend that reads a non-streamed request and never answers: after response_timeout
    the client gets 504 in its dialect, the slot is free, and the breaker counted it."""

    fake = await backends(RawBackend("hang"))
    router = await start_router([ollama_endpoint(fake)], response_timeout=0.5, breaker_threshold=5)
    started = time.monotonic()
    status, body = await asyncio.wait_for(post(http, router.url + "/api/chat", {**CHAT, "stream": False}), 10)
    assert status == 504 and orjson.loads(body) == {"error": "backend raw did not answer within 0.5s"}
    assert time.monotonic() - started < 5
    assert router.ledger.total_inflight() == 0
    assert router.router.poller.breaker(router.backend("raw")).failures == 1
    other = await backends(RawBackend("hang"))
    v1 = await start_router([openai_endpoint(other)], response_timeout=0.5)
    status, body = await asyncio.wait_for(post(http, v1.url + "/v1/chat/completions", CHAT), 10)
    error = orjson.loads(body)["error"]
    assert status == 504 and error["message"] == "backend raw did not answer within 0.5s"
    assert error["code"] == "backend_timeout" and error["type"] == "api_error"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_200_html_page_is_a_502_not_an_answer(backends, start_router, http, stream):
    fake = await backends(RawBackend("html"))
    router = await start_router([ollama_endpoint(fake)])
    status, body = await post(http, router.url + "/api/chat", {**CHAT, "stream": stream})
    assert status == 502 and orjson.loads(body) == {"error": "backend raw sent a text/html page instead of an answer"}
    other = await backends(RawBackend("html"))
    v1 = await start_router([openai_endpoint(other)])
    status, body = await post(http, v1.url + "/v1/chat/completions", {**CHAT, "stream": stream})
    assert status == 502 and "text/html" in orjson.loads(body)["error"]["message"]
    assert router.router.usage.totals() == {} and v1.router.usage.totals() == {}


@pytest.mark.parametrize("dialect", ["ollama", "openai"])
async def test_a_broken_chunk_ends_the_stream_within_seconds(backends, start_router, http, dialect):
    """One good line, then a chunk size that is not hex, and the connection left open: the
    client gets its line and then an error in its dialect within a few seconds, not after the
    five-minute idle limit."""

    fake = await backends(RawBackend("broken-chunk"))
    if dialect == "ollama":
        router = await start_router([ollama_endpoint(fake)])
        url = router.url + "/api/chat"
    else:
        router = await start_router([openai_endpoint(fake)])
        url = router.url + "/v1/chat/completions"
    started = time.monotonic()
    status, body = await asyncio.wait_for(post(http, url, {**CHAT, "stream": True}), 10)
    assert status == 200 and time.monotonic() - started < 5
    assert b"Hi" in body and b"failed mid-stream" in body and b"not valid HTTP framing" in body
    assert router.ledger.total_inflight() == 0


async def test_a_100_mib_sse_line_is_refused_at_one_mib(backends, start_router, http):
    """An SSE line that never ends is cut at 1 MiB with an error event; the router does not spend
    seconds of CPU on it, and other clients are served meanwhile."""

    fake = await backends(RawBackend("long-line"))
    router = await start_router([openai_endpoint(fake)])
    started = time.monotonic()
    status, body = await asyncio.wait_for(post(http, router.url + "/v1/chat/completions", {**CHAT, "stream": True}),
                                          30)
    assert status == 200 and b"an SSE line over 1048576 bytes" in body and len(body) < 4096
    assert time.monotonic() - started < 10
    assert router.ledger.total_inflight() == 0
