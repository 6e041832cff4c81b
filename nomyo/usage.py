"""Token accounting: counted in memory on the request path, written behind to SQLite in batches.

A finished request adds its tokens to in-memory totals and to a per-minute bucket; nothing on the
request path waits for the disk. One writer task flushes the pending buckets every
`flush_interval` seconds in one transaction, so a crash loses at most one interval, and the
router's stop flushes whatever is left (SIGTERM loses nothing).

The database is opened for each flush and closed after it. Holding nothing open between flushes
means a database that was moved, repaired, made writable again or restored from a backup is
picked up at the next flush without a restart, and a copy taken between flushes is consistent.
A failed write keeps its batch pending and is retried at the next interval: the writer never
dies, the API keeps answering from memory, and the counts arrive once the disk takes them.

Schema (versioned with `PRAGMA user_version`, WAL journal):
  token_counts(endpoint, model, input_tokens, output_tokens, total_tokens, requests)
  token_time_series(endpoint, model, timestamp, input_tokens, output_tokens, total_tokens, requests)
      one row per backend, model and UTC minute (`timestamp` = the minute's first second)
  token_time_series_daily(endpoint, model, date, input_tokens, output_tokens, total_tokens, requests,
                          folded_input, folded_output, folded_requests)
      whole UTC days rolled up by /api/aggregate_time_series_days; `folded_*` is the part whose
      minute rows were trimmed, so rolling up again never counts anything twice
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import aiosqlite

from .wording import counted

log = logging.getLogger("nomyo.usage")

SCHEMA_VERSION = 1
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS token_counts (
        endpoint TEXT NOT NULL, model TEXT NOT NULL,
        input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
        total_tokens INTEGER NOT NULL DEFAULT 0, requests INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (endpoint, model))""",
    """CREATE TABLE IF NOT EXISTS token_time_series (
        endpoint TEXT NOT NULL, model TEXT NOT NULL, timestamp INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
        total_tokens INTEGER NOT NULL DEFAULT 0, requests INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (endpoint, model, timestamp))""",
    "CREATE INDEX IF NOT EXISTS token_time_series_by_time ON token_time_series (timestamp)",
    """CREATE TABLE IF NOT EXISTS token_time_series_daily (
        endpoint TEXT NOT NULL, model TEXT NOT NULL, date TEXT NOT NULL,
        input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
        total_tokens INTEGER NOT NULL DEFAULT 0, requests INTEGER NOT NULL DEFAULT 0,
        folded_input INTEGER NOT NULL DEFAULT 0, folded_output INTEGER NOT NULL DEFAULT 0,
        folded_requests INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (endpoint, model, date))""",
)
ADD_TOTALS = """INSERT INTO token_counts (endpoint, model, input_tokens, output_tokens, total_tokens, requests)
    VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (endpoint, model) DO UPDATE SET
    input_tokens = input_tokens + excluded.input_tokens, output_tokens = output_tokens + excluded.output_tokens,
    total_tokens = total_tokens + excluded.total_tokens, requests = requests + excluded.requests"""
ADD_BUCKET = """INSERT INTO token_time_series
    (endpoint, model, timestamp, input_tokens, output_tokens, total_tokens, requests)
    VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (endpoint, model, timestamp) DO UPDATE SET
    input_tokens = input_tokens + excluded.input_tokens, output_tokens = output_tokens + excluded.output_tokens,
    total_tokens = total_tokens + excluded.total_tokens, requests = requests + excluded.requests"""
# Whole days before the cutoff: the day's figures are what was folded in earlier plus the minute
# rows still there, so a second roll-up (trimmed or not) rewrites the same numbers.
ROLL_UP = """INSERT INTO token_time_series_daily (endpoint, model, date, input_tokens, output_tokens,
        total_tokens, requests, folded_input, folded_output, folded_requests)
    SELECT endpoint, model, date(timestamp, 'unixepoch') AS day, SUM(input_tokens), SUM(output_tokens),
        SUM(total_tokens), SUM(requests), :trim * SUM(input_tokens), :trim * SUM(output_tokens),
        :trim * SUM(requests)
    FROM token_time_series WHERE timestamp < :cutoff GROUP BY endpoint, model, day
    ON CONFLICT (endpoint, model, date) DO UPDATE SET
        input_tokens = folded_input + excluded.input_tokens, output_tokens = folded_output + excluded.output_tokens,
        total_tokens = folded_input + folded_output + excluded.total_tokens,
        requests = folded_requests + excluded.requests,
        folded_input = folded_input + excluded.folded_input, folded_output = folded_output + excluded.folded_output,
        folded_requests = folded_requests + excluded.folded_requests"""
