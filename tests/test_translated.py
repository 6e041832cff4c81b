"""Ollama's API in front of OpenAI-compatible backends, driven by the real `ollama` client, and
dialect-blind routing between Ollama and OpenAI-compatible backends."""

from __future__ import annotations

import asyncio
import logging
import math

import ollama
import orjson
import pytest

from tests.fakes.ollama_v1 import FakeOllamaV1
from tests.fakes.openai_backend import FakeOpenAI, raw_vector
from tests.test_openai_api import endpoint, logged_tokens

CHAT = [{"role": "user", "content": "say hello"}]


def ollama_client(router) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=router.url)


@pytest.mark.parametrize("flavour", ["vllm", "llama-server"])
async def test_ollama_chat_streamed_and_whole(backends, start_router, caplog, flavour):
    """Every line has message.role; the done line has done_reason and the backend's counts
    (vLLM: usage; llama-server: usage and timings)."""
    caplog.set_level(logging.INFO, logger="nomyo.access")
    fake = await backends(FakeOpenAI("gpu", flavour=flavour))
    router = await start_router([endpoint(fake)])
    parts = [p async for p in await ollama_client(router).chat(model="tiny", messages=CHAT, stream=True)]
    assert "".join(p.message.content for p in parts) == "Hello from gpu"
    assert all(p.message.role == "assistant" and p.model == "tiny" for p in parts)
    final = parts[-1]
    assert (final.done, final.done_reason, final.prompt_eval_count, final.eval_count) == (True, "stop", 2, 3)
    assert final.total_duration > 0 and final.eval_duration > 0
    sent = fake.seen("/v1/chat/completions")[-1].json
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True} and "tools" not in sent
    assert await logged_tokens(caplog, "/api/chat") == "2/3"
    whole = await ollama_client(router).chat(model="tiny", messages=CHAT, options={"num_predict": 2})
    assert (whole.message.content, whole.done_reason, whole.eval_count) == ("Hello from", "length", 2)
    assert fake.seen("/v1/chat/completions")[-1].json["max_tokens"] == 2


async def test_counts_when_the_backend_reports_none(backends, start_router, caplog):
    """llama-cpp-python streams without usage: the router counts the generated events."""
    caplog.set_level(logging.INFO, logger="nomyo.access")
    fake = await backends(FakeOpenAI("cpp", flavour="vllm", usage=False, reply="a b c d e"))
    router = await start_router([endpoint(fake)])
    parts = [p async for p in await ollama_client(router).chat(model="tiny", messages=CHAT, stream=True)]
    assert parts[-1].eval_count == 5 and parts[-1].prompt_eval_count > 0
    assert (await logged_tokens(caplog, "/api/chat")).endswith("/5")


async def test_tool_calls_round_trip(backends, start_router):
    """A tool call comes back with arguments as an object, streamed or not; sending the call and
    its result back gives OpenAI the ids it needs."""
    fake = await backends(FakeOpenAI("vllm"))
    fake.tool_call = ("weather", {"city": "Paris"})
    router = await start_router([endpoint(fake)])
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}}
    tools = [{"type": "function", "function": {"name": "weather", "description": "weather", "parameters": parameters}}]
    whole = await ollama_client(router).chat(model="tiny", messages=CHAT, tools=tools)
    call = whole.message.tool_calls[0]
    assert (call.function.name, dict(call.function.arguments)) == ("weather", {"city": "Paris"})
    parts = [p async for p in await ollama_client(router).chat(model="tiny", messages=CHAT, tools=tools, stream=True)]
    calls = [c for p in parts for c in p.message.tool_calls or []]
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [("weather", {"city": "Paris"})]
    assert parts[-1].done_reason == "stop"
    result = {"role": "tool", "tool_name": "weather", "content": "sunny"}
    followup = [*CHAT, whole.message.model_dump(exclude_none=True), result]
    await ollama_client(router).chat(model="tiny", messages=followup, tools=tools)
    sent = fake.seen("/v1/chat/completions")[-1].json["messages"]
    assert sent[1]["tool_calls"][0]["function"] == {"name": "weather", "arguments": '{"city":"Paris"}'}
    assert sent[2] == {"role": "tool", "content": "sunny", "tool_call_id": sent[1]["tool_calls"][0]["id"]}


async def test_images_format_and_thinking(backends, start_router):
    fake = await backends(FakeOpenAI("vllm"))
    fake.reasoning = "let me think"
    router = await start_router([endpoint(fake)])
    image = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
    messages = [{"role": "user", "content": "what is it?", "images": [image]}]
    answer = await ollama_client(router).chat(model="tiny", messages=messages, format="json", think=True)
    assert answer.message.thinking == "let me think"
    assert orjson.loads(answer.message.content) == {"answer": "I see 1 image. Hello from vllm"}
    sent = fake.seen("/v1/chat/completions")[-1].json
    assert sent["messages"][0]["content"] == [{"type": "text", "text": "what is it?"}, {
        "type": "image_url", "image_url": {"url": "data:image/png;base64," + image}}]
    assert sent["response_format"] == {"type": "json_object"}


