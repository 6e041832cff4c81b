"""One upstream HTTP/1.1 connection: an asyncio Protocol feeding llhttp (through httptools).

The connection carries one exchange at a time. Its state is plain attributes that the parser's
callbacks set and the one task awaiting the answer reads: a single waiter future is woken
whenever something changed (headers, a body piece, the end, a failure, room to write), and the
reader looks at the attributes again. Nothing is scheduled per chunk beyond that wake-up.

Backpressure: body pieces pile up in `chunks` until the reader takes them; past `high_water`
bytes the transport stops reading, so a slow reader makes the backend's send buffer fill and
its writes block (TCP does the rest). The other way, the request body is bytes already in
memory: it is handed to the transport in one call, which sends it as fast as the backend reads
it, while the answer is awaited (a backend may answer before reading it all); there is nothing
more to hold back, so the transport's pause/resume_writing are left as no-ops.
"""

from __future__ import annotations

import asyncio
import select
from typing import TYPE_CHECKING

import aiohttp
from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from .errors import BrokenBody, FirstByteTimeout, NotHttp, lost_before_answer, lost_mid_body

if TYPE_CHECKING:
    from .request import Origin

HIGH_WATER = 256 * 1024  # bytes of answer held before the transport stops reading
NO_BODY_STATUSES = (204, 304)


class TrailingBytes(Exception):
    """The backend sent more after a whole answer: the connection can no longer be trusted."""


class Connection(asyncio.Protocol):
    """An upstream connection and the state of the exchange it carries (see the module doc)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: Origin, high_water: int = HIGH_WATER):
        self._loop = loop
        self.origin = origin
        self._parser = HttpResponseParser(self)
        self._limit = self._high_water = high_water
        self._waiter: asyncio.Future | None = None
        self._read_paused = False
        self.transport: asyncio.Transport | None = None
        self.fd = -1
        self.lost = False
        self.idle_since = 0.0
        self._start("", "", head=False)
        self.active = False

    def _start(self, method: str, target: str, *, head: bool) -> None:
        self.method, self.target, self.head = method, target, head
        self.active = True
        self.received = False  # any byte of the answer
        self.status = 0
        self.raw_headers: list[tuple[str, str]] = []
        self.headers_done = self.message_done = False
        self.keep_alive = self.until_close = False
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.failure: BaseException | None = None

    # --- what the pool and the response call -------------------------------------------------

    def send(self, payload: bytes, body: bytes, method: str, target: str) -> bool:
        """Start an exchange. False when the connection was found closed: nothing was sent."""

        if self.lost or self.transport.is_closing():
            return False
        self._start(method, target, head=method == "HEAD")
        if body:
            self.transport.writelines((payload, body))
        else:
            self.transport.write(payload)
        return True

    async def wait_answer(self, timeout: float | None) -> None:
        """Wait for the answer's headers, `timeout` seconds at most from now."""

        timer = self._loop.call_later(timeout, self._time_out, timeout) if timeout is not None else None
        try:
            while not self.headers_done:
                if self.failure is not None:
                    raise self.failure
                await self.wait()
        finally:
            if timer is not None:
                timer.cancel()

    def wait(self) -> asyncio.Future:
        """A future woken by the next change of state."""

        waiter = self._waiter = self._loop.create_future()
        return waiter

    def take(self) -> bytes:
        """Everything received and not yet taken, as one piece; reading resumes if it was paused."""

        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.buffered = 0
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()
        return data

    async def read_all(self) -> bytes:
        """The whole body in memory (the caller asked for it): reading is never paused here."""

        self._high_water = 1 << 62
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()
        while not self.message_done:
            if self.failure is not None:
                raise self.failure
            await self.wait()
        return self.take() if self.chunks else b""

    @property
    def reusable(self) -> bool:
        return (self.message_done and self.keep_alive and self.failure is None and not self.lost
                and not self.transport.is_closing())

    def finish(self) -> None:
        """The exchange is over and the connection goes back to the pool."""

        self.active = False
        self.chunks = []
        self.buffered = 0
        self._high_water = self._limit
        self.idle_since = self._loop.time()

    def close(self, failure: BaseException | None = None) -> None:
        """Abort the connection; a reader still waiting gets `failure` (or "closed")."""

        if self.active and not self.message_done and self.failure is None:
            self.failure = failure or aiohttp.ClientConnectionError("the answer was closed")
        self.active = False
        if self.transport is not None and not self.lost:
            self.transport.abort()
        self._wake()

    @property
    def url(self) -> str:
        origin = self.origin
        return f"{'https' if origin.tls else 'http'}://{origin.host_header}{self.target}"

    def peer_closed(self) -> bool:
        """Whether the backend closed this idle connection (or sent something unasked) without
        the loop having seen it yet: one non-blocking poll of the socket."""

        poller = select.poll()
        poller.register(self.fd, select.POLLIN | select.POLLRDHUP)
        return bool(poller.poll(0))

    # --- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1

    def data_received(self, data: bytes) -> None:
        if not self.active or self.message_done:
            self._spoil()  # bytes nobody asked for
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade:
            self._fail(NotHttp(self.url, self.method, "a protocol switch nobody asked for"))
        except HttpParserError as exc:
            if self.message_done:
                self._spoil()
            elif self.headers_done:
                self._fail(BrokenBody(f"malformed body ({exc})"))
            else:
                self._fail(NotHttp(self.url, self.method, str(exc) or type(exc).__name__))

    def eof_received(self) -> bool:
        return False  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        if self.active and not self.message_done and self.failure is None:
            if self.headers_done and self.until_close and exc is None:
                self.message_done = True  # a body delimited by the close ends here, whole
            elif self.headers_done:
                self.failure = lost_mid_body(exc)
            else:
                self.failure = lost_before_answer(exc, partial=self.received)
        self._wake()

    # --- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.message_done:
            raise TrailingBytes
        self.raw_headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        self.status = status
        self.keep_alive = self._parser.should_keep_alive()
        self.headers_done = True
        if self.head:  # the headers describe a body that is not sent
            self.message_done = True
            self.keep_alive = False  # llhttp would wait for that body: this parser is done
        else:
            self.until_close = status not in NO_BODY_STATUSES and not framed(self.raw_headers)
        self._wake()

    def on_body(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > self._high_water and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()
        if self._waiter is not None:
            self._wake()

    def on_message_complete(self) -> None:
        if self.headers_done:  # else the end of an interim answer
            self.message_done = True
            self._wake()

    # --- inside ------------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, failure: BaseException) -> None:
        if self.failure is None:
            self.failure = failure
        self.transport.abort()
        self._wake()

    def _spoil(self) -> None:
        self.keep_alive = False
        self.transport.abort()

    def _time_out(self, seconds: float) -> None:
        if not self.headers_done and self.failure is None:
            self._fail(FirstByteTimeout(seconds))


def framed(headers: list[tuple[str, str]]) -> bool:
    """Whether the body's end is marked (chunked, or a Content-Length); else it ends with the
    connection. Transfer-Encoding wins over Content-Length, as in llhttp."""

    length = False
    for name, value in headers:
        lower = name.lower()
        if lower == "transfer-encoding":
            return value.rsplit(",", 1)[-1].strip().lower() == "chunked"
        if lower == "content-length":
            length = True
    return length
