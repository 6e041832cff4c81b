"""One background task per backend keeps its models, loaded models, version and health fresh.

Routing never waits on the network: it reads what the poller last saw. The poller also answers
"refresh now" calls (after a routing miss, a model-management call, or a connection failure), so
a model pulled a moment ago is routable at once and a dead backend is out within one timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from datetime import datetime
from types import MappingProxyType

import aiohttp
import orjson

from .breaker import Breaker
from .fleet import Backend, BackendStatus, Fleet
from .names import normalize_model
from .openai_models import OpenAIFacts, loaded_models
from .upstream import describe

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


def auth_headers(backend: Backend) -> dict[str, str]:
    key = backend.config.api_key
    return {"Authorization": f"Bearer {key}"} if key else {}


class Poller:
    """Owns the polling tasks of the current fleet; `set_fleet` swaps them on reload."""

    def __init__(self, session: aiohttp.ClientSession, fleet: Fleet, *, interval: float, timeout: float,
                 user_agent: str = "nomyo-router", breaker_threshold: int = 3, breaker_cooldown: float = 10.0):
        self.session = session
        self.breaker_threshold = breaker_threshold
        self.breaker_cooldown = breaker_cooldown
        self._breakers: dict[str, Breaker] = {}  # by backend name: survives reloads
        self.user_agent = user_agent
        self.fleet = fleet
        self.interval = interval
        self.timeout = timeout
        self._tasks: dict[Backend, asyncio.Task] = {}
        self._locks: dict[Backend, asyncio.Lock] = {}
        self._soon: set[asyncio.Task] = set()
        self.facts = OpenAIFacts()  # what OpenAI-compatible backends tell beyond their listing

    # -- lifecycle -----------------------------------------------------------------------------

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

    async def set_fleet(self, fleet: Fleet, *, interval: float, timeout: float) -> None:
        """Poll the new fleet: tasks of backends that stay (same object) keep running."""

        self.interval, self.timeout = interval, timeout
        stale = [b for b in self._tasks if fleet.backends.get(b.name) is not b]
        for backend in stale:
            self._tasks.pop(backend).cancel()
            self._locks.pop(backend, None)
        self.fleet = fleet
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
            await asyncio.sleep(self.interval)

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
            if not breaker.may_probe():
                return old  # the circuit is open: it stays out until the cool-down is over
            started = time.time()
            try:
                async with asyncio.timeout(self.timeout):
                    status = await self._probe(backend)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                status = old.down(describe_failure(exc, self.timeout))
            if status.healthy:
                breaker.probe_succeeded()
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
        found = self._breakers.get(backend.name)
        if found is None:
            found = self._breakers[backend.name] = Breaker(self.breaker_threshold, self.breaker_cooldown)
        return found

    def report_failure(self, backend: Backend, reason: str) -> None:
        """A request failed on `backend` (unreachable, reset, 5xx, broke mid-stream)."""

        breaker = self.breaker(backend)
        if breaker.failure():
            error = (f"circuit open for {breaker.remaining():.0f}s after repeated failures "
                     f"(last: {reason})")
            log.warning("backend %s: %s", backend.name, error)
            status = backend.status.down(error)
            self.fleet.set_status(backend, replace(status, breaker=breaker.state))

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
        # identity: the shared session does not decompress (it relays bytes as they come)
        headers = {"User-Agent": self.user_agent, "Accept-Encoding": "identity", **auth_headers(backend)}
        async with self.session.get(url, headers=headers) as resp:
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
            log.info("backend %s (%s) is up: version %s, %d models, %d loaded", backend.name,
                     backend.config.url, new.version or "?", len(new.models), len(new.loaded))
        elif not new.healthy and (old.healthy or old.checked_at == 0.0):
            log.warning("backend %s (%s) is down: %s", backend.name, backend.config.url, new.error)


def _model_name(entry: dict) -> str:
    name = entry.get("model") or entry.get("name") or ""
    return name if isinstance(name, str) else ""


def describe_failure(exc: BaseException, timeout: float) -> str:
    """A one-line reason an operator can act on, without internals: what a poll adds to how
    any upstream call is described (its own timeout, a bad status, an answer that is not JSON)."""

    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.message
    if isinstance(exc, ValueError):
        return f"invalid answer: {exc}"
    return describe(exc)
