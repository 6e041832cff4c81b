"""The OpenAI API in front, driven by the real `openai` client: vLLM-shaped and llama-server-shaped
fake backends behind, and Ollama backends reached through their own /v1 API."""

from __future__ import annotations

import logging
import re

import openai
import orjson
import pytest

from tests.conftest import eventually
from tests.fakes.ollama_v1 import FakeOllamaV1
from tests.fakes.openai_backend import FakeOpenAI, raw_vector

MESSAGES = [{"role": "user", "content": "say hello"}]


def endpoint(fake: FakeOpenAI, **extra) -> dict:
    kind = "llama-server" if fake.flavour == "llama-server" else "openai"
    return {"name": fake.name, "url": fake.url + "/v1", "type": kind, "api_key": fake.api_key, **extra}


def client(router, key: str = "any") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=router.url + "/v1", api_key=key, max_retries=0)


async def logged_tokens(caplog, path: str) -> str:
    """The `tokens=p/c` of the access line of the last request to `path` (written as it ends)."""

    pattern = re.compile(rf"^POST {re.escape(path)} .*")
    await eventually(lambda: any(pattern.match(r.getMessage()) for r in caplog.records), what="access line")
    line = [r.getMessage() for r in caplog.records if pattern.match(r.getMessage())][-1]
    found = re.search(r"tokens=(\d+/\d+)", line)
    return found.group(1) if found else "none"


async def test_chat_goes_to_the_backend_with_its_key_and_its_spelling(backends, start_router, caplog):
    """The client says `qwen/tiny`; vLLM lists `Qwen/Tiny` and checks ids exactly. The router
    sends vLLM's spelling and vLLM's key (never the router's own key) and counts the usage."""
    caplog.set_level(logging.INFO, logger="nomyo.access")
    vllm = await backends(FakeOpenAI("vllm", models=["Qwen/Tiny"], api_key="backend-key"))
    router = await start_router([endpoint(vllm)], **{"nomyo-router-api-key": "router-key"})
    answer = await client(router, "router-key").chat.completions.create(model="qwen/tiny", messages=MESSAGES)
    assert answer.choices[0].message.content == "Hello from vllm"
    assert answer.choices[0].finish_reason == "stop"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (2, 3)
    seen = vllm.seen("/v1/chat/completions")[-1]
    assert seen.json["model"] == "Qwen/Tiny" and seen.json["messages"] == MESSAGES
    assert seen.headers["Authorization"] == "Bearer backend-key"
    assert "stream_options" not in seen.json
    assert await logged_tokens(caplog, "/v1/chat/completions") == "2/3"


async def test_streaming_chat_with_include_usage(backends, start_router, caplog):
    caplog.set_level(logging.INFO, logger="nomyo.access")
    vllm = await backends(FakeOpenAI("vllm"))
    router = await start_router([endpoint(vllm)])
    stream = await client(router).chat.completions.create(
        model="tiny", messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from vllm"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
    assert await logged_tokens(caplog, "/v1/chat/completions") == "2/3"


async def test_stream_without_include_usage_is_counted_but_not_shown(backends, start_router, caplog):
    """The router asks the backend for usage to count tokens, and removes the usage chunk the
    client did not ask for."""
    caplog.set_level(logging.INFO, logger="nomyo.access")
    vllm = await backends(FakeOpenAI("vllm"))
    router = await start_router([endpoint(vllm)])
    stream = await client(router).chat.completions.create(model="tiny", messages=MESSAGES, stream=True)
    chunks = [c async for c in stream]
    assert all(c.choices and c.usage is None for c in chunks)
    assert vllm.seen("/v1/chat/completions")[-1].json["stream_options"] == {"include_usage": True}
    assert await logged_tokens(caplog, "/v1/chat/completions") == "2/3"


async def test_completions_whole_and_streamed(backends, start_router):
    server = await backends(FakeOpenAI("llama", flavour="llama-server", reply="one two three four"))
    router = await start_router([endpoint(server)])
    whole = await client(router).completions.create(model="tiny", prompt="count", max_tokens=2)
    assert (whole.choices[0].text, whole.choices[0].finish_reason) == ("one two", "length")
    stream = await client(router).completions.create(model="tiny", prompt="count", stream=True)
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks) == "one two three four"
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_embeddings_with_the_clients_default_base64(backends, start_router):
    """openai-python asks for base64 by default and decodes it; every vector of the batch comes back."""
    vllm = await backends(FakeOpenAI("vllm", models=["embedder"]))
    router = await start_router([endpoint(vllm)])
    result = await client(router).embeddings.create(model="embedder", input=["a", "bb", "ccc"])
    assert vllm.seen("/v1/embeddings")[-1].json["encoding_format"] == "base64"
    assert [d.index for d in result.data] == [0, 1, 2]
    for item, text in zip(result.data, ["a", "bb", "ccc"], strict=True):
        assert item.embedding == pytest.approx(raw_vector(text, 8), rel=1e-6)
    assert result.usage.prompt_tokens == 3


