"""Models of OpenAI-compatible backends as Ollama tools see them (issue 13, item 5): /api/show
capabilities, details and model_info, /api/ps and /api/tags, from what vLLM and llama-server
tell; read with the real `ollama` client."""

from __future__ import annotations

import ollama

from tests.fakes.openai_backend import FakeOpenAI
from tests.test_openai_api import endpoint


async def test_llama_server_model_shows_tools_vision_context_and_is_in_ps(backends, start_router):
    """llama-server says (in /props) its template takes tools and it runs with 2048 of context,
    and (in its listing) that `eyes` reads images: /api/show, /api/ps and /api/tags say so."""
    fake = await backends(FakeOpenAI("llama", flavour="llama-server", models=["eyes"], vision=["eyes"], n_ctx=2048))
    router = await start_router([endpoint(fake)])
    client = ollama.AsyncClient(host=router.url)
    shown = await client.show("eyes")
    assert shown.capabilities == ["completion", "tools", "vision"]
    assert shown.details.format == "gguf" and shown.details.parameter_size == "1.5M"
    info = shown.modelinfo
    assert info["general.parameter_count"] == 1_500_000
    assert info[f"{info['general.architecture']}.context_length"] == 512  # trained context (meta)
    running = (await client.ps()).models
    assert [(m.model, m.size, m.size_vram, m.context_length) for m in running] == [("eyes", 6_000_000, 6_000_000, 2048)]
    assert running[0].expires_at.year > 2100
    assert [(m.model, m.size) for m in (await client.list()).models] == [("eyes", 6_000_000)]


async def test_embedding_model_learned_from_its_first_embedding_or_configured(backends, start_router):
    """Nothing in a vLLM listing says `bge` embeds: once an embedding through the router
    succeeded, /api/show says `embedding`; `model_capabilities` says it from the start."""
    fake = await backends(FakeOpenAI("vllm", models=["bge", "chat", "e5"]))
    router = await start_router([endpoint(fake)], model_capabilities={"e5": ["embedding"]})
    client = ollama.AsyncClient(host=router.url)
    assert (await client.show("bge")).capabilities == ["completion"]
    assert (await client.show("e5")).capabilities == ["embedding"]
    await client.embed(model="bge", input="hello")
    assert (await client.show("bge")).capabilities == ["embedding"]
    assert (await client.show("chat")).capabilities == ["completion"]
    info = (await client.show("chat")).modelinfo
    assert info[f"{info['general.architecture']}.context_length"] == 4096  # vLLM's max_model_len
    assert sorted(m.model for m in (await client.ps()).models) == ["bge", "chat", "e5"]


async def test_router_mode_lists_only_loaded_models_and_never_loads_by_asking(backends, start_router):
    """llama-server's router mode has `tiny` loaded, `big` not: /api/ps lists `tiny` only, the
    router's polls ask /props only of loaded models (with autoload=false: asking never loads),
    and a request for `big` loads it, after which /api/ps lists both."""
    fake = await backends(FakeOpenAI("llama", flavour="llama-server", models=["tiny", "big"], router_mode=True,
                                     loaded=["tiny"]))
    router = await start_router([endpoint(fake)])
    client = ollama.AsyncClient(host=router.url)
    assert [m.model for m in (await client.ps()).models] == ["tiny"]
    assert (await client.show("big")).capabilities == ["completion"]  # not loaded: no /props yet
    assert fake.autoloads == 0
    await client.chat(model="big", messages=[{"role": "user", "content": "hi"}])
    await router.router.poller.refresh_all()
    assert sorted(m.model for m in (await client.ps()).models) == ["big", "tiny"]
    assert (await client.show("big")).capabilities == ["completion", "tools"]
    assert fake.autoloads == 0