BUSY_TIMEOUT_MS = 500  # a writer held by another process fails the flush, which is retried
ERROR_REMINDER_SECONDS = 60.0

Counts = list[int]  # [input tokens, output tokens, requests]
BucketKey = tuple[str, str, int]  # (backend, model, minute)


class SchemaTooNew(RuntimeError):
    """The file was written by a newer router: leave it alone rather than guess."""


def minute_of(epoch: float) -> int:
    return int(epoch) // 60 * 60


def _add(target: dict, key, counts) -> None:
    current = target.get(key)
    if current is None:
        target[key] = list(counts)
    else:
        for i, value in enumerate(counts):
            current[i] += value


class UsageStore:
    """Totals per (backend, model) and per-minute buckets; the one writer of the usage database."""

    def __init__(self, path: str, flush_interval: Callable[[], float] | float = 1.0,
                 clock: Callable[[], float] = time.time):
        self.path = path
        # a number, or where to read the current one (the runtime's, which a reload may change)
        self._flush_interval = flush_interval if callable(flush_interval) else (lambda: flush_interval)
        self.clock = clock
        self._totals: dict[tuple[str, str], Counts] = {}
        self._pending: dict[BucketKey, Counts] = {}
        self._writing = 0  # buckets of the batch being written right now
        self._loaded = False  # the database's totals have been added to _totals
        self._lock = asyncio.Lock()  # one flush or query at a time: a batch is never half-visible
        self._listeners: list[Callable[[], None]] = []
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()
        self.write_errors = 0
        self.last_flush: float | None = None
        self._failing_since: float | None = None
        self._last_reminder = 0.0

    # -- the request path ----------------------------------------------------------------------

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every recorded request (the SSE stream marks itself dirty)."""

        self._listeners.append(listener)

    def record(self, backend: str, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Count one finished request. Memory only; the writer task takes it to disk."""

        counts = (prompt_tokens, completion_tokens, 1)
        _add(self._totals, (backend, model), counts)
        _add(self._pending, (backend, model, minute_of(self.clock())), counts)
        for listener in self._listeners:
            listener()

    # -- views from memory (always exact, whatever the disk does) -------------------------------

    def totals(self) -> dict[tuple[str, str], tuple[int, int, int]]:
        return {key: tuple(value) for key, value in self._totals.items()}

    @property
    def pending(self) -> int:
        """Minute buckets not written yet, including a batch being written (0 once it went through)."""

        return len(self._pending) + self._writing

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the database's totals (if it can be read now) and start the writer."""

        try:
            async with self._lock, self._open() as db:
                await self._load_totals(db)
        except Exception as exc:
            self._failed("cannot open the usage database (token counts are kept in memory, retrying)", exc)
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="usage writer")

    async def stop(self, attempts: int = 3) -> None:
        """Stop the writer after its current flush, then write everything still pending."""

        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        for attempt in range(attempts):
            if await self._flush_logged():
                return
            if attempt + 1 < attempts:
                await asyncio.sleep(0.2)
        if self._pending:
            log.error("usage database %s: %s of token counts could not be written and are lost",
                      self.path, counted(len(self._pending), "minute bucket"))

    async def _run(self) -> None:
        """Flush every interval until stopped; a failure is logged and retried, never fatal."""

        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._flush_interval())
            if not self._stop.is_set():
                await self._flush_logged()

    async def _flush_logged(self) -> bool:
        try:
            await self.flush()
        except Exception as exc:
            self._failed("cannot write token counts (kept in memory, retrying)", exc)
            return False
        if self._failing_since is not None:
            log.info("usage database %s is writable again; pending token counts written", self.path)
            self._failing_since = None
        return True

    def _failed(self, what: str, exc: Exception) -> None:
        """Log the first failure, then a reminder a minute, not one line per retry."""

        self.write_errors += 1
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            self._last_reminder = now
            log.error("usage database %s: %s: %s%s", self.path, what, _describe(exc), _remedy(exc))
        elif now - self._last_reminder >= ERROR_REMINDER_SECONDS:
            self._last_reminder = now
            log.warning("usage database %s still failing for %.0fs (%s pending): %s",
                        self.path, now - self._failing_since, counted(len(self._pending), "bucket"), _describe(exc))

    # -- writing ---------------------------------------------------------------------------------

    async def flush(self) -> int:
        """Write everything pending in one transaction; on failure it stays pending. Returns the
        number of minute buckets written."""

        async with self._lock:
            if not self._pending and self._loaded:
                return 0
            batch, self._pending = self._pending, {}
            self._writing = len(batch)
            try:
                async with self._open() as db:
                    await self._load_totals(db)
                    await self._write(db, batch)
            except BaseException:
                for key, counts in batch.items():
                    _add(self._pending, key, counts)
                raise
            finally:
                self._writing = 0
            self.last_flush = self.clock()
            return len(batch)

    @contextlib.asynccontextmanager
    async def _open(self):
        """A connection with the current schema (created or migrated on first use)."""

        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            await _migrate(db)
            yield db
        finally:
            await db.close()

    async def _load_totals(self, db: aiosqlite.Connection) -> None:
        """Add the database's totals to memory, once. Nothing was written before this succeeded,
        so the sum is exact."""

        if self._loaded:
            return
        async with db.execute("SELECT endpoint, model, input_tokens, output_tokens, requests FROM token_counts") as cur:
            rows = await cur.fetchall()
        for endpoint, model, tokens_in, tokens_out, requests in rows:
            _add(self._totals, (endpoint, model), (tokens_in, tokens_out, requests))
        self._loaded = True

    @staticmethod
    async def _write(db: aiosqlite.Connection, batch: dict[BucketKey, Counts]) -> None:
        totals: dict[tuple[str, str], Counts] = {}
        for (backend, model, _minute), counts in batch.items():
            _add(totals, (backend, model), counts)
        await db.execute("BEGIN IMMEDIATE")
        await db.executemany(ADD_TOTALS, [(b, m, i, o, i + o, r) for (b, m), (i, o, r) in totals.items()])
        await db.executemany(ADD_BUCKET, [(b, m, t, i, o, i + o, r) for (b, m, t), (i, o, r) in batch.items()])
        await db.execute("COMMIT")

    # -- queries ---------------------------------------------------------------------------------

    async def time_series(self, model: str | None = None, since: int = 0) -> list[dict]:
        """Minute buckets (from `since`, of one model or all), on disk and pending, oldest first.
        If the disk cannot be read, what is in memory is still answered."""

        merged: dict[BucketKey, Counts] = {}
        async with self._lock:
            try:
                rows = await self._read_buckets(model, since)
            except Exception as exc:
                log.warning("usage database %s: cannot read the time series: %s", self.path, _describe(exc))
                rows = []
            for backend, name, minute, tokens_in, tokens_out, requests in rows:
                _add(merged, (backend, name, minute), (tokens_in, tokens_out, requests))
            for (backend, name, minute), counts in self._pending.items():
                if (model is None or name == model) and minute >= since:
                    _add(merged, (backend, name, minute), counts)
        return [
            {"endpoint": backend, "model": name, "timestamp": minute, "input_tokens": i, "output_tokens": o,
             "total_tokens": i + o, "requests": r}
            for (backend, name, minute), (i, o, r) in sorted(merged.items(), key=lambda item: item[0][2])
        ]

    async def _read_buckets(self, model: str | None, since: int) -> list[tuple]:
        query = ("SELECT endpoint, model, timestamp, input_tokens, output_tokens, requests FROM token_time_series"
                 " WHERE timestamp >= ?")
        params: tuple = (since,)
        if model is not None:
            query += " AND model = ?"
            params += (model,)
        async with self._open() as db, db.execute(query, params) as cur:
            return list(await cur.fetchall())

    async def aggregate_days(self, days: int, trim_old: bool) -> int:
        """Roll minute rows of whole UTC days older than `days` days up into daily rows (and delete
        them if `trim_old`). Idempotent. Returns the number of (endpoint, model, day) groups."""

        cutoff = (int(self.clock()) - days * 86400) // 86400 * 86400
        async with self._lock, self._open() as db:
            await db.execute("BEGIN IMMEDIATE")
            async with db.execute(
                "SELECT COUNT(*) FROM (SELECT 1 FROM token_time_series WHERE timestamp < ? "
                "GROUP BY endpoint, model, date(timestamp, 'unixepoch'))", (cutoff,)) as cur:
                (groups,) = await cur.fetchone()
            await db.execute(ROLL_UP, {"trim": int(trim_old), "cutoff": cutoff})
            if trim_old:
                await db.execute("DELETE FROM token_time_series WHERE timestamp < ?", (cutoff,))
            await db.execute("COMMIT")  # closing without it rolls everything back
        return groups


