"""The router's own API key: `Authorization: Bearer <key>` or `?api_key=<key>`.

Checked on every route except the liveness text at `/` and the dashboard's static files, with a
constant-time comparison against every configured key (so timing says nothing about which key
nearly matched). The key never travels further: relay forwards no Authorization header of the
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


def is_open(request: web.Request) -> bool:
    if request.method in ("GET", "HEAD") and request.path in OPEN_PATHS:
        return True
    return request.method in ("GET", "HEAD") and request.path.startswith(OPEN_PREFIXES)


@web.middleware
async def auth_middleware(request: web.Request, handler) -> web.StreamResponse:
    if is_preflight(request):
        return preflight(request)
    keys = request.app[ROUTER].config.router_api_keys
    if not keys or is_open(request):
        return await handler(request)
    presented = presented_key(request)
    access = access_of(request)
    if presented is None:
        access.kind = "unauthenticated"
        return render(request.path, RouterError(401, "missing API key: send Authorization: Bearer <key>",
                                                headers={"WWW-Authenticate": "Bearer"}, code="missing_api_key"))
    caller = match_key(keys, presented)
    if caller is None:
        access.kind = "forbidden"
        return render(request.path, RouterError(403, "invalid API key", code="invalid_api_key"))
    access.caller = caller
    return await handler(request)
