"""The access line, off the hot path: no LogRecord per request, no write(2) on the event loop.

`logging` costs a request a LogRecord, a formatter pass and a blocking `write` under a lock; at
thousands of requests a second that was a tenth of the router's CPU, and a slow journal (or a
full stderr pipe) would stall the event loop itself. Here the loop only appends the line to a
list; every `flush_delay` seconds (10 ms) that batch is handed to a writer thread, waking it
once for dozens of lines rather than once per loop iteration; the thread formats it exactly
as `logs.setup_logging` would (journald `<6>` priority under systemd, else a timestamp and the
level) with control characters escaped, and writes it to stderr in one call.

Bounded: at most `max_pending` lines wait for the writer; beyond that lines are dropped and
counted, and the next batch that gets through starts with a `<4>` line saying how many. `stop()`
hands over what is left and waits for the writer to finish (up to `stop_timeout`).

Lines written through `logging` (warnings, errors) go straight to stderr, so an access line may
appear a moment after a warning logged in the same loop iteration.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import sys
import threading
import time
from collections import deque

from .logs import under_journal

NAME = "nomyo.access"
INFO, WARNING = 6, 4  # journald priorities


def escape(line: str) -> str:
    """The line with control (and other unprintable) characters escaped, so a client cannot
    start a forged journal line with a newline in a model name."""

    if line.isprintable():
        return line
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in line)


class LineFormat:
    """`<6>nomyo.access: …` under the journal (which stamps its own time); else logging's
    default `2025-01-01 12:00:00,123 INFO nomyo.access: …`."""

    def __init__(self, journal: bool, name: str = NAME):
        self.journal = journal
        self.name = name

    def batch(self, stamp: float, lines: list[str], dropped: int) -> bytes:
        if self.journal:
            prefix, notice_prefix = f"<{INFO}>{self.name}: ", f"<{WARNING}>{self.name}: "
        else:
            clock = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) + f",{int(stamp % 1 * 1000):03d}"
            prefix, notice_prefix = f"{clock} INFO {self.name}: ", f"{clock} WARNING {self.name}: "
        text = "".join([f"{prefix}{escape(line)}\n" for line in lines])
        if dropped:
            text = f"{notice_prefix}{dropped} access line(s) dropped: stderr did not keep up\n{text}"
        return text.encode("utf-8", "backslashreplace")


class AccessLog:
    """`write(line)` from the event loop; `await stop()` at the end. See the module doc."""

    def __init__(self, fd: int | None = None, *, journal: bool | None = None, max_pending: int = 10_000,
                 flush_delay: float = 0.01, stop_timeout: float = 5.0, logger: str = NAME):
        self._fd = sys.stderr.fileno() if fd is None else fd
        self._format = LineFormat(under_journal() if journal is None else journal, logger)
        self._logger = logging.getLogger(logger)
        self.max_pending = max_pending
        self.flush_delay = flush_delay
        self.stop_timeout = stop_timeout
        self._batch: list[str] = []
        self._queue: deque = deque()  # (stamp, lines, dropped) batches, then None to stop
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._batch_stamp = 0.0
        self._stopped = False
        self.handed = 0  # lines accepted (loop thread only)
        self.written = 0  # lines written (writer thread only): handed - written are pending
        self.dropped = 0  # dropped since the last notice (loop thread only)
        self.dropped_total = 0

    @property
    def enabled(self) -> bool:
        """Whether lines are written at the configured level (check before building one)."""

        return self._logger.isEnabledFor(logging.INFO)

    def write(self, line: str) -> None:
        """Queue one access line; never blocks. Dropped (and counted) when too many wait."""

        if not self._logger.isEnabledFor(logging.INFO):
            return
        if self._stopped:
            self._write_now(self._format.batch(time.time(), [line], 0))
            return
        if self.handed - self.written >= self.max_pending:
            self.dropped += 1
            self.dropped_total += 1
            return
        self._batch.append(line)
        self.handed += 1
        if not self._scheduled:
            self._scheduled = True
            self._batch_stamp = time.time()  # a batch's lines share the time its first came
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._loop.call_later(self.flush_delay, self._flush)

    async def stop(self) -> None:
        """Write out everything accepted so far and end the writer thread."""

        if self._stopped:
            return
        self._flush()
        self._stopped = True
        thread = self._thread
        if thread is not None:
            self._queue.append(None)
            self._wake.set()
            await asyncio.get_running_loop().run_in_executor(None, thread.join, self.stop_timeout)

    def _flush(self) -> None:
        """Hand the batch (and the count dropped before it) to the writer thread."""

        self._scheduled = False
        if not self._batch and not self.dropped:
            return
        self._queue.append((self._batch_stamp if self._batch else time.time(), self._batch, self.dropped))
        self._batch, self.dropped = [], 0
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="nomyo-access-log", daemon=True)
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        queue = self._queue
        while True:
            self._wake.wait()
            self._wake.clear()
            while queue:
                item = queue.popleft()
                if item is None:
                    return
                stamp, lines, dropped = item
                self._write_now(self._format.batch(stamp, lines, dropped))
                self.written += len(lines)

    def _write_now(self, data: bytes) -> None:
        """Write all of `data` (blocking: this runs in the writer thread, or after stop). A
        non-blocking stderr is waited on; a closed one loses the batch, quietly."""

        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view):]
            except BlockingIOError:
                poller = select.poll()
                poller.register(self._fd, select.POLLOUT)
                poller.poll(1000)
            except OSError:
                return
