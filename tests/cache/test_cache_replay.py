"""Exact hits on every route, streamed and not, replayed to the real `ollama` and `openai`
clients: what a client gets from a hit must be what it got from the backend (text, chunking,
thinking, tool calls, final line and counts, usage), in its own dialect and mode."""

from __future__ import annotations

import aiohttp
import ollama
import openai
import orjson
import pytest

from nomyo.cache.assemble import Answer, Incomplete, assemble
from nomyo.cache.cache import ResponseCache
from tests.cache.answers import OLLAMA_FINAL, THOUGHTS, TOOL_CALL, WORDS
from tests.cache.conftest import cache_config

CITY = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOLS = [{"type": "function",
          "function": {"name": "get_weather", "description": "Weather of a city", "parameters": CITY}}]
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


async def ollama_chunks(client: ollama.AsyncClient, **kwargs) -> list:
    return [part async for part in await client.chat(stream=True, **kwargs)]


async def test_ollama_chat_stream_hit_replays_chunks_thinking_tools_and_final_line(cache_app):
    """A streamed chat with thinking and a tool call is stored; the same request again is a hit:
    the ollama client gets the same pieces in the same order and a done line with the counts."""

    url, backend = await cache_app(ResponseCache(cache_config()))
    client = ollama.AsyncClient(host=url)
    first = await ollama_chunks(client, model="Llama3", messages=MESSAGES, tools=TOOLS)
    second = await ollama_chunks(client, model="Llama3", messages=MESSAGES, tools=TOOLS)
    assert backend.calls == 1
    assert [c.message.thinking for c in second] == [c.message.thinking for c in first]
    assert [c.message.content for c in second] == [c.message.content for c in first]
    assert [t.function.name for c in second for t in c.message.tool_calls or []] == ["get_weather"]
    assert [t.function.arguments for c in second for t in c.message.tool_calls or []] == [{"city": "Paris"}]
    final = second[-1]
    assert final.done and final.done_reason == "stop" and final.model == "Llama3"
    assert (final.prompt_eval_count, final.eval_count) == (26, 7)
    assert final.eval_duration == OLLAMA_FINAL["eval_duration"]
    assert final.created_at != first[-1].created_at  # fresh, not the stored time


async def test_ollama_stored_stream_replays_unstreamed_and_back(cache_app):
    """Stored from a stream, asked without streaming: one object with the whole text; stored
    unstreamed, asked streamed: word slices and a final done line."""

    url, backend = await cache_app(ResponseCache(cache_config()))
    client = ollama.AsyncClient(host=url)
    await ollama_chunks(client, model="llama3", messages=MESSAGES)
    whole = await client.chat(model="llama3", messages=MESSAGES, stream=False)
    assert whole.message.content == "".join(WORDS) and whole.message.thinking == "".join(THOUGHTS)
    assert whole.done and whole.eval_count == 7
    await client.generate(model="llama3", prompt="Weather?", stream=False)
    parts = [p async for p in await client.generate(model="llama3", prompt="Weather?", stream=True)]
    assert backend.calls == 2
    assert "".join(p.response for p in parts) == "".join(WORDS) and len(parts) > 2
    assert parts[-1].done and parts[-1].context == [1, 2, 3, 4] and parts[-1].prompt_eval_count == 26


async def test_ollama_embeddings_hit(cache_app):
    url, backend = await cache_app(ResponseCache(cache_config()))
    client = ollama.AsyncClient(host=url)
    first = await client.embed(model="all-minilm", input="hello")
    second = await client.embed(model="All-MiniLM", input="hello")
    legacy = [await client.embeddings(model="all-minilm", prompt="hello") for _ in range(2)]
    assert backend.calls == 2
    assert second.embeddings == first.embeddings and second.model == "All-MiniLM"
    assert legacy[0].embedding == legacy[1].embedding == [0.5, -0.25, 0.125]


