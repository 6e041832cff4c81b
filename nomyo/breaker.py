"""Circuit breaking: a backend that keeps failing requests is taken out, then let back gently.

Polls only prove that a backend answers `/api/tags`; a backend whose runner crashes, or that
resets every inference connection, still looks healthy to them. The breaker counts what real
requests saw: after `threshold` consecutive failures it opens (the backend gets no traffic) for a
cool-down that doubles on every repeated trip; after it, a successful poll lets the backend back
half-open (one request per model at a time) until `threshold` requests in a row succeed.

It also remembers its latest failures (when, and why the last one), for the dashboard's "errors
in the last minutes" per backend: the breaker is where every failed request of a backend is
counted, including attempts that another backend then answered.
"""

from __future__ import annotations

import time
from collections import deque

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
RECENT_FAILURES = 1000


class Breaker:
    """The state machine for one backend. Times are `time.monotonic()` seconds."""

    __slots__ = ("base_cooldown", "cooldown", "failures", "last_error", "max_cooldown", "opened_until", "recent",
                 "state", "successes", "threshold")

    def __init__(self, threshold: int = 3, cooldown: float = 10.0, max_cooldown: float = 300.0):
        self.threshold = threshold
        self.base_cooldown = self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.state = CLOSED
        self.failures = 0
        self.successes = 0
        self.opened_until = 0.0
        self.recent: deque[float] = deque(maxlen=RECENT_FAILURES)  # when the latest failures were
        self.last_error: str | None = None

    def configure(self, threshold: int, cooldown: float) -> None:
        """Adopt reloaded settings; the state (and a cool-down already doubled) stays."""

        if cooldown != self.base_cooldown:
            self.base_cooldown = cooldown
            self.cooldown = cooldown if self.state == CLOSED else max(self.cooldown, cooldown)
        self.threshold = threshold

    def failure(self, now: float | None = None, reason: str | None = None) -> bool:
        """Count a failed request. True when this failure opened the circuit."""

        now = time.monotonic() if now is None else now
        self.recent.append(now)
        self.last_error = reason or self.last_error
        self.successes = 0
        self.failures += 1
        if self.state == HALF_OPEN or (self.state == CLOSED and self.failures >= self.threshold):
            self._open(now)
            return True
        return False

    def success(self) -> bool:
        """Count a good request. True when this success closed a half-open circuit."""

        self.failures = 0
        if self.state != HALF_OPEN:
            return False
        self.successes += 1
        if self.successes >= self.threshold:
            self.state = CLOSED
            self.cooldown = self.base_cooldown
            return True
        return False

    def may_probe(self, now: float | None = None) -> bool:
        """False while open and cooling down: the poller leaves the backend out until then."""

        now = time.monotonic() if now is None else now
        return self.state != OPEN or now >= self.opened_until

    def probe_succeeded(self) -> bool:
        """A poll answered after the cool-down: let traffic back in, one request at a time.
        True when this moved the circuit from open to half-open."""

        if self.state != OPEN:
            return False
        self.state = HALF_OPEN
        self.successes = 0
        return True

    def errors_since(self, since: float) -> int:
        """Failures at or after `since` (monotonic seconds; at most RECENT_FAILURES are kept)."""

        return sum(1 for when in self.recent if when >= since)

    def remaining(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        return max(0.0, self.opened_until - now)

    def _open(self, now: float) -> None:
        if self.state == HALF_OPEN:
            self.cooldown = min(self.cooldown * 2, self.max_cooldown)
        self.state = OPEN
        self.opened_until = now + self.cooldown
        self.failures = 0
