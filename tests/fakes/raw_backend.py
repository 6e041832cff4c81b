"""A backend written on raw sockets, for answers no HTTP framework would send.

It answers the polls of both kinds of backend (`/api/tags`, `/api/ps`, `/api/version`,
`/v1/models`, model `m`) properly, and every POST the way `mode` says:
- `hang`: reads the request and never answers;
- `html`: `200 text/html` (a captive portal, a misrouted proxy);
- `broken-chunk`: a chunked stream (NDJSON for `/api/*`, SSE for `/v1/*`) with one good line,
  then a chunk-size line that is not hex, and the connection left open;
- `long-line`: an SSE stream whose first line never ends (up to `long_line_bytes`).
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson

GOOD_NDJSON = b'{"model":"m","created_at":"2026-01-01T00:00:00Z","message":{"role":"assistant","content":"Hi"},' \
              b'"done":false}\n'
GOOD_SSE = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,' \
           b'"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
POLLS = {
    b"/api/tags": {"models": [{"name": "m:latest", "model": "m:latest", "size": 1}]},
    b"/api/ps": {"models": []},
    b"/api/version": {"version": "0.12.3"},
    b"/v1/models": {"object": "list", "data": [{"id": "m", "object": "model"}]},
}


class RawBackend:
    def __init__(self, mode: str = "hang", long_line_bytes: int = 100 << 20):
        self.mode = mode
        self.long_line_bytes = long_line_bytes
        self.posts = 0
        self.closed_early = 0  # POST connections the client closed before we were done
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> RawBackend:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, path = head.split(b" ", 2)[:2]
                length = _content_length(head)
                if length:
                    await reader.readexactly(length)
                if method == b"GET" and path in POLLS:
                    body = orjson.dumps(POLLS[path])
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                    await writer.drain()
                    continue
                self.posts += 1
                await self._answer(path, writer)
                return
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_early += 1
        finally:
            self._tasks.discard(asyncio.current_task())
            with contextlib.suppress(Exception):
                writer.close()

    async def _answer(self, path: bytes, writer: asyncio.StreamWriter) -> None:
        sse = path.startswith(b"/v1/")
        if self.mode == "hang":
            await asyncio.sleep(3600)
        elif self.mode == "html":
            body = b"<html><body>Please log in to the hotel Wi-Fi</body></html>"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
            await writer.drain()
        elif self.mode == "broken-chunk":
            kind = b"text/event-stream" if sse else b"application/x-ndjson"
            line = GOOD_SSE if sse else GOOD_NDJSON
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n" % kind)
            writer.write(b"%x\r\n%s\r\n" % (len(line), line))
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.write(b"zz-not-a-size\r\nhello\r\n")
            await writer.drain()
            await asyncio.sleep(3600)
        elif self.mode == "long-line":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\ndata: ")
            piece = b"x" * 65536
            for _ in range(self.long_line_bytes // len(piece)):
                writer.write(piece)
                await writer.drain()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0
