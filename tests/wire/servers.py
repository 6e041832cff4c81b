"""Raw TCP servers on 127.0.0.1 that speak HTTP/1.1 by hand, well or badly, for tests/wire/test_client.py.

Each is an `asyncio.start_server` with a script: a coroutine that gets the connection (reader,
writer) and the requests read from it. Nothing here is aiohttp: the point is bytes on the wire
that a library server would never send (garbage, a broken chunk, a reset mid-body).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """One request off the connection; None when the client closed it first."""

    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    line, *lines = head.decode("latin-1").split("\r\n")
    method, target, _version = line.split(" ", 2)
    headers = {}
    for text in lines:
        if text:
            name, _, value = text.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Request(method, target, headers, body)


def answer(status: int = 200, body: bytes = b"", headers: dict[str, str] | None = None,
           reason: str = "OK") -> bytes:
    """A whole Content-Length answer."""

    fields = {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}
    head = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    return f"HTTP/1.1 {status} {reason}\r\n{head}\r\n".encode() + body


def chunked_head(status: int = 200, content_type: str = "application/x-ndjson") -> bytes:
    return f"HTTP/1.1 {status} OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST instead of a FIN (SO_LINGER 0), as a crashed process's kernel does."""

    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "RawServer"], Awaitable[None]]


@dataclass
class RawServer:
    """A server running `script` for each connection; counts connections and requests."""

    script: Script
    connections: int = 0
    requests: list[Request] = field(default_factory=list)
    closed_by_client: int = 0
    server: asyncio.Server | None = None
    tasks: set = field(default_factory=set)

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=2048)
        return self

    async def next_request(self, reader: asyncio.StreamReader) -> Request | None:
        request = await read_request(reader)
        if request is None:
            self.closed_by_client += 1
        else:
            self.requests.append(request)
        return request

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.tasks.add(asyncio.current_task())
        try:
            await self.script(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.tasks.discard(asyncio.current_task())
            if not writer.transport.is_closing():
                writer.close()

    async def stop(self) -> None:
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


def keep_answering(reply: Callable[[Request], bytes]) -> Script:
    """A well-behaved keep-alive server: answers every request on the connection with `reply`."""

    async def script(reader, writer, server: RawServer) -> None:
        while (request := await server.next_request(reader)) is not None:
            writer.write(reply(request))
            await writer.drain()

    return script
