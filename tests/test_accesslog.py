"""The access log writer (nomyo/accesslog.py) writing into a real pipe, read by a thread the way
journald or a terminal reads stderr: quickly, slowly, or not at all for a while."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time

import pytest

from nomyo.accesslog import AccessLog
from tests.conftest import eventually


class PipeReader:
    """The read end of a pipe drained by a thread, `pause` seconds between 4 KiB reads; started
    when told (a pipe nobody reads fills up at 64 KiB)."""

    def __init__(self, pause: float = 0.0):
        self.read_fd, self.write_fd = os.pipe()
        self.pause = pause
        self.data = bytearray()
        self.thread = threading.Thread(target=self._drain, daemon=True)

    def start(self) -> PipeReader:
        self.thread.start()
        return self

    def _drain(self) -> None:
        while chunk := os.read(self.read_fd, 4096):
            self.data += chunk
            if self.pause:
                time.sleep(self.pause)

    def finish(self) -> list[str]:
        """Close the write end, wait for the reader to see the end, and return the lines."""

        os.close(self.write_fd)
        if not self.thread.is_alive() and not self.data:
            self.thread.start()
        self.thread.join(30)
        os.close(self.read_fd)
        return self.data.decode().splitlines()


@pytest.fixture
def access_level():
    logger = logging.getLogger("nomyo.access")
    previous = logger.level
    logger.setLevel(logging.INFO)
    yield logger
    logger.setLevel(previous)


async def test_lines_arrive_whole_in_order_and_escaped(access_level):
    """5,000 lines over 50 loop iterations into a pipe read slowly: every line arrives once, in
    order, as the journal wants it (`<6>nomyo.access: `), with control characters escaped so a
    newline in a model name cannot forge a second journal line."""

    reader = PipeReader(pause=0.001).start()
    log = AccessLog(reader.write_fd, journal=True)
    for tick in range(50):
        for i in range(100):
            log.write(f"POST /api/chat model=m{tick * 100 + i} status=200")
        await asyncio.sleep(0)
    log.write("POST /api/chat model=evil\n<3>forged\x1b[31m status=400")
    await log.stop()
    lines = reader.finish()
    assert lines[:-1] == [f"<6>nomyo.access: POST /api/chat model=m{n} status=200" for n in range(5000)]
    assert lines[-1] == r"<6>nomyo.access: POST /api/chat model=evil\n<3>forged\x1b[31m status=400"


async def test_terminal_format_matches_logging(access_level):
    """Outside the journal: logging's default format, timestamp to the millisecond and level."""

    reader = PipeReader().start()
    log = AccessLog(reader.write_fd, journal=False)
    log.write("GET /api/tags status=200")
    await log.stop()
    (line,) = reader.finish()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO nomyo\.access: GET /api/tags status=200", line)


async def test_a_stalled_reader_costs_lines_not_the_loop(access_level):
    """Nobody reads stderr for a while (a stuck journal): the pipe fills, `write` keeps returning
    at once (the loop is never blocked: this test would hang), at most `max_pending` lines wait,
    the rest are counted as dropped. When the reader comes back, the waiting lines arrive in
    order; each later batch that follows drops starts with a warning saying how many; nothing is
    lost unaccounted for."""

    reader = PipeReader(pause=0.0005)
    log = AccessLog(reader.write_fd, journal=True, max_pending=1000)
    for tick in range(100):
        for i in range(200):
            log.write(f"line {tick * 200 + i} " + "x" * 100)
        await asyncio.sleep(0)
        assert log.handed - log.written <= 1000
    assert log.dropped_total > 0
    reader.start()
    await eventually(lambda: log.handed == log.written, timeout=30, what="the waiting lines written")
    log.write("after")
    await log.stop()
    lines = reader.finish()
    assert lines[-1] == "<6>nomyo.access: after"
    notices = [re.fullmatch(r"<4>nomyo.access: (\d+) access line\(s\) dropped: stderr did not keep up", line)
               for line in lines[:-1] if line.startswith("<4>")]
    numbers = [int(line.split()[2]) for line in lines[:-1] if line.startswith("<6>")]
    assert numbers[:1000] == list(range(1000))  # nothing can be dropped before 1,000 wait
    assert numbers == sorted(set(numbers)) and len(notices) + len(numbers) == len(lines) - 1
    dropped = sum(int(notice.group(1)) for notice in notices)
    assert len(numbers) + dropped == 20_000 and dropped == log.dropped_total


async def test_the_configured_level_decides(access_level):
    """At `log_level: warning` no access line is written; back at info they are."""

    reader = PipeReader().start()
    log = AccessLog(reader.write_fd, journal=True)
    access_level.setLevel(logging.WARNING)
    assert not log.enabled
    log.write("hidden")
    access_level.setLevel(logging.INFO)
    log.write("shown")
    await log.stop()
    assert reader.finish() == ["<6>nomyo.access: shown"]


async def test_a_closed_stderr_is_survived(access_level):
    """The reader went away for good (EPIPE): writing goes on without an error; stop returns."""

    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    log = AccessLog(write_fd, journal=True)
    for i in range(100):
        log.write(f"line {i}")
    await asyncio.sleep(0)
    await log.stop()
    os.close(write_fd)
    assert log.written == 100
