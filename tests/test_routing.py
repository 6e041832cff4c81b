"""Routing scenarios against real fake backends: where requests land, slots, waiting, failures."""

from __future__ import annotations

import asyncio

import ollama
import orjson
import pytest

from nomyo.errors import SERVER_BUSY
from tests.conftest import eventually

CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}


def chats(fake) -> int:
    return sum(1 for r in fake.requests if r.path == "/api/chat")


async def chat_stream(http, router, body=CHAT) -> list[dict]:
    async with http.post(router.url + "/api/chat", data=orjson.dumps(body)) as resp:
        assert resp.status == 200, await resp.text()
        return [orjson.loads(line) for line in (await resp.read()).splitlines()]


async def test_requests_go_where_the_model_is_loaded(fakes, start_router, http):
    """a has llama3 installed but not loaded; b has it loaded: every request goes to b."""
    a = await fakes("a")
    b = await fakes("b", loaded=["llama3:latest"])
    router = await start_router([a, b], slots=4)
    for _ in range(5):
        await chat_stream(http, router)
    assert (chats(a), chats(b)) == (0, 5)


async def test_cold_model_goes_to_the_least_loaded_backend(fakes, start_router, http):
    """Nothing loaded anywhere; a is busy with another model: the cold request goes to b."""
    a = await fakes("a", models=["llama3:latest", "qwen:latest"], loaded=["qwen:latest"])
    b = await fakes("b", models=["llama3:latest"])
    a.gate = asyncio.Event()
    router = await start_router([a, b], slots=2)
    busy = asyncio.create_task(chat_stream(http, router, {**CHAT, "model": "qwen"}))
    await a.wait_until(lambda: a.active == 1)
    await chat_stream(http, router)
    assert chats(b) == 1
    a.gate.set()
    await busy


async def test_slot_limit_holds_per_pair_and_excess_waits_then_is_served(fakes, start_router, http):
    """Two backends with 2 slots each and 7 concurrent streams: 4 run, 3 wait in the router
    (no backend ever sees a third), and as streams finish the waiting ones are served."""
    a = await fakes("a", loaded=["llama3:latest"])
    b = await fakes("b", loaded=["llama3:latest"])
    gate = asyncio.Event()
    a.gate = b.gate = gate
    router = await start_router([a, b], slots=2)
    streams = [asyncio.create_task(chat_stream(http, router)) for _ in range(7)]
    await eventually(lambda: a.active + b.active == 4 and router.ledger.queued == 3)
    assert router.ledger.inflight("a", "llama3:latest") == 2
    assert router.ledger.inflight("b", "llama3:latest") == 2
    gate.set()
    results = await asyncio.gather(*streams)
    assert all(lines[-1]["done"] for lines in results)
    assert a.max_active_by_model["llama3:latest"] == 2 and b.max_active_by_model["llama3:latest"] == 2
    assert chats(a) + chats(b) == 7


async def test_queue_full_and_queue_timeout_answer_server_busy(fakes, start_router, http):
    a = await fakes("a", loaded=["llama3:latest"])
    a.gate = asyncio.Event()
    router = await start_router([a], slots=1, max_queue=1, queue_timeout=0.3)
    holder = asyncio.create_task(chat_stream(http, router))
    await a.wait_until(lambda: a.active == 1)
    waiter = asyncio.create_task(http.post(router.url + "/api/chat", data=orjson.dumps(CHAT)))
    await eventually(lambda: router.ledger.queued == 1)
    async with http.post(router.url + "/api/chat", data=orjson.dumps(CHAT)) as resp:  # queue is full
        assert resp.status == 503 and resp.headers["Retry-After"]
        assert await resp.json() == {"error": SERVER_BUSY}
    async with await waiter as resp:  # waited 0.3 s for a slot that never freed
        assert resp.status == 503 and resp.headers["Retry-After"]
        assert (await resp.json())["error"] == SERVER_BUSY
    a.gate.set()
    await holder
    assert chats(a) == 1  # the rejected ones never reached the backend


async def test_down_backend_gets_nothing_and_comes_back_by_itself(fakes, start_router, http):
    a = await fakes("a", loaded=["llama3:latest"])
    b = await fakes("b", loaded=["llama3:latest"])
    router = await start_router([a, b], slots=1)
    await b.go_down()
    await eventually(lambda: not router.backend("b").status.healthy, what="b marked down")
    for _ in range(4):
        await chat_stream(http, router)
    assert chats(b) == 0 and chats(a) == 4
    await b.come_back()
    await eventually(lambda: router.backend("b").status.healthy, what="b back up")
    a.gate = asyncio.Event()
    first = asyncio.create_task(chat_stream(http, router))
    await a.wait_until(lambda: a.active == 1)
    await chat_stream(http, router)  # a's only slot is taken: b serves it
    assert chats(b) == 1
    a.gate.set()
    await first


