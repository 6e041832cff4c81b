"""Client connections: how long a client may take, and how many it may hold open.

aiohttp's server keeps an idle keep-alive connection for an hour and lets a client send its
headers or its body as slowly as it likes; each open connection holds a file descriptor, and a
few thousand idle ones once left none for real requests. The daemon's server gets nginx's limits:

- `client_header_timeout`: a request's head (request line and headers) must be complete this long
  after the connection opened, or after its first byte on a kept-alive connection; else the
  connection is closed.
- `client_body_timeout`: the longest pause in a request body while the handler waits for it;
  then the read fails with `BodyTimeout` (answered 408 by guard.py). A pause the router causes
  itself (it is not reading: backpressure of a blob upload) does not count.
- `keepalive_timeout`: an idle kept-alive connection is closed after it (aiohttp's own timer).
- `max_connections`: at the limit the oldest idle connection is closed to make room (found with
  an early exit: a flood of connections stays cheap); if none is idle, the new one is answered
  503 and closed. One warning line per episode.

Errors in the HTTP protocol itself (not HTTP, a line too long, a bad header) are answered in
Ollama's JSON shape, never with the request's bytes in it. The classes lean on a few internals
of aiohttp's `RequestHandler` (its message queue, waiter and keep-alive handle); the daemon
tests exercise each of them.
"""

from __future__ import annotations

import enum
import logging
import resource
from dataclasses import dataclass

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

log = logging.getLogger("nomyo.connections")

FILES_PER_CONNECTION = 2  # the client's socket and, while it is routed, one to a backend
FILES_RESERVED = 256  # listening socket, database, backends' polls, logs
BUSY_BODY = b'{"error":"server busy: too many connections, please try again."}'
BUSY_ANSWER = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
               b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(BUSY_BODY), BUSY_BODY))
PROTOCOL_ERRORS = {"BadHttpMethod": "bad request: not an HTTP request",
                   "BadStatusLine": "bad request: invalid request line",
                   "LineTooLong": "bad request: a request line or header is too long",
                   "InvalidHeader": "bad request: invalid header",
                   "InvalidURLError": "bad request: invalid URL"}
STATUS_ERRORS = {500: "internal error in the router; see its log", 504: "the request timed out"}


