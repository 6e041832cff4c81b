"""The cold-load rule (issue 13, item 8): a second load of a cold model starts when a request
would wait longer where it is loading than a load takes; never more than `cold_load_spread`
(default 2) at once. The policy is a pure function: driven here with learned times."""

from __future__ import annotations

import time

from nomyo.config import build_config
from nomyo.fleet import Fleet, RouteOption
from nomyo.policy import make_policy
from tests.test_table import backend

MODEL = "llama3:latest"


class Learned:
    """Load and run times as the table would have learned them."""

    def __init__(self, load=None, run=None, waiting=0, since=None):
        self.load, self.run, self.queue, self.since = load, run, waiting, since or {}

    def load_time(self, key):
        return self.load

    def run_time(self, model):
        return self.run

    def waiting(self, model):
        return self.queue

    def loading_since(self, key):
        return self.since.get(key[0])


def options(*backends) -> list[RouteOption]:
    return list(Fleet(backends).options(MODEL))


def test_the_default_cap_is_two():
    assert build_config({"endpoints": ["http://127.0.0.1:11434"]}, "t.yaml").cold_load_spread == 2
    assert make_policy("loaded-first").cold_load_spread == 2


def test_a_queue_behind_a_load_just_started_starts_a_second_load():
    """a started loading (2 slots, both taken) a moment ago; a load takes 1.5 s, a request runs
    0.2 s: the next request would wait 1.5 s + its turn, so b loads the model too."""
    now = time.time()
    choice = make_policy("loaded-first").choose(
        options(backend("a", slots=2), backend("b", slots=2)), {("a", MODEL): 2}, {"a": 2}, now,
        Learned(load=1.5, run=0.2, since={"a": now - 0.05}))
    assert choice is not None and choice.name == "b"


def test_a_load_nearly_done_is_waited_for():
    """The same, but a has been loading for 1.4 s: 0.1 s left plus a share of the queue is
    quicker than a 1.5 s load elsewhere, so the request waits."""
    now = time.time()
    choice = make_policy("loaded-first").choose(
        options(backend("a", slots=2), backend("b", slots=2)), {("a", MODEL): 2}, {"a": 2}, now,
        Learned(load=1.5, run=0.2, waiting=1, since={"a": now - 1.4}))
    assert choice is None


def test_never_more_loads_than_the_cap():
    now = time.time()
    busy = {("a", MODEL): 2, ("b", MODEL): 2}
    choice = make_policy("loaded-first").choose(
        options(backend("a", slots=2), backend("b", slots=2), backend("c", slots=2)), busy, {"a": 2, "b": 2}, now,
        Learned(load=1.5, run=5.0, waiting=20, since={"a": now, "b": now}))
    assert choice is None
    spread_three = make_policy("loaded-first", cold_load_spread=3).choose(
        options(backend("a", slots=2), backend("b", slots=2), backend("c", slots=2)), busy, {"a": 2, "b": 2}, now,
        Learned(load=1.5, run=5.0, waiting=20, since={"a": now, "b": now}))
    assert spread_three is not None and spread_three.name == "c"
