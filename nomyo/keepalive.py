"""Early headers and keep-alive lines for a stream that is still waiting for its first token.

A request can wait minutes before the backend says anything: in the router's queue for a slot,
or while a backend loads its model cold. Proxies and load balancers between the client and the
router often cut a connection that has been silent for 60 s. With `keepalive_interval` set, a
streaming request that has waited that long gets its 200 headers, then one harmless line per
interval until the real stream starts, in the client's dialect:

- Ollama NDJSON: a chunk with empty content and `done: false` (clients append "" and read on);
- OpenAI SSE: a `: keep-alive` comment line (SSE clients ignore comments).

Off by default: once headers are sent, a later error can no longer change the status code, so it
is told in the stream instead (an `{"error": ...}` line, or an SSE error event).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import orjson
from aiohttp import web

from .dialects.ollama import NDJSON
from .errors import RouterError, openai_error_body
from .upstream import error_text

SSE = "text/event-stream"


def created_at() -> str:
    now = time.time_ns()
    seconds, nanos = divmod(now, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{stamp}.{nanos:09d}".rstrip("0").rstrip(".") + "Z"


class EarlyStream:
    """The headers and keep-alive lines of one waiting streaming request."""

    def __init__(self, request: web.Request, interval: float, *, sse: bool, model: str = "", chat: bool = False):
        self.request = request
        self.interval = interval
        self.sse = sse
        self.model = model
        self.chat = chat
        self.response: web.StreamResponse | None = None
        self._task: asyncio.Task | None = None
        # Held while headers or a line are being written, so `stop` only ever cancels the task
        # between writes: never half-way through sending the headers.
        self._writing = asyncio.Lock()

    @property
    def started(self) -> bool:
        return self.response is not None

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep_alive())

    async def stop(self) -> None:
        """No more keep-alive lines (the real stream starts, or the request ended)."""

        if self._task is not None:
            async with self._writing:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
                await self._task
            self._task = None

    async def claim(self) -> web.StreamResponse | None:
        """The already-sent response for the real stream to continue, if headers went out."""

        await self.stop()
        return self.response

    async def _keep_alive(self) -> None:
        await asyncio.sleep(self.interval)
        response = web.StreamResponse(status=200)
        response.headers["Content-Type"] = SSE if self.sse else NDJSON
        if self.sse:
            response.headers["Cache-Control"] = "no-cache"
        async with self._writing:
            await response.prepare(self.request)
            self.response = response
        while True:
            async with self._writing:
                await response.write(self._line())
            await asyncio.sleep(self.interval)

    def _line(self) -> bytes:
        if self.sse:
            return b": keep-alive\n\n"
        if self.chat:
            chunk = {"model": self.model, "created_at": created_at(),
                     "message": {"role": "assistant", "content": ""}, "done": False}
        else:
            chunk = {"model": self.model, "created_at": created_at(), "response": "", "done": False}
        return orjson.dumps(chunk) + b"\n"

    async def fail(self, error: RouterError) -> web.StreamResponse:
        """Headers are out: the error the client would have got becomes the stream's last line."""

        await self.stop()
        return await self._end(self._error_line(error.status, error.message))

    async def finish_with(self, status: int, body: bytes) -> web.StreamResponse:
        """Headers are out but the backend answered in one piece (an error, or a whole answer):
        pass it on inside the stream."""

        await self.stop()
        if status >= 400:
            return await self._end(self._error_line(status, error_text(body) or f"status {status}"))
        if self.sse:
            return await self._end(b"data: " + body + b"\n\ndata: [DONE]\n\n")
        return await self._end(body.rstrip(b"\n") + b"\n")

    def _error_line(self, status: int, message: str) -> bytes:
        if self.sse:
            return b"data: " + openai_error_body(status, message) + b"\n\n"
        return orjson.dumps({"error": message}) + b"\n"

    async def _end(self, data: bytes) -> web.StreamResponse:
        return await end_stream(self.response, data)


async def end_stream(response: web.StreamResponse, data: bytes = b"") -> web.StreamResponse:
    """Write the last bytes of a stream and end it; a client already gone is no error here
    (aiohttp's ClientConnectionResetError is a ConnectionResetError)."""

    with contextlib.suppress(ConnectionResetError):
        if data:
            await response.write(data)
        await response.write_eof()
    return response
