"""An upstream answer: its status and headers at once, its body as it comes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from multidict import CIMultiDict

from .connection import Connection

if TYPE_CHECKING:
    from .pool import Pool
    from .request import Origin


class Response:
    """Read the body once (`iter_chunks` or `read`), then `release()`: the connection goes back
    to the pool when the whole answer came, else it is closed (the backend sees it drop).
    `close()` drops the connection at once; a read waiting on it fails. Usable as an async
    context manager, which releases on exit."""

    __slots__ = ("_conn", "_origin", "_pool", "headers", "status")

    def __init__(self, pool: Pool, origin: Origin, conn: Connection):
        self._pool = pool
        self._origin = origin
        self._conn: Connection | None = conn
        self.status: int = conn.status
        self.headers: CIMultiDict[str] = CIMultiDict(conn.raw_headers)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: each piece is everything received since the last one.

        Raises aiohttp.ClientPayloadError (BrokenBody) when the body breaks off, and
        aiohttp.ClientConnectionError when the response was closed while waiting."""

        conn = self._live()
        while True:
            if conn.chunks:
                yield conn.take()
            elif conn.failure is not None:
                raise conn.failure
            elif conn.message_done:
                return
            else:
                await conn.wait()

    async def read(self) -> bytes:
        """The whole body."""

        return await self._live().read_all()

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if conn.reusable:
            self._pool.put(self._origin, conn)
        else:
            self._pool.discard(conn)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.discard(conn)

    @property
    def complete(self) -> bool:
        """Whether the whole answer came (it may not all be read yet)."""

        return self._conn is not None and self._conn.message_done

    def _live(self) -> Connection:
        if self._conn is None:
            raise RuntimeError("the response was already released or closed")
        return self._conn

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<Response {self.status} from {self._origin.host}:{self._origin.port}>"
