"""Circuit breaking: repeated request failures take a backend out, a cool-down and a poll let it
back half-open (one request per model at a time), and good requests close the circuit."""

from __future__ import annotations

import asyncio

import orjson

from nomyo.breaker import CLOSED, HALF_OPEN, OPEN, Breaker
from tests.conftest import eventually

BODY = orjson.dumps({"model": "llama3", "prompt": "hi", "stream": False})
CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}


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
    """Three 502s (a proxy in front of a dead runner) open the circuit: the backend gets no
    traffic, though its models stay listed while it answers polls; after the cool-down it is
    let back half-open, and good requests close the circuit again."""

    a = await fakes("a", loaded=["llama3:latest"])
    b = await fakes("b")
    router = await start_router([a, b], slots=4, breaker_threshold=3, breaker_cooldown=0.5, poll_interval=0.1)
    a.fail_next(502, "bad gateway", count=3)
    for _ in range(3):  # the answers reach the client as they are
        assert await generate(http, router) == (502, {"error": "bad gateway"})
    assert router.backend("a").status.breaker == OPEN and router.backend("a").status.healthy
    assert [o.name for o in router.router.fleet.options("llama3:latest")] == ["b"]
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


async def test_the_backends_own_errors_never_open_the_circuit(fakes, start_router, http):
    """A request a backend refuses in its own words (500 "model requires more system memory",
    what a huge num_ctx triggers), or a runner that fails mid-stream with an error line, is that
    request's failure: passed on, and the backend keeps serving everyone else."""

    a = await fakes("a", loaded=["llama3:latest"])
    router = await start_router([a], breaker_threshold=2)
    memory = "model requires more system memory (64.0 GiB) than is available (15.2 GiB)"
    a.fail_next(500, memory, count=3)
    for _ in range(3):
        assert await generate(http, router) == (500, {"error": memory})
    a.fail_midstream(count=3)
    for _ in range(3):
        async with http.post(router.url + "/api/chat", data=orjson.dumps(CHAT)) as resp:
            last = orjson.loads((await resp.read()).splitlines()[-1])
            assert "error" in last and "done" not in last
    assert router.backend("a").status.breaker == CLOSED
    assert (await generate(http, router))[0] == 200
    async with http.get(router.url + "/api/tags") as resp:
        assert [m["name"] for m in (await resp.json())["models"]] == ["llama3:latest"]


async def test_transport_failures_open_it_but_the_models_stay_listed(fakes, start_router, http):
    """Streams cut off mid-way are transport failures: they open the circuit, yet a backend that
    still answers its polls keeps its models in /api/tags."""

    a = await fakes("a", loaded=["llama3:latest"])
    router = await start_router([a], breaker_threshold=2, breaker_cooldown=30)
    a.cut_next(count=2)
    for _ in range(2):
        async with http.post(router.url + "/api/chat", data=orjson.dumps(CHAT)) as resp:
            assert "failed mid-stream" in orjson.loads((await resp.read()).splitlines()[-1])["error"]
    assert router.backend("a").status.breaker == OPEN
    await asyncio.sleep(0.3)  # polls come and go
    async with http.get(router.url + "/api/tags") as resp:
        assert [m["name"] for m in (await resp.json())["models"]] == ["llama3:latest"]
    assert (await generate(http, router))[0] == 503


async def test_busy_503_does_not_trip_the_breaker(fakes, start_router, http):
    a = await fakes("a", loaded=["llama3:latest"])
    router = await start_router([a], breaker_threshold=2)
    a.fail_next(503, "server busy, please try again.  maximum pending requests exceeded", count=2)
    for _ in range(2):
        assert (await generate(http, router))[0] == 503
    await asyncio.sleep(0.05)
    assert router.backend("a").status.breaker == CLOSED
