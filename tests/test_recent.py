"""The dashboard's "models now": a bounded rolling window of how each model answered lately."""

from __future__ import annotations

from nomyo.call import Outcome
from nomyo.recent import RecentCalls, percentile


def record(model: str | None = "llama3:latest", *, ttft: float | None = None, outcome: str = "ok",
           backend: str | None = "gpu") -> Outcome:
    done = Outcome(started_at=0.0)
    done.model_key, done.backend, done.kind, done.status = model, backend, outcome, 200
    done.first_byte_at = ttft
    return done


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_percentiles_of_streams_and_answers_per_model():
    """Ten streams with first tokens at 10..100 ms and one non-streamed answer: time to first
    token comes from the streams only, duration from all eleven."""

    recent = RecentCalls(clock=Clock())
    for i in range(1, 11):
        recent.observe(record(ttft=i / 100), seconds=i / 10)
    recent.observe(record(), seconds=5.0)
    recent.observe(record("qwen2:latest"), seconds=0.2)
    summary = recent.summary()
    assert list(summary) == ["llama3:latest", "qwen2:latest"]
    assert summary["llama3:latest"] == {"requests": 11, "ttft_p50": 0.05, "ttft_p95": 0.1,
                                        "duration_p50": 0.6, "duration_p95": 5.0}
    assert summary["qwen2:latest"] == {"requests": 1, "ttft_p50": None, "ttft_p95": None,
                                       "duration_p50": 0.2, "duration_p95": 0.2}


def test_only_good_routed_requests_count():
    recent = RecentCalls(clock=Clock())
    recent.observe(record(outcome="backend-error"), seconds=9.0)
    recent.observe(record(outcome="client-disconnected"), seconds=9.0)
    recent.observe(record(None, backend=None, outcome="rejected"), seconds=0.001)  # a bad request
    recent.observe(record(backend=None), seconds=0.001)  # never held a slot
    assert recent.summary() == {}


def test_the_window_is_bounded_in_time_and_size():
    """Old calls age out (and a model nobody asks for any more disappears); a busy model keeps
    only its latest `per_model` calls."""

    clock = Clock()
    recent = RecentCalls(window=60, per_model=5, clock=clock)
    recent.observe(record("old:latest"), seconds=1.0)
    for i in range(20):
        recent.observe(record(), seconds=float(i))
    assert recent.summary()["llama3:latest"]["requests"] == 5
    assert recent.summary()["llama3:latest"]["duration_p50"] == 17.0
    clock.now += 30
    recent.observe(record(), seconds=100.0)
    clock.now += 31  # the first twenty are older than the window now
    assert recent.summary() == {"llama3:latest": {"requests": 1, "ttft_p50": None, "ttft_p95": None,
                                                  "duration_p50": 100.0, "duration_p95": 100.0}}


def test_percentile_nearest_rank():
    assert percentile([], 0.5) is None
    assert percentile([1.0], 0.95) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile(list(range(1, 101)), 0.95) == 95
