"""Routing policies: pure functions from a snapshot of candidates to a choice.

A policy sees, for one model, every healthy backend that advertises it with its in-flight count
on that model, its slot limit, its total load and whether the model is loaded there. It does no
I/O and keeps no state, so a decision is a few microseconds and trivially testable. Later
policies plug in through `make_policy`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .fleet import Backend


@dataclass(slots=True)
class Candidate:
    """One backend as seen for one model at the moment of a decision."""

    backend: Backend
    loaded: bool
    inflight: int
    slots: int
    backend_load: int

    @property
    def has_free_slot(self) -> bool:
        return self.inflight < self.slots


class Policy(Protocol):
    """Choose a candidate with a free slot, or None to make the request wait."""

    name: str

    def choose(self, candidates: Sequence[Candidate]) -> Candidate | None: ...


class LoadedFirst:
    """Where the model is loaded and a slot is free (fewest in flight first); else where it is
    advertised and a slot is free (least total load first, so a cold load lands on the idlest
    machine); else nothing, and the request waits rather than overloading a backend."""

    name = "loaded-first"

    def choose(self, candidates: Sequence[Candidate]) -> Candidate | None:
        best: Candidate | None = None
        best_key: tuple[int, int, int] | None = None
        for c in candidates:
            if c.inflight >= c.slots:
                continue
            key = (0, c.inflight, c.backend_load) if c.loaded else (1, c.backend_load, c.inflight)
            if best_key is None or key < best_key:
                best, best_key = c, key
        return best


POLICIES = {LoadedFirst.name: LoadedFirst}


def make_policy(name: str) -> Policy:
    """The policy named in the configuration (`routing_policy`)."""

    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown routing policy {name!r}; known: {', '.join(POLICIES)}") from None
