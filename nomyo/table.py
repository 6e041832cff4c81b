"""The connection table: the one owner of slot counts, leases and the wait queue.

Choosing a backend and reserving its slot happen in one critical section (no await inside), so
two requests can never take the same last slot. A slot is held by a `Lease`, released exactly
once however the request ends. When every candidate is saturated the request waits in a FIFO per
model; a released slot is handed directly to the oldest waiter that can use it, so a waiter never
loses its turn to a newcomer and nothing ever exceeds a backend's slots.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from .errors import RouterError, model_not_found, server_busy
from .fleet import Backend, Fleet, RouteOption, serves
from .policy import Policy

# Waiters queue per (model, native, excluded backends): each queue is served in order.
WaitKey = tuple[str, "bool | str", frozenset[str]]


class Lease:
    """One reserved slot on (backend, model). Use as `async with`, or call `release()`."""

    __slots__ = ("table", "backend", "model", "_released")

    def __init__(self, table: ConnectionTable, backend: Backend, model: str):
        self.table = table
        self.backend = backend
        self.model = model
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.table._release(self)

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.release()


class _LeaseScope:
    """Acquires in `__aenter__` (nothing is held if that fails) and releases in `__aexit__`."""

    __slots__ = ("table", "model", "native", "lease")

    def __init__(self, table: ConnectionTable, model: str, native: bool):
        self.table = table
        self.model = model
        self.native = native
        self.lease: Lease | None = None

    async def __aenter__(self) -> Lease:
        self.lease = await self.table.acquire(self.model, self.native)
        return self.lease

    async def __aexit__(self, *exc_info) -> None:
        self.lease.release()


class ConnectionTable:
    """Slot counts per (backend, model), total load per backend, and the bounded wait queue."""

    def __init__(self, fleet: Fleet, policy: Policy, *, max_queue: int, queue_timeout: float):
        self._lock = asyncio.Lock()
        self._inflight: dict[tuple[str, str], int] = {}
        self._load: dict[str, int] = {}
        self._waiters: dict[WaitKey, deque[asyncio.Future]] = {}
        self._queued = 0
        self._listeners: list[Callable[[], None]] = []
        self._load_times: dict[tuple[str, str], float] = {}  # kept across reloads: same names, same machines
        self._run_times: dict[str, float] = {}
        self._loading_since: dict[tuple[str, str], float] = {}  # when a load's first request was placed
        self.policy = policy
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.fleet = fleet
        fleet.on_change(self.recheck_waiters)

    # -- configuration -------------------------------------------------------------------------

    def set_fleet(self, fleet: Fleet, policy: Policy, *, max_queue: int, queue_timeout: float) -> None:
        """Adopt a reloaded fleet. Counts are keyed by backend name, so backends that stay keep
        their in-flight counts; leases on removed backends still release into the same dicts."""

        self.fleet = fleet
        self.policy = policy
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        fleet.on_change(self.recheck_waiters)
        self.recheck_waiters()

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever a slot is taken or freed, or the queue changes."""

        self._listeners.append(listener)

    # -- leases --------------------------------------------------------------------------------

    def lease(self, model: str, native: bool = False) -> _LeaseScope:
        """`async with table.lease(model) as lease:` reserves a slot and always gives it back."""

        return _LeaseScope(self, model, native)

    async def acquire(self, model: str, native: bool = False, exclude: frozenset[str] = frozenset()) -> Lease:
        """Reserve a slot for `model` (normalised name), waiting up to `queue_timeout`.
        `native` limits the choice to Ollama backends (for Ollama-only endpoints); `exclude`
        names backends not to use (a retry after they failed this request).

        Raises RouterError: 404 when no backend has the model, 503 when none that has it is
        reachable or when the queue is full or the wait timed out."""

        key = (model, native, exclude)
        async with self._lock:
            lease = self._try_reserve(*key)
            if lease is not None:
                return lease
            if self._queued >= self.max_queue:
                raise server_busy(retry_after=2)
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(key, deque()).append(waiter)
            self._queued += 1
            self._changed()
        return await self._wait(key, waiter)

    async def _wait(self, key: WaitKey, waiter: asyncio.Future) -> Lease:
        delivered = False
        try:
            async with asyncio.timeout(self.queue_timeout):
                lease = await waiter
            delivered = True
            return lease
        except TimeoutError:
            raise server_busy(retry_after=max(1, int(self.queue_timeout // 10))) from None
        finally:
            self._leave_queue(key, waiter, delivered)

    def _leave_queue(self, key: WaitKey, waiter: asyncio.Future, delivered: bool) -> None:
        """Leave the queue. A slot handed over at the very moment the caller gave up (timeout or
        cancellation) is released again, so it is never lost."""

        queue = self._waiters.get(key)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            self._queued -= 1
            if not queue:
                del self._waiters[key]
            self._changed()
        if not waiter.done():
            waiter.cancel()
        elif not delivered and not waiter.cancelled() and waiter.exception() is None:
            waiter.result().release()

    def decide(self, model: str, native: bool = False, exclude: frozenset[str] = frozenset()) -> RouteOption | None:
        """The policy's choice for `model` now (None: it would wait), without reserving.
        Raises RouterError when no healthy backend has the model."""

        options = self.fleet.options(model, native)
        if exclude:
            options = tuple(o for o in options if o.name not in exclude)
        if not options:
            raise self._why_none(model, native)
        return self.policy.choose(options, self._inflight, self._load, time.time(), self)

    def _try_reserve(self, model: str, native: bool, exclude: frozenset[str] = frozenset()) -> Lease | None:
        choice = self.decide(model, native, exclude)
        return None if choice is None else self._reserve(choice.backend, model)

    def _reserve(self, backend: Backend, model: str) -> Lease:
        key = (backend.name, model)
        if key not in self._inflight and not backend.status.is_loaded(model, time.time()):
            self._loading_since[key] = time.time()
        self._inflight[key] = self._inflight.get(key, 0) + 1
        self._load[backend.name] = self._load.get(backend.name, 0) + 1
        self._changed()
        return Lease(self, backend, model)

    def _release(self, lease: Lease) -> None:
        key = (lease.backend.name, lease.model)
        remaining = self._inflight.get(key, 0) - 1
        if remaining > 0:
            self._inflight[key] = remaining
        else:
            self._inflight.pop(key, None)
            self._loading_since.pop(key, None)
        load = self._load.get(lease.backend.name, 0) - 1
        if load > 0:
            self._load[lease.backend.name] = load
        else:
            self._load.pop(lease.backend.name, None)
        self._changed()
        for key in [k for k in self._waiters if k[0] == lease.model]:
            self._hand_over(key)

    # -- decisions -----------------------------------------------------------------------------

    def _why_none(self, model: str, native: bool) -> RouterError:
        unreachable = [b.name for b in self.fleet.with_model(model)
                       if serves(b, native)]
        if unreachable:
            return RouterError(503, f"model '{model}' is only available on unreachable backends "
                                    f"({', '.join(unreachable)})", headers={"Retry-After": "5"},
                               code="backend_unavailable")
        if not self.fleet.healthy():
            return RouterError(503, "no backend is reachable", headers={"Retry-After": "5"},
                               code="backend_unavailable")
        return model_not_found(model)

    # -- waking waiters ------------------------------------------------------------------------

    def _hand_over(self, key: WaitKey) -> None:
        """Give free slots for the model of `key` to its oldest waiters, in order."""

        queue = self._waiters.get(key)
        while queue:
            waiter = queue[0]
            if waiter.done():
                queue.popleft()
                self._queued -= 1
                continue
            try:
                lease = self._try_reserve(*key)
            except RouterError as exc:
                self._fail_all(key, exc)
                return
            if lease is None:
                return
            queue.popleft()
            self._queued -= 1
            waiter.set_result(lease)
        if queue is not None and not queue:
            self._waiters.pop(key, None)

    def _fail_all(self, key: WaitKey, error: RouterError) -> None:
        for waiter in self._waiters.pop(key, ()):
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

    # -- what was learned from answers (the policy's `Learned`) ---------------------------------

    def learn_load(self, backend: str, model: str, seconds: float) -> None:
        """Ollama reported how long loading `model` on `backend` took (`load_duration`)."""

        key = (backend, model)
        self._load_times[key] = _average(self._load_times.get(key), seconds)

    def learn_run(self, model: str, seconds: float) -> None:
        """A request for `model` held its slot for `seconds`."""

        self._run_times[model] = _average(self._run_times.get(model), seconds)

    def load_time(self, key: tuple[str, str]) -> float | None:
        return self._load_times.get(key)

    def run_time(self, model: str) -> float | None:
        return self._run_times.get(model)

    def loading_since(self, key: tuple[str, str]) -> float | None:
        return self._loading_since.get(key)

    def waiting(self, model: str) -> int:
        return sum(len(queue) for key, queue in self._waiters.items() if key[0] == model)

    def learned(self) -> dict:
        """Load and run times, for /api/config and the metrics."""

        return {"load_seconds": {f"{b}/{m}": round(t, 3) for (b, m), t in self._load_times.items()},
                "run_seconds": {m: round(t, 3) for m, t in self._run_times.items()}}

    # -- views -----------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return self._queued

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
        for (model, _native, _exclude), queue in self._waiters.items():
            queued[model] = queued.get(model, 0) + len(queue)
        return {"usage_counts": per_backend, "queued": queued, "queued_total": self._queued}


def _average(previous: float | None, seconds: float, weight: float = 0.3) -> float:
    """An exponentially weighted average: recent answers count most, one outlier does not rule."""

    return seconds if previous is None else previous + weight * (seconds - previous)
