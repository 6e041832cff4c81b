"""Routing can be diagnosed from the log: debug lines for each decision, queue waits and
wake-ups, failovers and breaker transitions; the access line carries the queue wait and the time
to first byte, saturation has its own outcome, and a broken stream is told in words."""

from __future__ import annotations

import asyncio
import logging
import re

import orjson

from tests.conftest import eventually

CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}


def access_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "nomyo.access"]


async def test_debug_log_explains_routing_queueing_and_failover(fakes, start_router, http, caplog):
    """A decision names every candidate with its slots in use and whether the model is loaded,
    and the choice; a request that waits says so when it queues and when it gets a slot; a
    failover says where it goes next."""

    caplog.set_level(logging.DEBUG, logger="nomyo")
    a, b = await fakes("a", loaded=["llama3:latest"]), await fakes("b")
    router = await start_router([a, b], slots=1)
    async with http.post(router.url + "/api/chat", data=orjson.dumps({**CHAT, "stream": False})) as resp:
        assert resp.status == 200
    assert "route llama3:latest (loaded-first): a chosen among [a 0/1 loaded; b 0/1 not loaded]" in caplog.text
    a.gate, b.gate = asyncio.Event(), asyncio.Event()
    held = [asyncio.create_task(http.post(router.url + "/api/chat", data=orjson.dumps(CHAT))) for _ in range(2)]
    await eventually(lambda: a.active + b.active == 2)
    waiting = asyncio.create_task(http.post(router.url + "/api/chat", data=orjson.dumps({**CHAT, "stream": False})))
    await eventually(lambda: router.ledger.queued == 1)
    assert "no free slot for llama3:latest: queued (1 waiting in all)" in caplog.text
    await asyncio.sleep(0.05)
    a.gate.set()
    b.gate.set()
    for task in [*held, waiting]:
        resp = await task
        await resp.read()
    assert re.search(r"slot on [ab] for llama3:latest handed to the oldest waiter", caplog.text)
    queued = [line for line in access_lines(caplog) if "queued=" in line]
    assert len(queued) == 1 and int(re.search(r"queued=(\d+)ms", queued[0])[1]) >= 40
    a.reset_next()
    async with http.post(router.url + "/api/chat", data=orjson.dumps({**CHAT, "stream": False})) as resp:
        assert resp.status == 200
    assert "llama3:latest: failing over from a to another backend" in caplog.text


async def test_access_line_has_ttfb_and_saturation_is_busy(fakes, start_router, http, caplog):
    """A stream's access line carries its time to first byte; a request refused because the
    queue is full, or one that waited out the queue timeout, is `outcome=busy`, not rejected."""

    caplog.set_level(logging.INFO, logger="nomyo.access")
    a = await fakes("a", loaded=["llama3:latest"])
    router = await start_router([a], max_queue=1, queue_timeout=0.2)
    async with http.post(router.url + "/api/chat", data=orjson.dumps(CHAT)) as resp:
        await resp.read()
    assert re.search(r"status=200 duration=[\d.]+ms ttfb=[\d.]+ms tokens=", access_lines(caplog)[-1])
    a.gate = asyncio.Event()
    holder = asyncio.create_task(http.post(router.url + "/api/chat", data=orjson.dumps(CHAT)))
    await a.wait_until(lambda: a.active == 1)
    waiter = asyncio.create_task(http.post(router.url + "/api/chat", data=orjson.dumps(CHAT)))
    await eventually(lambda: router.ledger.queued == 1)
    async with http.post(router.url + "/api/chat", data=orjson.dumps(CHAT)) as resp:
        assert resp.status == 503  # the queue is full
    assert (await waiter).status == 503  # waited 0.2 s
    a.gate.set()
    await (await holder).read()
    busy = [line for line in access_lines(caplog) if "status=503" in line]
    assert len(busy) == 2 and all("outcome=busy" in line for line in busy)


async def test_breaker_transitions_are_logged(fakes, start_router, http, caplog):
    caplog.set_level(logging.INFO, logger="nomyo")
    a = await fakes("a", loaded=["llama3:latest"])
    router = await start_router([a], breaker_threshold=1, breaker_cooldown=0.2)
    a.cut_next()
    async with http.post(router.url + "/api/chat", data=orjson.dumps(CHAT)) as resp:
        await resp.read()
    await eventually(lambda: "circuit open for" in caplog.text)
    await eventually(lambda: "backend a: cool-down over, half-open" in caplog.text)
    async with http.post(router.url + "/api/chat", data=orjson.dumps(CHAT)) as resp:
        await resp.read()
    assert "backend a: circuit closed again" in caplog.text


async def test_a_stream_cut_mid_way_is_told_in_words(fakes, start_router, http, caplog):
    """A backend whose connection drops mid-stream: the client's error line and the log say
    the answer broke off, with no parser internals ("TransferEncodingError", "400")."""

    caplog.set_level(logging.WARNING, logger="nomyo")
    a = await fakes("a", loaded=["llama3:latest"])
    router = await start_router([a])
    a.cut_next(after_tokens=2)
    async with http.post(router.url + "/api/chat", data=orjson.dumps(CHAT)) as resp:
        last = orjson.loads((await resp.read()).splitlines()[-1])
    assert "backend a failed mid-stream: " in last["error"]
    assert "TransferEncodingError" not in last["error"] and "400" not in last["error"]
    assert "TransferEncodingError" not in caplog.text
    assert router.ledger.total_inflight() == 0
