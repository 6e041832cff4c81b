"""What the router learns from answers, for the next cold-load decision (the policy's `Learned`).

How long a model took to load on a backend (Ollama's `load_duration`) and how long a request for
it holds its slot. Kept across reloads: the same names are the same machines.
"""

from __future__ import annotations

from collections.abc import Callable


class LearnedTimes:
    """Load times per (backend, model) and run times per model, as weighted averages."""

    def __init__(self, waiting: Callable[[str], int],
                 loading_since: Callable[[tuple[str, str]], float | None] = lambda key: None):
        self._load_times: dict[tuple[str, str], float] = {}
        self._run_times: dict[str, float] = {}
        self._waiting = waiting  # how many requests wait for a model (the ledger knows)
        self._loading_since = loading_since  # when a load under way started (the ledger knows)

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

    def waiting(self, model: str) -> int:
        return self._waiting(model)

    def loading_since(self, key: tuple[str, str]) -> float | None:
        return self._loading_since(key)

    def describe(self) -> dict:
        """Load and run times, for /api/config and the metrics."""

        return {"load_seconds": {f"{b}/{m}": round(t, 3) for (b, m), t in self._load_times.items()},
                "run_seconds": {m: round(t, 3) for m, t in self._run_times.items()}}


def _average(previous: float | None, seconds: float, weight: float = 0.3) -> float:
    """An exponentially weighted average: recent answers count most, one outlier does not rule."""

    return seconds if previous is None else previous + weight * (seconds - previous)
