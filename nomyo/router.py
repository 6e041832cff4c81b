"""The live state of one daemon: current configuration and fleet, the table, the poller, and the
one shared HTTP client session; and the path of an inference request through them.

Requests read `router.config` and `router.fleet` once at their start; a reload builds the new
fleet (polled), then swaps both references, so a swap never tears a request in flight.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import aiohttp
from aiohttp import web

from . import __version__
from .access import AccessRecord
from .config import Config
from .errors import RouterError, model_not_found
from .fleet import Backend, Fleet
from .keepalive import EARLY
from .metrics import Metrics
from .openai_models import note_answer
from .policy import make_policy
from .poller import Poller
from .relay import relay
from .sse import UsageStream
from .table import ConnectionTable, Lease
from .upstream import BackendBusy, BackendUnreachable, Timing
from .usage import UsageStore

log = logging.getLogger("nomyo.router")
MAX_ATTEMPTS = 3
# Until the poller reads the real expiry, a model that just answered is assumed loaded for
# Ollama's default keep-alive.
ASSUMED_KEEP_ALIVE = 300.0
USER_AGENT = f"nomyo-router/{__version__}"


def build_fleet(config: Config, previous: Fleet | None = None) -> Fleet:
    """Backends for `config`; an endpoint whose configuration did not change keeps its Backend
    object (and with it its status and polling task) across a reload."""

    backends = []
    for endpoint in config.endpoints:
        old = previous.backends.get(endpoint.name) if previous else None
        backends.append(old if old is not None and old.config == endpoint else Backend(endpoint))
    return Fleet(backends)


def timing_of(config: Config) -> Timing:
    return Timing(connect=config.connect_timeout, first_byte=config.first_byte_timeout, idle=config.idle_timeout)


def make_session(config: Config) -> aiohttp.ClientSession:
    """One pooled client for every upstream call. No per-request clients, no total timeout
    (LLM streams run for minutes); bytes are relayed as they come, never decompressed."""

    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=60)
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),  # backends set no cookies; skips a jar lookup per request
        skip_auto_headers=("User-Agent",),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout),
    )


class Router:
    """Everything a request needs. Built from a Config; `start`/`stop` own the background parts."""

    def __init__(self, config: Config):
        self.config = config
        self.timing = timing_of(config)
        self.fleet = build_fleet(config)
        self.table = ConnectionTable(self.fleet, make_policy(config.routing_policy, config.cold_load_spread),
                                     max_queue=config.max_queue, queue_timeout=config.queue_timeout)
        self.session: aiohttp.ClientSession | None = None
        self.poller: Poller | None = None
        self.active_requests = 0  # counted by the access middleware; the drain waits for 0
        self._shutdown_hooks: list = []
        self.usage = UsageStore(config.db_path, config.flush_interval)
        self.stream = UsageStream(self, interval=config.usage_stream_interval, heartbeat=config.usage_stream_heartbeat)
        self.metrics = Metrics(self)
        self.table.on_change(self.stream.mark_dirty)
        self.usage.on_change(self.stream.mark_dirty)
        self.on_shutdown(self.stream.close)

    async def start(self) -> None:
        """Open the client session, poll every backend once (so the first requests route well),
        then keep polling in the background."""

        await self.usage.start()
        self.stream.start()
        self.session = make_session(self.config)
        self.poller = Poller(self.session, self.fleet, interval=self.config.poll_interval,
                             timeout=self.config.poll_timeout, user_agent=USER_AGENT,
                             breaker_threshold=self.config.breaker_threshold,
                             breaker_cooldown=self.config.breaker_cooldown)
        await self.poller.refresh_all()
        self.poller.start()

    def on_shutdown(self, hook) -> None:
        """`await hook()` when the daemon starts draining (e.g. to end long-lived SSE streams)."""

        self._shutdown_hooks.append(hook)

    async def begin_shutdown(self) -> None:
        for hook in self._shutdown_hooks:
            await hook()

    async def stop(self) -> None:
        await self.stream.stop()
        if self.poller is not None:
            await self.poller.stop()
        if self.session is not None:
            await self.session.close()
        await self.usage.stop()  # last: every request has been counted by now

    async def reload(self, config: Config) -> None:
        """Adopt a new, already validated configuration: build and poll the new fleet, then swap."""

        fleet = build_fleet(config, self.fleet)
        fresh = [b for b in fleet.backends.values() if b.status.checked_at == 0.0]
        await self.poller.refresh_all(fresh, fleet=fleet)
        self.table.set_fleet(fleet, make_policy(config.routing_policy, config.cold_load_spread),
                             max_queue=config.max_queue, queue_timeout=config.queue_timeout)
        await self.poller.set_fleet(fleet, interval=config.poll_interval, timeout=config.poll_timeout)
        self.config, self.fleet, self.timing = config, fleet, timing_of(config)
        self.usage.flush_interval = config.flush_interval
        self.stream.interval, self.stream.heartbeat = config.usage_stream_interval, config.usage_stream_heartbeat
        if config.db_path != self.usage.path:
            log.warning("db_path changed to %s: that takes a restart; still writing %s", config.db_path,
                        self.usage.path)

    # -- the path of one inference request -----------------------------------------------------

    async def acquire(self, model: str, native: bool | str, display: str | None = None,
                      exclude: frozenset[str] = frozenset()) -> Lease:
        """A slot for `model`. On a routing miss the backends are asked again at once (the model
        may have been pulled on a backend directly a moment ago) before answering 404/503;
        a 404 names the model as the client spelled it (`display`)."""

        try:
            return await self.table.acquire(model, native, exclude)
        except RouterError as exc:
            if exc.status not in (404, 503) or exc.code == "server_busy":
                raise
        await self.poller.refresh_all(max_age=0.5)
        try:
            return await self.table.acquire(model, native, exclude)
        except RouterError as exc:
            if exc.status == 404 and display is not None:
                raise model_not_found(display) from None
            raise

    async def forward(self, request: web.Request, access: AccessRecord, model: str, path: str,
                      body: bytes, *, native: bool | str = True, changes_loaded: bool = False, send=None,
                      display: str | None = None) -> web.StreamResponse:
        """Route `body` for `model` to the best backend and relay the answer.

        Before anything reached the client, a backend that cannot be reached (or does not start
        answering in time) is marked down, and one that answers 503 "busy" is left out, and the
        request goes to the next best backend after a short jittered pause, at most
        MAX_ATTEMPTS times. After the first byte, a failure ends the stream with an error line.
        With keep-alives on (see keepalive.py), a streaming request that waits long gets its
        headers early, and any later error is told inside the stream."""

        early = request.get(EARLY)
        if early is None:
            return await self._forward(request, access, model, path, body, native, changes_loaded, send, display)
        early.start()
        try:
            response = await self._forward(request, access, model, path, body, native, changes_loaded, send,
                                           display)
        except RouterError as exc:
            if not early.started:
                raise
            access.outcome = "rejected"
            return await early.fail(exc)
        finally:
            await early.stop()
        if early.started and response is not early.response:
            return await early.finish_with(response)
        return response

    async def _forward(self, request: web.Request, access: AccessRecord, model: str, path: str, body: bytes,
                       native: bool | str, changes_loaded: bool, send, display: str | None) -> web.StreamResponse:
        """The attempts of `forward`: failover before the first byte, at most MAX_ATTEMPTS."""

        tried: frozenset[str] = frozenset()
        last_failure: RouterError | None = None
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                lease = await self.acquire(model, native, display, tried)
            except RouterError:
                if last_failure is None:
                    raise
                raise last_failure from None  # nobody else has the model: say what failed
            try:
                return await self._attempt(request, access, lease, model, path, body, send, changes_loaded)
            except (BackendUnreachable, BackendBusy) as exc:
                last_failure = self._failure(lease.backend, exc, attempt)
                tried |= {lease.backend.name}
                if attempt == MAX_ATTEMPTS:
                    raise last_failure from None
            finally:
                lease.release()
            await asyncio.sleep(random.uniform(0.01, 0.05) * attempt)
        raise AssertionError("unreachable")

    async def _attempt(self, request: web.Request, access: AccessRecord, lease: Lease, model: str, path: str,
                       body: bytes, send, changes_loaded: bool) -> web.StreamResponse:
        backend = lease.backend
        access.backend = backend.name
        access.model_key = model
        was_loaded = backend.status.is_loaded(model, time.time())
        started = time.monotonic()
        try:
            if send is not None:  # the handler's own exchange: the /v1 relay, or a translation
                response = await send(backend)
            else:
                response = await relay(request, self.session, backend, path, body, access, timing=self.timing)
        except RouterError as exc:
            if exc.status == 502:  # the backend failed in a way no retry can fix now
                self.poller.report_failure(backend, exc.message)
            raise
        if access.outcome == "ok" and not changes_loaded:
            self._learn(backend, model, access, time.monotonic() - started, was_loaded)
        if not was_loaded and not changes_loaded and access.status == 200:
            self.fleet.note_loaded(backend, model, time.time() + ASSUMED_KEEP_ALIVE)
        if changes_loaded or not was_loaded:
            self.poller.refresh_soon(backend)
        self._judge(backend, access)
        note_answer(self.poller.facts, backend, model, path, access.outcome)
        return response

    def _learn(self, backend: Backend, model: str, access: AccessRecord, seconds: float, was_loaded: bool) -> None:
        """Remember how long loading and running took, for the next cold-load decision."""

        loading = access.load_seconds or 0.0
        if not was_loaded and loading > 0.05:
            self.table.learn_load(backend.name, model, loading)
        self.table.learn_run(model, max(0.0, seconds - loading))

    def _failure(self, backend: Backend, exc: Exception, attempt: int) -> RouterError:
        """Account for a failed attempt; the error the client gets if no other attempt works."""

        log.warning("%s (attempt %d of %d)", exc, attempt, MAX_ATTEMPTS)
        if isinstance(exc, BackendBusy):
            headers = {"Retry-After": exc.retry_after or "1"}
            return RouterError(503, exc.message, headers=headers, code="backend_busy")
        self.poller.mark_down(backend, exc.reason)
        self.poller.report_failure(backend, exc.reason)
        return RouterError(502, str(exc), code="backend_unreachable")

    def _judge(self, backend: Backend, access: AccessRecord) -> None:
        """Feed the backend's circuit breaker with how this request went. A 503 is the backend
        saying it is busy, not broken; 4xx are the client's; other 5xx and broken streams count."""

        status = access.status or 0
        if access.outcome == "backend-failed-mid-stream" or (status >= 500 and status != 503):
            self.poller.report_failure(backend, access.outcome or f"status {status}")
        elif status < 500:
            self.poller.report_success(backend)

    async def forward_unleased(self, request: web.Request, access: AccessRecord,
                               backends: list[Backend], path: str, body: bytes) -> web.StreamResponse:
        """Send a request that takes no model slot (e.g. /api/show) to the first reachable backend."""

        last: Exception | None = None
        for backend in backends[:MAX_ATTEMPTS]:
            access.backend = backend.name
            try:
                return await relay(request, self.session, backend, path, body, access, timing=self.timing)
            except (BackendUnreachable, BackendBusy) as exc:
                if isinstance(exc, BackendUnreachable):
                    self.poller.mark_down(backend, exc.reason)
                last = exc
        raise RouterError(502, str(last) if last else "no backend is reachable", code="backend_unreachable")
