"""`python -m tests.bench.wire`: the upstream client's own cost, nomyo/wire against aiohttp's.

Both clients talk to the same fast fake Ollama (tests/bench/fast_backend.py, its own process on
its own CPU), from this process pinned to another CPU, on uvloop as the daemon runs. What is
compared is the client's CPU time (this process's user+system seconds, which the backend's work
is not part of) per request, and the rates. The two clients take turns, round by round
(alternating which goes first), and the table shows medians:

- `post_c1`: a small non-streamed POST /api/chat with its JSON answer, one at a time.
- `post_c64`: the same, 64 at once.
- `stream_c8`: 8 concurrent streams of 256 NDJSON lines, each written by the backend on its own.

Options: `--quick` (a smoke run), `--rounds N`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import uvloop
from yarl import URL

from nomyo.wire import Pool

from .clients import JSON_HEADERS, STREAM_BODY, WHOLE_BODY, Target
from .processes import Children, free_port, plan_cpus, wait_until_serving

HEADERS = {**JSON_HEADERS, "Accept-Encoding": "identity"}


class AiohttpClient:
    """aiohttp set up as the router sets it up (nomyo/router.py make_session)."""

    name = "aiohttp"

    def __init__(self):
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30), auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("User-Agent",),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))

    async def whole(self, url: URL, body: bytes) -> int:
        async with self.session.post(url, data=body, headers=HEADERS) as response:
            return len(await response.read())

    async def stream(self, url: URL, body: bytes) -> tuple[int, int]:
        pieces = lines = 0
        async with self.session.post(url, data=body, headers=HEADERS) as response:
            async for piece in response.content.iter_any():
                pieces += 1
                lines += piece.count(b"\n")
        return pieces, lines

    async def close(self) -> None:
        await self.session.close()


class WireClient:
    name = "wire"

    def __init__(self):
        self.pool = Pool(keepalive=30)

    async def whole(self, url: URL, body: bytes) -> int:
        response = await self.pool.request("POST", url, HEADERS, body, connect_timeout=5, first_byte_timeout=600)
        data = await response.read()
        response.release()
        return len(data)

    async def stream(self, url: URL, body: bytes) -> tuple[int, int]:
        pieces = lines = 0
        response = await self.pool.request("POST", url, HEADERS, body, connect_timeout=5, first_byte_timeout=600)
        try:
            async for piece in response.iter_chunks():
                pieces += 1
                lines += piece.count(b"\n")
        finally:
            response.release()
        return pieces, lines

    async def close(self) -> None:
        await self.pool.close()


async def timed(run: Callable[[], Awaitable[int]]) -> tuple[float, float, int]:
    """(cpu seconds, wall seconds, units of work) of one run."""

    cpu, wall = time.process_time(), time.perf_counter()
    units = await run()
    return time.process_time() - cpu, time.perf_counter() - wall, units


async def posts(client, url: URL, total: int, concurrency: int) -> dict[str, float]:
    async def worker(count: int) -> int:
        for _ in range(count):
            await client.whole(url, WHOLE_BODY)
        return count

    async def run() -> int:
        return sum(await asyncio.gather(*(worker(total // concurrency) for _ in range(concurrency))))

    cpu, wall, done = await timed(run)
    return {"cpu_us_per_request": cpu / done * 1e6, "requests_per_s": done / wall}


async def streams(client, url: URL, total: int, concurrency: int) -> dict[str, float]:
    counts: list[tuple[int, int]] = []

    async def worker(count: int) -> int:
        for _ in range(count):
            counts.append(await client.stream(url, STREAM_BODY))
        return count

    async def run() -> int:
        return sum(await asyncio.gather(*(worker(total // concurrency) for _ in range(concurrency))))

    cpu, wall, done = await timed(run)
    pieces, lines = sum(c[0] for c in counts), sum(c[1] for c in counts)
    if lines != done * 256:
        raise RuntimeError(f"{client.name}: {lines} lines in {done} streams, expected 256 each")
    return {"cpu_us_per_stream": cpu / done * 1e6, "lines_per_s": lines / wall, "chunks_per_s": pieces / wall,
            "cpu_us_per_chunk": cpu / pieces * 1e6}


def phases(quick: bool) -> list[tuple[str, Callable]]:
    scale = 10 if quick else 1
    return [("post_c1", lambda c, u: posts(c, u, 4000 // scale, 1)),
            ("post_c64", lambda c, u: posts(c, u, 12800 // scale, 64)),
            ("stream_c8", lambda c, u: streams(c, u, 800 // scale, 8))]


async def measure(target: Target, rounds: int, quick: bool) -> dict[str, dict[str, list[dict]]]:
    url = URL(target.chat_url)
    clients = [AiohttpClient(), WireClient()]
    results: dict[str, dict[str, list[dict]]] = {}
    try:
        for client in clients:  # warm: connections open, code paths hot
            await posts(client, url, 640, 64)
            await streams(client, url, 16, 8)
        for name, phase in phases(quick):
            results[name] = {client.name: [] for client in clients}
            for i in range(rounds):
                for client in clients if i % 2 == 0 else clients[::-1]:
                    result = await phase(client, url)
                    results[name][client.name].append(result)
                    print(f"  {name} [{i + 1}/{rounds}] {client.name:7} "
                          + ", ".join(f"{k}={v:,.1f}" for k, v in result.items()), file=sys.stderr, flush=True)
    finally:
        for client in clients:
            await client.close()
    return results


def table(results: dict[str, dict[str, list[dict]]]) -> str:
    rows = ["| phase | figure | aiohttp | wire | wire / aiohttp |", "|---|---|---:|---:|---:|"]
    for phase, by_client in results.items():
        for key in by_client["aiohttp"][0]:
            a = statistics.median(run[key] for run in by_client["aiohttp"])
            w = statistics.median(run[key] for run in by_client["wire"])
            rows.append(f"| {phase} | {key} | {a:,.1f} | {w:,.1f} | {w / a:.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.wire", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    cpus = plan_cpus()
    if cpus.router is not None:
        os.sched_setaffinity(0, cpus.router)  # the client alone on the CPU a router would have
    with tempfile.TemporaryDirectory(prefix="nomyo-bench-wire-") as workdir, Children(Path(workdir), cpus) as children:
        port = free_port()
        target = Target("direct", "127.0.0.1", port)

        async def run():
            await wait_until_serving(children.start_backend(port), target.url)
            return await measure(target, 1 if args.quick else args.rounds, args.quick)

        results = uvloop.run(run())
    print(f"\nupstream client micro-benchmark; client on CPU {sorted(cpus.router or [])}, "
          f"backend on CPU {sorted(cpus.backend or [])}; medians of {1 if args.quick else args.rounds} rounds")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
