"""Read-only JSON views of the live state, shared by the monitoring API, the SSE stream and the
dashboard, so that all three always say the same thing.

Every view reads in-memory snapshots only (the table, the fleet as last polled, the usage totals):
building one costs no I/O, which is what lets the stream send them a few times a second.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .names import normalize_model
from .poller import parse_expiry

if TYPE_CHECKING:
    from .router import Router


def token_breakdown(router: Router) -> list[dict[str, Any]]:
    """Per backend and model, as the original's /api/token_counts `breakdown` (plus `requests`)."""

    return [
        {"endpoint": backend, "model": model, "input_tokens": tokens_in, "output_tokens": tokens_out,
         "total_tokens": tokens_in + tokens_out, "requests": requests}
        for (backend, model), (tokens_in, tokens_out, requests) in sorted(router.usage.totals().items())
    ]


def usage_view(router: Router) -> dict[str, Any]:
    """The original's /api/usage: requests in flight and total tokens per backend and model,
    with the wait queue and the slot limit of each pair in use added (so a client draws "1 / 2"
    from this alone)."""

    live = router.ledger.usage()
    tokens: dict[str, dict[str, int]] = {}
    for (backend, model), (tokens_in, tokens_out, _requests) in router.usage.totals().items():
        tokens.setdefault(backend, {})[model] = tokens_in + tokens_out
    return {"usage_counts": live["usage_counts"], "slot_limits": slot_limits(router, live["usage_counts"]),
            "token_usage_counts": tokens, "queued": live["queued"], "queued_total": live["queued_total"]}


def slot_limits(router: Router, usage_counts: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """The slots of each backend-model pair in `usage_counts`, as routing sees them now (one while
    a backend's circuit is half-open). A backend a reload removed while it still serves is left out."""

    limits: dict[str, dict[str, int]] = {}
    for name, models in usage_counts.items():
        backend = router.fleet.backends.get(name)
        if backend is not None:
            half_open = backend.status.breaker == "half-open"
            limits[name] = {model: 1 if half_open else backend.config.slots_for(model) for model in models}
    return limits


def loaded_models(router: Router, backend_name: str) -> list[dict[str, Any]]:
    """Models loaded on one backend now: Ollama's own `expires_at` and `size_vram` where known."""

    backend = router.fleet.backends[backend_name]
    status = backend.status
    if not status.healthy:
        return []
    if not backend.config.is_ollama:
        return [{"model": model, "expires_at": None, "size_vram": None} for model in sorted(status.loaded)]
    now = time.time()
    found = []
    for entry in status.ps:
        name = entry.get("model") or entry.get("name")
        if isinstance(name, str) and name and parse_expiry(entry.get("expires_at")) > now:
            found.append({"model": normalize_model(name), "expires_at": entry.get("expires_at"),
                          "size_vram": entry.get("size_vram"), "size": entry.get("size")})
    return found


def backend_views(router: Router) -> list[dict[str, Any]]:
    """Each backend: health, version or error, models, what is loaded, slots and load now, and its
    circuit breaker: state and the failures of the last minutes."""

    usage = router.ledger.usage()["usage_counts"]
    since = time.monotonic() - router.metrics.recent.window  # the same "last minutes" as the models' timings
    views = []
    for backend in router.fleet.backends.values():
        status = backend.status
        breaker = router.poller.breaker(backend)
        views.append({
            "name": backend.name,
            "url": backend.config.url,
            "type": backend.config.type,
            "status": "ok" if status.healthy else "error",
            "circuit": status.breaker,
            "version": status.version,
            "error": None if status.healthy else status.error,
            "models": len(status.models),
            "loaded": loaded_models(router, backend.name),
            "max_concurrent_connections": backend.config.max_concurrent_connections,
            "in_flight": sum(usage.get(backend.name, {}).values()),
            "errors": breaker.errors_since(since),
            "last_error": breaker.last_error,
        })
    return views


def snapshot(router: Router) -> dict[str, Any]:
    """Everything the dashboard shows live: one SSE event."""

    return {**usage_view(router), "backends": backend_views(router), "tokens": token_breakdown(router),
            "models": router.metrics.recent.summary(), "window_seconds": router.metrics.recent.window,
            "time": time.time()}
