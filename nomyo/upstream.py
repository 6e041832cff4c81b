"""The one way the router talks to a backend: its session, headers, URLs, clocks and failures.

Every upstream call — relayed, translated, fanned out, or a poll — builds its headers here (the
backend's own key, never the client's; answers asked for uncompressed, since the shared session
relays bytes as they come and a gzipping proxy would hide the final counts), finds its URL here,
and describes its failures here, so a fix to any of them is made once.

Three clocks, none of them a total timeout (a stream may rightly run for an hour):
- connect: short; a backend that does not accept the connection is tried no longer.
- first byte: long (a cold model load takes minutes); the time until the answer's headers.
- idle: the longest silence allowed between two chunks of an answer once it has started.

Anything that fails before a byte reached the client — refused, reset, no headers in time, or
a 503 "busy" — is raised as a retryable error, so the router can try the next backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
import orjson

from . import __version__
from .fleet import Backend

USER_AGENT = f"nomyo-router/{__version__}"
# Request headers of the client's that a backend may use; everything else (the router's own
# Authorization, cookies, Host, hop-by-hop headers) stays here. Host is set from the backend's
# URL, which is what Ollama's DNS-rebinding guard wants.
FORWARDED_REQUEST_HEADERS = ("Content-Type", "Accept", "User-Agent", "OpenAI-Beta", "X-Request-Id")
FORWARDED_RESPONSE_HEADERS = ("Content-Type", "Content-Encoding", "Retry-After")
PARSER_CHECK = 1.0  # seconds between looks at whether a streaming answer's framing broke


@dataclass(frozen=True, slots=True)
class Timing:
    """The clocks of one configuration (seconds)."""

    connect: float = 5.0
    first_byte: float = 600.0
    idle: float = 300.0
    response: float = 1800.0  # a whole (non-streamed) answer, from sending to its last byte
    client_timeout: aiohttp.ClientTimeout = field(init=False, compare=False)

    def __post_init__(self) -> None:
        # built once per configuration, not per request
        timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=self.connect, sock_read=None)
        object.__setattr__(self, "client_timeout", timeout)


class BackendUnreachable(Exception):
    """Nothing reached the client yet and the backend could not be reached: another may do."""

    def __init__(self, backend: str, reason: str):
        super().__init__(f"backend {backend} is unreachable: {reason}")
        self.reason = reason


class BackendBusy(Exception):
    """The backend answered 503 before anything was sent to the client: another may have room.
    Carries the answer, so the last attempt can pass the backend's own words on."""

    def __init__(self, backend: str, status: int, message: str, retry_after: str | None):
        super().__init__(f"backend {backend} is busy: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after


def make_session(connect_timeout: float) -> aiohttp.ClientSession:
    """One pooled client for every upstream call. No per-request clients, no total timeout
    (LLM streams run for minutes); bytes are relayed as they come, never decompressed."""

    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=60)
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),  # backends set no cookies; skips a jar lookup per request
        skip_auto_headers=("User-Agent",),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout),
    )


