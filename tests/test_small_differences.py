"""Smaller differences from a direct connection (issue 13, item 7): float32 digits in translated
/api/embed, /v1/models/{id} spelled as the backend lists it, `prompt_eval_duration` on whole
translated answers, no `top_logprobs: []` where the direct answer has none."""

from __future__ import annotations

import re

import numpy as np
import ollama
import openai

from tests.fakes.openai_backend import FakeOpenAI
from tests.test_openai_api import endpoint


async def test_translated_embed_writes_float32_digits(backends, start_router, http):
    """Ollama writes /api/embed vectors as float32 (`0.2773501`, not `0.27735009811261457`):
    every number in the translated answer has float32's shortest digits, and is unit length."""
    fake = await backends(FakeOpenAI("llama", flavour="llama-server", models=["tiny"], embedding_dim=16))
    router = await start_router([endpoint(fake)])
    async with http.post(router.url + "/api/embed", json={"model": "tiny", "input": ["a", "bb"]}) as resp:
        text = (await resp.read()).decode()
    vectors = re.search(r'"embeddings":(\[\[.*?\]\])', text).group(1)
    numbers = re.findall(r"-?\d[\d.e+-]*", vectors)
    assert len(numbers) == 32
    for number in numbers:  # float32's shortest digits (at most 9 significant ones)
        assert len(re.sub(r"e.*|[-.]", "", number).lstrip("0")) <= 9, number
        if "e" not in number:
            assert np.format_float_positional(np.float32(number), unique=True, trim="-") == number
    first = np.array([float(n) for n in numbers[:16]])
    assert abs(float(np.dot(first, first)) - 1.0) < 1e-5


async def test_v1_model_is_spelled_as_the_backend_lists_it(fakes, backends, start_router):
    """vLLM lists `Qwen/Tiny`; asked for `qwen/tiny` through the router, the answer's `id` is
    `Qwen/Tiny` (vLLM's own answer). Ollama echoes the id as asked, and so does the router."""
    vllm = await backends(FakeOpenAI("vllm", models=["Qwen/Tiny"]))
    local = await fakes("ollama", models=["llama3:latest"])
    router = await start_router([endpoint(vllm), local])
    client = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0)
    assert (await client.models.retrieve("qwen/tiny")).id == "Qwen/Tiny"
    assert (await client.models.retrieve("llama3")).id == "llama3"


async def test_whole_translated_answers_carry_durations_and_no_empty_top_logprobs(backends, start_router):
    """A non-streamed chat through vLLM (no timings) still has `prompt_eval_duration`, as every
    Ollama answer does; logprobs asked without `top_logprobs` come back without that key."""
    fake = await backends(FakeOpenAI("vllm", models=["tiny"]))
    router = await start_router([endpoint(fake)])
    client = ollama.AsyncClient(host=router.url)
    answer = await client.chat(model="tiny", messages=[{"role": "user", "content": "hi there"}], logprobs=True)
    assert answer.prompt_eval_duration > 0 and answer.eval_duration > 0
    assert answer.total_duration >= answer.prompt_eval_duration + answer.eval_duration
    assert answer.logprobs and all(item.top_logprobs is None for item in answer.logprobs)
    generated = await client.generate(model="tiny", prompt="hi", raw=True)
    assert generated.prompt_eval_duration > 0
