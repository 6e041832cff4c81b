"""The slot ledger: the one owner of slot counts, leases and the wait queue.

Routing and handlers depend only on the `Ledger` interface: async `acquire` (choose a backend and
reserve its slot in one step, or wait in the bounded queue) and an async `release` on the lease,
plus live counts for the policy and the views. `LocalLedger` is the in-process implementation:
choosing and reserving happen in one critical section (no await inside), so two requests never
take the same last slot. When every candidate is saturated the request waits in a FIFO per
model; a released slot is handed directly to the oldest waiter that can use it, so a waiter never
loses its turn to a newcomer and nothing ever exceeds a backend's slots. Another implementation
(a ledger shared through Redis) can take its place without touching routing or handlers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .call import Reach
from .errors import RouterError, model_not_found, server_busy
from .fleet import Backend, RouteOption
from .learned import LearnedTimes
from .runtime import Runtime

log = logging.getLogger("nomyo.ledger")


@dataclass(frozen=True, slots=True)
class SlotRequest:
    """What a call asks the ledger for: a slot for `model` under the call's runtime (its fleet,
    policy and queue limits), on a backend kind it may use, not on the backends in `exclude`
    (a retry after they failed this call)."""

    model: str
    runtime: Runtime
    reach: Reach = Reach.ANY
    exclude: frozenset[str] = frozenset()
    caller: str | None = None

    @property
    def queue_key(self) -> tuple[str, Reach, frozenset[str]]:
        """Requests that any freed slot serves alike wait in one queue, in order."""

        return self.model, self.reach, self.exclude


class Lease(Protocol):
    """One reserved slot on (backend, model); released exactly once however the call ends."""

    backend: Backend
    model: str

    async def release(self) -> None: ...


class Ledger(Protocol):
    """Slot counts, leases and the wait queue, behind which implementation the daemon runs."""

    learned: LearnedTimes

    async def acquire(self, request: SlotRequest) -> Lease: ...

    def decide(self, request: SlotRequest) -> RouteOption | None: ...

    def on_change(self, listener: Callable[[], None]) -> None: ...

    def recheck_waiters(self) -> None: ...

    @property
    def queued(self) -> int: ...

    def inflight(self, backend: str, model: str) -> int: ...

    def total_inflight(self) -> int: ...

    def usage(self) -> dict: ...


class LocalLease:
    """A slot of the in-process ledger."""

    __slots__ = ("_released", "backend", "ledger", "model")

    def __init__(self, ledger: LocalLedger, backend: Backend, model: str):
        self.ledger = ledger
        self.backend = backend
        self.model = model
        self._released = False

    async def release(self) -> None:
        self.release_now()

    def release_now(self) -> None:
        if not self._released:
            self._released = True
            self.ledger._release(self)


class LocalLedger:
    """Slot counts per (backend, model), total load per backend, and the bounded wait queue."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._inflight: dict[tuple[str, str], int] = {}
        self._load: dict[str, int] = {}
        self._waiters: dict[tuple, deque[tuple[SlotRequest, asyncio.Future]]] = {}
        self._queued = 0
        self._listeners: list[Callable[[], None]] = []
        self._loading_since: dict[tuple[str, str], float] = {}  # when a load's first request was placed
        self.learned = LearnedTimes(self.waiting, self._loading_since.get)

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever a slot is taken or freed, or the queue changes."""

        self._listeners.append(listener)

    # -- leases --------------------------------------------------------------------------------

    async def acquire(self, request: SlotRequest) -> LocalLease:
        """Reserve a slot, waiting up to the runtime's `queue_timeout`.

        Raises RouterError: 404 when no backend has the model, 503 when none that has it is
        reachable or when the queue is full or the wait timed out."""

        config = request.runtime.config
        async with self._lock:
            lease = self._try_reserve(request)
            if lease is not None:
                return lease
            if self._queued >= config.max_queue:
                raise server_busy(retry_after=2)
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(request.queue_key, deque()).append((request, waiter))
            self._queued += 1
            self._changed()
            log.debug("no free slot for %s: queued (%d waiting in all)", request.model, self._queued)
        return await self._wait(request, waiter, config.queue_timeout)

    async def _wait(self, request: SlotRequest, waiter: asyncio.Future, timeout: float) -> LocalLease:
        delivered = False
        try:
            async with asyncio.timeout(timeout):
                lease = await waiter
            delivered = True
            return lease
        except TimeoutError:
            log.debug("gave up waiting for a slot for %s after %gs", request.model, timeout)
            raise server_busy(retry_after=max(1, int(timeout // 10))) from None
        finally:
            self._leave_queue(request, waiter, delivered)

    def _leave_queue(self, request: SlotRequest, waiter: asyncio.Future, delivered: bool) -> None:
        """Leave the queue. A slot handed over at the very moment the caller gave up (timeout or
        cancellation) is released again, so it is never lost."""

        queue = self._waiters.get(request.queue_key)
        entry = (request, waiter)
        if queue is not None and entry in queue:
            queue.remove(entry)
            self._queued -= 1
            if not queue:
                del self._waiters[request.queue_key]
            self._changed()
        if not waiter.done():
            waiter.cancel()
        elif not delivered and not waiter.cancelled() and waiter.exception() is None:
            waiter.result().release_now()

    def decide(self, request: SlotRequest) -> RouteOption | None:
        """The policy's choice now (None: it would wait), without reserving.
        Raises RouterError when no healthy backend has the model."""

        runtime = request.runtime
        options = runtime.fleet.options(request.model, request.reach)
        if request.exclude:
            options = tuple(o for o in options if o.name not in request.exclude)
        if not options:
            raise _why_none(runtime, request)
        return runtime.policy.choose(options, self._inflight, self._load, time.time(), self.learned)

    def _try_reserve(self, request: SlotRequest) -> LocalLease | None:
        choice = self.decide(request)
        return None if choice is None else self._reserve(choice.backend, request.model)

    def _reserve(self, backend: Backend, model: str) -> LocalLease:
        key = (backend.name, model)
        if key not in self._inflight and not backend.status.is_loaded(model, time.time()):
            self._loading_since[key] = time.time()
        self._inflight[key] = self._inflight.get(key, 0) + 1
        self._load[backend.name] = self._load.get(backend.name, 0) + 1
        self._changed()
        return LocalLease(self, backend, model)

    def _release(self, lease: LocalLease) -> None:
        key = (lease.backend.name, lease.model)
        _decrement(self._inflight, key)
        if key not in self._inflight:
            self._loading_since.pop(key, None)
        _decrement(self._load, lease.backend.name)
        self._changed()
        for key in [k for k in self._waiters if k[0] == lease.model]:
            self._hand_over(key)

    # -- waking waiters ------------------------------------------------------------------------

    def _hand_over(self, key: tuple) -> None:
        """Give free slots for the model of `key` to its oldest waiters, in order."""

        queue = self._waiters.get(key)
        while queue:
            request, waiter = queue[0]
            if waiter.done():
                queue.popleft()
                self._queued -= 1
                continue
            try:
                lease = self._try_reserve(request)
            except RouterError as exc:
                self._fail_all(key, exc)
                return
            if lease is None:
                return
            queue.popleft()
            self._queued -= 1
            waiter.set_result(lease)
            log.debug("slot on %s for %s handed to the oldest waiter", lease.backend.name, request.model)
        if queue is not None and not queue:
            self._waiters.pop(key, None)

    def _fail_all(self, key: tuple, error: RouterError) -> None:
        for _request, waiter in self._waiters.pop(key, ()):
            self._queued -= 1
            if not waiter.done():
                waiter.set_exception(error)

    def recheck_waiters(self) -> None:
        """The fleet changed (a backend came up, a model appeared, or everything went down)."""

        for key in list(self._waiters):
            self._hand_over(key)
        self._changed()

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    # -- views -----------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return self._queued

    def waiting(self, model: str) -> int:
        return sum(len(queue) for key, queue in self._waiters.items() if key[0] == model)

    def inflight(self, backend: str, model: str) -> int:
        return self._inflight.get((backend, model), 0)

    def total_inflight(self) -> int:
        return sum(self._inflight.values())

    def usage(self) -> dict:
        """In-flight per backend and model, and waiters per model (for /api/usage and the SSE)."""

        per_backend: dict[str, dict[str, int]] = {}
        for (backend, model), count in self._inflight.items():
            per_backend.setdefault(backend, {})[model] = count
        queued: dict[str, int] = {}
        for (model, _reach, _exclude), queue in self._waiters.items():
            queued[model] = queued.get(model, 0) + len(queue)
        return {"usage_counts": per_backend, "queued": queued, "queued_total": self._queued}


def _decrement(counts: dict, key) -> None:
    remaining = counts.get(key, 0) - 1
    if remaining > 0:
        counts[key] = remaining
    else:
        counts.pop(key, None)


def _why_none(runtime: Runtime, request: SlotRequest) -> RouterError:
    fleet = runtime.fleet
    unreachable = [b.name for b in fleet.with_model(request.model) if request.reach.admits(b.config.is_ollama)]
    if unreachable:
        return RouterError(503, f"model '{request.model}' is only available on unreachable backends "
                                f"({', '.join(unreachable)})", headers={"Retry-After": "5"},
                           code="backend_unavailable")
    if not fleet.healthy():
        return RouterError(503, "no backend is reachable", headers={"Retry-After": "5"}, code="backend_unavailable")
    return model_not_found(request.model)
