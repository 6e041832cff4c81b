"""One routed exchange as a value: what was asked, under which runtime, and how it ended.

A `Call` is built once per exchange — by a handler from a client's request, or by the router
itself for an internal call (the ensemble's candidates, the cache's embeddings) — and travels
through the pipeline whole, instead of eight loose arguments. Its `Outcome` is the request's
record: the pipeline writes it (in `exchange.py`), and at the end the access line, the usage
store and the metrics read it. Nothing else decides a request's fate.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import RouterError

if TYPE_CHECKING:
    from .runtime import Runtime


class Dialect(enum.Enum):
    """The API a caller speaks: errors, streams and translations follow it."""

    OLLAMA = "ollama"
    OPENAI = "openai"

    @classmethod
    def of_path(cls, path: str) -> Dialect:
        return cls.OPENAI if path.startswith("/v1/") or path == "/rerank" else cls.OLLAMA


class Reach(enum.Enum):
    """Which kinds of backend may serve a call: any (translated where needed), Ollama's own API
    only, or OpenAI-compatible servers only (rerank: Ollama has none)."""

    ANY = "any"
    OLLAMA = "ollama"
    OPENAI = "openai"

    def admits(self, is_ollama: bool) -> bool:
        return self is Reach.ANY or (self is Reach.OLLAMA) == is_ollama


class Outcome:
    """How one request ended: what the access line, the usage store and /metrics report.

    `kind` is the word the access line prints (`ok`, `rejected`, `busy`, `backend-error`,
    `backend-failed`, `backend-failed-mid-stream`, `client-disconnected`, `internal-error`)."""

    __slots__ = ("backend", "caller", "completion_tokens", "error", "first_byte_at", "kind", "load_seconds",
                 "model", "model_key", "prompt_tokens", "queue_wait", "started_at", "status")

    def __init__(self, started_at: float | None = None) -> None:
        self.model: str | None = None  # as the client spelled it (for the log line)
        self.model_key: str | None = None  # normalised (for counting per backend and model)
        self.backend: str | None = None
        self.status: int | None = None
        self.kind: str | None = None
        self.error: str | None = None  # what went wrong, in words (mid-stream failures, refusals)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.caller: str | None = None  # the named router key, or the purpose of an internal call
        self.started_at = time.perf_counter() if started_at is None else started_at
        self.first_byte_at: float | None = None  # when the first byte of the answer went out
        self.queue_wait: float | None = None  # seconds spent waiting for a slot
        self.load_seconds: float | None = None  # the backend's load_duration, when it reported one

    def count(self, counts: tuple[int, int] | None) -> None:
        if counts is not None:
            self.prompt_tokens, self.completion_tokens = counts

    def refused(self, error: RouterError) -> None:
        """The request got `error` instead of an answer; what went wrong names the outcome,
        unless the pipeline already said (e.g. `backend-failed`)."""

        if self.kind is None:
            self.kind = refusal_kind(error)
        self.error = self.error or error.message

    def first_byte(self) -> None:
        if self.first_byte_at is None:
            self.first_byte_at = time.perf_counter()

    @property
    def ttfb(self) -> float | None:
        return None if self.first_byte_at is None else max(0.0, self.first_byte_at - self.started_at)


def refusal_kind(error: RouterError) -> str:
    """The access line's word for a request refused with `error`: `busy` for a full queue or a
    queue timeout (saturation, worth an alert), `backend-failed` when the backends failed it,
    `unavailable` when none that has the model is up, else `rejected` (the caller's mistake)."""

    if error.code == "server_busy":
        return "busy"
    if error.status in (502, 504):
        return "backend-failed"
    if error.status == 503:
        return "unavailable"
    return {401: "unauthenticated", 403: "forbidden"}.get(error.status, "rejected")


@dataclass(slots=True, eq=False)
class Call:
    """One request for a model, as the pipeline needs it."""

    dialect: Dialect
    path: str  # the route as called: /api/chat, /v1/chat/completions, ...
    model: str  # as the caller spelled it (Ollama echoes that)
    key: str  # normalised: what routing and counting use
    raw: bytes  # the caller's body, relayed as is where no translation is needed
    payload: dict[str, Any]
    runtime: Runtime  # taken once; the call keeps it to its end, whatever a reload does
    outcome: Outcome
    stream: bool
    reach: Reach = Reach.ANY
    changes_loaded: bool = False  # a load or unload request: no text, changes what is loaded
    headers: Mapping[str, str] = field(default_factory=dict)  # the caller's headers a backend may see
    exclude: frozenset[str] = frozenset()  # backends not to use (e.g. an ensemble spreading its candidates)
    started_ns: int = field(default_factory=time.perf_counter_ns)

    @property
    def upstream_path(self) -> str:
        """The path under a backend's API: `/api/...` as is, `/v1/...` without `/v1` (an
        OpenAI-compatible backend is configured by its `/v1` base)."""

        return self.path.removeprefix("/v1") if self.dialect is Dialect.OPENAI else self.path
