"""nomyo/wire put behind today's `upstream.open_upstream`, without editing the router: a pytest
plugin and a daemon prelude, to run the existing suite and the bench against the new client
before the exchange pipeline takes it in for good.

    .venv/bin/python -m pytest -p tests.wire.swap tests/      # the suite on nomyo/wire
    python -c "import tests.wire.swap as s; s.install(); from nomyo.cli import main; main()" --config …

`install()` must run before nomyo.relay / nomyo.bridge are imported (they import the function
by name). Each aiohttp session of a Router gets its own Pool, closed when the Router stops. The
poller, fan-out and model management keep the aiohttp session, as planned.
"""

from __future__ import annotations

import weakref

import aiohttp

from nomyo.wire import FirstByteTimeout, Pool, Response

_pools: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _Content:
    __slots__ = ("_response",)

    def __init__(self, response: Response):
        self._response = response

    def iter_any(self):
        return self._response.iter_chunks()


class AiohttpShaped:
    """The part of aiohttp.ClientResponse that the relay, bridge and translator use."""

    __slots__ = ("_response", "content", "headers", "status")

    def __init__(self, response: Response):
        self._response = response
        self.status = response.status
        self.headers = response.headers
        self.content = _Content(response)

    async def read(self) -> bytes:
        return await self._response.read()

    def release(self) -> None:
        self._response.release()

    def close(self) -> None:
        self._response.close()


def pool_for(session: aiohttp.ClientSession) -> Pool:
    pool = _pools.get(session)
    if pool is None:
        pool = _pools[session] = Pool(keepalive=30)
    return pool


def install() -> None:
    from nomyo import upstream

    async def open_upstream(session, backend, method, path, body, headers, timing, *, early=True):
        try:
            response = await pool_for(session).request(
                method, backend.url_for(path), headers, body, connect_timeout=timing.connect,
                first_byte_timeout=timing.first_byte if early else None)
        except FirstByteTimeout:
            raise upstream.BackendUnreachable(backend.name, f"no answer within {timing.first_byte:g}s") from None
        except upstream.RETRYABLE as exc:
            raise upstream.BackendUnreachable(backend.name, upstream.describe(exc)) from None
        answer = AiohttpShaped(response)
        if answer.status == 503:
            raise await upstream._busy(backend, answer)
        return answer

    upstream.open_upstream = open_upstream

    from nomyo.router import Router

    stop = Router.stop

    async def stop_and_close(self) -> None:
        session = self.session
        await stop(self)
        pool = _pools.pop(session, None) if session is not None else None
        if pool is not None:
            await pool.close()

    Router.stop = stop_and_close


install()
