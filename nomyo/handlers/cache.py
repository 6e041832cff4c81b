"""`GET /api/cache/stats` and `POST /api/cache/invalidate`, in the original router's shapes.

Stats: the original's fields (enabled, hits, misses, hit_rate, semantic, backend,
similarity_threshold, history_weight) and ours (entries, bytes, semantic_hits, evictions, ...).
Invalidate: everything (and the counters, as the original), or only a model's or a scope's
entries, named in a JSON body or the query string: `{"model": "llama3"}`, `{"scope": "alice"}`.
"""

from __future__ import annotations

from aiohttp import web

from ..cache.guard import StoreUnavailable
from ..dialects.ollama import parse_body
from ..errors import RouterError, bad_request
from ..keys import CACHE
from ..names import normalize_model
from ..responses import json_response


async def cache_stats(request: web.Request) -> web.Response:
    return json_response(await request.app[CACHE].stats())


async def _selection(request: web.Request) -> dict[str, str]:
    raw = await request.read()
    selection = dict(request.query) if not raw.strip() else parse_body(raw)
    unknown = set(selection) - {"model", "scope"}
    if unknown:
        raise bad_request(f"unknown field '{sorted(unknown)[0]}': invalidate takes 'model' and/or 'scope'")
    for name, value in selection.items():
        if not isinstance(value, str) or not value:
            raise bad_request(f"invalid value for '{name}': expected a non-empty string", param=name)
    return selection


async def cache_invalidate(request: web.Request) -> web.Response:
    selection = await _selection(request)
    model = selection.get("model")
    try:
        dropped = await request.app[CACHE].invalidate(
            model=normalize_model(model) if model else None, scope=selection.get("scope"))
    except StoreUnavailable as exc:
        raise RouterError(503, str(exc), code="cache_unavailable") from None
    return json_response({"status": "ok", "invalidated": dropped, **selection})


def add_routes(app: web.Application) -> None:
    """The cache's endpoints; `app[CACHE]` must hold the ResponseCache."""

    app.router.add_get("/api/cache/stats", cache_stats)
    app.router.add_post("/api/cache/invalidate", cache_invalidate)
