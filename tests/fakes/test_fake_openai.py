"""The OpenAI-type fake's less flattering options behave as the servers they imitate."""

from __future__ import annotations

from tests.fakes.ollama_backend import FakeOllama
from tests.fakes.openai_backend import FakeOpenAI


async def test_spaced_json_sse_without_space_and_no_stream_usage(backends, http):
    fake = await backends(FakeOpenAI("cpp", flavour="llama-cpp-python", spaced=True, sse_space=False))
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "stream_options": {"include_usage": True}}
    async with http.post(fake.url + "/v1/chat/completions", json=body) as resp:
        text = (await resp.read()).decode()
    assert text.startswith('data:{"id": ') and text.endswith("data:[DONE]\n\n") and '"usage"' not in text
    assert '{"role": "assistant"}' in text  # llama-cpp-python's first delta: no content
    async with http.post(fake.url + "/extras/tokenize", json={"input": "a b c"}) as resp:
        assert (await resp.json()) == {"tokens": [1, 2, 3]}


async def test_llama_server_tokenize_props_and_router_mode(backends, http):
    fake = await backends(FakeOpenAI("l", flavour="llama-server", models=["a", "b"], router_mode=True, loaded=["a"]))
    async with http.post(fake.url + "/tokenize", json={"content": "x y"}) as resp:
        assert (await resp.json()) == {"tokens": [1, 2]}
    async with http.get(fake.url + "/v1/models") as resp:
        statuses = {m["id"]: m["status"]["value"] for m in (await resp.json())["data"]}
    assert statuses == {"a": "loaded", "b": "unloaded"}
    async with http.get(fake.url + "/props", params={"model": "b", "autoload": "false"}) as resp:
        assert resp.status == 400 and fake.autoloads == 0
    async with http.get(fake.url + "/props", params={"model": "b"}) as resp:
        assert (await resp.json())["default_generation_settings"]["n_ctx"] == 2048 and fake.autoloads == 1


async def test_spaced_ollama_lines(backends, http):
    fake = await backends(FakeOllama(models=["llama3:latest"], spaced=True))
    async with http.post(fake.url + "/api/chat", json={"model": "llama3", "messages": [
            {"role": "user", "content": "hi"}]}) as resp:
        lines = (await resp.read()).decode().splitlines()
    assert '"done": false' in lines[0] and '"done": true' in lines[-1]