async def _migrate(db: aiosqlite.Connection) -> None:
    """Bring the file to SCHEMA_VERSION (a new file gets everything, in WAL mode)."""

    async with db.execute("PRAGMA user_version") as cur:
        (version,) = await cur.fetchone()
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(f"schema version {version} is newer than this router's {SCHEMA_VERSION}")
    await db.execute("PRAGMA journal_mode = WAL")
    await db.execute("BEGIN IMMEDIATE")
    await _adopt_original(db)
    for statement in SCHEMA:
        await db.execute(statement)
    await _copy_original(db)
    await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    await db.execute("COMMIT")


async def _columns(db: aiosqlite.Connection, table: str) -> set[str]:
    async with db.execute(f"PRAGMA table_info({table})") as cur:
        return {row[1] for row in await cur.fetchall()}


async def _adopt_original(db: aiosqlite.Connection) -> None:
    """A database of the original router (a `db_path` carried over with its config.yaml): its
    per-request time series and daily table move aside, to be copied into the new layout."""

    columns = await _columns(db, "token_counts")
    if columns and "requests" not in columns:
        await db.execute("ALTER TABLE token_counts ADD COLUMN requests INTEGER NOT NULL DEFAULT 0")
    if "id" in await _columns(db, "token_time_series"):
        await db.execute("ALTER TABLE token_time_series RENAME TO original_time_series")
    if "id" in await _columns(db, "token_time_series_daily"):
        await db.execute("ALTER TABLE token_time_series_daily RENAME TO original_time_series_daily")


