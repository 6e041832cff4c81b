"""The connection table and the loaded-first policy, on real Fleet/Backend objects (no I/O)."""

import asyncio
import time
from types import MappingProxyType

import pytest

from nomyo.config import EndpointConfig
from nomyo.errors import SERVER_BUSY, RouterError
from nomyo.fleet import Backend, BackendStatus, Fleet
from nomyo.policy import make_policy
from tests.ledger_harness import ConnectionTable

INF = float("inf")


def backend(name, models=("llama3:latest",), loaded=(), slots=1, healthy=True, model_slots=None):
    config = EndpointConfig(name=name, url=f"http://{name}:11434", max_concurrent_connections=slots,
                            model_slots=MappingProxyType(model_slots or {}))
    status = BackendStatus(healthy=healthy, models=frozenset(models),
                           loaded=MappingProxyType({m: INF for m in loaded}), error=None,
                           checked_at=time.time())
    return Backend(config, status)


def table_for(*backends, max_queue=16, queue_timeout=5.0):
    return ConnectionTable(Fleet(backends), make_policy("loaded-first"),
                           max_queue=max_queue, queue_timeout=queue_timeout)


def assert_idle(table):
    assert table.total_inflight() == 0
    assert table.queued == 0
    assert table.usage() == {"usage_counts": {}, "queued": {}, "queued_total": 0}


async def test_prefers_backend_with_model_loaded():
    table = table_for(backend("cold"), backend("warm", loaded=["llama3:latest"]))
    async with table.lease("llama3:latest") as lease:
        assert lease.backend.name == "warm"
    assert_idle(table)


async def test_loaded_then_advertised_least_loaded_when_loaded_is_full():
    warm = backend("warm", models=["llama3:latest", "other:latest"], loaded=["llama3:latest"])
    busy = backend("busy", models=["llama3:latest", "other:latest"])
    idle = backend("idle")
    table = table_for(warm, busy, idle)
    other = await table.acquire("other:latest")
    assert other.backend.name in ("warm", "busy")
    first = await table.acquire("llama3:latest")
    second = await table.acquire("llama3:latest")
    assert first.backend.name == "warm"
    # warm is full for llama3; of the cold ones the one with no load at all wins
    expected = "idle" if other.backend.name == "busy" else "busy"
    assert second.backend.name in (expected, "idle")
    assert second.backend.name != "warm"
    for lease in (other, first, second):
        await lease.release()
    assert_idle(table)


async def test_fewest_in_flight_among_loaded():
    a = backend("a", loaded=["llama3:latest"], slots=4)
    b = backend("b", loaded=["llama3:latest"], slots=4)
    table = table_for(a, b)
    leases = [await table.acquire("llama3:latest") for _ in range(4)]
    assert sorted(lease.backend.name for lease in leases) == ["a", "a", "b", "b"]
    for lease in leases:
        await lease.release()
    assert_idle(table)


async def test_slot_limit_is_per_endpoint_model_pair_and_excess_waits_in_order():
    table = table_for(backend("only", models=["llama3:latest", "qwen:latest"], slots=1))
    held = await table.acquire("llama3:latest")
    other_model = await table.acquire("qwen:latest")  # its own pair: not blocked
    order = []

    async def wait(tag):
        async with table.lease("llama3:latest"):
            order.append(tag)
            await asyncio.sleep(0)

    waiters = [asyncio.create_task(wait(i)) for i in range(3)]
    await asyncio.sleep(0.01)
    assert table.queued == 3 and order == []
    assert table.inflight("only", "llama3:latest") == 1
    await held.release()
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2]
    await other_model.release()
    assert_idle(table)


async def test_per_model_slot_override():
    table = table_for(backend("a", slots=1, model_slots={"llama3:latest": 3}))
    leases = [await table.acquire("llama3:latest") for _ in range(3)]
    assert table.inflight("a", "llama3:latest") == 3
    with pytest.raises(TimeoutError):  # the fourth waits: 3 is the limit for this model
        await asyncio.wait_for(table.acquire("llama3:latest"), 0.05)
    for lease in leases:
        await lease.release()
    assert_idle(table)