async def test_openai_chat_stream_hit_with_usage_reasoning_and_tool_calls(cache_app):
    """A vLLM-style stream (reasoning_content, tool arguments in pieces) is replayed to the openai
    client as chat.completion.chunks: same deltas, whole tool call, finish_reason, usage, [DONE]."""

    url, backend = await cache_app(ResponseCache(cache_config()))
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    kwargs = dict(model="llama3", messages=MESSAGES, tools=TOOLS, stream=True,
                  stream_options={"include_usage": True})

    async def run():
        return [c async for c in await client.chat.completions.create(**kwargs)]

    first, second = await run(), await run()
    assert backend.calls == 1
    text = ["".join(c.choices[0].delta.content or "" for c in chunks if c.choices) for chunks in (first, second)]
    assert text[0] == text[1] == "".join(WORDS)
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in second if c.choices)
    assert reasoning == "".join(THOUGHTS)
    calls = [t for c in second if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert [(t.function.name, t.function.arguments) for t in calls] == [("get_weather", '{"city": "Paris"}')]
    assert [c.choices[0].finish_reason for c in second if c.choices][-1] == "tool_calls"
    assert second[-1].usage.prompt_tokens == 21 and second[-1].usage.completion_tokens == 9
    assert all(c.object == "chat.completion.chunk" for c in second)


async def test_openai_chat_whole_answer_replays_streamed_and_whole(cache_app):
    url, backend = await cache_app(ResponseCache(cache_config()))
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    first = await client.chat.completions.create(model="llama3", messages=MESSAGES, seed=1, temperature=0.7)
    again = await client.chat.completions.create(model="llama3", messages=MESSAGES, seed=1, temperature=0.7)
    chunks = [c async for c in await client.chat.completions.create(
        model="llama3", messages=MESSAGES, seed=1, temperature=0.7, stream=True)]
    assert backend.calls == 1
    assert again.choices[0].message.content == first.choices[0].message.content == "".join(WORDS)
    assert again.usage.total_tokens == 30 and again.id != first.id
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(WORDS)
    assert all(c.usage is None for c in chunks)  # not asked for


async def test_openai_completions_replay_as_text_completion(cache_app):
    """/v1/completions hits come back as text_completion (the original answered in chat format)."""

    url, backend = await cache_app(ResponseCache(cache_config()))
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    streamed = [c async for c in await client.completions.create(model="llama3", prompt="Once", stream=True)]
    replayed = [c async for c in await client.completions.create(model="llama3", prompt="Once", stream=True)]
    whole = await client.completions.create(model="llama3", prompt="Once")
    assert backend.calls == 1
    assert [c.choices[0].text for c in replayed] == [c.choices[0].text for c in streamed]
    assert replayed[-1].choices[0].finish_reason == "length" and all(c.object == "text_completion" for c in replayed)
    assert whole.object == "text_completion" and whole.choices[0].text == "".join(WORDS)
    assert whole.usage.completion_tokens == 4


async def test_openai_embeddings_hit_in_base64_and_float(cache_app):
    url, backend = await cache_app(ResponseCache(cache_config()))
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    first = await client.embeddings.create(model="e5", input="hi")  # the client asks for base64
    second = await client.embeddings.create(model="e5", input="hi")
    floats = [await client.embeddings.create(model="e5", input="hi", encoding_format="float") for _ in range(2)]
    assert backend.calls == 2
    assert first.data[0].embedding == second.data[0].embedding == [0.25, -0.5, 0.75]
    assert floats[1].data[0].embedding == [0.25, -0.5, 0.75]


async def test_headers_and_body_switch(cache_app):
    """X-Nomyo-Cache says hit/miss/bypass; no-cache skips the lookup, no-store the storing;
    "nomyo" never reaches the backend."""

    url, backend = await cache_app(ResponseCache(cache_config()))
    body = {"model": "llama3", "messages": MESSAGES, "stream": False}
    async with aiohttp.ClientSession() as http:
        async def post(extra=None, headers=None):
            async with http.post(url + "/api/chat", json={**body, **(extra or {})}, headers=headers) as r:
                await r.read()
                return r.headers["X-Nomyo-Cache"]

        assert await post(headers={"X-Nomyo-Cache": "no-store"}) == "miss"
        assert await post({"nomyo": {"cache": False}}) == "bypass"
        assert await post({"nomyo": {"cache": True}}) == "miss"
        assert await post() == "hit"
        assert await post(headers={"X-Nomyo-Cache": "no-cache"}) == "miss"
        assert await post({"options": {"temperature": 0.9}}) == "bypass"
        async with http.post(url + "/api/chat", json={**body, "nomyo": {"cache": "yes"}}) as r:
            assert r.status == 400 and "nomyo.cache" in (await r.json())["error"]
    assert backend.calls == 5
    assert all(b"nomyo" not in raw for raw in backend.bodies)


async def test_incomplete_or_failed_answers_are_never_stored(cache_app):
    """A stream the backend broke off and a failed call leave nothing behind."""

    url, backend = await cache_app(ResponseCache(cache_config()))
    client = ollama.AsyncClient(host=url)
    backend.fail = "cut"
    await ollama_chunks(client, model="llama3", messages=MESSAGES)
    backend.fail = "error"
    with pytest.raises(ollama.ResponseError):
        await ollama_chunks(client, model="llama3", messages=MESSAGES)
    backend.fail = ""
    await ollama_chunks(client, model="llama3", messages=MESSAGES)
    assert backend.calls == 3


def test_assemble_refuses_streams_without_their_end():
    """complete=True is not enough: no done line / no [DONE] / an error line is not stored."""

    line = orjson.dumps({"model": "m", "message": {"role": "assistant", "content": "hi"}, "done": False}) + b"\n"
    error = orjson.dumps({"error": "an error was encountered while running the model"}) + b"\n"
    sse = b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n'
    for answer in (Answer("/api/chat", True, chunks=[line]), Answer("/api/chat", True, chunks=[line, error]),
                   Answer("/v1/chat/completions", True, chunks=[sse]),
                   Answer("/api/chat", False, body=b'{"error":"boom"}'),
                   Answer("/api/chat", True, chunks=[line], complete=False)):
        with pytest.raises(Incomplete):
            assemble(answer)
    entry = assemble(Answer("/v1/chat/completions", True, chunks=[sse, b"data: [DONE]\n\n"]))
    assert entry.text() == "hi" and entry.final["finish_reason"] == "stop"


def test_tool_call_fixture_is_ollama_shaped():
    assert isinstance(TOOL_CALL["function"]["arguments"], dict)
