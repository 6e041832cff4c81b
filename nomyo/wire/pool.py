"""Keep-alive connections per backend origin, and the one call that uses them: `request`.

A request takes the most recently used idle connection of its origin (or opens one), writes the
request in one go and waits for the answer's headers. An idle connection the backend closed is
noticed by its protocol (end of file while idle) and skipped; one idle for `recheck_after`
seconds or more is also polled once before use, for a close the loop has not read yet.

Retry, at most once, on a fresh connection, only where the backend cannot have acted on the
request (the rule Go's net/http follows): the kept-alive connection was found closed before
anything was written, or, for an idempotent method, it closed before a byte of the answer came.
A POST whose connection drops after it was written is the caller's failure to handle.
"""

from __future__ import annotations

import asyncio
import ssl

import aiohttp

from .connection import HIGH_WATER, Connection
from .errors import ConnectTimeout, cannot_connect
from .request import Headers, Origin, Target, encode_request, parse_target
from .response import Response

IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"))
TARGETS_KEPT = 1024


class Pool:
    """Upstream HTTP/1.1 connections, kept alive per origin. No cookies, no redirects, no
    decompression: bytes in, bytes out. One per event loop; `await close()` at the end."""

    def __init__(self, *, keepalive: float = 30.0, max_idle_per_origin: int = 512,
                 recheck_after: float | None = 1.0, high_water: int = HIGH_WATER,
                 ssl_context: ssl.SSLContext | None = None):
        self.keepalive = keepalive
        self.max_idle_per_origin = max_idle_per_origin
        self.recheck_after = recheck_after
        self.high_water = high_water
        self._ssl_context = ssl_context
        self._idle: dict[Origin, list[Connection]] = {}
        self._busy: set[Connection] = set()
        self._targets: dict[object, Target] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    async def request(self, method: str, url, headers: Headers = (), body: bytes = b"", *,
                      connect_timeout: float | None = None, first_byte_timeout: float | None = None) -> Response:
        """Send one request and return its answer once the headers came. `url` is a string, a
        yarl URL, an (Origin, path) pair or a Target.

        Raises the aiohttp exceptions listed in nomyo/wire/errors.py; a request cancelled while
        waiting closes its connection."""

        target = self._target(url)
        origin = target.origin
        payload = encode_request(method, target, headers, body)
        retry = True
        while True:
            conn, reused = await self._acquire(origin, connect_timeout)
            sent = False
            try:
                sent = conn.send(payload, body, method, target.path)
                if not sent:
                    raise aiohttp.ServerDisconnectedError("the backend closed the connection before the request")
                await conn.wait_answer(first_byte_timeout)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                self.discard(conn)
                if retry and reused and (not sent or (method in IDEMPOTENT and not conn.received)):
                    retry = False
                    continue
                raise exc from None
            except BaseException:
                self.discard(conn)
                raise
            return Response(self, origin, conn)

    def put(self, origin: Origin, conn: Connection) -> None:
        """A connection whose exchange ended whole: kept for the next request to `origin`."""

        self._busy.discard(conn)
        idle = self._idle.setdefault(origin, [])
        if self.closed or len(idle) >= self.max_idle_per_origin:
            conn.close()
            return
        conn.finish()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(self.keepalive, self._sweep)

    def discard(self, conn: Connection) -> None:
        self._busy.discard(conn)
        conn.close()

    async def close(self) -> None:
        """Close every connection, idle or busy (a read still waiting fails)."""

        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        for conn in list(self._busy):
            conn.close()
        self._busy.clear()
        await asyncio.sleep(0)  # let the transports run connection_lost

    def idle_count(self, origin: Origin | None = None) -> int:
        lists = [self._idle.get(origin, [])] if origin is not None else self._idle.values()
        return sum(len(idle) for idle in lists)

    # --- inside ------------------------------------------------------------------------------

    def _target(self, url) -> Target:
        """Parsed once per distinct URL (a router asks the same few paths of the same backends)."""

        found = self._targets.get(url)
        if found is None:
            if len(self._targets) >= TARGETS_KEPT:
                self._targets.clear()
            found = self._targets[url] = parse_target(url)
        return found

    async def _acquire(self, origin: Origin, timeout: float | None) -> tuple[Connection, bool]:
        if self.closed:
            raise aiohttp.ClientConnectionError("the upstream pool is closed")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        conn = self._idle_connection(origin)
        reused = conn is not None
        if conn is None:
            conn = await self._connect(origin, timeout)
        self._busy.add(conn)
        return conn, reused

    def _idle_connection(self, origin: Origin) -> Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = self._loop.time()
        while idle:
            conn = idle.pop()
            if self._usable(conn, now - conn.idle_since):
                return conn
            conn.close()
        return None

    def _usable(self, conn: Connection, idle_for: float) -> bool:
        if conn.lost or conn.transport.is_closing() or idle_for > self.keepalive:
            return False
        return self.recheck_after is None or idle_for < self.recheck_after or not conn.peer_closed()

    async def _connect(self, origin: Origin, timeout: float | None) -> Connection:
        loop = self._loop
        context = self._ssl(origin)
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                _, conn = await loop.create_connection(lambda: Connection(loop, origin, self.high_water),
                                                       origin.host, origin.port, ssl=context)
        except OSError as exc:
            if deadline.expired():
                raise ConnectTimeout(timeout) from None
            raise cannot_connect(origin.host, origin.port, origin.tls, exc) from None
        return conn

    def _ssl(self, origin: Origin) -> ssl.SSLContext | None:
        if not origin.tls:
            return None
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    def _sweep(self) -> None:
        """Close connections idle longer than `keepalive` (or closed by the backend)."""

        self._sweeper = None
        deadline = self._loop.time() - self.keepalive
        for origin, idle in list(self._idle.items()):
            keep = []
            for conn in idle:
                if not conn.lost and conn.idle_since > deadline:
                    keep.append(conn)
                else:
                    conn.close()
            if keep:
                self._idle[origin] = keep
            else:
                del self._idle[origin]
        if self._idle:
            self._sweeper = self._loop.call_later(self.keepalive / 2, self._sweep)
