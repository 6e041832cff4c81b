"""Token accounting in the real daemon: SIGTERM writes everything, and a database made read-only
while it runs only delays the counts."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import tempfile
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import eventually
from tests.daemon_process import DaemonProcess
from tests.test_usage import A_MODEL, B_MODEL, EXPECTED, chat, post, scripted_mix

NOBODY = 65534


def endpoints(*fakes) -> str:
    return "endpoints:\n" + "".join(f"  - name: {f.name}\n    url: {f.url}\n" for f in fakes)


def read_db(path: Path, query: str) -> list[tuple]:
    """Read without locking or creating -wal/-shm files (safe while the daemon is stopped or the
    file is read-only; the daemon holds no connection open between flushes)."""

    with sqlite3.connect(f"file:{path}?immutable=1", uri=True) as db:
        return db.execute(query).fetchall()


def set_mode(path: Path, mode: int) -> None:
    os.chmod(path, mode)


def totals(path: Path) -> dict:
    rows = read_db(path, "SELECT endpoint, model, input_tokens, output_tokens, requests FROM token_counts")
    return {(e, m): (i, o, r) for e, m, i, o, r in rows}


@pytest.fixture
async def daemons():
    started: list[DaemonProcess] = []

    async def start(config_path: Path, text: str, prefix: tuple[str, ...] = ()) -> DaemonProcess:
        process = DaemonProcess(config_path, prefix=prefix)
        started.append(process)
        return await process.start(text)

    yield start
    for process in started:
        await process.stop()


async def test_sigterm_writes_every_count(fakes, daemons, tmp_path):
    """With a flush interval of an hour nothing reaches the disk while the daemon runs; SIGTERM
    writes all of it. A new daemon on the same file counts on from there."""

    a = await fakes("a", models=[A_MODEL])
    b = await fakes("b", models=[B_MODEL])
    db = tmp_path / "usage.db"
    config = endpoints(a, b) + f"db_path: {db}\nflush_interval: 3600\n"
    router = await daemons(tmp_path / "config.yaml", config)
    async with aiohttp.ClientSession() as http:
        await scripted_mix(http, router.url, a, b)
        assert totals(db) == {}
        router.signal(signal.SIGTERM)
        assert await router.wait() == 0
    assert totals(db) == EXPECTED
    series = read_db(db, "SELECT endpoint, model, SUM(input_tokens), SUM(output_tokens), SUM(requests) "
                         "FROM token_time_series GROUP BY endpoint, model")
    assert {(e, m): (i, o, r) for e, m, i, o, r in series} == EXPECTED
    assert "lost" not in router.log

    again = await daemons(tmp_path / "config2.yaml", config)
    async with aiohttp.ClientSession() as http:
        assert (await post(http, again.url + "/api/chat", chat("llama3", "one two", 3, False)))[0] == 200
        async with http.get(again.url + "/api/token_counts") as resp:
            assert (await resp.json())["total_tokens"] == 28 + 5
    again.signal(signal.SIGTERM)
    assert await again.wait() == 0
    assert totals(db)[("a", A_MODEL)] == (7, 13, 3)


async def test_database_made_read_only_while_running(fakes, daemons):
    """1. The daemon (as an unprivileged user, so file modes apply) counts a request and writes it.
    2. The file and its directory are made read-only: two more requests are counted by the API at
    once, the writer logs the failure and keeps retrying, the file still holds one request.
    3. Write access comes back: the writer catches up (and says so), SIGTERM, all three on disk."""

    a = await fakes("a", models=[A_MODEL])
    work = Path(tempfile.mkdtemp(prefix="nomyo-readonly-"))
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        os.chown(work, NOBODY, NOBODY)
        prefix = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--")
    db = work / "usage.db"
    try:
        router = await daemons(work / "config.yaml", endpoints(a) + f"db_path: {db}\nflush_interval: 0.1\n", prefix)
        async with aiohttp.ClientSession() as http:
            assert (await post(http, router.url + "/api/chat", chat("llama3", "one", 1, False)))[0] == 200
            await eventually(lambda: db.exists() and totals(db).get(("a", A_MODEL)) == (1, 1, 1),
                             what="the first request on disk", timeout=10)
            await router.wait_for_log("tokens=1/1")
            await eventually(lambda: not Path(f"{db}-wal").exists(), what="the flush closed the file", timeout=10)
            set_mode(db, 0o444)
            set_mode(work, 0o555)
            for _ in range(2):
                assert (await post(http, router.url + "/api/chat", chat("llama3", "one", 1, False)))[0] == 200
            await router.wait_for_log("cannot write token counts (kept in memory, retrying)")
            async with http.get(router.url + "/api/token_counts") as resp:
                assert (await resp.json())["breakdown"][0]["requests"] == 3
            assert totals(db) == {("a", A_MODEL): (1, 1, 1)}
            set_mode(work, 0o755)
            set_mode(db, 0o644)
            await router.wait_for_log("is writable again")
        router.signal(signal.SIGTERM)
        assert await router.wait() == 0
        assert totals(db) == {("a", A_MODEL): (3, 3, 3)}
        assert read_db(db, "SELECT SUM(requests) FROM token_time_series") == [(3,)]
    finally:
        set_mode(work, 0o755)
        shutil.rmtree(work, ignore_errors=True)


async def test_unwritable_db_path_names_the_setting_to_change(fakes, daemons):
    """1. The daemon runs as an unprivileged user with `db_path` in a directory it may not write
    (as the default /var/lib/nomyo/usage.db is off systemd).  2. It starts and serves anyway,
    counting in memory.  3. The log has one error about it, naming the file, `db_path` and
    NOMYO_ROUTER_DB_PATH: the settings to change; no traceback."""

    a = await fakes("a", models=[A_MODEL])
    work = Path(tempfile.mkdtemp(prefix="nomyo-unwritable-"))
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:  # root writes anywhere: run as nobody, who may read but not write here
        os.chown(work, NOBODY, NOBODY)
        prefix = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--")
    locked = work / "state"
    locked.mkdir(mode=0o555)
    db = locked / "nomyo" / "usage.db"
    try:
        router = await daemons(work / "config.yaml", endpoints(a) + f"db_path: {db}\nflush_interval: 0.1\n", prefix)
        async with aiohttp.ClientSession() as http:
            assert (await post(http, router.url + "/api/chat", chat("llama3", "one", 1, False)))[0] == 200
            await router.wait_for_log("tokens=1/1")
            async with http.get(router.url + "/api/token_counts") as resp:
                assert (await resp.json())["total_tokens"] == 2
        await asyncio.sleep(0.3)  # a few flush intervals: the error is not repeated for each
        router.signal(signal.SIGTERM)
        assert await router.wait() == 0
        errors = [line for line in router.lines if " ERROR " in line or line.startswith("<3>")]
        assert len(errors) == 2, router.log  # the first failure, and the counts lost at exit
        assert f"usage database {db}:" in errors[0]
        assert "`db_path`" in errors[0] and "NOMYO_ROUTER_DB_PATH" in errors[0]
        assert "Traceback" not in router.log
    finally:
        set_mode(locked, 0o755)
        shutil.rmtree(work, ignore_errors=True)
