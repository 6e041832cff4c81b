"""SQLite store (aiosqlite): entries survive a restart; bounded and expiring like the LRU.

One table; `used` (wall clock of the last hit) orders eviction, so the bound is least recently
used as in memory. WAL mode with synchronous=NORMAL: a hit's `used` update costs no fsync, and a
crash loses at most the last moments of entries, which is harmless for a cache.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite

from .base import Record, Totals

SCHEMA = """
CREATE TABLE IF NOT EXISTS cache_entries (
    key TEXT PRIMARY KEY, model TEXT NOT NULL, scope TEXT NOT NULL, context TEXT NOT NULL,
    vector BLOB, words TEXT NOT NULL, value BLOB NOT NULL, size INTEGER NOT NULL, expires REAL,
    used REAL NOT NULL);
CREATE INDEX IF NOT EXISTS cache_entries_used ON cache_entries (used);
CREATE INDEX IF NOT EXISTS cache_entries_model ON cache_entries (model);
CREATE INDEX IF NOT EXISTS cache_entries_scope ON cache_entries (scope);
"""
LIVE = "(expires IS NULL OR expires > ?)"


class SQLiteStore:
    name = "sqlite"

    def __init__(self, path: str, max_entries: int, max_bytes: int):
        self.path = path
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.db: aiosqlite.Connection | None = None
        self.evictions = 0

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(self.path)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.executescript(SCHEMA)
            await db.commit()
        except BaseException:
            await db.close()
            raise
        self.db = db

    async def close(self) -> None:
        if self.db is not None:
            db, self.db = self.db, None
            await db.close()

    def _conn(self) -> aiosqlite.Connection:
        if self.db is None:
            raise ConnectionError("the cache database is not open")
        return self.db

    async def get(self, key: str) -> bytes | None:
        db = self._conn()
        now = time.time()
        async with db.execute(f"SELECT value FROM cache_entries WHERE key = ? AND {LIVE}", (key, now)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        await db.execute("UPDATE cache_entries SET used = ? WHERE key = ?", (now, key))
        await db.commit()
        return row[0]

    async def put(self, record: Record) -> list[str]:
        db = self._conn()
        if record.size > self.max_bytes:
            return [record.key]
        now = time.time()
        await db.execute(
            "INSERT OR REPLACE INTO cache_entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (record.key, record.model, record.scope, record.context, record.vector, record.words,
             record.value, record.size, record.expires_at, now))
        evicted = await self._deleted("DELETE FROM cache_entries WHERE expires <= ? RETURNING key", (now,))
        over = await self._over_bound()
        self.evictions += len(over)
        if over:
            await db.executemany("DELETE FROM cache_entries WHERE key = ?", [(key,) for key in over])
        await db.commit()
        return evicted + over

    async def _deleted(self, sql: str, args: tuple) -> list[str]:
        async with self._conn().execute(sql, args) as cur:
            return [row[0] for row in await cur.fetchall()]

    async def _over_bound(self) -> list[str]:
        """The least recently used keys to drop so that both bounds hold again."""

        totals = await self.totals()
        entries, size = totals.entries, totals.bytes
        doomed: list[str] = []
        if entries <= self.max_entries and size <= self.max_bytes:
            return doomed
        async with self._conn().execute("SELECT key, size FROM cache_entries ORDER BY used") as cur:
            async for key, row_size in cur:
                if entries <= self.max_entries and size <= self.max_bytes:
                    break
                doomed.append(key)
                entries, size = entries - 1, size - row_size
        return doomed

    async def delete(self, keys: list[str]) -> None:
        db = self._conn()
        await db.executemany("DELETE FROM cache_entries WHERE key = ?", [(key,) for key in keys])
        await db.commit()

    async def invalidate(self, model: str | None = None, scope: str | None = None) -> int:
        db = self._conn()
        async with db.execute(
            "DELETE FROM cache_entries WHERE (? IS NULL OR model = ?) AND (? IS NULL OR scope = ?)",
            (model, model, scope, scope),
        ) as cur:
            count = cur.rowcount
        await db.commit()
        return max(count, 0)

    async def totals(self) -> Totals:
        async with self._conn().execute("SELECT count(*), total(size) FROM cache_entries") as cur:
            entries, size = await cur.fetchone()
        return Totals(entries, int(size), self.evictions)

    async def vectors(self) -> AsyncIterator[Record]:
        sql = ("SELECT key, model, scope, context, vector, expires, words FROM cache_entries"
               f" WHERE vector IS NOT NULL AND {LIVE}")
        async with self._conn().execute(sql, (time.time(),)) as cur:
            async for key, model, scope, context, vector, expires, words in cur:
                yield Record(key, b"", model, scope, context, vector, expires, words)