async def _copy_original(db: aiosqlite.Connection) -> None:
    if await _columns(db, "original_time_series"):
        await db.execute(
            """INSERT INTO token_time_series (endpoint, model, timestamp, input_tokens, output_tokens,
                   total_tokens, requests)
               SELECT endpoint, model, timestamp / 60 * 60 AS minute, SUM(input_tokens), SUM(output_tokens),
                   SUM(total_tokens), COUNT(*) FROM original_time_series WHERE timestamp IS NOT NULL
               GROUP BY endpoint, model, minute""")
        await db.execute("DROP TABLE original_time_series")
    if await _columns(db, "original_time_series_daily"):
        await db.execute(
            """INSERT INTO token_time_series_daily (endpoint, model, date, input_tokens, output_tokens,
                   total_tokens, folded_input, folded_output)
               SELECT endpoint, model, date, input_tokens, output_tokens, total_tokens, input_tokens,
                   output_tokens FROM original_time_series_daily""")
        await db.execute("DROP TABLE original_time_series_daily")


# What SQLite says when the file or its directory cannot be created or written.
_ACCESS_ERRORS = ("unable to open database file", "readonly database", "read-only")


def _remedy(exc: BaseException) -> str:
    """The setting to change when the path itself is the problem (the default /var/lib/nomyo is
    only writable under systemd's StateDirectory, not for a user running the router by hand)."""

    if isinstance(exc, PermissionError) or any(text in str(exc).lower() for text in _ACCESS_ERRORS):
        return ("; this user cannot write there: set `db_path` in the configuration (or NOMYO_ROUTER_DB_PATH"
                " when the file sets none) to a file it may write")
    return ""


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
