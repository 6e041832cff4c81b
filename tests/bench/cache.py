"""`python -m tests.bench.cache`: the response cache's own costs, in-process, on one core.

- the semantic index: one lookup among 100,000 vectors of 384 dimensions in a single context
  (the worst case: contexts are searched one at a time), p50/p99 — numpy's exact product as the
  baseline, then the HNSW graph (usearch) the cache switches to past 2,048 vectors;
- the exact key of a request (a 10-turn chat, and one with a 1 MB image);
- a miss's added latency with the cache on (exact only; semantic without the embedding call),
  and a hit's latency (decide, look up, replay), with the memory store.

Vectors are synthetic but shaped like sentence embeddings (a rank-48 cone plus noise, mean
pairwise cosine ~0.05 off the shared direction): isotropic random vectors in 384 dimensions are
no sentence embeddings and defeat every graph index. Queries are near-duplicates (cosine ~0.997)
of stored vectors: the lookups that can be hits. The graph is built on all cores (its build is
not what is measured); searches run on one thread.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one core, before numpy loads its BLAS

import numpy as np

from nomyo.cache.assemble import Answer
from nomyo.cache.cache import ResponseCache
from nomyo.cache.config import CacheConfig
from nomyo.cache.request import build_request
from nomyo.cache.vectors import FlatVectors, GraphVectors
from tests.cache.answers import ollama_chat

DIM, RANK = 384, 48


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.sort(np.array(seconds)) * 1000
    return {"p50_ms": float(ms[len(ms) // 2]), "p99_ms": float(ms[min(len(ms) - 1, int(len(ms) * 0.99))])}


def embeddings_like(count: int, rng: np.random.Generator) -> np.ndarray:
    shared = rng.standard_normal(DIM).astype(np.float32)
    basis = rng.standard_normal((RANK, DIM)).astype(np.float32) / np.sqrt(DIM)
    vectors = 1.6 * shared / np.linalg.norm(shared) + rng.standard_normal((count, RANK)).astype(np.float32) @ basis
    vectors += 0.15 * rng.standard_normal((count, DIM)).astype(np.float32) / np.sqrt(DIM)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def near(vectors: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    noise = 0.004 * rng.standard_normal((count, DIM)).astype(np.float32)
    queries = vectors[rng.integers(0, len(vectors), count)] + noise
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def timed(search, queries: np.ndarray) -> tuple[dict[str, float], list[int]]:
    """Wall-clock and CPU-time percentiles of `search` over `queries` (CPU time is the cost on one
    core whatever else the machine runs; wall time includes being preempted)."""

    wall, cpu, found = [], [], []
    for query in queries:
        started, started_cpu = time.perf_counter(), time.thread_time()
        label, _ = search(query)
        cpu.append(time.thread_time() - started_cpu)
        wall.append(time.perf_counter() - started)
        found.append(label)
    cpu_ms = percentiles(cpu)
    return {**percentiles(wall), "cpu_p50_ms": cpu_ms["p50_ms"], "cpu_p99_ms": cpu_ms["p99_ms"]}, found


def index_lookup(entries: int, queries: int) -> dict:
    rng = np.random.default_rng(1)
    vectors = embeddings_like(entries, rng)
    asked = near(vectors, queries, rng)
    labels = np.arange(entries, dtype=np.uint64)
    flat = FlatVectors(DIM)
    flat.matrix, flat.labels, flat.row = vectors, list(range(entries)), {i: i for i in range(entries)}
    flat_times, truth = timed(flat.best, asked[: min(200, queries)])
    started = time.perf_counter()
    graph = GraphVectors(DIM, labels, vectors, threads=0)
    build = time.perf_counter() - started
    graph_times, found = timed(graph.best, asked)
    graph.index.remove(labels[: entries // 5])  # TTL/LRU churn: a fifth of the entries removed
    churned, _ = timed(graph.best, asked)
    return {"entries": entries, "numpy": flat_times, "hnsw": graph_times,
            "hnsw_after_removing_20pct": churned, "hnsw_build_s_all_cores": round(build, 1),
            "hnsw_top1_recall": float(np.mean(np.array(found[: len(truth)]) == np.array(truth)))}


def chat(turns: int, image: bytes | None = None) -> dict:
    messages = [{"role": "system", "content": "You are a careful assistant."}]
    messages += [{"role": ("user", "assistant")[i % 2], "content": f"turn {i}: " + "words " * 60} for i in range(turns)]
    if image is not None:
        messages[-1]["images"] = [base64.b64encode(image).decode()]
    return {"model": "llama3", "messages": messages, "options": {"temperature": 0, "num_ctx": 8192}}


def key_cost(repeats: int) -> dict:
    config = CacheConfig(enabled=True)
    result = {}
    for name, payload in (("chat_10_turns", chat(10)), ("chat_with_1MB_image", chat(3, b"\x89PNG" * 262_144))):
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            build_request(config, "/api/chat", payload, "alice")
            seconds.append(time.perf_counter() - started)
        result[name] = percentiles(seconds)
    return result


class Instant:
    """An embedder that answers at once (the embedding call is excluded from these figures)."""

    def __init__(self):
        self.rng = np.random.default_rng(3)

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return [list(self.rng.standard_normal(DIM)) for _ in texts]


async def request_costs(repeats: int) -> dict:
    exact = ResponseCache(CacheConfig(enabled=True, lookup_timeout=1.0))
    semantic = ResponseCache(CacheConfig(enabled=True, lookup_timeout=1.0, embedding_model="e5"), Instant())
    result = {}
    for name, cache in (("miss_exact", exact), ("miss_semantic_without_embedding", semantic)):
        await cache.start()
        seconds = []
        for i in range(repeats):
            payload = chat(4)
            payload["messages"][-1]["content"] = f"question {i}"
            started = time.perf_counter()
            await cache.lookup(cache.request("/api/chat", payload, ""))
            seconds.append(time.perf_counter() - started)
        result[name] = percentiles(seconds)
    req = exact.request("/api/chat", {**chat(4), "stream": False}, "")
    await exact.store(req, Answer("/api/chat", True, chunks=ollama_chat("llama3", True)))
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        again = exact.request("/api/chat", {**chat(4), "stream": False}, "")
        exact.replay(await exact.lookup(again), again)
        seconds.append(time.perf_counter() - started)
    result["hit_decide_lookup_replay"] = percentiles(seconds)
    await exact.close()
    await semantic.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.cache", description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="10,000 entries, fewer repeats")
    args = parser.parse_args()
    entries, repeats = (10_000, 200) if args.quick else (args.entries, 2000)
    results = {"loadavg_before": os.getloadavg()[:3], "index": index_lookup(entries, args.queries),
               "exact_key": key_cost(repeats), "requests": asyncio.run(request_costs(repeats)),
               "loadavg_after": os.getloadavg()[:3]}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