async def test_models_list_and_retrieve_every_backend_kind(backends, start_router):
    ollama = await backends(FakeOllamaV1(name="ollama", models=["llama3:latest", "jane/coder:7b"]))
    vllm = await backends(FakeOpenAI("vllm", models=["Qwen/Tiny", "llama3"]))
    router = await start_router([endpoint(vllm), {"name": "ollama", "url": ollama.url}])
    models = await client(router).models.list()
    by_id = {m.id: m for m in models.data}
    assert set(by_id) == {"llama3:latest", "jane/coder:7b", "Qwen/Tiny"}  # llama3 once, Ollama's entry
    assert by_id["jane/coder:7b"].owned_by == "jane" and by_id["llama3:latest"].owned_by == "library"
    assert by_id["Qwen/Tiny"].owned_by == "vllm" and by_id["Qwen/Tiny"].created == 1729000000
    one = await client(router).models.retrieve("qwen/tiny")
    assert (one.id, one.object) == ("Qwen/Tiny", "model")  # as vLLM itself answers
    with pytest.raises(openai.NotFoundError) as caught:
        await client(router).models.retrieve("nope")
    assert caught.value.body == {"message": "model 'nope' not found", "type": "not_found_error",
                                 "param": None, "code": "model_not_found"}


async def test_errors_are_openai_error_objects(backends, start_router, http):
    vllm = await backends(FakeOpenAI("vllm", legacy_errors=True))
    router = await start_router([endpoint(vllm)])
    cases = [(b"{not json", 400, None), (b'{"messages": []}', 400, "model"),
             (b'{"model": "tiny", "messages": []}', 400, "messages"),
             (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', 400, "stream")]
    for body, status, param in cases:
        async with http.post(router.url + "/v1/chat/completions", data=body) as resp:
            error = (await resp.json())["error"]
            assert (resp.status, error["type"], error["param"]) == (status, "invalid_request_error", param)
            assert resp.content_type == "application/json" and error["message"]
    with pytest.raises(openai.NotFoundError) as caught:
        await client(router).chat.completions.create(model="missing", messages=MESSAGES)
    assert caught.value.body["type"] == "not_found_error"
    vllm.fail_next(400, "This model's maximum context length is 4096 tokens.")
    with pytest.raises(openai.BadRequestError) as caught:  # vLLM's older top-level error, wrapped
        await client(router).chat.completions.create(model="tiny", messages=MESSAGES)
    assert caught.value.body["message"] == "This model's maximum context length is 4096 tokens."


async def test_v1_for_a_model_only_ollama_has_goes_to_its_v1_api(backends, start_router, caplog):
    """No translation: Ollama serves /v1 itself, so the request goes to {url}/v1/... as sent."""
    caplog.set_level(logging.INFO, logger="nomyo.access")
    ollama = await backends(FakeOllamaV1(name="ollama", models=["llama3:latest"]))
    vllm = await backends(FakeOpenAI("vllm", models=["other"]))
    router = await start_router([endpoint(vllm), {"name": "ollama", "url": ollama.url}])
    answer = await client(router).chat.completions.create(model="llama3", messages=MESSAGES)
    assert answer.choices[0].message.content == "Hello from ollama"
    stream = await client(router).chat.completions.create(model="llama3", messages=MESSAGES, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream]) == "Hello from ollama"
    sent = [r.json for r in ollama.requests if r.path == "/v1/chat/completions"]
    assert [s["model"] for s in sent] == ["llama3", "llama3"] and sent[0]["messages"] == MESSAGES
    assert await logged_tokens(caplog, "/v1/chat/completions") == "3/3"
    result = await client(router).embeddings.create(model="llama3", input="x", encoding_format="float")
    assert len(result.data[0].embedding) == 8
    assert not vllm.seen("/v1/chat/completions")


async def test_rerank_goes_only_to_openai_backends(backends, start_router, http):
    ollama = await backends(FakeOllamaV1(name="ollama", models=["reranker:latest"]))
    vllm = await backends(FakeOpenAI("vllm", models=["reranker"]))
    router = await start_router([{"name": "ollama", "url": ollama.url}, endpoint(vllm)])
    body = {"model": "reranker", "query": "red fruit", "documents": ["blue sky", "red apple fruit"], "top_n": 1}
    for path in ("/v1/rerank", "/rerank"):
        async with http.post(router.url + path, data=orjson.dumps(body)) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["results"][0]["index"] == 1
    assert len(vllm.seen("/v1/rerank")) == 2 and not any("rerank" in r.path for r in ollama.requests)


async def test_midstream_failure_ends_the_stream_with_an_error_event(backends, start_router):
    vllm = await backends(FakeOpenAI("vllm", reply="a b c d"))
    router = await start_router([endpoint(vllm)])
    vllm.cut_next(after_tokens=2)
    stream = await client(router).chat.completions.create(model="tiny", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError, match="failed mid-stream"):
        async for _ in stream:
            pass
