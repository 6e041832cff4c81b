"""Token accounting: exact numbers after a scripted mix, written behind to SQLite, robust to a
database that cannot be written, and complete after SIGTERM of the real daemon."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import eventually

A_MODEL, B_MODEL = "llama3:latest", "qwen2:latest"
EXPECTED = {("a", A_MODEL): (5, 10, 2), ("b", B_MODEL): (10, 3, 3)}


def chat(model: str, text: str, predict: int, stream: bool) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream,
            "options": {"num_predict": predict}}


async def post(http, url: str, body: dict) -> tuple[int, bytes]:
    async with http.post(url, data=orjson.dumps(body)) as resp:
        return resp.status, await resp.read()


async def cut_stream(http, url: str, fake, body: dict) -> None:
    """The client reads the first generated line, then hangs up while the backend still works."""

    fake.gate = asyncio.Event()
    resp = await http.post(url, data=orjson.dumps(body))
    first = await resp.content.readline()
    assert orjson.loads(first)["done"] is False
    resp.close()
    await fake.wait_until(lambda: fake.disconnects == 1)
    fake.gate = None


async def scripted_mix(http, url: str, a, b) -> None:
    """Step by step, with the tokens each step must count (input, output):
    1. chat on a, whole answer, 3 prompt words, 4 generated         -> a/llama3 (3, 4)
    2. chat on a, streamed, 2 prompt words, 6 generated             -> a/llama3 (2, 6)
    3. generate on b, streamed, 5 prompt words, 2 generated         -> b/qwen2  (5, 2)
    4. embed on b, two inputs of 2 and 3 words                      -> b/qwen2  (5, 0)
    5. chat on b, streamed, cut by the client after the first token -> b/qwen2  (0, 1)
    6. an unknown model (404) and a backend error (500) count nothing."""

    assert (await post(http, url + "/api/chat", chat("llama3", "one two three", 4, False)))[0] == 200
    status, body = await post(http, url + "/api/chat", chat("llama3", "x y", 6, True))
    assert status == 200 and orjson.loads(body.splitlines()[-1])["eval_count"] == 6
    status, _ = await post(http, url + "/api/generate",
                           {"model": "qwen2", "prompt": "p q r s t", "options": {"num_predict": 2}})
    assert status == 200
    assert (await post(http, url + "/api/embed", {"model": "qwen2", "input": ["a b", "c d e"]}))[0] == 200
    await cut_stream(http, url + "/api/chat", b, chat("qwen2", "cut me", 10, True))
    assert (await post(http, url + "/api/chat", chat("nothing", "hi", 1, False)))[0] == 404
    a.fail_next(500, "boom")
    assert (await post(http, url + "/api/chat", chat("llama3", "hi", 1, False)))[0] == 500


async def two_backends(fakes, start_router, tmp_path, **settings):
    a = await fakes("a", models=[A_MODEL])
    b = await fakes("b", models=[B_MODEL])
    settings.setdefault("flush_interval", 0.1)
    router = await start_router([a, b], db_path=str(tmp_path / "u.db"), **settings)
    return a, b, router


def db_rows(path, query: str, params=()) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(query, params).fetchall()


def samples(text: str) -> dict:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def metric(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_scripted_mix_counts_exactly(fakes, start_router, http, tmp_path):
    a, b, router = await two_backends(fakes, start_router, tmp_path)
    await scripted_mix(http, router.url, a, b)
    await router.settled()

    async with http.get(router.url + "/api/token_counts") as resp:
        counts = await resp.json()
    assert counts["total_tokens"] == 28
    assert {(r["endpoint"], r["model"]): (r["input_tokens"], r["output_tokens"], r["requests"])
            for r in counts["breakdown"]} == EXPECTED
    assert all(r["total_tokens"] == r["input_tokens"] + r["output_tokens"] for r in counts["breakdown"])

    async with http.get(router.url + "/api/usage") as resp:
        usage = await resp.json()
    assert usage == {"usage_counts": {}, "slot_limits": {}, "queued": {}, "queued_total": 0,
                     "token_usage_counts": {"a": {A_MODEL: 15}, "b": {B_MODEL: 13}}}

    async with http.post(router.url + "/api/stats", json={"model": "qwen2"}) as resp:
        stats = await resp.json()
    assert (stats["model"], stats["input_tokens"], stats["output_tokens"]) == ("qwen2", 10, 3)
    assert stats["total_tokens"] == 13
    assert stats["endpoint_distribution"] == {"b": 13}
    assert sum(row["total_tokens"] for row in stats["time_series"]) == 13
    assert all(row["timestamp"] % 60 == 0 and row["endpoint"] == "b" for row in stats["time_series"])

    async with http.get(router.url + "/api/time_series?minutes=5") as resp:
        series = await resp.json()
    assert sum(row["input_tokens"] for row in series["time_series"]) == 15
    assert sum(row["output_tokens"] for row in series["time_series"]) == 13
    assert sum(row["requests"] for row in series["time_series"]) == 5

    async with http.get(router.url + "/metrics") as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        found = samples(await resp.text())
    assert metric(found, "nomyo_tokens_total", backend="a", model=A_MODEL, direction="input") == 5
    assert metric(found, "nomyo_tokens_total", backend="a", model=A_MODEL, direction="output") == 10
    assert metric(found, "nomyo_tokens_total", backend="b", model=B_MODEL, direction="input") == 10
    assert metric(found, "nomyo_tokens_total", backend="b", model=B_MODEL, direction="output") == 3
    requests = {"route": "/api/chat", "backend": "a", "model": A_MODEL}
    assert metric(found, "nomyo_requests_total", **requests, status="200") == 2
    assert metric(found, "nomyo_requests_total", **requests, status="500") == 1
    assert metric(found, "nomyo_requests_total", route="/api/chat", backend="b", model=B_MODEL, status="200") == 1
    assert metric(found, "nomyo_requests_total", route="/api/embed", backend="b", model=B_MODEL, status="200") == 1
    assert metric(found, "nomyo_requests_total", route="/api/chat", backend="", model="", status="404") == 1
    assert metric(found, "nomyo_request_duration_seconds_count", **requests) == 3
    assert metric(found, "nomyo_time_to_first_token_seconds_count", backend="a", model=A_MODEL) == 1
    assert metric(found, "nomyo_time_to_first_token_seconds_count", backend="b", model=B_MODEL) == 2

    # ... and the same numbers on disk, in per-minute buckets, once the writer has flushed.
    await eventually(lambda: router.router.usage.pending == 0, what="everything flushed")
    path = tmp_path / "u.db"
    assert {(e, m): (i, o, r) for e, m, i, o, r in db_rows(
        path, "SELECT endpoint, model, input_tokens, output_tokens, requests FROM token_counts")} == EXPECTED
    buckets = db_rows(path, "SELECT endpoint, model, SUM(input_tokens), SUM(output_tokens), SUM(requests), "
                            "COUNT(*), SUM(timestamp % 60) FROM token_time_series GROUP BY endpoint, model")
    assert {(e, m): (i, o, r) for e, m, i, o, r, _, _ in buckets} == EXPECTED
    assert all(rows <= 2 and off_minute == 0 for *_, rows, off_minute in buckets)  # buckets, not requests
    assert db_rows(path, "PRAGMA user_version") == [(1,)]
    assert db_rows(path, "PRAGMA journal_mode") == [("wal",)]


async def test_stats_404_for_a_model_without_data(fakes, start_router, http, tmp_path):
    _a, _b, router = await two_backends(fakes, start_router, tmp_path)
    async with http.post(router.url + "/api/stats", json={"model": "llama3"}) as resp:
        assert resp.status == 404
        assert (await resp.json()) == {"error": "no token data found for model 'llama3'"}
    async with http.post(router.url + "/api/stats", json={}) as resp:
        assert resp.status == 400 and (await resp.json()) == {"error": "model is required"}


async def test_aggregate_time_series_days_is_idempotent(fakes, start_router, http, tmp_path):
    """Minute rows of three days ago (two on one day, one the day before) and of today are on disk.
    Rolling up days older than 1 twice gives the same daily rows; trimming then deletes only the
    old minute rows, twice in a row without changing the daily rows; today's rows stay."""

    _a, _b, router = await two_backends(fakes, start_router, tmp_path)
    await post(http, router.url + "/api/chat", chat("llama3", "one two", 3, False))
    await eventually(lambda: router.router.usage.pending == 0, what="flushed")
    path = tmp_path / "u.db"
    day = (int(time.time()) // 86400 - 3) * 86400
    with sqlite3.connect(path) as db:
        db.executemany("INSERT INTO token_time_series VALUES (?, ?, ?, ?, ?, ?, ?)", [
            ("a", A_MODEL, day + 600, 10, 20, 30, 1), ("a", A_MODEL, day + 7200, 1, 2, 3, 1),
            ("a", A_MODEL, day - 86400 + 60, 100, 0, 100, 2)])

    async def aggregate(body):
        async with http.post(router.url + "/api/aggregate_time_series_days", json=body) as resp:
            assert resp.status == 200
            return await resp.json()

    daily = "SELECT endpoint, model, date, input_tokens, output_tokens, total_tokens, requests " \
            "FROM token_time_series_daily ORDER BY date"
    expected = [("a", A_MODEL, time.strftime("%Y-%m-%d", time.gmtime(day - 86400)), 100, 0, 100, 2),
                ("a", A_MODEL, time.strftime("%Y-%m-%d", time.gmtime(day)), 11, 22, 33, 2)]
    for _ in range(2):
        assert await aggregate({"days": 1}) == {"status": "ok", "days": 1, "trim_old": False, "aggregated_groups": 2}
        assert db_rows(path, daily) == expected
    assert (await aggregate({"days": 1, "trim_old": True}))["aggregated_groups"] == 2
    assert db_rows(path, daily) == expected
    assert (await aggregate({"days": 1, "trim_old": True}))["aggregated_groups"] == 0
    assert db_rows(path, daily) == expected
    assert db_rows(path, "SELECT SUM(input_tokens), SUM(output_tokens) FROM token_time_series") == [(2, 3)]
    async with http.post(router.url + "/api/aggregate_time_series_days", json={"days": 0}) as resp:
        assert resp.status == 400


async def test_locked_database_keeps_counting_and_catches_up(fakes, start_router, http, tmp_path):
    """1. One request is counted and flushed.  2. Another process takes the database's write lock
    (the router cannot write).  3. Two more requests: the API counts them at once, the writer
    fails and retries, the file still has one.  4. The lock goes: the file gets all three."""

    _a, _b, router = await two_backends(fakes, start_router, tmp_path)
    usage = router.router.usage
    path = tmp_path / "u.db"
    await post(http, router.url + "/api/chat", chat("llama3", "one", 1, False))
    await eventually(lambda: usage.pending == 0, what="first flush")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        errors = usage.write_errors
        for _ in range(2):
            assert (await post(http, router.url + "/api/chat", chat("llama3", "one", 1, False)))[0] == 200
        await eventually(lambda: usage.write_errors >= errors + 2, what="the writer retried", timeout=10)
        async with http.get(router.url + "/api/token_counts") as resp:
            assert (await resp.json())["total_tokens"] == 6
        assert holder.execute("SELECT requests FROM token_counts").fetchall() == [(1,)]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    await eventually(lambda: usage.pending == 0, what="the backlog written", timeout=10)
    assert db_rows(path, "SELECT input_tokens, output_tokens, requests FROM token_counts") == [(3, 3, 3)]
    assert db_rows(path, "SELECT SUM(requests) FROM token_time_series") == [(3,)]


async def test_a_database_of_the_original_router_is_adopted(fakes, start_router, http, tmp_path):
    """The original's tables (one time-series row per request) become the versioned layout: its
    totals count on, its requests land in minute buckets."""

    path = tmp_path / "u.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE token_counts (endpoint TEXT, model TEXT, input_tokens INTEGER DEFAULT 0, "
                   "output_tokens INTEGER DEFAULT 0, total_tokens INTEGER DEFAULT 0, PRIMARY KEY(endpoint, model))")
        db.execute("CREATE TABLE token_time_series (id INTEGER PRIMARY KEY AUTOINCREMENT, endpoint TEXT, model TEXT, "
                   "input_tokens INTEGER, output_tokens INTEGER, total_tokens INTEGER, timestamp INTEGER)")
        db.execute("INSERT INTO token_counts VALUES ('a', ?, 7, 8, 15)", (A_MODEL,))
        db.executemany("INSERT INTO token_time_series (endpoint, model, input_tokens, output_tokens, total_tokens, "
                       "timestamp) VALUES ('a', ?, ?, ?, ?, ?)", [(A_MODEL, 3, 4, 7, 1_700_000_040),
                                                                  (A_MODEL, 4, 4, 8, 1_700_000_040)])
    _a, _b, router = await two_backends(fakes, start_router, tmp_path)
    await post(http, router.url + "/api/chat", chat("llama3", "one", 1, False))
    async with http.get(router.url + "/api/token_counts") as resp:
        assert (await resp.json())["total_tokens"] == 17
    await eventually(lambda: router.router.usage.pending == 0, what="flushed")
    assert db_rows(path, "SELECT input_tokens, output_tokens FROM token_counts") == [(8, 9)]
    assert db_rows(path, "SELECT timestamp, input_tokens, requests FROM token_time_series "
                         "WHERE timestamp = 1700000040") == [(1_700_000_040, 7, 2)]
    assert db_rows(path, "PRAGMA user_version") == [(1,)]
