"""`GET /api/usage-stream`: the live state as Server-Sent Events.

A client gets the full snapshot the moment it connects, then a new snapshot whenever something
changed: a slot taken or freed, a request queued, tokens counted, a backend's status. Changes only
set a flag; one broadcaster task turns any number of them into at most one snapshot per
`usage_stream_interval`, serialised once for every client. Heartbeat comments every
`usage_stream_heartbeat` seconds keep proxies from closing a quiet stream.

Each client has a buffer of one snapshot: a newer one replaces an unsent one. A snapshot is the
whole state, so a slow client skips intermediate ones and never holds up the router or the other
clients; one that stops reading entirely is cut off by aiohttp-sse's send timeout. When the daemon
starts draining, every stream ends cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import orjson
from aiohttp import web
from aiohttp_sse import sse_response

from .keys import ROUTER
from .views import snapshot

if TYPE_CHECKING:
    from .router import Router

log = logging.getLogger("nomyo.sse")


class Subscriber:
    """One connected client: the latest unsent snapshot, and whether the stream is over."""

    __slots__ = ("_latest", "_ready", "closed", "state")

    def __init__(self) -> None:
        self._latest: str | None = None
        self._ready = asyncio.Event()
        self.closed = False
        self.state: bytes | None = None  # what this client was last given, without the clock

    def offer(self, state: bytes, payload: str) -> None:
        if state == self.state:
            return  # nothing new for this client (only the clock moved)
        self.state = state
        self._latest = payload  # replaces an unsent one: the buffer never grows
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def next(self) -> str | None:
        """The next snapshot to send, or None when the stream should end."""

        await self._ready.wait()
        self._ready.clear()
        if self.closed:
            return None
        payload, self._latest = self._latest, None
        return payload


class UsageStream:
    """The subscribers, the dirty flag and the broadcaster task."""

    def __init__(self, router: Router):
        self.router = router
        self.subscribers: set[Subscriber] = set()
        self.closed = False
        self.sent = 0  # snapshots built for the subscribers (each gets it only if new to it)
        self._dirty = asyncio.Event()
        self._task: asyncio.Task | None = None

    def mark_dirty(self) -> None:
        """Something changed. Called on every slot change and every counted request: no work here."""

        self._dirty.set()

    def payload(self) -> tuple[bytes, str]:
        """The snapshot, and its state without the clock: a poll that saw the same fleet wakes
        the stream too, and a client that already has that state then gets no copy of it."""

        view = snapshot(self.router)
        now = view.pop("time")
        state = orjson.dumps(view)
        view["time"] = now
        return state, orjson.dumps(view).decode()

    def start(self) -> None:
        self.closed = False
        self._task = asyncio.create_task(self._run(), name="usage stream")

    async def _run(self) -> None:
        """At most one broadcast per interval, however many changes came in between."""

        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if self.subscribers:
                try:
                    state, data = self.payload()
                except Exception:  # a bad snapshot must not end the stream for good
                    log.exception("cannot build the usage snapshot")
                else:
                    self.sent += 1
                    for subscriber in self.subscribers:
                        subscriber.offer(state, data)
            await asyncio.sleep(self.router.config.usage_stream_interval)

    def subscribe(self) -> Subscriber:
        subscriber = Subscriber()
        if self.closed:
            subscriber.close()
        self.subscribers.add(subscriber)
        return subscriber

    async def close(self) -> None:
        """End every stream (the daemon is draining; they would keep it waiting)."""

        self.closed = True
        for subscriber in self.subscribers:
            subscriber.close()

    async def stop(self) -> None:
        await self.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


async def usage_stream(request: web.Request) -> web.StreamResponse:
    """The snapshot at once, then coalesced updates until the client or the router goes."""

    stream = request.app[ROUTER].stream
    subscriber = stream.subscribe()
    try:
        async with sse_response(request, ping_interval=stream.router.config.usage_stream_heartbeat) as response:
            subscriber.state, data = stream.payload()
            await response.send(data)
            while (data := await subscriber.next()) is not None:
                await response.send(data)
    finally:
        stream.subscribers.discard(subscriber)
    return response
