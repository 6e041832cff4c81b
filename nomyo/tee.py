"""One upload from the client, sent to several backends at once without holding it in memory.

A blob (`POST /api/blobs/sha256:...`, the weights of `ollama create` from a local file) can be
many gigabytes. The router reads the client's body chunk by chunk and hands each chunk to every
backend's upload; the next chunk is read only when every upload still running has room for it.
Memory stays at a few chunks per backend, and the slowest backend sets the pace, as it would
if the client uploaded to it directly. An upload that fails drops out; the others go on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import aiohttp

from .errors import RouterError
from .fanout import Outcome

PIPE_DEPTH = 8  # chunks an upload may be behind the client's body (each at most ~64 KiB)

Upload = Callable[[AsyncIterator[bytes]], Awaitable[Outcome]]


class Pipe:
    """The chunks still to be sent to one backend."""

    def __init__(self, depth: int = PIPE_DEPTH):
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(depth)
        self.closed = False

    async def put(self, chunk: bytes | None) -> None:
        if not self.closed:
            await self.queue.put(chunk)

    def close(self) -> None:
        """The upload ended (done or failed): stop feeding it, and free a feeder waiting for room."""

        self.closed = True
        while not self.queue.empty():
            self.queue.get_nowait()

    async def chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self.queue.get()) is not None:
            yield chunk


async def broadcast(source: aiohttp.StreamReader, uploads: dict[str, Upload]) -> dict[str, Outcome]:
    """Send the client's body to every upload at once; each upload's outcome by name.

    A client that stops sending halfway gets a 400 and every upload is cancelled (the backends
    see their connections close and keep nothing)."""

    pipes = {name: Pipe() for name in uploads}

    async def one(name: str, upload: Upload) -> Outcome:
        try:
            return await upload(pipes[name].chunks())
        finally:
            pipes[name].close()

    tasks = {name: asyncio.create_task(one(name, upload), name=f"upload to {name}") for name, upload in uploads.items()}
    try:
        await _feed(source, pipes.values())
    except BaseException as exc:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.EofStream):
            raise RouterError(400, f"the upload was cut short: {exc}") from None
        raise
    return dict(zip(tasks, await asyncio.gather(*tasks.values()), strict=True))


async def _feed(source: aiohttp.StreamReader, pipes: Iterable[Pipe]) -> None:
    pipes = list(pipes)
    async for chunk in source.iter_any():
        live = [pipe for pipe in pipes if not pipe.closed]
        if not live:
            return  # every upload has ended (failed): the rest of the body is of no use
        for pipe in live:
            await pipe.put(chunk)
    for pipe in pipes:
        await pipe.put(None)