async def test_full_queue_answers_server_busy_at_once():
    table = table_for(backend("a"), max_queue=1)
    held = await table.acquire("llama3:latest")
    waiting = asyncio.create_task(table.acquire("llama3:latest"))
    await asyncio.sleep(0.01)
    with pytest.raises(RouterError) as info:
        await table.acquire("llama3:latest")
    assert (info.value.status, info.value.message) == (503, SERVER_BUSY)
    assert info.value.headers["Retry-After"]
    await held.release()
    await (await waiting).release()
    assert_idle(table)


async def test_queue_timeout_answers_503_with_retry_after():
    table = table_for(backend("a"), queue_timeout=0.05)
    held = await table.acquire("llama3:latest")
    with pytest.raises(RouterError) as info:
        await table.acquire("llama3:latest")
    assert info.value.status == 503 and "Retry-After" in info.value.headers
    await held.release()
    assert_idle(table)


async def test_cancelled_waiter_leaves_no_slot_behind():
    """A waiter cancelled in the same tick its slot was handed over gives the slot back."""
    table = table_for(backend("a"))
    held = await table.acquire("llama3:latest")
    waiter = asyncio.create_task(table.acquire("llama3:latest"))
    await asyncio.sleep(0.01)
    await held.release()    # hands the slot to the waiter...
    waiter.cancel()         # ...which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert_idle(table)


async def test_unknown_model_404_and_down_backend_503():
    down = backend("down", models=["gone:latest"], healthy=False)
    table = table_for(backend("a"), down)
    with pytest.raises(RouterError) as info:
        await table.acquire("nope:latest")
    assert info.value.status == 404
    with pytest.raises(RouterError) as info:
        await table.acquire("gone:latest")
    assert info.value.status == 503 and "unreachable backends (down)" in info.value.message
    assert_idle(table)


async def test_down_backend_gets_nothing():
    up, down = backend("up", slots=8), backend("down", loaded=["llama3:latest"], slots=8, healthy=False)
    table = table_for(up, down)
    leases = [await table.acquire("llama3:latest") for _ in range(5)]
    assert {lease.backend.name for lease in leases} == {"up"}
    for lease in leases:
        await lease.release()


async def test_waiters_fail_when_every_holder_goes_down():
    a = backend("a")
    fleet = Fleet([a])
    table = ConnectionTable(fleet, make_policy("loaded-first"), max_queue=4, queue_timeout=5)
    held = await table.acquire("llama3:latest")
    waiter = asyncio.create_task(table.acquire("llama3:latest"))
    await asyncio.sleep(0.01)
    fleet.set_status(a, a.status.down("cannot connect"))
    with pytest.raises(RouterError) as info:
        await waiter
    assert info.value.status == 503
    await held.release()
    assert_idle(table)


async def test_waiter_served_when_a_new_backend_appears():
    a, b = backend("a", loaded=["llama3:latest"]), backend("b", models=())
    fleet = Fleet([a, b])
    table = ConnectionTable(fleet, make_policy("loaded-first"), max_queue=4, queue_timeout=5)
    held = await table.acquire("llama3:latest")
    waiter = asyncio.create_task(table.acquire("llama3:latest"))
    await asyncio.sleep(0.01)
    fleet.set_status(b, BackendStatus(healthy=True, models=frozenset({"llama3:latest"}), error=None))
    lease = await asyncio.wait_for(waiter, 1)
    assert lease.backend.name == "b"
    await lease.release()
    await held.release()
    assert_idle(table)


async def test_reload_keeps_counts_of_backends_that_stay():
    a = backend("a", slots=2)
    table = table_for(a)
    held = await table.acquire("llama3:latest")
    a2 = backend("a", slots=2)  # same name, new object (say its URL changed)
    table.set_fleet(Fleet([a2]), make_policy("loaded-first"), max_queue=4, queue_timeout=1)
    second = await table.acquire("llama3:latest")
    assert second.backend is a2
    with pytest.raises(TimeoutError):  # 2 slots in use, old + new: the third waits
        await asyncio.wait_for(table.acquire("llama3:latest"), 0.05)
    await held.release()
    await second.release()
    assert_idle(table)


