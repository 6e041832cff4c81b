"""The in-process ledger as the table tests drive it: one runtime (fleet, policy and queue
limits) at a time, swapped like a reload swaps it, and slots asked for by model name."""

from __future__ import annotations

import contextlib

from nomyo.call import Reach
from nomyo.config import Config
from nomyo.fleet import Fleet
from nomyo.ledger import LocalLedger, SlotRequest
from nomyo.policy import Policy
from nomyo.runtime import Runtime
from nomyo.upstream import Timing


class ConnectionTable:
    def __init__(self, fleet: Fleet, policy: Policy, *, max_queue: int, queue_timeout: float):
        self.ledger = LocalLedger()
        self.set_fleet(fleet, policy, max_queue=max_queue, queue_timeout=queue_timeout)

    def set_fleet(self, fleet: Fleet, policy: Policy, *, max_queue: int, queue_timeout: float) -> None:
        config = Config(path=None, endpoints=(), max_queue=max_queue, queue_timeout=queue_timeout)
        self.runtime = Runtime(config=config, fleet=fleet, policy=policy, timing=Timing())
        fleet.on_change(self.ledger.recheck_waiters)
        self.ledger.recheck_waiters()

    @property
    def fleet(self) -> Fleet:
        return self.runtime.fleet

    def request(self, model: str, exclude: frozenset[str] = frozenset()) -> SlotRequest:
        return SlotRequest(model, self.runtime, Reach.ANY, exclude)

    async def acquire(self, model: str, exclude: frozenset[str] = frozenset()):
        return await self.ledger.acquire(self.request(model, exclude))

    @contextlib.asynccontextmanager
    async def lease(self, model: str):
        lease = await self.acquire(model)
        try:
            yield lease
        finally:
            await lease.release()

    def decide(self, model: str):
        return self.ledger.decide(self.request(model))

    def learn_run(self, model: str, seconds: float) -> None:
        self.ledger.learned.learn_run(model, seconds)

    def learn_load(self, backend: str, model: str, seconds: float) -> None:
        self.ledger.learned.learn_load(backend, model, seconds)

    def learned(self) -> dict:
        return self.ledger.learned.describe()

    def __getattr__(self, name: str):
        return getattr(self.ledger, name)
