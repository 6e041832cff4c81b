"""The real `ollama` Python client, sync and async, streaming and not, against the router.

Each test starts fake Ollama backends (which answer 403 to a foreign Host header, as Ollama does)
and the real router app, then uses the client exactly as an application would.
"""

from __future__ import annotations

import asyncio

import ollama
import orjson
import pytest


@pytest.fixture
async def fleet(fakes, start_router):
    a = await fakes("a", models=["llama3:latest", "all-minilm:latest"], loaded=["llama3:latest"])
    b = await fakes("b", models=["llama3:latest", "qwen3:0.6b"])
    router = await start_router([a, b], slots=2)
    return router, a, b


async def test_chat_async_streaming_and_not(fleet):
    router, _, _ = fleet
    client = ollama.AsyncClient(host=router.url)
    whole = await client.chat(model="llama3", messages=[{"role": "user", "content": "hi"}])
    assert whole.message.role == "assistant"
    assert whole.message.content == "Hello from a"
    assert whole.done and whole.done_reason == "stop" and whole.eval_count == 3
    parts = [part async for part in await client.chat(
        model="llama3:latest", messages=[{"role": "user", "content": "hi"}], stream=True)]
    assert "".join(p.message.content for p in parts) == "Hello from a"
    assert parts[-1].done and parts[-1].prompt_eval_count >= 1
    assert all(not p.done for p in parts[:-1])


async def test_chat_and_generate_with_the_sync_client(fleet):
    router, _, _ = fleet

    def use_sync_client():
        client = ollama.Client(host=router.url)
        chat = client.chat(model="llama3", messages=[{"role": "user", "content": "hi"}])
        streamed = "".join(part["response"] for part in client.generate(model="llama3", prompt="x", stream=True))
        generated = client.generate(model="llama3", prompt="once upon a time")
        return chat, streamed, generated

    chat, streamed, generated = await asyncio.to_thread(use_sync_client)
    assert chat.message.content == "Hello from a"
    assert streamed == "Hello from a"
    assert generated.response == "Hello from a" and generated.context


async def test_model_only_on_one_backend_is_served_there(fleet):
    router, _, b = fleet
    client = ollama.AsyncClient(host=router.url)
    answer = await client.generate(model="qwen3:0.6b", prompt="hi")
    assert answer.response == "Hello from b"
    assert [r.json["prompt"] for r in b.requests if r.path == "/api/generate"] == ["hi"]


async def test_embed_and_legacy_embeddings(fleet):
    router, _, _ = fleet
    client = ollama.AsyncClient(host=router.url)
    embedded = await client.embed(model="all-minilm", input=["one", "two", "three"])
    assert len(embedded.embeddings) == 3
    assert all(abs(sum(x * x for x in vector) - 1.0) < 1e-4 for vector in embedded.embeddings)
    legacy = await client.embeddings(model="all-minilm", prompt="one")
    assert len(legacy.embedding) == 8

    def sync_embed():
        return ollama.Client(host=router.url).embed(model="all-minilm", input="solo")

    assert len((await asyncio.to_thread(sync_embed)).embeddings) == 1


async def test_list_is_the_union_with_each_model_once(fleet):
    router, _, _ = fleet
    listed = await ollama.AsyncClient(host=router.url).list()
    names = sorted(m.model for m in listed.models)
    assert names == ["all-minilm:latest", "llama3:latest", "qwen3:0.6b"]
    assert all(m.digest and m.size and m.modified_at for m in listed.models)


async def test_ps_shows_loaded_models_and_follows_loads_and_unloads(fleet):
    router, _, b = fleet
    client = ollama.AsyncClient(host=router.url)
    assert [m.model for m in (await client.ps()).models] == ["llama3:latest"]
    # load qwen (empty prompt), then it shows; unload it (keep_alive 0), then it is gone
    loaded = await client.generate(model="qwen3:0.6b", prompt="")
    assert loaded.done_reason == "load"
    assert sorted(m.model for m in (await client.ps()).models) == ["llama3:latest", "qwen3:0.6b"]
    unloaded = await client.generate(model="qwen3:0.6b", prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert [m.model for m in (await client.ps()).models] == ["llama3:latest"]
    assert b.loaded == []


async def test_show_goes_to_a_backend_that_has_the_model(fleet):
    router, _, b = fleet
    shown = await ollama.AsyncClient(host=router.url).show("qwen3:0.6b")
    assert shown.modelinfo is not None and shown.details.family
    assert [r.json["model"] for r in b.requests if r.path == "/api/show"] == ["qwen3:0.6b"]
    with pytest.raises(ollama.ResponseError) as info:
        await ollama.AsyncClient(host=router.url).show("absent")
    assert info.value.status_code == 404 and info.value.error == "model 'absent' not found"


async def test_root_head_and_version(fleet, http):
    router, _, _ = fleet
    async with http.get(router.url + "/") as resp:
        assert resp.status == 200 and await resp.text() == "Ollama is running"
        assert resp.headers["Content-Type"].startswith("text/plain")
    async with http.head(router.url + "/") as resp:
        assert resp.status == 200
    async with http.get(router.url + "/api/version") as resp:
        assert resp.status == 200 and await resp.json() == {"version": "0.12.3"}


async def test_stream_bytes_are_ndjson_passed_through_unchanged(fleet, http):
    """Default stream (no `stream` field) is NDJSON, one object per line, no blank lines."""
    router, a, _ = fleet
    body = orjson.dumps({"model": "llama3", "messages": [{"role": "user", "content": "hi"}]})
    async with http.post(router.url + "/api/chat", data=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/x-ndjson"
        raw = await resp.read()
    lines = raw.split(b"\n")
    assert lines[-1] == b"" and all(lines[:-1])
    objects = [orjson.loads(line) for line in lines[:-1]]
    assert objects[-1]["done"] is True and all("role" in o["message"] for o in objects)
    chats = [r for r in a.requests if r.path == "/api/chat"]
    assert chats[-1].body == body  # the client's bytes, forwarded as they were


async def test_backend_errors_pass_through_with_status_and_body(fleet):
    router, a, b = fleet
    a.fail_next(429, "rate limit exceeded")
    b.fail_next(429, "rate limit exceeded")
    with pytest.raises(ollama.ResponseError) as info:
        await ollama.AsyncClient(host=router.url).chat(model="llama3", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 429 and info.value.error == "rate limit exceeded"


async def test_backends_are_asked_for_uncompressed_answers(fleet, http):
    """Clients (httpx, browsers) ask for gzip; the router asks backends for identity, so a backend
    behind a compressing proxy cannot hide the done line and the counts from the relay."""
    router, a, _ = fleet
    body = orjson.dumps({"model": "llama3", "prompt": "hi", "stream": False})
    async with http.post(router.url + "/api/generate", data=body, headers={"Accept-Encoding": "gzip"}) as resp:
        assert resp.status == 200
    sent = [r.headers.get("Accept-Encoding") for r in a.requests if r.path == "/api/generate"]
    assert sent == ["identity"]
