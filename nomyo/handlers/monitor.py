"""Monitoring API in the original router's shapes: /api/usage, /api/token_counts, /api/stats,
/api/aggregate_time_series_days, /api/config, /health; plus /api/time_series (the dashboard's
usage chart), /api/usage-stream (see sse.py) and /metrics (see metrics.py).

Everything but the time series and the roll-up answers from memory, so monitoring keeps working
while the usage database is unavailable.
"""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from .. import __version__
from ..dialects.ollama import parse_body, require_model
from ..errors import RouterError, bad_request
from ..keys import ROUTER
from ..metrics import CONTENT_TYPE
from ..names import normalize_model
from ..responses import json_response
from ..sse import usage_stream
from ..usage import minute_of
from ..views import backend_views, token_breakdown, usage_view
from .common import read_current_body

DEFAULT_DAYS = 30
MAX_MINUTES = 60 * 24 * 31


async def usage(request: web.Request) -> web.Response:
    return json_response(usage_view(request.app[ROUTER]))


async def token_counts(request: web.Request) -> web.Response:
    breakdown = token_breakdown(request.app[ROUTER])
    return json_response({"total_tokens": sum(row["total_tokens"] for row in breakdown), "breakdown": breakdown})


def _whole_number(payload: dict, key: str, default: int, minimum: int) -> int:
    value = payload.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise bad_request(f"invalid value for '{key}': expected a whole number of at least {minimum}", param=key)
    return value


async def _model_from(request: web.Request) -> tuple[str, dict]:
    """`model` from the JSON body (POST, as the original) or the query string (GET)."""

    if request.method == "GET" or not (raw := await read_current_body(request)).strip():
        payload = dict(request.query)
        if "days" in payload:
            try:
                payload["days"] = int(payload["days"])
            except ValueError:
                raise bad_request("invalid value for 'days': expected a whole number", param="days") from None
    else:
        payload = parse_body(raw)
    return require_model(payload), payload


async def stats(request: web.Request) -> web.Response:
    """Totals and the per-minute time series of one model (all backends); 404 if never used."""

    router = request.app[ROUTER]
    model, payload = await _model_from(request)
    days = _whole_number(payload, "days", DEFAULT_DAYS, 1)
    key = normalize_model(model)
    rows = [(backend, counts) for (backend, name), counts in router.usage.totals().items() if name == key]
    if not rows:
        raise RouterError(404, f"no token data found for model '{model}'", code="model_not_found")
    since = minute_of(time.time()) - days * 86400
    series = await router.usage.time_series(key, since)
    tokens_in = sum(counts[0] for _, counts in rows)
    tokens_out = sum(counts[1] for _, counts in rows)
    return json_response({
        "model": model,
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "total_tokens": tokens_in + tokens_out,
        "requests": sum(counts[2] for _, counts in rows),
        "time_series": [{k: row[k] for k in ("endpoint", "timestamp", "input_tokens", "output_tokens",
                                             "total_tokens", "requests")} for row in series],
        "endpoint_distribution": {backend: counts[0] + counts[1] for backend, counts in sorted(rows)},
    })


async def time_series(request: web.Request) -> web.Response:
    """Fleet-wide tokens per minute over the last `minutes` (default 60), optionally of one model."""

    router = request.app[ROUTER]
    try:
        minutes = int(request.query.get("minutes", "60"))
    except ValueError:
        minutes = 0
    if not 1 <= minutes <= MAX_MINUTES:
        raise bad_request(f"invalid value for 'minutes': expected 1 to {MAX_MINUTES}", param="minutes")
    model = request.query.get("model")
    since = minute_of(time.time()) - (minutes - 1) * 60
    buckets: dict[int, list[int]] = {}
    for row in await router.usage.time_series(normalize_model(model) if model else None, since):
        bucket = buckets.setdefault(row["timestamp"], [0, 0, 0])
        bucket[0] += row["input_tokens"]
        bucket[1] += row["output_tokens"]
        bucket[2] += row["requests"]
    return json_response({
        "bucket_seconds": 60, "since": since, "model": model,
        "time_series": [{"timestamp": ts, "input_tokens": i, "output_tokens": o, "total_tokens": i + o,
                         "requests": r} for ts, (i, o, r) in sorted(buckets.items())],
    })


async def aggregate_time_series_days(request: web.Request) -> web.Response:
    """Roll minute rows of whole days older than `days` into daily rows (`trim_old`: delete them).
    Running it again changes nothing."""

    raw = await read_current_body(request)
    payload = parse_body(raw) if raw.strip() else {}
    days = _whole_number(payload, "days", DEFAULT_DAYS, 1)
    trim_old = payload.get("trim_old", False)
    if not isinstance(trim_old, bool):
        raise bad_request("invalid type for 'trim_old': expected a boolean", param="trim_old")
    router = request.app[ROUTER]
    try:
        groups = await router.usage.aggregate_days(days, trim_old)
    except Exception as exc:
        raise RouterError(503, f"the usage database is not available: {exc}", headers={"Retry-After": "5"}) from None
    return json_response({"status": "ok", "days": days, "trim_old": trim_old, "aggregated_groups": groups})


def _endpoint_entry(view: dict) -> dict:
    """The original's {url, status, version | detail}, with the router's own details after them."""

    entry = {"url": view["url"], "status": view["status"]}
    if view["status"] == "ok":
        entry["version"] = view["version"]
    else:
        entry["detail"] = view["error"]
    entry.update((k, v) for k, v in view.items() if k not in ("url", "status", "version", "error"))
    return entry


async def config(request: web.Request) -> web.Response:
    """Each backend with its status and version or error (as last polled: no waiting on them)."""

    router = request.app[ROUTER]
    models = {b.name: sorted(b.status.models) for b in router.fleet.backends.values()}
    endpoints = []
    for view in backend_views(router):
        entry = _endpoint_entry(view)
        entry["model_names"] = models[view["name"]]
        entry["model_slots"] = dict(router.fleet.backends[view["name"]].config.model_slots)
        endpoints.append(entry)
    return json_response({"endpoints": endpoints, "require_router_api_key": bool(router.config.router_api_keys),
                          "router_version": __version__, "learned": router.ledger.learned.describe()})


async def health(request: web.Request) -> web.Response:
    """200 while at least one backend is healthy, else 503; each backend's state in the body."""

    views = backend_views(request.app[ROUTER])
    healthy = sum(1 for view in views if view["status"] == "ok")
    status = "error" if not healthy else "ok" if healthy == len(views) else "degraded"
    body = {
        "status": status,
        "healthy_backends": healthy,
        "backends": len(views),
        "endpoints": {
            view["name"]: {"url": view["url"], "status": view["status"],
                           **({"version": view["version"]} if view["status"] == "ok" else {"detail": view["error"]})}
            for view in views
        },
    }
    response = web.Response(status=200 if healthy else 503, body=orjson.dumps(body))
    response.headers["Content-Type"] = "application/json; charset=utf-8"
    return response


async def metrics(request: web.Request) -> web.Response:
    response = web.Response(body=request.app[ROUTER].metrics.render())
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/usage", usage)
    app.router.add_get("/api/token_counts", token_counts)
    app.router.add_post("/api/stats", stats)
    app.router.add_get("/api/stats", stats)
    app.router.add_get("/api/time_series", time_series)
    app.router.add_post("/api/aggregate_time_series_days", aggregate_time_series_days)
    app.router.add_get("/api/config", config)
    app.router.add_get("/api/usage-stream", usage_stream, allow_head=False)  # a stream has no HEAD
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