async def test_generate_embed_and_embeddings(backends, start_router):
    fake = await backends(FakeOpenAI("llama", flavour="llama-server", models=["tiny"]))
    router = await start_router([endpoint(fake)])
    client = ollama_client(router)
    answer = await client.generate(model="tiny", prompt="hello", options={"temperature": 0.1})
    assert (answer.response, answer.done_reason, answer.eval_count) == ("Hello from llama", "stop", 3)
    assert answer.eval_duration == 40_000_000  # llama-server's timings.predicted_ms
    assert fake.seen("/v1/chat/completions")[-1].json == {
        "model": "tiny", "messages": [{"role": "user", "content": "hello"}], "temperature": 0.1, "stream": False}
    parts = [p async for p in await client.generate(model="tiny", prompt="hello", stream=True)]
    assert "".join(p.response for p in parts) == "Hello from llama" and parts[-1].prompt_eval_count == 1
    batch = await client.embed(model="tiny", input=["a", "bb", "ccc"])
    assert len(batch.embeddings) == 3
    for vector, text in zip(batch.embeddings, ["a", "bb", "ccc"], strict=True):
        raw = raw_vector(text, 8)
        norm = math.sqrt(sum(v * v for v in raw))
        assert vector == pytest.approx([v / norm for v in raw])
    assert batch.prompt_eval_count == 3
    legacy = await client.embeddings(model="tiny", prompt="a")
    assert legacy.embedding == pytest.approx(raw_vector("a", 8))
    assert (await client.embed(model="tiny", input=[])).embeddings == []


async def test_load_request_and_backend_errors_in_ollamas_words(backends, start_router, http):
    fake = await backends(FakeOpenAI("vllm"))
    router = await start_router([endpoint(fake)])
    async with http.post(router.url + "/api/generate", data=b'{"model": "tiny", "keep_alive": 0}') as resp:
        assert (await resp.json())["done_reason"] == "unload"
    assert not fake.seen("/v1/completions")
    fake.fail_next(400, "prompt is too long")
    with pytest.raises(ollama.ResponseError) as caught:
        await ollama_client(router).chat(model="tiny", messages=CHAT)
    assert (caught.value.status_code, caught.value.error) == (400, "prompt is too long")
    fake.cut_next(after_tokens=2)
    async with http.post(router.url + "/api/chat", data=orjson.dumps({"model": "tiny", "messages": CHAT})) as resp:
        lines = [orjson.loads(line) for line in (await resp.read()).splitlines()]
    assert lines[0]["message"]["content"] == "Hello" and "failed mid-stream" in lines[-1]["error"]
    assert not any(line.get("done") for line in lines)


async def test_tags_lists_the_models_of_every_backend_kind(backends, start_router, http):
    ollama_fake = await backends(FakeOllamaV1(name="ollama", models=["llama3:latest"]))
    vllm = await backends(FakeOpenAI("vllm", models=["Qwen/Tiny", "llama3"]))
    router = await start_router([endpoint(vllm), {"name": "ollama", "url": ollama_fake.url}])
    listed = await ollama_client(router).list()
    names = {m.model: m for m in listed.models}
    assert set(names) == {"llama3:latest", "Qwen/Tiny"}
    assert names["llama3:latest"].details.family == "llama" and names["Qwen/Tiny"].size == 0
    shown = await ollama_client(router).show("qwen/tiny")  # vLLM has no /api/show: the router answers
    assert shown.modelinfo["unknown.context_length"] == 4096 and shown.capabilities == ["completion"]
    with pytest.raises(ollama.ResponseError):
        await ollama_client(router).show("nope")


async def test_translation_is_only_a_tie_break(backends, start_router):
    """llama3 is on an Ollama backend and on vLLM.
    1. Both idle and loaded: /api/chat goes to Ollama (no translation needed).
    2. Ollama's only slot busy: the next /api/chat goes to vLLM, translated, rather than wait.
    3. Model installed but not loaded on Ollama: vLLM (always loaded) wins: loaded-ness first."""
    ollama_fake = await backends(FakeOllamaV1(name="ollama", models=["llama3:latest"], loaded=["llama3:latest"]))
    vllm = await backends(FakeOpenAI("vllm", models=["llama3"]))
    router = await start_router([endpoint(vllm), {"name": "ollama", "url": ollama_fake.url}], slots=1)
    client = ollama_client(router)
    for _ in range(3):
        assert (await client.chat(model="llama3", messages=CHAT)).message.content == "Hello from ollama"
    assert not vllm.seen("/v1/chat/completions")
    ollama_fake.gate = asyncio.Event()

    async def held() -> str:
        return "".join([p.message.content async for p in await client.chat(model="llama3", messages=CHAT, stream=True)])

    busy = asyncio.create_task(held())
    await ollama_fake.wait_until(lambda: ollama_fake.active == 1)
    stream = await client.chat(model="llama3", messages=CHAT, stream=True)
    assert "".join([p.message.content async for p in stream]) == "Hello from vllm"
    ollama_fake.gate.set()
    assert await busy == "Hello from ollama"
    ollama_fake.gate = None
    ollama_fake.set_loaded([])
    await router.router.poller.refresh_all()
    assert (await client.chat(model="llama3", messages=CHAT)).message.content == "Hello from vllm"


async def test_version_with_only_openai_compatible_backends(backends, start_router, http):
    """Ollama clients check /api/version first: a fleet of vLLM servers only still answers it,
    with the Ollama API version the router's translation speaks."""
    vllm = await backends(FakeOpenAI("vllm", models=["llama3"]))
    router = await start_router([endpoint(vllm)])
    async with http.get(router.url + "/api/version") as resp:
        assert resp.status == 200 and (await resp.json())["version"] == "0.12.3"
    await vllm.stop()
    await router.router.poller.refresh_all()
    async with http.get(router.url + "/api/version") as resp:
        assert resp.status == 503 and (await resp.json()) == {"error": "no backend is reachable"}
