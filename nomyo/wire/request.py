"""Where a request goes and its bytes on the wire: URLs parsed once, headers checked and encoded."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple
from urllib.parse import urlsplit

import aiohttp

BODILESS = frozenset(("GET", "HEAD", "OPTIONS", "TRACE", "DELETE", "CONNECT"))
FRAMING = frozenset(("content-length", "transfer-encoding"))  # the pool frames the body itself

Headers = Mapping[str, str] | Iterable[tuple[str, str]]


class Origin(NamedTuple):
    """Where connections go; connections are pooled per origin."""

    host: str
    port: int
    tls: bool

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == (443 if self.tls else 80) else f"{host}:{self.port}"


class Target(NamedTuple):
    """A parsed URL: the origin, the request target (path and query), and the Host line."""

    origin: Origin
    path: str
    host_line: str

    @property
    def url(self) -> str:
        return f"{'https' if self.origin.tls else 'http'}://{self.origin.host_header}{self.path}"


def parse_target(url) -> Target:
    """The Target of a URL string, a yarl URL, or an (Origin, path) pair."""

    if isinstance(url, Target):
        return url
    if isinstance(url, tuple):
        origin, path = url
    elif isinstance(url, str):
        origin, path = _split(url)
    else:  # a yarl.URL
        origin, path = Origin(url.host, url.port, url.scheme == "https"), url.raw_path_qs
    return Target(origin, path, f"Host: {origin.host_header}\r\n")


def _split(url: str) -> tuple[Origin, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise aiohttp.InvalidURL(url)
    tls = parts.scheme == "https"
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Origin(parts.hostname, parts.port or (443 if tls else 80), tls), path


def encode_request(method: str, target: Target, headers: Headers, body: bytes) -> bytes:
    """The request line and headers. Host comes from the target unless given; Content-Length
    is always the pool's (a given one, or Transfer-Encoding, is dropped). A CR or LF inside a
    name or value is refused: it would smuggle a header or a second request."""

    lines = [f"{method} {target.path} HTTP/1.1\r\n"]
    host_line = target.host_line
    for name, value in headers.items() if isinstance(headers, Mapping) else headers:
        lower = name.lower()
        if lower in FRAMING:
            continue
        if lower == "host":
            host_line = ""
        lines.append(f"{name}: {value}\r\n")
    if host_line:
        lines.append(host_line)
    if body or method not in BODILESS:
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
    else:
        lines.append("\r\n")
    head = "".join(lines)
    expected = len(lines) + 1 if body or method not in BODILESS else len(lines)
    if head.count("\n") != expected or head.count("\r") != expected:
        raise ValueError("a request header or the request line contains a line break")
    return head.encode("utf-8", "surrogateescape")