async def test_cold_burst_starts_a_second_load_not_a_third():
    """Nothing loaded anywhere, nothing learned yet, 2 slots per backend, 5 requests at once: the
    first two go to one backend (one load), the third would queue behind a whole load, so it
    starts a second one (the cap: 2), the fourth joins it, the fifth waits: never a third load
    while two are under way. Once the first load is done (and load times are still unknown),
    the waiter may start one on the third backend."""
    table = table_for(backend("a", slots=2), backend("b", slots=2), backend("c", slots=2))
    first = await table.acquire("llama3:latest")
    second = await table.acquire("llama3:latest")
    assert first.backend is second.backend
    third = await table.acquire("llama3:latest")
    fourth = await table.acquire("llama3:latest")
    assert third.backend is fourth.backend and third.backend is not first.backend
    waiter = asyncio.create_task(table.acquire("llama3:latest"))
    await asyncio.sleep(0.01)
    assert table.queued == 1
    table.fleet.note_loaded(first.backend, "llama3:latest", time.time() + 300)  # the load is done
    fifth = await waiter
    assert fifth.backend.name == "c"
    for lease in (first, second, third, fourth, fifth):
        await lease.release()
    assert_idle(table)


async def test_cold_load_spread_allows_parallel_loads():
    fleet = Fleet([backend("a"), backend("b"), backend("c")])
    table = ConnectionTable(fleet, make_policy("loaded-first", cold_load_spread=2), max_queue=4, queue_timeout=5)
    leases = [await table.acquire("llama3:latest") for _ in range(2)]
    assert len({lease.backend.name for lease in leases}) == 2
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(table.acquire("llama3:latest"), 0.05)
    for lease in leases:
        await lease.release()


async def test_original_like_policy_overcommits_and_spreads_cold_bursts():
    fleet = Fleet([backend("a"), backend("b")])
    table = ConnectionTable(fleet, make_policy("original"), max_queue=4, queue_timeout=5)
    leases = [await table.acquire("llama3:latest") for _ in range(4)]
    assert sorted(lease.backend.name for lease in leases) == ["a", "a", "b", "b"]  # 2 loads, then overcommit
    for lease in leases:
        await lease.release()
    assert_idle(table)


async def test_learned_times_decide_between_waiting_and_a_cold_load():
    """The model is loaded on a (full) and installed on b. If loading it on b took 5 s and a
    request runs 1 s, the next request waits for a's slot; if loading takes 0.2 s, b loads it."""
    warm, cold = backend("warm", loaded=["llama3:latest"]), backend("cold")
    table = table_for(warm, cold)
    held = await table.acquire("llama3:latest")
    assert held.backend is warm
    table.learn_run("llama3:latest", 1.0)
    table.learn_load("cold", "llama3:latest", 5.0)
    assert table.decide("llama3:latest") is None  # a's slot frees in ~1 s: quicker than a 5 s load
    table.learn_load("cold", "llama3:latest", 0.2)
    table.learn_load("cold", "llama3:latest", 0.2)
    for _ in range(10):
        table.learn_load("cold", "llama3:latest", 0.2)
    assert table.decide("llama3:latest").backend is cold  # the load is quicker now
    await held.release()
    assert table.learned()["run_seconds"] == {"llama3:latest": 1.0}


async def test_load_time_is_learned_from_ollamas_load_duration(fakes, start_router, http):
    import orjson

    a = await fakes("a", load_delay=0.2)
    router = await start_router([a])
    body = orjson.dumps({"model": "llama3", "prompt": "hi", "stream": False})
    async with http.post(router.url + "/api/generate", data=body) as resp:
        assert resp.status == 200
    assert 0.15 < router.ledger.learned.load_time(("a", "llama3:latest")) < 5
    async with http.get(router.url + "/api/config") as resp:
        assert "a/llama3:latest" in (await resp.json())["learned"]["load_seconds"]
