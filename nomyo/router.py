"""The live state of one daemon: the current runtime, the slot ledger, the poller, the one shared
client session, and the pipeline every routed call goes through; internal calls; reloads.

A request takes `router.runtime` once at its start and keeps it; a reload builds the new runtime
off to the side (its fleet polled), then swaps it in with one assignment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson

from .access import account, write_line
from .call import Call, Dialect, Outcome, Reach
from .config import Config
from .dialects.ollama import is_load_or_unload
from .exchange import Pipeline
from .fleet import Fleet
from .ledger import Ledger, LocalLedger
from .metrics import Metrics
from .names import normalize_model
from .poller import Poller
from .runtime import Runtime, build_runtime, changes, restart_warnings
from .sinks import Answer, ChunkStream, Collector, Sink
from .sse import UsageStream
from .upstream import make_session
from .usage import UsageStore

log = logging.getLogger("nomyo.router")


class Router:
    """Everything a request needs. Built from a Config; `start`/`stop` own the background parts."""

    def __init__(self, config: Config, ledger: Ledger | None = None):
        self.runtime: Runtime = build_runtime(config)
        self.ledger: Ledger = ledger or LocalLedger()
        self.session: aiohttp.ClientSession | None = None
        self.poller: Poller | None = None
        self.pipeline: Pipeline | None = None
        self.active_requests = 0  # counted by the access middleware; the drain waits for 0
        self._shutdown_hooks: list = []
        self.usage = UsageStore(config.db_path, lambda: self.config.flush_interval)
        self.stream = UsageStream(self)
        self.metrics = Metrics(self)
        self.ledger.on_change(self.stream.mark_dirty)
        self.usage.on_change(self.stream.mark_dirty)
        self.runtime.fleet.on_change(self.ledger.recheck_waiters)
        self.on_shutdown(self.stream.close)

    @property
    def config(self) -> Config:
        """The current configuration (a request keeps the one of its own runtime)."""

        return self.runtime.config

    @property
    def fleet(self) -> Fleet:
        return self.runtime.fleet

    async def start(self) -> None:
        """Open the client session, poll every backend once (so the first requests route well),
        then keep polling in the background."""

        await self.usage.start()
        self.stream.start()
        self.session = make_session(self.config.connect_timeout)
        self.poller = Poller(self.session, lambda: self.runtime)
        self.pipeline = Pipeline(self.ledger, self.poller, self.session)
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

    async def reload(self, config: Config) -> list[str]:
        """Adopt a new, already validated configuration: build the new runtime and poll its new
        backends, then swap it in. Returns what changed, in words (and logs what only a restart
        can change)."""

        runtime = build_runtime(config, self.runtime)
        fresh = [b for b in runtime.fleet.backends.values() if b.status.checked_at == 0.0]
        await self.poller.refresh_all(fresh, fleet=runtime.fleet)
        runtime.fleet.on_change(self.ledger.recheck_waiters)
        old, self.runtime = self.runtime, runtime  # the swap: every new request sees the new runtime
        self.poller.adopt()
        self.ledger.recheck_waiters()
        for warning in restart_warnings(old.config, config):
            log.warning("%s", warning)
        return changes(old.config, config)

    async def exchange(self, call: Call, sink: Sink) -> None:
        """Route and relay one call into `sink` (see exchange.py)."""

        await self.pipeline.exchange(call, sink)

    # -- internal calls: the router asks a model itself, with no client request behind it --------

    def internal_call(self, path: str, payload: dict, *, caller: str,
                      exclude: frozenset[str] = frozenset()) -> Call:
        """A call for `path` (`/api/chat`, `/v1/embeddings`, ...) with `payload`, on behalf of
        `caller` (its purpose: `moe`, `cache-embed`), under the current runtime."""

        dialect = Dialect.of_path(path)
        model = str(payload.get("model") or "")
        stream = payload.get("stream") is True if dialect is Dialect.OPENAI else (
            path in ("/api/chat", "/api/generate") and payload.get("stream") is not False)
        outcome = Outcome()
        outcome.model, outcome.caller = model, caller
        return Call(dialect=dialect, path=path, model=model, key=normalize_model(model), raw=orjson.dumps(payload),
                    payload=payload, runtime=self.runtime, outcome=outcome, stream=stream,
                    reach=Reach.OPENAI if path == "/v1/rerank" else Reach.ANY,
                    changes_loaded=is_load_or_unload(path, payload), exclude=exclude)

    async def call(self, path: str, payload: dict, *, caller: str,
                   exclude: frozenset[str] = frozenset()) -> Answer:
        """Route, lease, fail over, time out and account exactly like a client's request, and
        return the whole answer. Raises RouterError when no answer could be had. Cancelling it
        frees the slot and closes the upstream."""

        call = self.internal_call(path, payload, caller=caller, exclude=exclude)
        collector = Collector()
        try:
            await self.exchange(call, collector)
        finally:
            self.finish(call)
        collector.answer.outcome = call.outcome
        return collector.answer

    async def stream_call(self, path: str, payload: dict, *, caller: str,
                          exclude: frozenset[str] = frozenset()) -> AsyncIterator[bytes]:
        """Like `call`, but the answer's chunks as they come. Leaving the loop early cancels the
        exchange (slot freed, upstream closed); an error before the first chunk is raised."""

        call = self.internal_call(path, payload, caller=caller, exclude=exclude)
        sink = ChunkStream()
        task = asyncio.create_task(self._run(call, sink), name=f"internal call for {caller}")
        try:
            async for chunk in sink.chunks():
                yield chunk
            await task
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _run(self, call: Call, sink: ChunkStream) -> None:
        try:
            await self.exchange(call, sink)
        finally:
            sink.finish()
            self.finish(call)

    def finish(self, call: Call) -> None:
        """An internal call's access line, usage and metrics, as for a client's request."""

        outcome = call.outcome
        if outcome.kind is None and outcome.status is None:
            outcome.kind = "client-disconnected"  # cancelled before any answer
        seconds = time.perf_counter() - outcome.started_at
        account(self, call.path, outcome, seconds)
        write_line("POST", call.path, outcome, seconds)
