"""The cost of one routing decision, measured in-process on a large synthetic fleet.

No network is involved: this is the CPU time the router spends per request choosing a backend
and reserving its slot, which sits on the hot path of every inference request.
"""

from __future__ import annotations

import statistics
import time
from types import MappingProxyType

from nomyo.call import Reach
from nomyo.config import Config, EndpointConfig
from nomyo.fleet import Backend, BackendStatus, Fleet
from nomyo.ledger import LocalLedger, SlotRequest
from nomyo.policy import make_policy
from nomyo.runtime import Runtime
from nomyo.upstream import Timing

BACKENDS = 50
MODELS = 100
MODEL = "m7:latest"


def synthetic_table(backends: int = BACKENDS, models: int = MODELS) -> tuple[LocalLedger, SlotRequest]:
    """`backends` healthy backends, each advertising `models` models with every third loaded:
    the ledger, and the request for one model under that runtime."""

    names = frozenset(f"m{j}:latest" for j in range(models))
    loaded = MappingProxyType({f"m{j}:latest": float("inf") for j in range(0, models, 3)})
    fleet = Fleet(
        Backend(EndpointConfig(name=f"b{i}", url=f"http://10.0.0.{i}:11434", max_concurrent_connections=4),
                BackendStatus(healthy=True, models=names, loaded=loaded, error=None, checked_at=time.time()))
        for i in range(backends)
    )
    config = Config(path=None, endpoints=(), max_queue=512, queue_timeout=5)
    runtime = Runtime(config=config, fleet=fleet, policy=make_policy("loaded-first"), timing=Timing())
    return LocalLedger(), SlotRequest(MODEL, runtime, Reach.ANY)


async def acquire_release_us(ledger: LocalLedger, request: SlotRequest, iterations: int) -> float:
    start = time.perf_counter()
    for _ in range(iterations):
        lease = await ledger.acquire(request)
        await lease.release()
    return (time.perf_counter() - start) / iterations * 1e6


def decision_us(ledger: LocalLedger, request: SlotRequest, iterations: int) -> float:
    """`ledger.decide(request)`: the decision without the reservation."""

    start = time.perf_counter()
    for _ in range(iterations):
        ledger.decide(request)
    return (time.perf_counter() - start) / iterations * 1e6


def choose_only_us(request: SlotRequest, iterations: int) -> float:
    """The policy alone, on the fleet's precomputed options and empty counts."""

    options = request.runtime.fleet.options(MODEL)
    policy = request.runtime.policy
    now = time.time()
    start = time.perf_counter()
    for _ in range(iterations):
        policy.choose(options, {}, {}, now)
    return (time.perf_counter() - start) / iterations * 1e6


async def measure_routing(iterations: int, repeats: int = 5) -> dict[str, float]:
    """Median over `repeats` of each timing, in µs per call."""

    ledger, request = synthetic_table()
    await acquire_release_us(ledger, request, iterations // 10)  # warm-up
    runs = {"acquire_release_us": [], "decision_us": [], "choose_only_us": []}
    for _ in range(repeats):
        runs["acquire_release_us"].append(await acquire_release_us(ledger, request, iterations))
        runs["decision_us"].append(decision_us(ledger, request, iterations))
        runs["choose_only_us"].append(choose_only_us(request, iterations))
    return {name: statistics.median(values) for name, values in runs.items()}
