"""The router's own API keys: `Authorization: Bearer <key>` or `?api_key=<key>`.

Two kinds. Router keys (`router_api_keys`, `nomyo-router-api-key`) open every route except
the management routes once admin keys exist; admin keys (`admin_api_keys`) open every route,
and with any configured the management routes (`ADMIN_PATHS`, `ADMIN_PREFIXES`: what changes
the fleet's models or deletes usage history) need one of them: a router key gets 403 there.
Without admin keys the management routes are guarded like any other route.

Checked on every route except the liveness text at `/`, the dashboard's static files and, with
`health_requires_key: false`, `/health` (for load balancers' probes); with a constant-time
comparison against every configured key (so timing says nothing about which key nearly
matched). No key of either kind travels further: relay forwards no Authorization header of the
client's, and the access log prints neither headers nor query strings.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from .access import access_of
from .cors import is_preflight, preflight
from .errors import RouterError, render
from .keys import ROUTER

OPEN_PATHS = frozenset({"/", "/favicon.ico"})
OPEN_PREFIXES = ("/static/",)
# The management routes. A new route that changes backends' models or deletes what the router
# recorded joins here (the response cache's invalidation is listed ahead of its arrival).
ADMIN_PATHS = frozenset({"/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete",
                         "/api/aggregate_time_series_days", "/api/cache/invalidate"})
ADMIN_PREFIXES = ("/api/blobs/",)


def presented_key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.query.get("api_key") or None


def match_key(keys, presented: str) -> str | None:
    """The name of the key that matches, comparing against all of them in constant time."""

    found = None
    given = presented.encode()
    for name, key in keys.items():
        if hmac.compare_digest(given, key.encode()):
            found = name
    return found


def is_open(request: web.Request, health_requires_key: bool) -> bool:
    if request.method not in ("GET", "HEAD"):
        return False
    if request.path in OPEN_PATHS or request.path.startswith(OPEN_PREFIXES):
        return True
    return request.path == "/health" and not health_requires_key


def needs_admin(path: str) -> bool:
    return path in ADMIN_PATHS or path.startswith(ADMIN_PREFIXES)


@web.middleware
async def auth_middleware(request: web.Request, handler) -> web.StreamResponse:
    if is_preflight(request):
        return preflight(request)
    config = request.app[ROUTER].config
    admin_only = bool(config.admin_api_keys) and needs_admin(request.path)
    if not admin_only and (not config.router_api_keys or is_open(request, config.health_requires_key)):
        return await handler(request)
    refusal = identify(request, config, admin_only)
    if refusal is not None:
        return render(request.path, refusal)
    return await handler(request)


def identify(request: web.Request, config, admin_only: bool) -> RouterError | None:
    """Record the caller of a request that needs a key; the refusal if it has no fitting one."""

    presented = presented_key(request)
    access = access_of(request)
    if presented is None:
        access.kind = "unauthenticated"
        return RouterError(401, "missing API key: send Authorization: Bearer <key>",
                           headers={"WWW-Authenticate": "Bearer"}, code="missing_api_key")
    caller = match_key(config.admin_api_keys, presented)
    router_caller = match_key(config.router_api_keys, presented)
    if caller is None and not admin_only:
        caller = router_caller
    if caller is None:
        access.kind = "forbidden"
        if router_caller is not None:
            access.caller = router_caller
            return RouterError(403, "this route needs an admin key (admin_api_keys)", code="admin_key_required")
        return RouterError(403, "invalid API key", code="invalid_api_key")
    access.caller = caller
    return None
