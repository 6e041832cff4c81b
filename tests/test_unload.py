"""`keep_alive: 0` unloads a model from every backend that has it loaded (issue 13, item 3),
driven by the real `ollama` client."""

from __future__ import annotations

import ollama
import pytest

from tests.fakes.openai_backend import FakeOpenAI
from tests.test_openai_api import endpoint


def inference_calls(fake, path: str) -> list[dict]:
    return [r.json for r in fake.requests if r.path == path]


async def test_ollama_stop_unloads_everywhere_and_ps_forgets_it(fakes, start_router):
    """llama3 is loaded on a and b, installed on c. `ollama stop llama3` (generate with an empty
    prompt and keep_alive 0) must reach a and b (not c), be answered once in Ollama's shape, and
    /api/ps through the router must no longer list llama3 when the answer arrives."""
    a = await fakes("a", models=["llama3:latest", "qwen3:0.6b"], loaded=["llama3:latest", "qwen3:0.6b"])
    b = await fakes("b", models=["llama3:latest"], loaded=["llama3:latest"])
    c = await fakes("c", models=["llama3:latest"])
    router = await start_router([a, b, c])
    client = ollama.AsyncClient(host=router.url)
    answer = await client.generate(model="llama3", keep_alive=0)
    assert (answer.done, answer.done_reason, answer.response, answer.model) == (True, "unload", "", "llama3")
    assert len(inference_calls(a, "/api/generate")) == len(inference_calls(b, "/api/generate")) == 1
    assert inference_calls(c, "/api/generate") == []
    assert a.loaded == ["qwen3:0.6b"] and b.loaded == []
    assert [m.model for m in (await client.ps()).models] == ["qwen3:0.6b"]


async def test_chat_unload_and_a_plain_load_goes_to_one(fakes, start_router):
    """`chat(messages=[], keep_alive=0)` unloads everywhere too; a load (no keep_alive 0) still
    goes to exactly one backend through normal routing."""
    a = await fakes("a", models=["llama3:latest"])
    b = await fakes("b", models=["llama3:latest"])
    router = await start_router([a, b])
    client = ollama.AsyncClient(host=router.url)
    loaded = await client.generate(model="llama3")
    assert loaded.done_reason == "load"
    assert len(inference_calls(a, "/api/generate")) + len(inference_calls(b, "/api/generate")) == 1
    a.set_loaded(["llama3:latest"])
    b.set_loaded(["llama3:latest"])
    await router.router.poller.refresh_all()
    answer = await client.chat(model="llama3", messages=[], keep_alive=0)
    assert (answer.done_reason, answer.message.role, answer.message.content) == ("unload", "assistant", "")
    assert a.loaded == b.loaded == []
    assert (await client.ps()).models == []


async def test_a_failed_unload_is_named(fakes, start_router):
    """One of two backends fails the unload: the client gets an error that names it (and that
    the other succeeded), in Ollama's words."""
    a = await fakes("a", models=["llama3:latest"], loaded=["llama3:latest"])
    b = await fakes("b", models=["llama3:latest"], loaded=["llama3:latest"])
    router = await start_router([a, b])
    a.fail_next(500, "runner is stuck")
    with pytest.raises(ollama.ResponseError) as failed:
        await ollama.AsyncClient(host=router.url).generate(model="llama3", keep_alive=0)
    assert failed.value.status_code == 502
    assert "a: runner is stuck" in failed.value.error and "succeeded on b" in failed.value.error
    assert b.loaded == []


async def test_unload_of_an_unknown_model_is_404(fakes, start_router):
    a = await fakes("a", models=["llama3:latest"])
    router = await start_router([a])
    with pytest.raises(ollama.ResponseError) as failed:
        await ollama.AsyncClient(host=router.url).generate(model="nope", keep_alive=0)
    assert failed.value.status_code == 404 and failed.value.error == "model 'nope' not found"


async def test_llama_server_router_mode_unloads_through_its_api(backends, start_router):
    """llama-server in router mode has `tiny` loaded and `big` not: `ollama stop tiny` goes to
    its /models/unload, and /api/ps then lists nothing of it."""
    fake = await backends(FakeOpenAI("llama", flavour="llama-server", models=["tiny", "big"], router_mode=True,
                                     loaded=["tiny"]))
    router = await start_router([endpoint(fake)])
    client = ollama.AsyncClient(host=router.url)
    assert [m.model for m in (await client.ps()).models] == ["tiny"]
    answer = await client.generate(model="tiny", keep_alive=0)
    assert answer.done_reason == "unload"
    assert [r.json for r in fake.requests if r.path == "/models/unload"] == [{"model": "tiny"}]
    assert fake.loaded == set() and (await client.ps()).models == []
