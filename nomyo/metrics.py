"""`GET /metrics`: the router and its fleet in Prometheus' text format.

Ollama has no metrics of its own, so this is where an operator sees the fleet: requests by route,
backend, model and status; request and time-to-first-token histograms; in-flight and queued
requests against slot limits; tokens in and out; backend up/down; and which models are loaded
where, with their expiry and VRAM size.

Each router has its own registry (never prometheus_client's global one), so several routers in
one process (tests) never share a number. Live state (slots, fleet, token totals) is read from
its owners at scrape time by a collector: nothing is copied, so it cannot drift.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .call import Outcome
from .names import normalize_model
from .poller import parse_expiry
from .recent import RecentCalls

if TYPE_CHECKING:
    from .router import Router

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def route_of(request: web.Request) -> str:
    """The route's pattern, not the raw path: label values stay few whatever clients send."""

    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def status_of(outcome: Outcome) -> str:
    if outcome.status is not None:
        return str(outcome.status)
    return "499" if outcome.kind == "client-disconnected" else "500"


class Metrics:
    """The router's registry: request counters and histograms, plus the live-state collector."""

    def __init__(self, router: Router):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("nomyo_requests", "Requests served, by route, backend, model and HTTP status",
                                ("route", "backend", "model", "status"), registry=self.registry)
        self.duration = Histogram("nomyo_request_duration_seconds", "Time from request to the end of the answer",
                                  ("route", "backend", "model"), buckets=DURATION_BUCKETS, registry=self.registry)
        self.ttft = Histogram("nomyo_time_to_first_token_seconds",
                              "Time from request to the first byte of a streamed answer",
                              ("backend", "model"), buckets=TTFT_BUCKETS, registry=self.registry)
        self.callers = Counter("nomyo_caller_requests",
                               "Requests per caller: a named router key (router_api_keys), or the purpose of "
                               "the router's own calls (moe, cache-embed)",
                               ("caller",), registry=self.registry)
        self.registry.register(FleetCollector(router))
        self.recent = RecentCalls()  # the dashboard's per-model p50/p95 over the last minutes
        # `labels()` validates and locks on every call; the children of a label set never change,
        # so they are looked up once (this runs for every request).
        self._children: dict[tuple[str, ...], tuple] = {}

    def observe(self, route: str, outcome: Outcome, seconds: float) -> None:
        """One finished request or internal call, whatever its outcome."""

        # Only a routed request names a model: a client's unknown model never becomes a label.
        backend = outcome.backend or ""
        model = (outcome.model_key or "") if backend else ""
        key = (route, backend, model, status_of(outcome))
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(*key), self.duration.labels(*key[:3]),
                                              self.ttft.labels(backend, model))
        children[0].inc()
        children[1].observe(seconds)
        if outcome.caller is not None:  # configured key names and internal purposes: few, never client input
            self.callers.labels(outcome.caller).inc()
        if outcome.ttfb is not None and backend:
            children[2].observe(outcome.ttfb)
        self.recent.observe(outcome, seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class FleetCollector:
    """Gauges read from the table, the fleet and the usage store at scrape time."""

    def __init__(self, router: Router):
        self.router = router

    def describe(self):
        return []  # dynamic: nothing to check at registration

    def collect(self):
        router = self.router
        yield from self._slots(router)
        yield from self._backends(router)
        yield from self._loaded(router)
        yield from self._tokens(router)

    @staticmethod
    def _slots(router: Router):
        usage = router.ledger.usage()
        inflight = GaugeMetricFamily("nomyo_inflight_requests", "Requests holding a slot, per backend and model",
                                     labels=("backend", "model"))
        for backend, models in usage["usage_counts"].items():
            for model, count in models.items():
                inflight.add_metric((backend, model), count)
        queued = GaugeMetricFamily("nomyo_queued_requests", "Requests waiting for a slot, per model",
                                   labels=("model",))
        for model, count in usage["queued"].items():
            queued.add_metric((model,), count)
        queue = GaugeMetricFamily("nomyo_queue_length", "Requests waiting for a slot, all models",
                                  value=usage["queued_total"])
        slots = GaugeMetricFamily("nomyo_slots", "Slot limit per backend and model (max_concurrent_connections)",
                                  labels=("backend", "model"))
        for backend in router.fleet.backends.values():
            for model in sorted(backend.status.models):
                slots.add_metric((backend.name, model), backend.config.slots_for(model))
        return inflight, queued, queue, slots

    @staticmethod
    def _backends(router: Router):
        up = GaugeMetricFamily("nomyo_backend_up", "1 if the backend answered its last poll",
                               labels=("backend", "url", "type"))
        info = GaugeMetricFamily("nomyo_backend_info", "The backend's version", labels=("backend", "version"))
        models = GaugeMetricFamily("nomyo_backend_models", "Models installed on the backend", labels=("backend",))
        for backend in router.fleet.backends.values():
            status = backend.status
            up.add_metric((backend.name, backend.config.url, backend.config.type), 1 if status.healthy else 0)
            if status.version:
                info.add_metric((backend.name, status.version), 1)
            models.add_metric((backend.name,), len(status.models))
        return up, info, models

    @staticmethod
    def _loaded(router: Router):
        labels = ("backend", "model")
        expires = GaugeMetricFamily("nomyo_model_loaded_expires_at_seconds",
                                    "When a loaded model is unloaded (Unix time; +Inf: never)", labels=labels)
        vram = GaugeMetricFamily("nomyo_model_loaded_size_vram_bytes", "VRAM used by a loaded model", labels=labels)
        size = GaugeMetricFamily("nomyo_model_loaded_size_bytes", "Memory used by a loaded model", labels=labels)
        for backend in router.fleet.backends.values():
            if not backend.status.healthy:
                continue
            for entry in backend.status.ps:
                name = str(entry.get("model") or entry.get("name") or "")
                if not name:
                    continue
                key = (backend.name, normalize_model(name))
                expiry = parse_expiry(entry.get("expires_at"))
                expires.add_metric(key, expiry)
                for family, field in ((vram, "size_vram"), (size, "size")):
                    value = entry.get(field)
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        family.add_metric(key, value)
        return expires, vram, size

    @staticmethod
    def _tokens(router: Router):
        usage = router.usage
        tokens = CounterMetricFamily("nomyo_tokens", "Tokens counted, by backend, model and direction",
                                     labels=("backend", "model", "direction"))
        for (backend, model), (tokens_in, tokens_out, _requests) in sorted(usage.totals().items()):
            tokens.add_metric((backend, model, "input"), tokens_in)
            tokens.add_metric((backend, model, "output"), tokens_out)
        pending = GaugeMetricFamily("nomyo_usage_pending_buckets",
                                    "Minute buckets of token counts not yet written to the database",
                                    value=usage.pending)
        errors = CounterMetricFamily("nomyo_usage_write_errors", "Failed writes to the usage database",
                                     value=usage.write_errors)
        return tokens, pending, errors
