"""Load: hundreds of concurrent streams, clients that hang up, and a backend that dies and comes
back in the middle of it all; loopback only, bounded in time.

Every request must end one of two ways, never a hang or a silent cut: completed, or told clearly
what went wrong (an HTTP error, or a final error line / SSE error event). Afterwards the router
must be at rest (no slot, queue place, upstream connection or unwritten token record left) and its
token counts must match what the clients received.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass

import aiohttp
import orjson

from nomyo.dialects.openai import estimate_tokens, prompt_text
from tests.answers import DIALECTS, HANG, MODEL, MODEL_KEY, NATIVE_WHOLE, STREAMING, Answer, Dialect, ask
from tests.conftest import eventually
from tests.fakes.ollama_v1 import FakeOllamaV1

REQUESTS = 300
LEAVING = 0.2  # share of clients that hang up before the answer is complete
SLOTS = 8  # per backend and model: most requests queue in the router for a while
LEAVER_MODEL, LEAVER_KEY = "qwen2", "qwen2:latest"  # hung-up requests are counted apart


@dataclass
class Outcome:
    dialect: Dialect
    body: dict
    planned: int  # tokens the backend generates for it
    answer: Answer | None = None  # a client that stayed: what it got
    left: bool = False  # a client that hung up (or was going to)
    pieces_read: int = 0  # generated pieces such a client read before hanging up


def piece_of(dialect: Dialect, line: bytes) -> int:
    """1 if this line of a stream carries generated text, as the client reads it."""

    line = line.strip()
    if dialect.openai:
        if not line.startswith(b"data: {"):
            return 0
        obj = orjson.loads(line.removeprefix(b"data: "))
        return int(any((c.get("delta") or {}).get("content") for c in obj.get("choices") or ()))
    if not line:
        return 0
    obj = orjson.loads(line)
    return int(not obj.get("done") and bool((obj.get("message") or {}).get("content")))


async def leave_early(http: aiohttp.ClientSession, url: str, outcome: Outcome, after: int) -> None:
    """Read `after` generated pieces of a stream, then hang up; a whole answer is abandoned
    after `after` × 20 ms instead (the client's timeout)."""

    outcome.left = True
    if not outcome.dialect.stream:
        try:
            async with asyncio.timeout(after * 0.02):
                await ask(http, url, outcome.dialect, outcome.body)
        except TimeoutError:
            pass
        return
    async with asyncio.timeout(HANG):
        resp = await http.post(url + outcome.dialect.path, data=orjson.dumps(outcome.body))
        try:
            while resp.status == 200 and outcome.pieces_read < after:
                line = await resp.content.readline()
                if not line:
                    break
                outcome.pieces_read += piece_of(outcome.dialect, line)
        finally:
            resp.close()  # gone: the connection drops without reading the rest


def expected_counts(outcomes: list[Outcome]) -> tuple[int, int, int]:
    """(input, output, requests) the router must count for the clients that stayed: a completed
    answer its reported counts; a stream that ended with an error the pieces it delivered (and for
    /v1 the router's estimate of the prompt); an HTTP error nothing."""

    prompt = completion = requests = 0
    for outcome in outcomes:
        answer = outcome.answer
        if outcome.left or answer.status != 200:
            continue
        requests += 1
        if answer.complete:
            prompt += answer.counts[0]
            completion += answer.counts[1]
        else:
            prompt += estimate_tokens(prompt_text(outcome.body)) if outcome.dialect.openai else 0
            completion += len(answer.pieces)
    return prompt, completion, requests


async def test_hundreds_of_streams_with_disconnects_and_a_backend_restart(start_router, tmp_path):
    """1. Three backends (Ollama with its /v1 layer) have two models loaded, 8 slots per model,
       and generate a token every 10 ms.
    2. 300 clients start at once, each a random dialect (native stream, native whole, /v1
       stream) and length (5-30 tokens); 240 of them will wait for the whole answer, 60 (a
       second model, so their counts are kept apart) hang up after a few tokens.
    3. When a quarter of the clients are done, backend b dies (port closed, its connections
       dropped); when half are done it comes back on the same port.
    Result: each client that stayed got its whole answer (exactly the tokens asked for), or a
    clear error (streams cut by b's death end with an error line / SSE error event); none hung.
    b was marked down (its broken streams open its circuit, cool-down 0.3 s) and took traffic
    again after it came back. The router holds nothing and
    every backend has stopped working on hung-up requests. Token counts: exactly what the
    staying clients got; for hung-up clients at least what they read, at most what was
    generated."""

    fleet = [FakeOllamaV1(name, models=[MODEL_KEY, LEAVER_KEY], loaded=[MODEL_KEY, LEAVER_KEY],
                          token_delay=0.01, strict_host=True) for name in ("a", "b", "c")]
    for fake in fleet:
        await fake.start()
    b = fleet[1]
    try:
        router = await start_router(fleet, slots=SLOTS, queue_timeout=60, max_queue=1000, poll_interval=0.1,
                                    breaker_cooldown=0.3, db_path=str(tmp_path / "load.db"), flush_interval=0.05)
        rng = random.Random(7)
        outcomes = []
        for i in range(REQUESTS):
            leaving = i % int(1 / LEAVING) == 0
            dialect = rng.choice((*STREAMING, NATIVE_WHOLE) if leaving else DIALECTS)
            planned = rng.randint(5, 30)
            body = dialect.body(f"request {i}", tokens=planned) | {"model": LEAVER_MODEL if leaving else MODEL}
            outcomes.append(Outcome(dialect, body, planned, left=leaving))
        finished = 0

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

            async def client(outcome: Outcome) -> None:
                nonlocal finished
                try:
                    if outcome.left:
                        await leave_early(http, router.url, outcome, after=rng.randint(1, 5))
                    else:
                        outcome.answer = await ask(http, router.url, outcome.dialect, outcome.body)
                finally:
                    finished += 1

            async def kill_and_restart() -> int:
                await eventually(lambda: finished >= REQUESTS // 4, timeout=HANG, what="a quarter done")
                await b.go_down()
                await eventually(lambda: not router.backend("b").status.healthy, what="b marked down")
                await eventually(lambda: finished >= REQUESTS // 2, timeout=HANG, what="half done")
                await b.come_back()
                return b.served

            chaos = asyncio.create_task(kill_and_restart())
            results = await asyncio.gather(*(client(o) for o in outcomes), return_exceptions=True)
            served_before_return = await chaos

            failures = [r for r in results if isinstance(r, BaseException)]
            assert not failures, f"{len(failures)} client(s) failed or hung, e.g. {failures[0]!r}"
            stayed = [o for o in outcomes if not o.left]
            unclear = [o.answer.describe() for o in stayed if not o.answer.clear]
            assert not unclear, f"{len(unclear)} answer(s) neither complete nor a clear error: {unclear[:3]}"
            for o in stayed:
                if o.answer.complete:
                    assert o.answer.counts[1] == o.planned, o.answer.describe()
                    assert len(o.answer.pieces) == (o.planned if o.dialect.stream else 1), o.answer.describe()
            kinds = Counter("complete" if o.answer.complete else f"error {o.answer.status}" for o in stayed)
            assert kinds["complete"] >= len(stayed) // 2, kinds  # most are served despite the chaos

            assert b.served > served_before_return, "b took no traffic after it came back"
            assert all(f.max_active_by_model.get(MODEL_KEY, 0) <= SLOTS for f in fleet)
            await eventually(lambda: all(f.active == 0 for f in fleet), what="no backend still generating")
            await router.settled(timeout=15)

            async with http.get(router.url + "/api/token_counts") as resp:
                rows = (await resp.json())["breakdown"]
        by_model: dict[str, list[int]] = {}
        for row in rows:
            total = by_model.setdefault(row["model"], [0, 0, 0])
            for i, key in enumerate(("input_tokens", "output_tokens", "requests")):
                total[i] += row[key]
        assert tuple(by_model[MODEL_KEY]) == expected_counts(outcomes), kinds
        leavers = [o for o in outcomes if o.left]
        read = sum(o.pieces_read for o in leavers)
        assert read <= by_model.get(LEAVER_KEY, [0, 0, 0])[1] <= sum(o.planned for o in leavers)
    finally:
        for fake in fleet:
            await fake.stop()
