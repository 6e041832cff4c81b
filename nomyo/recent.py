"""How each model has been answering lately: time to first token and duration, p50 and p95.

Prometheus' histograms hold the same observations since the start, in fixed buckets, for a
scraper to difference; an operator looking at the dashboard wants "how is it right now". So the
metrics observation also hands every routed, successful request here, and a small rolling window
per model keeps the last few minutes (at most `per_model` requests each): memory stays bounded
whatever the traffic, and percentiles are exact over what is kept.

Only requests that held a slot of a backend for a model count (an unknown model, a 400 or a
failed request says nothing about how fast the model answers). Time to first token exists for
streams only; a non-streamed answer counts for duration alone.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

WINDOW_SECONDS = 300.0
PER_MODEL = 1000


def percentile(ordered: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when it is empty)."""

    if not ordered:
        return None
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


class RecentCalls:
    """Per model: (when, time to first token or None, duration) of its latest good requests."""

    def __init__(self, window: float = WINDOW_SECONDS, per_model: int = PER_MODEL,
                 clock: Callable[[], float] = time.monotonic):
        self.window = window
        self.per_model = per_model
        self.clock = clock
        self._calls: dict[str, deque[tuple[float, float | None, float]]] = {}

    def observe(self, outcome, seconds: float) -> None:
        """One finished request (`outcome`: its Outcome), from the metrics observation. A
        request whose kind nobody set ended as its status says."""

        kind = outcome.kind or ("ok" if (outcome.status or 500) < 400 else "error")
        if outcome.model_key is None or outcome.backend is None or kind != "ok":
            return
        calls = self._calls.get(outcome.model_key)
        if calls is None:
            calls = self._calls[outcome.model_key] = deque(maxlen=self.per_model)
        calls.append((self.clock(), outcome.ttfb, seconds))

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per model with requests in the window: their count, and p50/p95 of time to first token
        and of duration, in seconds."""

        since = self.clock() - self.window
        found = {}
        for model in list(self._calls):
            calls = self._calls[model]
            while calls and calls[0][0] < since:
                calls.popleft()
            if not calls:
                del self._calls[model]  # a model nobody asked for lately costs nothing
                continue
            ttfts = sorted(ttft for _, ttft, _ in calls if ttft is not None)
            durations = sorted(duration for _, _, duration in calls)
            found[model] = {"requests": len(calls),
                            "ttft_p50": percentile(ttfts, 0.5), "ttft_p95": percentile(ttfts, 0.95),
                            "duration_p50": percentile(durations, 0.5),
                            "duration_p95": percentile(durations, 0.95)}
        return dict(sorted(found.items()))
