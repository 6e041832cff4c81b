"""Identical requests in flight at once make one backend call.

The first request for a key leads: it goes to a backend and, once its answer is stored, hands
the entry to every request that arrived meanwhile with the same key. If the leader fails, is
cancelled, or its answer is not storable, the waiters wake with nothing and go on their own
(the first of them leads the next attempt). A waiter that is cancelled leaves; the leader's call
is not affected. Nothing here holds a slot: only the leader ever reaches the router.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from .entry import Entry
from .request import CacheRequest


@dataclass(slots=True)
class Flight:
    """What `Flights.join` gives: an entry a leader fetched (replay it), or the lead (call on)."""

    entry: Entry | None = None
    leader: bool = False


class Flights:
    def __init__(self) -> None:
        self.running: dict[str, asyncio.Future[Entry | None]] = {}
        self.coalesced = 0

    def __len__(self) -> int:
        return len(self.running)

    async def _wait(self, req: CacheRequest) -> Entry | None:
        while req.lookup and (future := self.running.get(req.key)) is not None:
            entry = await asyncio.shield(future)
            if entry is not None:
                self.coalesced += 1
                return entry
        return None

    @asynccontextmanager
    async def join(self, req: CacheRequest) -> AsyncIterator[Flight]:
        """`async with flights.join(req) as flight:` — replay `flight.entry` if set, else call
        the backend (and store the answer: `publish` hands it to the waiters)."""

        if req.bypass or not req.key:
            yield Flight()
            return
        entry = await self._wait(req)
        if entry is not None or not req.store or req.key in self.running:
            yield Flight(entry=entry)
            return
        future: asyncio.Future[Entry | None] = asyncio.get_running_loop().create_future()
        self.running[req.key] = future
        try:
            yield Flight(leader=True)
        finally:
            if self.running.get(req.key) is future:
                del self.running[req.key]
            if not future.done():
                future.set_result(None)  # failed, cancelled or not stored: the waiters go on alone

    def publish(self, key: str, entry: Entry) -> None:
        future = self.running.get(key)
        if future is not None and not future.done():
            future.set_result(entry)
