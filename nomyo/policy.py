"""Routing policies: pure functions from a snapshot to a choice.

A policy sees, for one model, the healthy backends that advertise it (`RouteOption`s, built when
the fleet changes) and the live counts: in flight per (backend, model) and per backend. It does
no I/O, keeps no state and allocates nothing, so a decision over 50 backends costs a few
microseconds. New policies plug in through `make_policy`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from .fleet import RouteOption

Counts = Mapping[tuple[str, str], int]
Loads = Mapping[str, int]
# Orders (in flight, total load) in one integer, so comparisons allocate no tuples.
LOAD_WEIGHT = 1 << 20


class Learned(Protocol):
    """What the router has learned from answers: how long a model takes to load on a backend
    (Ollama's `load_duration`) and to run, and how many requests wait for a model."""

    def load_time(self, key: tuple[str, str]) -> float | None: ...

    def run_time(self, model: str) -> float | None: ...

    def waiting(self, model: str) -> int: ...

    def loading_since(self, key: tuple[str, str]) -> float | None: ...


class Policy(Protocol):
    """Choose a backend for the model, or None to make the request wait for a slot."""

    name: str

    def choose(self, options: Sequence[RouteOption], inflight: Counts, load: Loads, now: float,
               learned: Learned | None = None) -> RouteOption | None: ...


class LoadedFirst:
    """1. Where the model is loaded and a slot is free, fewest in flight first.
    2. Where it is being loaded right now (a request is in flight there) and a slot is free: it
       will be ready soonest, and a second copy would cost a second load.
    3. Where it is only installed, least loaded backend first, while fewer than
       `cold_load_spread` loads of it are under way (default 2), and only if the request would
       wait longer for a slot where the model is loaded or loading (what is left of the load
       under way, then its share of the queue ahead times how long a request runs) than a load
       there takes (both learned from answers). So a burst for a cold model starts a second
       load at once when the queue would outlast a load, and a handful of requests wait.
    4. Else nothing: the request waits rather than overloading a backend."""

    name = "loaded-first"

    def __init__(self, cold_load_spread: int = 2):
        self.cold_load_spread = cold_load_spread

    def choose(self, options, inflight, load, now, learned=None):
        loaded = loading = cold = None
        loaded_key = loading_key = cold_key = 0
        loads_under_way = warm_slots = loading_slots = 0
        for option in options:
            busy = inflight.get(option.key, 0)
            if option.loaded_until > now:
                warm_slots += option.slots
                if busy < option.slots:
                    key = busy * LOAD_WEIGHT + load.get(option.name, 0)
                    if loaded is None or key < loaded_key:
                        loaded, loaded_key = option, key
            elif busy:
                loads_under_way += 1
                loading_slots += option.slots
                if busy < option.slots:
                    key = busy * LOAD_WEIGHT + load.get(option.name, 0)
                    if loading is None or key < loading_key:
                        loading, loading_key = option, key
            else:
                key = load.get(option.name, 0)
                if cold is None or key < cold_key:
                    cold, cold_key = option, key
        if loaded is not None:
            return loaded
        if loading is not None:
            return loading
        if cold is None or loads_under_way >= self.cold_load_spread:
            return None
        if (warm_slots or loads_under_way) and learned is not None and \
                _waiting_is_quicker(cold, options, inflight, now, warm_slots, loading_slots, learned):
            return None
        return cold


def _waiting_is_quicker(cold: RouteOption, options: Sequence[RouteOption], inflight: Counts, now: float,
                        warm_slots: int, loading_slots: int, learned: Learned) -> bool:
    """Whether this request gets a slot where the model is loaded or loading before a load on
    `cold` would be done: what is left of the soonest load under way (none if the model is
    loaded somewhere), then the queue ahead of it spread over those slots times how long a
    request runs, against how long a load takes. Unknown times: load (a load elsewhere costs
    what the one under way costs, and the queue comes on top)."""

    model = cold.key[1]
    load_time = _load_time(cold, options, learned)
    run_time = learned.run_time(model)
    if load_time is None or (run_time is None and warm_slots):
        return False
    left = 0.0 if warm_slots else min(
        _load_left(o, now, load_time, learned) for o in options if o.loaded_until <= now and inflight.get(o.key, 0))
    wait = left + (run_time or 0.0) * (learned.waiting(model) + 1) / (warm_slots + loading_slots)
    return wait < load_time


def _load_time(cold: RouteOption, options: Sequence[RouteOption], learned: Learned) -> float | None:
    """How long loading the model on `cold` takes: as learned there, else as elsewhere."""

    known = learned.load_time(cold.key)
    if known is not None:
        return known
    elsewhere = [t for t in (learned.load_time(o.key) for o in options) if t is not None]
    return sum(elsewhere) / len(elsewhere) if elsewhere else None


def _load_left(option: RouteOption, now: float, load_time: float, learned: Learned) -> float:
    since = learned.loading_since(option.key)
    took = learned.load_time(option.key) or load_time
    return took if since is None else max(0.0, took - (now - since))


class OriginalLike:
    """What the original NOMYO Router does, kept for comparison (`make bench-fleet`): loaded with
    a free slot, else installed with a free slot, else the least busy backend anyway
    (overcommitting it). Cold bursts spread over every idle backend, each starting a load."""

    name = "original"

    def __init__(self, cold_load_spread: int = 2):
        del cold_load_spread  # the original has no such limit

    def choose(self, options, inflight, load, now, learned=None):
        best = None
        best_key = 0
        for option in options:
            busy = inflight.get(option.key, 0)
            tier = 0 if option.loaded_until > now and busy < option.slots else 1 if busy < option.slots else 2
            key = (tier * LOAD_WEIGHT + busy) * LOAD_WEIGHT + load.get(option.name, 0)
            if best is None or key < best_key:
                best, best_key = option, key
        return best


POLICIES = {LoadedFirst.name: LoadedFirst, OriginalLike.name: OriginalLike}


def make_policy(name: str, cold_load_spread: int = 2) -> Policy:
    """The policy named in the configuration (`routing_policy`)."""

    try:
        return POLICIES[name](cold_load_spread)
    except KeyError:
        raise ValueError(f"unknown routing policy {name!r}; known: {', '.join(POLICIES)}") from None
