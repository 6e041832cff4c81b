"""In-process store: an LRU bounded by entries and by bytes, with expiry.

Entries are evicted least recently used first whenever either bound is passed, so the store
never holds more than `max_entries` entries or `max_bytes` bytes (an entry larger than the whole
budget is not kept at all). Expired entries are dropped when read and swept from the old end.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator

from .base import Record, Totals


class MemoryStore:
    name = "memory"

    def __init__(self, max_entries: int, max_bytes: int):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.records: OrderedDict[str, Record] = OrderedDict()
        self.bytes = 0
        self.evictions = 0

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        self.records.clear()
        self.bytes = 0

    async def get(self, key: str) -> bytes | None:
        record = self.records.get(key)
        if record is None:
            return None
        if record.expired():
            self._drop(key)
            return None
        self.records.move_to_end(key)
        return record.value

    async def put(self, record: Record) -> list[str]:
        self._drop(record.key)
        if record.size > self.max_bytes:
            return [record.key]
        self.records[record.key] = record
        self.bytes += record.size
        return self._make_room()

    def _make_room(self) -> list[str]:
        evicted = []
        now = time.time()
        while self.records:
            key, oldest = next(iter(self.records.items()))
            over = len(self.records) > self.max_entries or self.bytes > self.max_bytes
            if not over and not oldest.expired(now):
                break
            self._drop(key)
            evicted.append(key)
            self.evictions += over
        return evicted

    def _drop(self, key: str) -> None:
        record = self.records.pop(key, None)
        if record is not None:
            self.bytes -= record.size

    async def delete(self, keys: list[str]) -> None:
        for key in keys:
            self._drop(key)

    async def invalidate(self, model: str | None = None, scope: str | None = None) -> int:
        doomed = [key for key, record in self.records.items()
                  if (model is None or record.model == model) and (scope is None or record.scope == scope)]
        await self.delete(doomed)
        return len(doomed)

    async def totals(self) -> Totals:
        return Totals(len(self.records), self.bytes, self.evictions)

    async def vectors(self) -> AsyncIterator[Record]:
        for record in list(self.records.values()):
            if record.vector is not None and not record.expired():
                yield record
