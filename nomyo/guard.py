"""The front door: which requests the router reads at all.

`front_door_middleware` (before the key check) refuses, with 403 in the caller's dialect:
- a `Host` that is not a local name while the router listens on a loopback address (or, whatever
  it listens on, once `allowed_hosts` is set): DNS rebinding would otherwise let any web page
  reach a router on 127.0.0.1 through the user's browser, as its own origin. Local names are
  `localhost`, `*.localhost`, this machine's hostname, loopback and unspecified addresses (Ollama
  also guards the Host header while it listens on loopback); `allowed_hosts` adds names for a
  reverse proxy. No `Host` at all (HTTP/1.0) is allowed.
- an `Origin` that is not allowed (see cors.py).

`body_middleware` (innermost, so its errors are rendered like a handler's) refuses a request body
before a byte of it is read: any `Content-Encoding` but `identity` (415: Ollama never inflates a
request body, and inflating is how 98 KiB become 99 MiB), and a `Content-Length` over
`max_body_size` (413, connection closed). A body sent chunked stops at the limit when read
(aiohttp's `client_max_size`). Blob uploads are streamed and deliberately not limited by
`max_body_size`. A client that stops sending its body for `client_body_timeout` gets 408.
"""

from __future__ import annotations

import functools
import ipaddress
import socket

from aiohttp import web

from .access import access_of
from .connections import BodyTimeout
from .cors import origin_allowed, patterns
from .errors import error_response
from .keys import ROUTER

STREAMED_PREFIXES = ("/api/blobs/",)  # bodies streamed through, not bound by max_body_size
LOOPBACK_NAMES = ("localhost", "ip6-localhost", "ip6-loopback")


@functools.lru_cache(maxsize=1024)
def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address.lower() in LOOPBACK_NAMES


def host_name(header: str) -> str:
    """The name or address in a `Host` header: no port, no brackets, no trailing dot."""

    host = header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


@functools.lru_cache(maxsize=1024)
def is_local_name(name: str) -> bool:
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return name in LOOPBACK_NAMES or name.endswith(".localhost") or name == socket.gethostname().lower()
    return address.is_loopback or address.is_unspecified


def host_allowed(request: web.Request) -> bool:
    config = request.app[ROUTER].config
    if not config.allowed_hosts and not is_loopback(config.listen_host):
        return True
    name = host_name(request.headers.get("Host", ""))
    if not name or is_local_name(name):
        return True
    return bool(config.allowed_hosts) and patterns(config.allowed_hosts).fullmatch(name) is not None


def refuse(request: web.Request, status: int, message: str, code: str, **headers: str) -> web.Response:
    access_of(request).kind = "forbidden" if status == 403 else "rejected"
    return error_response(request.path, status, message, code=code, headers=headers or None)


@web.middleware
async def front_door_middleware(request: web.Request, handler) -> web.StreamResponse:
    if not host_allowed(request):
        return refuse(request, 403, "host not allowed: the router listens on a loopback address and this "
                      "name is not local (add it to allowed_hosts if a reverse proxy sends it)", "host_not_allowed")
    origin = request.headers.get("Origin")
    if origin is not None and not origin_allowed(request, origin):
        return refuse(request, 403, "origin not allowed: add the page's origin to allowed_origins to let it "
                      "call the router", "origin_not_allowed")
    return await handler(request)


@web.middleware
async def body_middleware(request: web.Request, handler) -> web.StreamResponse:
    if request.body_exists and request.match_info.http_exception is None:  # 404 and 405 come first
        refused = _refused_body(request)
        if refused is not None:
            return refused
    try:
        return await handler(request)
    except BodyTimeout as exc:
        response = refuse(request, 408, str(exc), "request_timeout")
        response.force_close()
        return response


def _refused_body(request: web.Request) -> web.Response | None:
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        return refuse(request, 415, "compressed request bodies are not supported: send the body without "
                      "Content-Encoding", "unsupported_content_encoding", **{"Accept-Encoding": "identity"})
    limit = request.app[ROUTER].config.max_body_size
    length = request.content_length
    if length is not None and length > limit and not request.path.startswith(STREAMED_PREFIXES):
        response = refuse(request, 413, "request body too large", "request_too_large")
        response.force_close()
        return response
    return None
