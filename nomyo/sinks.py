"""Where an answer goes: the client, a value the router keeps, both, or an async iterator.

The exchange pipeline delivers every answer to a `Sink`, never to a response directly:
- `ClientSink`: the client's aiohttp response, chunk by chunk (`await write` is the
  backpressure; a client that leaves raises, the upstream is closed and the slot freed), with
  the optional early headers and keep-alive lines of a streaming request that waits;
- `Collector`: the whole answer as a value (`Answer`), for internal calls;
- `Tee`: both at once, the copy taken as the client's bytes go out (the cache keeps it);
- `ChunkStream`: the answer's chunks as an async iterator, for internal calls that stream on.

A stream is `open`ed, written, then `close`d with `complete` saying whether it ended properly
(its final line came); a whole answer arrives in one `whole`. `started` says whether headers are
already out, so a later failure must be told inside the stream (`fail`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from aiohttp import web

from .call import Outcome
from .errors import RouterError
from .keepalive import EarlyStream, end_stream


class Sink(Protocol):
    @property
    def started(self) -> bool: ...

    async def begin(self) -> None: ...

    async def open(self, status: int, headers: Mapping[str, str]) -> None: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self, data: bytes = b"", *, complete: bool) -> None: ...

    async def whole(self, status: int, headers: Mapping[str, str], body: bytes) -> None: ...

    async def fail(self, error: RouterError) -> None: ...

    async def end(self) -> None: ...


class ClientSink:
    """The client's response. `response` is what the handler returns."""

    __slots__ = ("early", "request", "response")

    def __init__(self, request: web.Request, early: EarlyStream | None = None):
        self.request = request
        self.early = early
        self.response: web.StreamResponse | None = None

    @property
    def started(self) -> bool:
        return self.early is not None and self.early.started

    async def begin(self) -> None:
        if self.early is not None:
            self.early.start()

    async def open(self, status: int, headers: Mapping[str, str]) -> None:
        if self.early is not None:
            self.response = await self.early.claim()  # its headers went out already, if any
        if self.response is None:
            self.response = web.StreamResponse(status=status, headers=headers)
            await self.response.prepare(self.request)

    async def write(self, data: bytes) -> None:
        await self.response.write(data)

    async def close(self, data: bytes = b"", *, complete: bool) -> None:
        await end_stream(self.response, data)

    async def whole(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        if self.early is not None:
            await self.early.stop()
            if self.early.started:  # headers are out: the answer goes inside the stream
                self.response = await self.early.finish_with(status, body)
                return
        self.response = web.Response(status=status, body=body, headers=headers)

    async def fail(self, error: RouterError) -> None:
        self.response = await self.early.fail(error)

    async def end(self) -> None:
        if self.early is not None:
            await self.early.stop()


@dataclass(slots=True)
class Answer:
    """A whole answer as a value: its status and headers, and its bytes as they were delivered
    (one element for a non-streamed answer, one per write for a stream)."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    streamed: bool = False
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = False  # the answer ended properly (a stream's final line came)
    outcome: Outcome | None = None  # an internal call's record: backend, counts, timings

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def json(self) -> Any:
        """A non-streamed answer's object."""

        return orjson.loads(self.body)

    def lines(self) -> list[Any]:
        """An NDJSON stream's objects."""

        return [orjson.loads(line) for line in self.body.splitlines() if line.strip()]


class InternalSink:
    """A sink with no client behind it: never `started`, so a failure before the end is raised
    to whoever made the call; nothing to begin or end."""

    __slots__ = ()

    @property
    def started(self) -> bool:
        return False

    async def begin(self) -> None:
        pass

    async def fail(self, error: RouterError) -> None:
        raise error

    async def end(self) -> None:
        pass


class Collector(InternalSink):
    """Keeps the whole answer (`answer`)."""

    __slots__ = ("answer",)

    def __init__(self) -> None:
        self.answer = Answer()

    async def open(self, status: int, headers: Mapping[str, str]) -> None:
        self.answer.status, self.answer.headers, self.answer.streamed = status, dict(headers), True

    async def write(self, data: bytes) -> None:
        self.answer.chunks.append(data)

    async def close(self, data: bytes = b"", *, complete: bool) -> None:
        if data:
            self.answer.chunks.append(data)
        self.answer.complete = complete

    async def whole(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.answer.status, self.answer.headers = status, dict(headers)
        self.answer.chunks = [body]
        self.answer.complete = status < 400


class Tee:
    """Delivers to `primary` (the client) and keeps a copy in `copy`. The copy is taken after
    the primary's write returned, so it holds exactly what the client got; a client that leaves
    mid-stream raises out of the write, and the copy is never marked complete."""

    __slots__ = ("copy", "primary")

    def __init__(self, primary: Sink, copy: Collector | None = None):
        self.primary = primary
        self.copy = copy or Collector()

    @property
    def started(self) -> bool:
        return self.primary.started

    async def begin(self) -> None:
        await self.primary.begin()

    async def open(self, status: int, headers: Mapping[str, str]) -> None:
        await self.primary.open(status, headers)
        await self.copy.open(status, headers)

    async def write(self, data: bytes) -> None:
        await self.primary.write(data)
        self.copy.answer.chunks.append(data)

    async def close(self, data: bytes = b"", *, complete: bool) -> None:
        await self.primary.close(data, complete=complete)
        await self.copy.close(data, complete=complete)

    async def whole(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        await self.primary.whole(status, headers, body)
        await self.copy.whole(status, headers, body)

    async def fail(self, error: RouterError) -> None:
        await self.primary.fail(error)

    async def end(self) -> None:
        await self.primary.end()


class ChunkStream(InternalSink):
    """The answer's bytes as an async iterator, read while the exchange runs in its own task.
    At most `depth` chunks wait for the reader: a slow reader slows the relay, as a slow client
    would."""

    __slots__ = ("_chunks", "_ended", "_readable", "_writable", "complete", "depth", "headers", "status")

    def __init__(self, depth: int = 16):
        self.depth = depth
        self.status = 0
        self.headers: dict[str, str] = {}
        self.complete = False
        self._chunks: deque[bytes] = deque()
        self._ended = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    async def open(self, status: int, headers: Mapping[str, str]) -> None:
        self.status, self.headers = status, dict(headers)

    async def write(self, data: bytes) -> None:
        await self._writable.wait()
        self._chunks.append(data)
        self._readable.set()
        if len(self._chunks) >= self.depth:
            self._writable.clear()

    async def close(self, data: bytes = b"", *, complete: bool) -> None:
        if data:
            await self.write(data)
        self.complete = complete

    async def whole(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        await self.open(status, headers)
        await self.close(body, complete=status < 400)

    def finish(self) -> None:
        """The exchange is over (however it ended): the reader gets what is left, then stops."""

        self._ended = True
        self._readable.set()

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            while self._chunks:
                chunk = self._chunks.popleft()
                self._writable.set()
                yield chunk
            if self._ended:
                return
            self._readable.clear()
            await self._readable.wait()
