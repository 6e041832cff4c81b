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


class Policy(Protocol):
    """Choose a backend for the model, or None to make the request wait for a slot."""

    name: str

    def choose(self, options: Sequence[RouteOption], inflight: Counts, load: Loads, now: float,
               learned: Learned | None = None) -> RouteOption | None: ...


class LoadedFirst:
    """1. Where the model is loaded and a slot is free, fewest in flight first.
    2. Where it is being loaded right now (a request is in flight there) and a slot is free: it
       will be ready soonest, and a second copy would cost a second load.
    3. Where it is only installed, least loaded backend first, but only while fewer than
       `cold_load_spread` loads of it are under way, so a burst for a cold model loads it once
       (or as many times as configured) instead of on every idle backend; and, when the model
       is loaded elsewhere but full, only if loading it there (as learned from `load_duration`)
       is quicker than waiting for a slot (as learned from how long requests for it run).
    4. Else nothing: the request waits rather than overloading a backend."""

    name = "loaded-first"

    def __init__(self, cold_load_spread: int = 1):
        self.cold_load_spread = cold_load_spread

    def choose(self, options, inflight, load, now, learned=None):
        loaded = loading = cold = None
        loaded_key = loading_key = cold_key = 0
        loads_under_way = warm_slots = 0
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
        if warm_slots and learned is not None and _waiting_is_quicker(cold, warm_slots, learned):
            return None
        return cold


def _waiting_is_quicker(cold: RouteOption, warm_slots: int, learned: Learned) -> bool:
    """Whether a slot where the model is loaded will free before a cold load there would finish:
    the queue ahead of this request, spread over the loaded slots, times how long a request runs,
    against how long this backend took to load the model. Unknown times: load (as without)."""

    model = cold.key[1]
    load_time, run_time = learned.load_time(cold.key), learned.run_time(model)
    if load_time is None or run_time is None:
        return False
    return run_time * (learned.waiting(model) + 1) / warm_slots < load_time


class OriginalLike:
    """What the original NOMYO Router does, kept for comparison (`make bench-fleet`): loaded with
    a free slot, else installed with a free slot, else the least busy backend anyway
    (overcommitting it). Cold bursts spread over every idle backend, each starting a load."""

    name = "original"

    def __init__(self, cold_load_spread: int = 1):
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


def make_policy(name: str, cold_load_spread: int = 1) -> Policy:
    """The policy named in the configuration (`routing_policy`)."""

    try:
        return POLICIES[name](cold_load_spread)
    except KeyError:
        raise ValueError(f"unknown routing policy {name!r}; known: {', '.join(POLICIES)}") from None
