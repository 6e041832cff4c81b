"""A store that cannot fail the request: errors, slowness and corrupt data become misses.

A cache is an optimisation. When Redis is down, SQLite is locked or a lookup takes longer than
its budget, the request goes to a backend as if the cache were empty, and the operator reads
one line a minute about it (not one per request).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from .stores.base import Record, Store, Totals

T = TypeVar("T")
WRITE_TIMEOUT = 2.0  # a put or delete (off the client's path) may take this long
REOPEN_INTERVAL = 10.0

log = logging.getLogger("nomyo.cache")


class Throttle:
    """At most one log line per kind of trouble per `interval` seconds, with a count of the rest."""

    def __init__(self, interval: float = 60.0, logger: logging.Logger = log):
        self.interval = interval
        self.logger = logger
        self.last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def warn(self, kind: str, message: str) -> None:
        now = time.monotonic()
        if now - self.last.get(kind, -self.interval) < self.interval:
            self.suppressed[kind] = self.suppressed.get(kind, 0) + 1
            return
        more = self.suppressed.pop(kind, 0)
        self.last[kind] = now
        self.logger.warning("%s%s", message, f" ({more} more since the last report)" if more else "")


class StoreUnavailable(RuntimeError):
    """Raised only by administrative calls (invalidate): the operator must know it failed."""


class GuardedStore:
    """Wraps a Store: time budgets, exceptions caught, reopening after a failed open."""

    def __init__(self, store: Store, lookup_timeout: float, throttle: Throttle):
        self.store = store
        self.lookup_timeout = lookup_timeout
        self.throttle = throttle
        self.opened = False
        self.next_open = 0.0
        self.errors = 0
        self.timeouts = 0

    @property
    def name(self) -> str:
        return self.store.name

    async def open(self) -> bool:
        if self.opened:
            return True
        if time.monotonic() < self.next_open:
            return False
        self.next_open = time.monotonic() + REOPEN_INTERVAL
        try:
            await asyncio.wait_for(self.store.open(), WRITE_TIMEOUT * 5)
        except Exception as exc:  # any failure to open means: no cache for now
            self._failed("open", exc)
            return False
        self.opened = True
        return True

    async def close(self) -> None:
        if self.opened:
            self.opened = False
            try:
                await self.store.close()
            except Exception as exc:
                self._failed("close", exc)

    def _failed(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
        self.throttle.warn(f"store-{what}", f"cache store ({self.store.name}) {what} failed, serving "
                                            f"without the cache: {reason}")

    async def _guard(self, what: str, call: Awaitable[T], timeout: float, fallback: T) -> T:
        if not await self.open():
            _discard(call)
            return fallback
        try:
            return await asyncio.wait_for(call, timeout)
        except TimeoutError:
            self.timeouts += 1
            self.throttle.warn(f"slow-{what}", f"cache store ({self.store.name}) {what} took longer "
                                               f"than {timeout * 1000:g} ms: treated as a miss")
        except Exception as exc:  # a store failure is never the request's failure
            self._failed(what, exc)
        return fallback

    async def get(self, key: str) -> bytes | None:
        return await self._guard("lookup", self.store.get(key), self.lookup_timeout, None)

    async def put(self, record: Record) -> list[str] | None:
        """The evicted keys; None when the entry could not be stored."""
        return await self._guard("store", self.store.put(record), WRITE_TIMEOUT, None)

    async def delete(self, keys: list[str]) -> None:
        await self._guard("delete", self.store.delete(keys), WRITE_TIMEOUT, None)

    async def totals(self) -> Totals | None:
        return await self._guard("count", self.store.totals(), WRITE_TIMEOUT * 5, None)

    async def invalidate(self, model: str | None, scope: str | None) -> int:
        if not await self.open():
            raise StoreUnavailable(f"the cache store ({self.store.name}) is unavailable")
        try:
            return await asyncio.wait_for(self.store.invalidate(model, scope), WRITE_TIMEOUT * 15)
        except Exception as exc:
            self._failed("invalidate", exc)
            reason = type(exc).__name__
            raise StoreUnavailable(f"the cache store ({self.store.name}) is unavailable: {reason}") from None

    async def vectors(self) -> AsyncIterator[Record]:
        if not await self.open():
            return
        try:
            async for record in self.store.vectors():
                yield record
        except Exception as exc:
            self._failed("read vectors", exc)


def _discard(call: Awaitable) -> None:
    close = getattr(call, "close", None)
    if close is not None:
        close()  # a coroutine never awaited: close it so Python does not warn
