"""The cost of one routing decision, measured in-process on a large synthetic fleet.

No network is involved: this is the CPU time the router spends per request choosing a backend
and reserving its slot, which sits on the hot path of every inference request.
"""

from __future__ import annotations

import statistics
import time
from types import MappingProxyType

from nomyo.config import EndpointConfig
from nomyo.fleet import Backend, BackendStatus, Fleet
from nomyo.policy import make_policy
from nomyo.table import ConnectionTable

BACKENDS = 50
MODELS = 100
MODEL = "m7:latest"


def synthetic_table(backends: int = BACKENDS, models: int = MODELS) -> ConnectionTable:
    """`backends` healthy backends, each advertising `models` models with every third loaded."""

    names = frozenset(f"m{j}:latest" for j in range(models))
    loaded = MappingProxyType({f"m{j}:latest": float("inf") for j in range(0, models, 3)})
    fleet = Fleet(
        Backend(EndpointConfig(name=f"b{i}", url=f"http://10.0.0.{i}:11434", max_concurrent_connections=4),
                BackendStatus(healthy=True, models=names, loaded=loaded, error=None, checked_at=time.time()))
        for i in range(backends)
    )
    return ConnectionTable(fleet, make_policy("loaded-first"), max_queue=512, queue_timeout=5)


async def acquire_release_us(table: ConnectionTable, iterations: int) -> float:
    start = time.perf_counter()
    for _ in range(iterations):
        lease = await table.acquire(MODEL)
        lease.release()
    return (time.perf_counter() - start) / iterations * 1e6


def decision_us(table: ConnectionTable, iterations: int) -> float:
    """`table.decide(model)`: the decision without the reservation."""

    start = time.perf_counter()
    for _ in range(iterations):
        table.decide(MODEL)
    return (time.perf_counter() - start) / iterations * 1e6


def choose_only_us(table: ConnectionTable, iterations: int) -> float:
    """The policy alone, on the fleet's precomputed options and empty counts."""

    options = table.fleet.options(MODEL)
    now = time.time()
    start = time.perf_counter()
    for _ in range(iterations):
        table.policy.choose(options, {}, {}, now)
    return (time.perf_counter() - start) / iterations * 1e6


async def measure_routing(iterations: int, repeats: int = 5) -> dict[str, float]:
    """Median over `repeats` of each timing, in µs per call."""

    table = synthetic_table()
    await acquire_release_us(table, iterations // 10)  # warm-up
    runs = {"acquire_release_us": [], "decision_us": [], "choose_only_us": []}
    for _ in range(repeats):
        runs["acquire_release_us"].append(await acquire_release_us(table, iterations))
        runs["decision_us"].append(decision_us(table, iterations))
        runs["choose_only_us"].append(choose_only_us(table, iterations))
    return {name: statistics.median(values) for name, values in runs.items()}
