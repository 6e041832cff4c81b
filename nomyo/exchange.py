"""The exchange pipeline: one call, routed, sent, relayed into a sink, and accounted.

`Pipeline.exchange(call, sink)` is the path of every routed request, a client's or the router's
own: a slot from the ledger (the policy decides on a snapshot), the plan for the chosen backend
(relay or translate), the upstream call, the answer through the one stream loop or as a whole
into the sink, and the slot given back however it ends. Before the first byte reached the caller,
a backend that cannot be reached (or does not start answering in time) is marked down, one that
answers 503 "busy" is left out, and the call goes to the next best backend after a short
jittered pause, at most MAX_ATTEMPTS times. After the first byte, a failure ends the stream with
an error line. The call's outcome is written here, and only here, for every routed exchange.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import aiohttp

from .call import Call, Outcome
from .errors import RouterError, model_not_found
from .fleet import Backend
from .ledger import Lease, Ledger, SlotRequest
from .openai_models import note_answer
from .plans import Whole, plan_for
from .poller import Poller
from .sinks import Sink
from .stream import BACKEND_FAILED, CLIENT_GONE, OK, Ending, pump
from .upstream import BackendBusy, BackendUnreachable, IdleWatch, describe, open_upstream

log = logging.getLogger("nomyo.exchange")
MAX_ATTEMPTS = 3
# Until the poller reads the real expiry, a model that just answered is assumed loaded for
# Ollama's default keep-alive.
ASSUMED_KEEP_ALIVE = 300.0
TRANSPORT_STATUSES = (502, 504)  # a proxy's words for "the backend behind me is gone"


class Pipeline:
    """Routes and relays calls over the daemon's shared parts: the ledger, the poller (backend
    state and breakers) and the one client session."""

    def __init__(self, ledger: Ledger, poller: Poller, session: aiohttp.ClientSession):
        self.ledger = ledger
        self.poller = poller
        self.session = session
        self.live: set[IdleWatch] = set()  # the streams being relayed now

    def interrupt_streams(self, reason: str) -> int:
        """End every stream being relayed with `reason` as its last line (the drain is over).
        Returns how many there were."""

        watches = list(self.live)
        for watch in watches:
            watch.interrupt(reason)
        return len(watches)

    async def exchange(self, call: Call, sink: Sink) -> None:
        """Serve `call` into `sink`. Raises RouterError when no answer could be had and nothing
        was sent yet; once the sink has started, the error is told inside the stream."""

        await sink.begin()
        try:
            await self._attempts(call, sink)
        except RouterError as exc:
            call.outcome.refused(exc)
            if not sink.started:
                raise
            await sink.fail(exc)
        finally:
            await sink.end()

    async def _attempts(self, call: Call, sink: Sink) -> None:
        tried = call.exclude
        last_failure: RouterError | None = None
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                lease = await self.acquire(call, tried)
            except RouterError:
                if last_failure is None:
                    raise
                raise last_failure from None  # nobody else has the model: say what failed
            try:
                await self._attempt(call, lease, sink)
                return
            except (BackendUnreachable, BackendBusy) as exc:
                last_failure = self._failure(lease.backend, exc, attempt)
                tried |= {lease.backend.name}
                if attempt == MAX_ATTEMPTS:
                    raise last_failure from None
                log.debug("%s: failing over from %s to another backend", call.key, lease.backend.name)
            finally:
                await lease.release()
            await asyncio.sleep(random.uniform(0.01, 0.05) * attempt)

    async def acquire(self, call: Call, exclude: frozenset[str] = frozenset()) -> Lease:
        """A slot for the call's model. On a routing miss the backends are asked again at once
        (the model may have been pulled on a backend directly a moment ago) before answering
        404/503; a 404 names the model as the caller spelled it."""

        request = SlotRequest(call.key, call.runtime, call.reach, exclude, call.outcome.caller)
        started = time.perf_counter()
        try:
            try:
                lease = await self.ledger.acquire(request)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("%s", explain(request, lease, self.ledger))
                return lease
            except RouterError as exc:
                if exc.status not in (404, 503) or exc.code == "server_busy":
                    raise
            await self.poller.refresh_all(max_age=0.5)
            try:
                return await self.ledger.acquire(request)
            except RouterError as exc:
                raise model_not_found(call.model) if exc.status == 404 else exc from None
        finally:
            waited = time.perf_counter() - started
            call.outcome.queue_wait = (call.outcome.queue_wait or 0.0) + waited

    async def _attempt(self, call: Call, lease: Lease, sink: Sink) -> None:
        backend, outcome = lease.backend, call.outcome
        outcome.backend, outcome.model_key = backend.name, call.key
        was_loaded = backend.status.is_loaded(call.key, time.time())
        started = time.monotonic()
        try:
            await self._send(call, backend, sink)
        except RouterError as exc:
            if exc.status in TRANSPORT_STATUSES:  # the backend failed in a way no retry can fix now
                outcome.kind = outcome.kind or "backend-failed"
                self.poller.report_failure(backend, exc.message)
            raise
        self._after(call, backend, was_loaded, time.monotonic() - started)

    async def _send(self, call: Call, backend: Backend, sink: Sink) -> None:
        plan = plan_for(call, backend)
        prepared = plan.prepare()
        if isinstance(prepared, Whole):  # the router answers for the backend (e.g. a load)
            await self._deliver(call, prepared, sink)
            return
        if prepared.early:
            await self._relay(call, backend, plan, prepared, sink)
            return
        limit = call.runtime.timing.response
        try:  # a whole answer: one limit for all of it (its headers come only at its end)
            async with asyncio.timeout(limit):
                await self._relay(call, backend, plan, prepared, sink)
        except TimeoutError:
            raise RouterError(504, f"backend {backend.name} did not answer within {limit:g}s",
                              code="backend_timeout") from None

    async def _relay(self, call: Call, backend: Backend, plan, prepared, sink: Sink) -> None:
        try:
            upstream = await open_upstream(self.session, backend, "POST", prepared.path, prepared.body,
                                           prepared.headers, call.runtime.timing, early=prepared.early)
        except aiohttp.ClientError as exc:
            raise RouterError(502, f"backend {backend.name} failed: {describe(exc)}") from None
        try:
            call.outcome.status = upstream.status
            framing = plan.framing(upstream)
            if framing is None:
                await self._deliver(call, await plan.whole(upstream), sink)
                return
            try:
                ending = await pump(upstream, framing, sink, call.outcome, call.runtime.timing.idle, backend.name,
                                    self.live)
            except asyncio.CancelledError:
                settle(call.outcome, Ending(CLIENT_GONE), framing.counts())
                raise
            settle(call.outcome, ending, framing.counts(), framing.load_seconds())
        finally:
            # Back to the pool when fully read; closed (the backend sees it) when it was cut short.
            upstream.release()

    async def _deliver(self, call: Call, whole: Whole, sink: Sink) -> None:
        outcome = call.outcome
        outcome.status, outcome.kind = whole.status, whole.kind
        outcome.count(whole.counts)
        outcome.load_seconds = whole.load_seconds
        if whole.as_stream:
            await sink.open(whole.status, whole.headers)
            await sink.close(whole.body, complete=True)
        else:
            await sink.whole(whole.status, whole.headers, whole.body)

    def _after(self, call: Call, backend: Backend, was_loaded: bool, seconds: float) -> None:
        """What the answer teaches: learned times, a model now loaded, the breaker's count."""

        outcome = call.outcome
        if outcome.kind == OK and not call.changes_loaded:
            self._learn(backend, call.key, outcome, seconds, was_loaded)
        if not was_loaded and not call.changes_loaded and outcome.status == 200:
            call.runtime.fleet.note_loaded(backend, call.key, time.time() + ASSUMED_KEEP_ALIVE)
        if call.changes_loaded or not was_loaded:
            self.poller.refresh_soon(backend)
        self._judge(backend, outcome)
        note_answer(self.poller.facts, backend, call.key, call.path, outcome.kind)

    def _learn(self, backend: Backend, model: str, outcome: Outcome, seconds: float, was_loaded: bool) -> None:
        """Remember how long loading and running took, for the next cold-load decision."""

        learned = self.ledger.learned
        loading = outcome.load_seconds or 0.0
        if not was_loaded and loading > 0.05:
            learned.learn_load(backend.name, model, loading)
        learned.learn_run(model, max(0.0, seconds - loading))

    async def unleased(self, call: Call, backends: list[Backend], sink: Sink) -> None:
        """A call that takes no model slot (e.g. /api/show): to the first reachable backend."""

        last: Exception | None = None
        for backend in backends[:MAX_ATTEMPTS]:
            call.outcome.backend = backend.name
            try:
                await self._send(call, backend, sink)
                return
            except (BackendUnreachable, BackendBusy) as exc:
                if isinstance(exc, BackendUnreachable):
                    self.poller.mark_down(backend, exc.reason)
                last = exc
        raise RouterError(502, str(last) if last else "no backend is reachable", code="backend_unreachable")

    def _failure(self, backend: Backend, exc: Exception, attempt: int) -> RouterError:
        """Account for a failed attempt; the error the caller gets if no other attempt works."""

        log.warning("%s (attempt %d of %d)", exc, attempt, MAX_ATTEMPTS)
        if isinstance(exc, BackendBusy):
            headers = {"Retry-After": exc.retry_after or "1"}
            return RouterError(503, exc.message, headers=headers, code="backend_busy")
        self.poller.mark_down(backend, exc.reason)
        self.poller.report_failure(backend, exc.reason)
        return RouterError(502, str(exc), code="backend_unreachable")

    def _judge(self, backend: Backend, outcome: Outcome) -> None:
        """Feed the backend's circuit breaker with how this call went. Only transport failures
        count against a backend: a stream that broke off, went silent or ended short, and the
        502/504 a proxy in front of a dead backend answers. An answer the backend gives in its
        own words (an error status with an error body, an error line in a stream) is that
        request's failure (a client asking for too much memory must not take a backend out)."""

        status = outcome.status or 0
        if outcome.kind == BACKEND_FAILED or status in TRANSPORT_STATUSES:
            reason = outcome.error or (f"answered {status}" if status in TRANSPORT_STATUSES else outcome.kind)
            self.poller.report_failure(backend, reason or "failed")
        elif status < 400:
            self.poller.report_success(backend)


def explain(request: SlotRequest, lease: Lease, ledger: Ledger) -> str:
    """A routing decision in words, for the debug log: the candidates as the policy saw them
    (slots in use before this call took its own / slots, loaded or not), and the choice."""

    now = time.time()
    options = request.runtime.fleet.options(request.model, request.reach)
    seen = []
    for option in options:
        busy = ledger.inflight(option.name, request.model) - (option.backend is lease.backend)
        state = "loaded" if option.loaded_until > now else ("loading" if busy else "not loaded")
        seen.append(f"{option.name} {busy}/{option.slots} {state}")
    excluded = f"; excluded {', '.join(sorted(request.exclude))}" if request.exclude else ""
    return (f"route {request.model} ({request.runtime.policy.name}): {lease.backend.name} chosen "
            f"among [{'; '.join(seen)}]{excluded}")


def settle(outcome: Outcome, ending: Ending, counts: tuple[int, int], load_seconds: float | None = None) -> None:
    """Record how a stream ended."""

    outcome.kind = ending.kind
    outcome.error = ending.reason
    outcome.count(counts)
    if load_seconds is not None:
        outcome.load_seconds = load_seconds