class BodyTimeout(TimeoutError):
    """The client stopped sending its request body for `client_body_timeout` seconds."""


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout: float = 60.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    max_connections: int = 4096

    @classmethod
    def of(cls, config) -> Limits:
        return cls(config.client_header_timeout, config.client_body_timeout, config.keepalive_timeout,
                   config.max_connections)

    def within(self, file_limit: int) -> Limits:
        """These limits, with max_connections lowered to what `file_limit` descriptors carry."""

        fitting = max(16, (file_limit - FILES_RESERVED) // FILES_PER_CONNECTION)
        if fitting >= self.max_connections:
            return self
        log.warning("max_connections %d needs about %d file descriptors, the limit is %d: serving at most %d "
                    "connections (raise LimitNOFILE)", self.max_connections,
                    self.max_connections * FILES_PER_CONNECTION + FILES_RESERVED, file_limit, fitting)
        return Limits(self.header_timeout, self.body_timeout, self.keepalive_timeout, fitting)


def raise_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (the unit sets LimitNOFILE); the new soft
    limit. The usual soft default of 1024 is far too low for a server of many connections."""

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
            return soft
    return max(soft, target)


class Phase(enum.Enum):
    HEAD = "head"  # waiting for a request's head: header_timeout from the phase's start
    BODY = "body"  # reading a request body: body_timeout between reads
    BUSY = "busy"  # the handler runs (a stream may take hours): no timer
    IDLE = "idle"  # kept alive between requests: aiohttp's keepalive_timeout


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection handler with header and body timeouts and JSON protocol errors."""

    __slots__ = ("_body", "_deadline", "_limits", "_phase", "_received", "_timer")

    def __init__(self, manager: GuardedServer, **kwargs):
        super().__init__(manager, **kwargs)
        self._limits = manager.limits
        self._phase, self._deadline, self._received = Phase.HEAD, 0.0, False
        self._timer = self._body = None

    @property
    def idle(self) -> bool:
        """Waiting for a request and none begun: safe to close to make room."""

        waiting = self._waiter is not None and not self._waiter.done() and not self._messages
        return waiting and (self._phase is Phase.IDLE or (self._phase is Phase.HEAD and not self._received))

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._forget_keepalive()  # the first request's head has header_timeout instead
        self._enter(Phase.HEAD, self._limits.header_timeout)
        manager = self._manager
        if isinstance(manager, GuardedServer) and not manager.admit(self):
            self.transport.write(BUSY_ANSWER)
            self.force_close()

    def connection_lost(self, exc) -> None:
        super().connection_lost(exc)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        parsed = self._request_count
        super().data_received(data)
        if self._force_close or self._close:
            return
        if self._request_count != parsed:
            self._start_body()
        elif self._phase is Phase.BODY:
            self._deadline = self._loop.time() + self._limits.body_timeout
            if self._body.is_eof():
                self._phase = Phase.BUSY
        elif self._phase is Phase.IDLE and data:
            self._forget_keepalive()
            self._enter(Phase.HEAD, self._limits.header_timeout)
        self._received = True

    async def finish_response(self, request, resp, start_time):
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._phase = Phase.IDLE

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        super().handle_error(request, status, exc)  # logs it; refuses when the answer has begun
        text = PROTOCOL_ERRORS.get(type(exc).__name__, "bad request: the request is not valid HTTP") \
            if status == 400 else STATUS_ERRORS.get(status, "error")
        response = web.Response(status=status, body=orjson.dumps({"error": text}),
                                 content_type="application/json", charset="utf-8")
        response.force_close()
        return response

    def _forget_keepalive(self) -> None:
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None

    def _enter(self, phase: Phase, timeout: float) -> None:
        """Start `phase` with its deadline. A later deadline reuses the pending timer (it
        reschedules itself when it fires early); an earlier one needs a new timer."""

        self._phase, self._deadline, self._received = phase, self._loop.time() + timeout, False
        if self._timer is not None and self._timer.when() > self._deadline:
            self._timer.cancel()
            self._timer = None
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)

    def _start_body(self) -> None:
        body = self._messages[-1][1] if self._messages else None
        if body is None or body.is_eof():
            self._phase = Phase.BUSY
            return
        self._body = body
        self._enter(Phase.BODY, self._limits.body_timeout)

    def _on_timer(self) -> None:
        self._timer = None
        if self._force_close or self.transport is None or self._phase in (Phase.BUSY, Phase.IDLE):
            return
        now = self._loop.time()
        if now < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
        elif self._phase is Phase.HEAD:
            if self._waiter is not None and not self._waiter.done():  # not while a request runs
                self.force_close()
        else:
            self._body_stalled(now)

    def _body_stalled(self, now: float) -> None:
        body = self._body
        if body.is_eof():
            self._phase = Phase.BUSY
        elif body._waiter is None:  # nobody is reading right now: the pause is not the client's
            self._deadline = now + self._limits.body_timeout
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
        else:
            body.set_exception(BodyTimeout(f"no request body data for {self._limits.body_timeout:g}s "
                                           "(client_body_timeout)"))
            self._phase = Phase.BUSY


class GuardedServer(Server):
    """aiohttp's server, making GuardedRequestHandlers and keeping to max_connections."""

    def __init__(self, handler, *, limits: Limits, **kwargs):
        super().__init__(handler, **kwargs)
        self.limits = limits
        self._full = False

    def __call__(self) -> GuardedRequestHandler:
        return GuardedRequestHandler(self, loop=self._loop,
                                     **{**self._kwargs, "keepalive_timeout": self.limits.keepalive_timeout})

    def admit(self, newcomer: GuardedRequestHandler) -> bool:
        """Whether `newcomer` may stay: yes below the limit, else if an idle one makes room."""

        count, limit = len(self._connections), self.limits.max_connections
        if count <= limit:
            if self._full and count < limit * 0.9:
                self._full = False
                log.info("connections below max_connections (%d) again", limit)
            return True
        if not self._full:
            self._full = True
            log.warning("max_connections (%d) reached: closing idle connections to make room, refusing new "
                        "ones (503) while none is idle", limit)
        # connections are kept in the order they came: the first idle one is the oldest
        idle = next((handler for handler in self._connections if handler is not newcomer and handler.idle), None)
        if idle is None:
            return False
        idle.force_close()
        return True


class GuardedRunner(web.AppRunner):
    """An AppRunner whose server is a GuardedServer; `limits` may change (a reload): new
    connections get the new ones."""

    def __init__(self, app: web.Application, limits: Limits, **kwargs):
        super().__init__(app, **kwargs)
        self.limits = limits

    async def _make_server(self) -> Server:
        plain = await super()._make_server()  # runs the app's startup, as AppRunner does
        return GuardedServer(plain.request_handler, limits=self.limits, request_factory=plain.request_factory,
                             handler_cancellation=plain.handler_cancellation, loop=plain._loop, **plain._kwargs)

    def apply(self, limits: Limits) -> None:
        self.limits = limits
        if isinstance(self.server, GuardedServer):
            self.server.limits = limits