def request_headers(backend: Backend, forwarded: Mapping[str, str] | None = None, *,
                    content_type: str | None = None, accept: str | None = None) -> dict[str, str]:
    """Headers for one upstream call: the client's allowed headers (if any), the content type
    and accept the router chose, our user agent unless the client sent one, answers uncompressed,
    and the backend's own key."""

    headers = {name: forwarded[name] for name in FORWARDED_REQUEST_HEADERS if name in forwarded} if forwarded else {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if accept is not None:
        headers["Accept"] = accept
    headers.setdefault("User-Agent", USER_AGENT)
    headers["Accept-Encoding"] = "identity"
    authorization = backend.config.authorization  # the api_key as Bearer, or the URL's credentials
    if authorization:
        headers["Authorization"] = authorization
    return headers


def response_headers(upstream: aiohttp.ClientResponse) -> dict[str, str]:
    """The backend's answer headers a client may see."""

    return {name: upstream.headers[name] for name in FORWARDED_RESPONSE_HEADERS if name in upstream.headers}


def openai_path(backend: Backend, path: str) -> str:
    """`/chat/completions` etc. under the backend's OpenAI API: an Ollama server serves it under
    `/v1` of its root; an OpenAI-compatible endpoint is configured by its `/v1` base already."""

    return "/v1" + path if backend.config.is_ollama else path


# ClientResponseError here comes from the response parser (nothing calls raise_for_status): the
# backend answered something that is not HTTP, which another backend may well do better.
RETRYABLE = (TimeoutError, aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, ConnectionResetError,
             aiohttp.ClientOSError, aiohttp.ClientResponseError)


async def open_upstream(session: aiohttp.ClientSession, backend: Backend, method: str, path: str, body: bytes,
                        headers: dict[str, str], timing: Timing, *, early: bool = True) -> aiohttp.ClientResponse:
    """Send the request and wait for the answer's headers: up to `timing.first_byte` when the
    answer starts early (a stream, embeddings); with no limit for a non-streamed generation,
    whose headers come only once the whole text is written (that can rightly take many minutes).

    Raises BackendUnreachable or BackendBusy (retryable: nothing was sent to the client), or
    aiohttp.ClientError for anything else."""

    url = backend.url_for(path)
    try:
        if early:
            async with asyncio.timeout(timing.first_byte):
                upstream = await session.request(method, url, data=body, headers=headers,
                                                 timeout=timing.client_timeout)
        else:
            upstream = await session.request(method, url, data=body, headers=headers, timeout=timing.client_timeout)
    except TimeoutError as exc:
        reason = describe(exc, timing.first_byte)
        raise BackendUnreachable(backend.name, reason) from None
    except RETRYABLE as exc:
        raise BackendUnreachable(backend.name, describe(exc)) from None
    if upstream.status == 503:
        raise await _busy(backend, upstream)
    return upstream


async def _busy(backend: Backend, upstream: aiohttp.ClientResponse) -> BackendBusy:
    try:
        data = await upstream.read()
    except aiohttp.ClientError:
        data = b""
    finally:
        upstream.release()
    return BackendBusy(backend.name, upstream.status, error_text(data) or "service unavailable",
                       upstream.headers.get("Retry-After"))


def is_json(data: bytes) -> bool:
    """Whether a backend's 200 answer is the JSON it claims to be."""

    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def error_text(data: bytes) -> str:
    """The message of an error answer in either dialect (or its text)."""

    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data[:500].decode(errors="replace").strip()
    error = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return str(error) if error else data[:500].decode(errors="replace").strip()


def describe(exc: BaseException, timeout: float | None = None) -> str:
    """Why a backend could not be reached or stopped answering, in an operator's words, without
    internals. `timeout`: the limit that applied, when the failure is a timeout of a whole call."""

    if type(exc).__module__.startswith("nomyo."):
        return str(exc)  # our own client's failures word themselves (and carry no URL)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or exc.os_error})"
    if isinstance(exc, aiohttp.ConnectionTimeoutError) or (isinstance(exc, TimeoutError) and not timeout):
        return "connect timed out"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the backend closed the connection"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer broke off before its end (the backend or the network cut it)"
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.message or f"the backend did not answer in HTTP (status {exc.status})"
    if isinstance(exc, ValueError):
        return f"invalid answer: {exc}"
    return str(exc) or type(exc).__name__


class IdleWatch:
    """Ends an upstream answer that has been silent for `idle` seconds, or whose framing broke.

    Costs a few attribute stores per chunk: a single timer checks the last touch and re-arms
    itself, instead of a timeout object rescheduled for every chunk of a 40k-chunks/s relay.
    The clock stands still while the relay waits for the client to take a chunk (`writing`):
    a slow client is not a silent backend. The same timer looks, once a second, whether the
    response parser gave up on the connection (a broken chunked encoding): aiohttp's C parser
    then closes the connection but leaves the reader waiting, which would look like silence
    until the idle limit. `interrupt` ends the answer for a reason of the router's own (the
    drain is over)."""

    __slots__ = ("_handle", "_loop", "broken", "fired", "idle", "interruption", "last", "upstream", "writing")

    def __init__(self, upstream: aiohttp.ClientResponse, idle: float):
        self._loop = asyncio.get_running_loop()
        self.upstream = upstream
        self.idle = idle
        self.fired = False
        self.broken: str | None = None
        self.interruption: str | None = None
        self.writing = False
        self.last = self._loop.time()
        self._handle = self._loop.call_at(min(self.last + idle, self.last + PARSER_CHECK), self._check)

    def touch(self) -> None:
        self.last = self._loop.time()

    def _check(self) -> None:
        now = self._loop.time()
        if self.writing:
            self.last = now
        failure = _parser_failure(self.upstream)
        if failure is not None:
            self.broken = f"its answer is not valid HTTP framing ({failure})"
            self._end()
        elif now >= self.last + self.idle:
            self.fired = True
            self._end()
        else:
            self._handle = self._loop.call_at(min(self.last + self.idle, now + PARSER_CHECK), self._check)

    def interrupt(self, reason: str) -> None:
        """End the answer now: the relay's pending read fails and the stream ends with `reason`."""

        self.interruption = reason
        self._handle.cancel()
        self._end()

    def _end(self) -> None:
        # the pending read fails; the relay ends the stream with an error
        self.upstream.content.set_exception(aiohttp.ClientPayloadError("the answer was ended by the router"))
        self.upstream.close()

    def stop(self) -> None:
        self._handle.cancel()

    def reason(self, exc: BaseException) -> str:
        if self.broken is not None:
            return self.broken
        return f"no data for {self.idle:g}s" if self.fired else describe(exc)


def _parser_failure(upstream: aiohttp.ClientResponse) -> str | None:
    connection = upstream.connection
    protocol = connection.protocol if connection is not None else None
    failure = protocol.exception() if protocol is not None else None
    return None if failure is None else (getattr(failure, "message", None) or type(failure).__name__)
