"""The Python load generators. Each takes a `Target` (the backend itself, or the router in front
of it) and returns plain numbers, so that direct and routed runs are measured by the same code.

Non-streamed latency uses raw asyncio streams on one kept-alive connection: the leanest client,
so the time measured is mostly the servers'. Streams use aiohttp, which decodes chunked bodies.
"""

from __future__ import annotations

import asyncio
import math
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import aiohttp
import orjson

from .fast_backend import MODEL

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say something."}]}
WHOLE_BODY = orjson.dumps({**CHAT, "stream": False})
STREAM_BODY = orjson.dumps(CHAT)
JSON_HEADERS = {"Content-Type": "application/json"}
CONTENT_LENGTH = re.compile(rb"(?im)^content-length:[ \t]*(\d+)")


@dataclass(frozen=True)
class Target:
    """Where a run sends its requests: `direct` (the fake backend) or `router`."""

    name: str
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def chat_url(self) -> str:
        return f"{self.url}/api/chat"


def paced_body(chunks: int, delay: float) -> bytes:
    """A streamed chat asking the fake backend for `chunks` lines, `delay` seconds apart."""

    return orjson.dumps({**CHAT, "options": {"num_predict": chunks, "token_delay": delay}})


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): always a value that was actually observed."""

    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _check(resp: aiohttp.ClientResponse) -> None:
    if resp.status != 200:
        raise RuntimeError(f"{resp.method} {resp.url} answered {resp.status}")


# -- non-streamed, concurrency 1 ----------------------------------------------------------------


class KeptAliveConnection:
    """HTTP/1.1 over one asyncio stream. Handles only answers with a Content-Length, which is
    what both the fake backend and the router send for a non-streamed chat."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, target: Target) -> KeptAliveConnection:
        reader, writer = await asyncio.open_connection(target.host, target.port)
        return cls(reader, writer)

    async def roundtrip(self, request: bytes) -> bytes:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        match = CONTENT_LENGTH.search(head)
        if not head.startswith(b"HTTP/1.1 200") or match is None:
            raise RuntimeError(f"unexpected answer: {head[:200]!r}")
        return await self.reader.readexactly(int(match.group(1)))

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def post_request(target: Target, path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def sequential_latency(target: Target, requests: int) -> dict[str, float]:
    """`requests` non-streamed chats one after another on one connection: p50/p99 in ms."""

    request = post_request(target, "/api/chat", WHOLE_BODY)
    conn = await KeptAliveConnection.open(target)
    samples = []
    try:
        for _ in range(requests):
            start = time.perf_counter_ns()
            await conn.roundtrip(request)
            samples.append((time.perf_counter_ns() - start) / 1e6)
    finally:
        await conn.close()
    return {"p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99),
            "mean_ms": statistics.fmean(samples)}


# -- streams ------------------------------------------------------------------------------------


async def relay_rate(session: aiohttp.ClientSession, target: Target, streams: int,
                     seconds: float) -> dict[str, float]:
    """NDJSON lines per second received over `streams` concurrent back-to-back 256-line streams.
    Each worker finishes the stream it is in when time is up; the rate uses the real elapsed time."""

    deadline = time.perf_counter() + seconds

    async def worker() -> int:
        lines = 0
        while time.perf_counter() < deadline:
            async with session.post(target.chat_url, data=STREAM_BODY, headers=JSON_HEADERS) as resp:
                _check(resp)
                async for data in resp.content.iter_any():
                    lines += data.count(b"\n")
        return lines

    start = time.perf_counter()
    counts = await asyncio.gather(*(worker() for _ in range(streams)))
    return {"chunks_per_s": sum(counts) / (time.perf_counter() - start)}


async def first_chunk_latency(session: aiohttp.ClientSession, target: Target, streams: int) -> dict[str, float]:
    """Sequential 256-line streams: time from sending the request to the first body bytes (ms)."""

    samples = []
    for _ in range(streams):
        start = time.perf_counter()
        async with session.post(target.chat_url, data=STREAM_BODY, headers=JSON_HEADERS) as resp:
            _check(resp)
            await resp.content.readany()
            samples.append((time.perf_counter() - start) * 1000)
            await resp.read()  # drain, so the connection is reused
    return {"p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99)}


async def chunk_gaps(session: aiohttp.ClientSession, target: Target, streams: int, chunks: int,
                     delay: float) -> dict[str, float]:
    """Gaps between consecutive lines of `streams` concurrent paced streams (ms). A router that
    buffered or batched lines would show as a larger p99 (and gaps near 0) even at the same mean."""

    body = paced_body(chunks, delay)

    async def one() -> list[float]:
        stamps = []
        async with session.post(target.chat_url, data=body, headers=JSON_HEADERS) as resp:
            _check(resp)
            async for _line in resp.content:
                stamps.append(time.perf_counter())
        if len(stamps) != chunks:
            raise RuntimeError(f"expected {chunks} lines, got {len(stamps)}")
        return [(b - a) * 1000 for a, b in pairwise(stamps)]

    gaps = [gap for result in await asyncio.gather(*(one() for _ in range(streams))) for gap in result]
    return {"mean_ms": statistics.fmean(gaps), "p50_ms": percentile(gaps, 50), "p99_ms": percentile(gaps, 99)}


async def hold_streams(session: aiohttp.ClientSession, target: Target, count: int, delay: float,
                       hold: float, sample: Callable[[], float]) -> dict[str, float]:
    """Open `count` slow streams at once, wait until each has its first line, keep them open for
    `hold` seconds while calling `sample()` (e.g. the router's RSS) every 0.25 s, then close them.
    Returns the largest sample and how long opening took."""

    lines = math.ceil((hold + 30) / delay)  # outlives the opening and the hold
    body = paced_body(lines, delay)
    opened = 0
    all_open = asyncio.Event()

    async def one() -> None:
        nonlocal opened
        async with session.post(target.chat_url, data=body, headers=JSON_HEADERS) as resp:
            _check(resp)
            await resp.content.readany()
            opened += 1
            if opened == count:
                all_open.set()
            await asyncio.Event().wait()  # held open until cancelled

    start = time.perf_counter()
    tasks = [asyncio.create_task(one()) for _ in range(count)]
    try:
        await _wait_all_open(all_open, tasks, lambda: opened, timeout=30)
        open_seconds = time.perf_counter() - start
        samples = [sample()]
        for _ in range(max(1, round(hold / 0.25))):
            await asyncio.sleep(0.25)
            samples.append(sample())
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"max": max(samples), "open_seconds": open_seconds}


async def _wait_all_open(all_open: asyncio.Event, tasks: list[asyncio.Task], opened: Callable[[], int],
                         timeout: float) -> None:
    """Wait for `all_open`, failing early (with the first error) if any stream failed to open."""

    waiter = asyncio.create_task(all_open.wait())
    try:
        done, _ = await asyncio.wait([waiter, *tasks], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if waiter in done:
        return
    failed = next((t for t in done if t is not waiter), None)
    if failed is not None:
        raise RuntimeError(f"a stream failed after {opened()} opened: {failed.exception()!r}")
    raise RuntimeError(f"only {opened()} of {len(tasks)} streams open after {timeout:g}s")