async def test_connection_refused_before_first_byte_fails_over(fakes, start_router, http):
    """b died a moment ago and the poller has not noticed: the request fails over to a."""
    a = await fakes("a")
    b = await fakes("b", loaded=["llama3:latest"])
    router = await start_router([a, b], slots=1, poll_interval=60)
    await b.go_down()
    lines = await chat_stream(http, router)
    assert lines[-1]["done"] and chats(a) == 1
    assert not router.backend("b").status.healthy


async def test_client_disconnect_mid_stream_frees_the_slot_and_closes_upstream(fakes, start_router, http):
    a = await fakes("a", loaded=["llama3:latest"], token_delay=0.05, reply=" ".join(["word"] * 200))
    router = await start_router([a], slots=1)
    resp = await http.post(router.url + "/api/chat", data=orjson.dumps(CHAT))
    assert orjson.loads(await resp.content.readline())["done"] is False
    assert router.ledger.inflight("a", "llama3:latest") == 1
    resp.close()  # the client goes away mid-stream
    await a.wait_until(lambda: a.disconnects == 1)
    await router.settled()
    assert a.served == 0
    await chat_stream(http, router, {**CHAT, "options": {"num_predict": 2}})  # the slot is usable again


async def test_client_that_leaves_the_queue_frees_its_place(fakes, start_router, http):
    a = await fakes("a", loaded=["llama3:latest"])
    a.gate = asyncio.Event()
    router = await start_router([a], slots=1)
    holder = asyncio.create_task(chat_stream(http, router))
    await a.wait_until(lambda: a.active == 1)
    waiting = asyncio.create_task(http.post(router.url + "/api/chat", data=orjson.dumps(CHAT)))
    await eventually(lambda: router.ledger.queued == 1)
    waiting.cancel()
    await eventually(lambda: router.ledger.queued == 0, what="queue emptied")
    a.gate.set()
    await holder
    assert chats(a) == 1


async def test_model_and_model_latest_share_slots(fakes, start_router, http):
    a = await fakes("a", loaded=["llama3:latest"])
    a.gate = asyncio.Event()
    router = await start_router([a], slots=1)
    first = asyncio.create_task(chat_stream(http, router, {**CHAT, "model": "llama3"}))
    await a.wait_until(lambda: a.active == 1)
    second = asyncio.create_task(chat_stream(http, router, {**CHAT, "model": "Llama3:latest"}))
    await eventually(lambda: router.ledger.queued == 1)
    a.gate.set()
    await asyncio.gather(first, second)
    assert a.max_active == 1


async def test_model_pulled_directly_on_a_backend_is_routable_at_once(fakes, start_router, http):
    """The router has not polled since the model appeared: the miss triggers a refresh."""
    a = await fakes("a")
    router = await start_router([a], poll_interval=60)
    a.set_models(["llama3:latest", "fresh:latest"])
    lines = await chat_stream(http, router, {**CHAT, "model": "fresh"})
    assert lines[-1]["done"]


async def test_loaded_model_past_its_expiry_counts_as_unloaded(fakes, start_router, http):
    a = await fakes("a", loaded=["llama3:latest"], keep_alive_s=0.3)
    b = await fakes("b", loaded=["llama3:latest"], keep_alive_s=600)
    router = await start_router([a, b], slots=4, poll_interval=60)
    await asyncio.sleep(0.4)  # a's copy expired; the router's snapshot still lists it
    assert a.loaded == [] and "llama3:latest" in router.backend("a").status.loaded
    await chat_stream(http, router)
    assert chats(b) == 1 and chats(a) == 0


@pytest.mark.parametrize("endpoint", ["/api/chat", "/api/generate", "/api/embed", "/api/embeddings"])
async def test_no_healthy_backend_is_503(fakes, start_router, http, endpoint):
    a = await fakes("a")
    router = await start_router([a])
    await a.go_down()
    await eventually(lambda: not router.backend("a").status.healthy)
    async with http.post(router.url + endpoint, data=orjson.dumps({"model": "llama3", "prompt": "x"})) as resp:
        assert resp.status == 503
        assert "unreachable" in (await resp.json())["error"]


async def test_every_response_reaches_the_client_with_the_real_client_under_concurrency(fakes, start_router):
    a = await fakes("a", loaded=["llama3:latest"], token_delay=0.001)
    b = await fakes("b", token_delay=0.001)
    router = await start_router([a, b], slots=3)
    client = ollama.AsyncClient(host=router.url)
    answers = await asyncio.gather(*(
        client.chat(model="llama3", messages=[{"role": "user", "content": str(i)}]) for i in range(30)))
    assert {answer.message.content for answer in answers} <= {"Hello from a", "Hello from b"}
    assert a.max_active_by_model["llama3:latest"] <= 3
    assert b.max_active_by_model.get("llama3:latest", 0) <= 3
