"""/api/generate served by OpenAI-compatible backends keeps Ollama's template, `context` and 400s
(issue 13, item 6), driven by the real `ollama` client."""

from __future__ import annotations

import ollama
import pytest

from nomyo.dialects.context import decode, encode
from tests.fakes.openai_backend import FakeOpenAI
from tests.test_openai_api import endpoint

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


@pytest.mark.parametrize("stream", [False, True])
async def test_generate_is_a_chat_with_the_template_and_answers_as_generate(backends, start_router, stream):
    """"hi" with a system prompt goes to /v1/chat/completions as system + user messages (the
    backend applies the chat template, as Ollama would); the answer is in /api/generate's shape
    (`response`), with a `context` that, sent back, becomes the earlier turns of the next chat."""
    fake = await backends(FakeOpenAI("llama", flavour="llama-server", models=["tiny"]))
    router = await start_router([endpoint(fake)])
    client = ollama.AsyncClient(host=router.url)
    if stream:
        parts = [p async for p in await client.generate(model="tiny", prompt="hi", system="be brief", stream=True)]
        text, final = "".join(p.response for p in parts), parts[-1]
    else:
        final = await client.generate(model="tiny", prompt="hi", system="be brief")
        text = final.response
    assert text == "Hello from llama" and final.done_reason == "stop"
    assert fake.seen("/v1/completions") == []
    sent = fake.seen("/v1/chat/completions")[-1].json
    assert sent["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert final.context and all(isinstance(n, int) for n in final.context)
    await client.generate(model="tiny", prompt="and then?", context=final.context)
    assert fake.seen("/v1/chat/completions")[-1].json["messages"] == [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello from llama"}, {"role": "user", "content": "and then?"}]


async def test_raw_goes_to_completions_and_images_and_think_to_chat(backends, start_router):
    """`raw: true` is an untemplated /v1/completions (no `context`, as Ollama); images and
    `think` travel as image parts and reasoning controls, and thinking comes back as `thinking`."""
    fake = await backends(FakeOpenAI("vllm", models=["tiny"]))
    router = await start_router([endpoint(fake)])
    client = ollama.AsyncClient(host=router.url)
    raw = await client.generate(model="tiny", prompt="Once upon", raw=True)
    assert raw.response == "Hello from vllm" and raw.context is None
    assert fake.seen("/v1/completions")[-1].json["prompt"] == "Once upon"
    seen = await client.generate(model="tiny", prompt="what is it?", images=[PNG], think=True)
    assert seen.thinking == "Let me think about this." and seen.response == "I see 1 image. Hello from vllm"
    sent = fake.seen("/v1/chat/completions")[-1].json
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG}}
    assert sent["messages"][0]["content"][1] == image
    assert sent["chat_template_kwargs"] == {"enable_thinking": True}


RAW = "raw mode does not support template, system, or context"


@pytest.mark.parametrize("body, error", [
    ({"prompt": "x", "raw": True, "system": "s"}, RAW),
    ({"prompt": "x", "raw": True, "template": "{{ .Prompt }}"}, RAW),
    ({"prompt": "x", "logprobs": True, "top_logprobs": 21}, "top_logprobs must be between 0 and 20"),
])
async def test_ollamas_own_400s_come_before_routing(fakes, backends, start_router, http, body, error):
    """Ollama refuses these itself; the router does too, for every backend kind, before any
    backend sees them."""
    ollama_fake = await fakes("ollama", models=["tiny:latest"])
    vllm = await backends(FakeOpenAI("vllm", models=["tiny"]))
    router = await start_router([ollama_fake, endpoint(vllm)])
    async with http.post(router.url + "/api/generate", json={"model": "tiny", **body}) as resp:
        assert (resp.status, await resp.json()) == (400, {"error": error})
    assert not [r for r in ollama_fake.requests if r.path == "/api/generate"] and not vllm.seen("/v1/completions")


def test_context_round_trip_and_foreign_context():
    messages = [{"role": "user", "content": "héllo ✓"}, {"role": "assistant", "content": "x" * 7}]
    assert decode(encode(messages)) == messages
    assert decode([101, 202, 303]) == []  # real token ids from an Ollama backend
    assert decode(None) == [] and decode([encode(messages)[0], 1 << 30]) == []
