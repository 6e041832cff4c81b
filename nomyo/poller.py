"""One background task per backend keeps its models, loaded models, version and health fresh.

Routing never waits on the network: it reads what the poller last saw. The poller also answers
"refresh now" calls (after a routing miss, a model-management call, or a connection failure), so
a model pulled a moment ago is routable at once and a dead backend is out within one timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING

import aiohttp
import orjson

from .breaker import Breaker
from .fleet import Backend, BackendStatus, Fleet
from .names import normalize_model
from .upstream import describe, request_headers

if TYPE_CHECKING:
    from .runtime import Runtime
from .openai_models import OpenAIFacts, loaded_models
from .wording import counted

log = logging.getLogger("nomyo.poller")
NEVER = float("inf")


def parse_expiry(value) -> float:
    """Ollama's `expires_at` (RFC3339, any fraction, offset or Z) -> epoch seconds."""

    if not isinstance(value, str) or not value:
        return NEVER
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return NEVER


class Poller:
    """Owns the polling tasks of the current runtime's fleet and the backends' breakers. Every
    setting (interval, timeout, breaker) is read from the current runtime when it is used, so a
    reload changes them for the next poll; `adopt` starts and stops tasks for a new fleet."""

    def __init__(self, session: aiohttp.ClientSession, current: Callable[[], Runtime]):
        self.session = session
        self.current = current
        self._breakers: dict[str, Breaker] = {}  # by backend name: survives reloads
        self._tasks: dict[Backend, asyncio.Task] = {}
        self._locks: dict[Backend, asyncio.Lock] = {}
        self._soon: set[asyncio.Task] = set()
        self.facts = OpenAIFacts()  # what OpenAI-compatible backends tell beyond their listing

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def fleet(self) -> Fleet:
        return self.current().fleet

    @property
    def timeout(self) -> float:
        return self.current().config.poll_timeout

    def start(self) -> None:
        for backend in self.fleet.backends.values():
            self._start(backend)

    def _start(self, backend: Backend) -> None:
        if backend not in self._tasks:
            self._tasks[backend] = asyncio.create_task(self._run(backend), name=f"poll {backend.name}")

    async def stop(self) -> None:
        tasks = list(self._tasks.values()) + list(self._soon)
        self._tasks.clear()
        self._soon.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def adopt(self) -> None:
        """The runtime was swapped: poll its fleet. Tasks of backends that stay (same object)
        keep running; those of backends that left stop."""

        fleet = self.fleet
        stale = [b for b in self._tasks if fleet.backends.get(b.name) is not b]
        for backend in stale:
            self._tasks.pop(backend).cancel()
            self._locks.pop(backend, None)
        for backend in fleet.backends.values():
            self._start(backend)

    async def _run(self, backend: Backend) -> None:
        while True:
            try:
                await self.refresh(backend)
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive any single bad answer
                log.exception("poller for %s failed; retrying", backend.name)
            await asyncio.sleep(self.current().config.poll_interval)

    # -- polling -------------------------------------------------------------------------------

    async def refresh(self, backend: Backend, fleet: Fleet | None = None) -> BackendStatus:
        """Poll `backend` now and publish what was seen (to `fleet`, by default the current one).
        Polls of one backend run one at a time."""

        requested_at = time.time()
        lock = self._locks.setdefault(backend, asyncio.Lock())
        async with lock:
            if backend.status.checked_at >= requested_at:
                return backend.status  # a poll that started after we asked just finished: share it
            old = backend.status
            breaker = self.breaker(backend)
            started = time.time()
            try:
                async with asyncio.timeout(self.timeout):
                    status = await self._probe(backend)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                status = old.down(describe(exc, self.timeout))
            # an open circuit stays open until its cool-down is over, however well the backend polls
            if status.healthy and breaker.may_probe() and breaker.probe_succeeded():
                log.info("backend %s: cool-down over, half-open (one request per model at a time)", backend.name)
            status = replace(status, checked_at=started, breaker=breaker.state,
                             healthy_since=(old.healthy_since or started) if status.healthy else None)
            self._log_transition(backend, old, status)
            (fleet or self.fleet).set_status(backend, status)
            return status

    async def refresh_all(self, backends=None, *, fleet: Fleet | None = None, max_age: float = 0.0) -> None:
        """Refresh several backends at once (all of the fleet by default), bounded by the timeout.
        Backends checked less than `max_age` seconds ago are left alone, so a burst of routing
        misses costs the backends one poll, not one per request."""

        now = time.time()
        targets = [
            b for b in (backends if backends is not None else self.fleet.backends.values())
            if now - b.status.checked_at >= max_age
        ]
        await asyncio.gather(*(self.refresh(b, fleet) for b in targets), return_exceptions=True)

    def refresh_soon(self, backend: Backend) -> None:
        """Refresh in the background (after a cold load or unload the loaded list changed)."""

        task = asyncio.create_task(self.refresh(backend), name=f"refresh {backend.name}")
        self._soon.add(task)
        task.add_done_callback(self._soon.discard)

    def breaker(self, backend: Backend) -> Breaker:
        config = self.current().config
        found = self._breakers.get(backend.name)
        if found is None:
            found = self._breakers[backend.name] = Breaker(config.breaker_threshold, config.breaker_cooldown)
        else:
            found.configure(config.breaker_threshold, config.breaker_cooldown)
        return found

    def report_failure(self, backend: Backend, reason: str) -> None:
        """A request failed on `backend` in transport (unreachable, reset, broke off mid-stream,
        a proxy's 502/504). An open circuit takes it out of routing; while it answers its polls
        its models stay listed."""

        breaker = self.breaker(backend)
        if breaker.failure(reason=reason):
            log.warning("backend %s: circuit open for %.0fs after repeated failures (last: %s)", backend.name,
                        breaker.remaining(), reason)
            self.fleet.set_status(backend, replace(backend.status, breaker=breaker.state))

    def report_success(self, backend: Backend) -> None:
        breaker = self.breaker(backend)
        if breaker.success():
            log.info("backend %s: circuit closed again, full slots restored", backend.name)
            self.fleet.set_status(backend, replace(backend.status, breaker=breaker.state))

    def mark_down(self, backend: Backend, error: str) -> None:
        """A request just failed to connect: stop routing there now; the poller lets it back."""

        if backend.status.healthy:
            status = backend.status.down(error)
            self._log_transition(backend, backend.status, status)
            self.fleet.set_status(backend, status)

    async def _probe(self, backend: Backend) -> BackendStatus:
        if backend.config.is_ollama:
            return await self._probe_ollama(backend)
        return await self._probe_openai(backend)

    async def _get_json(self, backend: Backend, path: str):
        url = backend.config.url + path
        async with self.session.get(url, headers=request_headers(backend)) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise aiohttp.ClientResponseError(
                    resp.request_info, resp.history, status=resp.status,
                    message=f"GET {path} answered {resp.status}: {body[:200].decode(errors='replace')}",
                )
            return orjson.loads(body)

    async def _probe_ollama(self, backend: Backend) -> BackendStatus:
        tags, ps, version = await asyncio.gather(
            self._get_json(backend, "/api/tags"),
            self._get_json(backend, "/api/ps"),
            self._get_json(backend, "/api/version"),
        )
        tag_list = tuple(m for m in (tags.get("models") or []) if isinstance(m, dict))
        ps_list = tuple(m for m in (ps.get("models") or []) if isinstance(m, dict))
        now = time.time()
        loaded = {}
        for entry in ps_list:
            expiry = parse_expiry(entry.get("expires_at"))
            if expiry > now:
                loaded[normalize_model(_model_name(entry))] = expiry
        return BackendStatus(
            healthy=True,
            models=frozenset(normalize_model(_model_name(m)) for m in tag_list if _model_name(m)),
            loaded=MappingProxyType(loaded),
            tags=tag_list,
            ps=ps_list,
            version=str(version.get("version")) if isinstance(version, dict) else None,
            error=None,
        )

    async def _probe_openai(self, backend: Backend) -> BackendStatus:
        """OpenAI-compatible servers list what they serve at /models: all of it loaded, except
        what llama-server's router mode says is not (see openai_models)."""

        listing = await self._get_json(backend, "/models")
        entries = tuple(m for m in listing.get("data") or [] if isinstance(m, dict) and isinstance(m.get("id"), str)
                        and m["id"])
        await self.facts.refresh(backend, entries, lambda path: self._get_json(backend, path), self.timeout / 2)
        return BackendStatus(
            healthy=True, models=frozenset(normalize_model(m["id"]) for m in entries),
            loaded=MappingProxyType(dict.fromkeys(loaded_models(entries), NEVER)), tags=entries, error=None,
        )

    def _log_transition(self, backend: Backend, old: BackendStatus, new: BackendStatus) -> None:
        if new.healthy and not old.healthy:
            log.info("backend %s (%s) is up: version %s, %s, %d loaded", backend.name, backend.config.url,
                     new.version or "?", counted(len(new.models), "model"), len(new.loaded))
        elif not new.healthy and (old.healthy or old.checked_at == 0.0):
            log.warning("backend %s (%s) is down: %s", backend.name, backend.config.url, new.error)


def _model_name(entry: dict) -> str:
    name = entry.get("model") or entry.get("name") or ""
    return name if isinstance(name, str) else ""
