"""langchain-ollama and litellm (as an SDK) against the router, and what ollama-python sees of a
spaced-JSON stream (issue 13, item 9). The fakes do not flatter: spaced JSON, llama-server."""

from __future__ import annotations

import asyncio
import logging

import ollama
import pytest
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from langchain_ollama import ChatOllama, OllamaEmbeddings, OllamaLLM
from pydantic import BaseModel

from tests.fakes.ollama_v1 import FakeOllamaV1
from tests.fakes.openai_backend import FakeOpenAI
from tests.test_openai_api import endpoint, logged_tokens


@tool
def weather(city: str) -> str:
    """The weather in a city."""
    return "sunny"


class Person(BaseModel):
    name: str
    age: int


KINDS = ["ollama", "llama-server", "ollama-spaced"]


async def start(kind: str, fakes, backends, start_router):
    """A router in front of an Ollama (writing compact or spaced JSON), or of llama-server; the
    model's name and the reply."""
    if kind.startswith("ollama"):
        fake = await backends(FakeOllamaV1(name="ollama", models=["qwen3:0.6b", "all-minilm:latest"],
                                           spaced=kind == "ollama-spaced"))
        return await start_router([fake]), "qwen3:0.6b", "Hello from ollama"
    fake = await backends(FakeOpenAI("llama", flavour="llama-server", models=["tiny"]))
    return await start_router([endpoint(fake)]), "tiny", "Hello from llama"


@pytest.mark.parametrize("kind", KINDS)
async def test_langchain_ollama(fakes, backends, start_router, kind):
    """ChatOllama answers, calls tools, fills a schema, reasons, streams; OllamaLLM completes;
    OllamaEmbeddings embeds: through the router, as against Ollama itself."""
    router, model, text = await start(kind, fakes, backends, start_router)
    chat = ChatOllama(model=model, base_url=router.url)
    assert (await chat.ainvoke("say hello")).content == text
    called = await chat.bind_tools([weather]).ainvoke("weather in Paris?")
    assert [(c["name"], c["args"]) for c in called.tool_calls] == [("weather", {"city": "fake"})]
    person = await chat.with_structured_output(Person, method="json_schema").ainvoke("who?")
    assert person == Person(name="fake", age=1)
    thought = await ChatOllama(model=model, base_url=router.url, reasoning=True).ainvoke([HumanMessage("hi")])
    assert thought.additional_kwargs["reasoning_content"] == "Let me think about this."
    completion = await OllamaLLM(model=model, base_url=router.url).ainvoke("say hello")
    assert completion == text
    vectors = await OllamaEmbeddings(model=model, base_url=router.url).aembed_documents(["a", "bb"])
    assert len(vectors) == 2 and abs(sum(v * v for v in vectors[0]) - 1) < 1e-5


@pytest.mark.parametrize("kind", KINDS)
async def test_litellm_as_an_sdk(fakes, backends, start_router, monkeypatch, kind):
    """litellm's Ollama provider (`ollama_chat/`) and OpenAI provider (`openai/`, at /v1) through
    the router: whole and streamed answers, tool calls, embeddings. litellm is used as a program
    uses it, from its own thread (its logging makes blocking calls, e.g. to /api/show, that would
    stall the router's event loop in this process)."""
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch from the internet
    router, model, text = await start(kind, fakes, backends, start_router)
    await asyncio.to_thread(litellm_session, router.url, model, text, kind == "llama-server")


def litellm_session(url: str, model: str, text: str, v1_tools: bool) -> None:
    """`v1_tools`: whether the backend's /v1 answers tools (the fake Ollama's /v1 does not)."""
    import litellm

    messages = [{"role": "user", "content": "say hello"}]
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    for name, base in ((f"ollama_chat/{model}", url), (f"openai/{model}", url + "/v1")):
        answer = litellm.completion(model=name, api_base=base, api_key="any", messages=messages)
        assert answer.choices[0].message.content == text and answer.usage.completion_tokens == 3
        stream = litellm.completion(model=name, api_base=base, api_key="any", messages=messages, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream) == text
        if name.startswith("ollama_chat/") or v1_tools:
            called = litellm.completion(model=name, api_base=base, api_key="any", messages=messages, tools=tools)
            assert called.choices[0].message.tool_calls[0].function.name == "weather"
    embedded = litellm.embedding(model=f"ollama/{model}", api_base=url, input=["a", "bb"])
    assert len(embedded.data) == 2


async def test_a_spaced_stream_keeps_its_end_and_its_counts(fakes, start_router, caplog):
    """An Ollama-compatible server writes `"done": true` with a space. Through the router the
    stream must end with that line (ollama-python raises on an appended error line) and the
    router must count its tokens (2 prompt, 3 generated)."""
    caplog.set_level(logging.INFO, logger="nomyo.access")
    fake = await fakes("ollama", models=["llama3:latest"], spaced=True, strict_host=False)
    router = await start_router([fake])
    client = ollama.AsyncClient(host=router.url)
    parts = [p async for p in await client.chat(model="llama3", messages=[{"role": "user", "content": "say hi"}],
                                                stream=True)]
    assert parts[-1].done and parts[-1].eval_count == 3
    assert await logged_tokens(caplog, "/api/chat") == "2/3"
