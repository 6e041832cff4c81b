"""Circuit breaking: repeated request failures take a backend out, a cool-down and a poll let it
back half-open (one request per model at a time), and good requests close the circuit."""

from __future__ import annotations

import asyncio

import orjson

from nomyo.breaker import CLOSED, HALF_OPEN, OPEN, Breaker
from tests.conftest import eventually

BODY = orjson.dumps({"model": "llama3", "prompt": "hi", "stream": False})


def test_state_machine():
    breaker = Breaker(threshold=2, cooldown=10)
    assert not breaker.failure(now=0) and breaker.state == CLOSED
    breaker.success()
    assert not breaker.failure(now=1)  # the success reset the count
    assert breaker.failure(now=2) and breaker.state == OPEN
    assert not breaker.may_probe(now=5) and breaker.may_probe(now=12)
    breaker.probe_succeeded()
    assert breaker.state == HALF_OPEN
    assert breaker.failure(now=13) and breaker.state == OPEN  # one failure half-open re-opens...
    assert breaker.remaining(now=13) == 20                    # ...for twice as long
    breaker.probe_succeeded()
    assert not breaker.success() and breaker.success() and breaker.state == CLOSED
    assert breaker.cooldown == 10


def test_recent_failures_for_the_dashboard():
    """Every failure is remembered (when, and why the latest), whatever the circuit did with it,
    and a success does not wipe them: "errors in the last minutes" is history, not state."""

    breaker = Breaker(threshold=3, cooldown=10)
    breaker.failure(now=100, reason="cannot connect")
    breaker.success()
    breaker.failure(now=200, reason="status 500")
    breaker.failure(now=250)
    assert breaker.errors_since(0) == 3 and breaker.errors_since(150) == 2 and breaker.errors_since(300) == 0
    assert breaker.last_error == "status 500"


async def generate(http, router) -> tuple[int, dict]:
    async with http.post(router.url + "/api/generate", data=BODY) as resp:
        return resp.status, await resp.json()


async def test_failing_backend_is_taken_out_and_let_back_gradually(fakes, start_router, http):
    a = await fakes("a", loaded=["llama3:latest"])
    b = await fakes("b")
    router = await start_router([a, b], slots=4, breaker_threshold=3, breaker_cooldown=0.5, poll_interval=0.1)
    a.fail_next(500, "an error was encountered while running the model", count=3)
    for _ in range(3):  # the backend's own errors reach the client as they are
        assert await generate(http, router) == (500, {"error": "an error was encountered while running the model"})
    assert router.backend("a").status.breaker == OPEN and not router.backend("a").status.healthy
    status, body = await generate(http, router)  # a is out: b serves
    assert status == 200 and body["response"] == "Hello from b"
    await eventually(lambda: router.backend("a").status.breaker == HALF_OPEN, what="a half-open")
    assert router.backend("a").status.healthy
    assert [o.slots for o in router.router.fleet.options("llama3:latest") if o.name == "a"] == [1]
    for _ in range(3):
        assert (await generate(http, router))[0] == 200
    await eventually(lambda: router.backend("a").status.breaker == CLOSED, what="a closed")
    assert [o.slots for o in router.router.fleet.options("llama3:latest") if o.name == "a"] == [4]
    async with http.get(router.url + "/api/tags") as resp:
        assert resp.status == 200


async def test_busy_503_does_not_trip_the_breaker(fakes, start_router, http):
    a = await fakes("a", loaded=["llama3:latest"])
    router = await start_router([a], breaker_threshold=2)
    a.fail_next(503, "server busy, please try again.  maximum pending requests exceeded", count=2)
    for _ in range(2):
        assert (await generate(http, router))[0] == 503
    await asyncio.sleep(0.05)
    assert router.backend("a").status.breaker == CLOSED
