"""Every way an upstream exchange fails, raised as the aiohttp exception class the relay already
handles, so swapping this client in changes nothing in `upstream.RETRYABLE`, `describe` or the
relay's `except aiohttp.ClientError`.

What happened → what is raised → how `upstream.describe` words it:
- refused, unreachable, no such host, TLS failed → aiohttp.ClientConnectorError (its DNS/SSL
  subclasses) → "cannot connect (Connection refused)"
- no connection within the connect timeout → ConnectTimeout (aiohttp.ConnectionTimeoutError)
  → "connect timed out"
- no answer headers within the first-byte timeout → FirstByteTimeout (aiohttp.SocketTimeoutError)
  → a TimeoutError: see below
- closed before or within the answer's headers → aiohttp.ServerDisconnectedError → "the
  backend closed the connection"
- reset (or another socket error) before the headers → aiohttp.ClientOSError → "[Errno 104]
  Connection reset by peer"
- bytes that are not HTTP → NotHttp (aiohttp.ClientResponseError) → "the answer is not HTTP (...)"
- reset, closed or a broken chunk mid-body → BrokenBody (aiohttp.ClientPayloadError) → "the
  answer broke off: ..."
- the answer was closed by its reader while a read waited → aiohttp.ClientConnectionError

Both timeouts are TimeoutErrors, as aiohttp's are; `describe` words every TimeoutError
"connect timed out", so a caller that tells the two apart catches FirstByteTimeout first (as
`open_upstream` catches TimeoutError before calling `describe` today). Their `str()` is exact.
"""

from __future__ import annotations

import socket
import ssl

import aiohttp
from aiohttp.client_reqrep import ConnectionKey
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL


class ConnectTimeout(aiohttp.ConnectionTimeoutError):
    """The backend did not accept the connection in time."""

    def __init__(self, seconds: float):
        super().__init__(f"connect timed out after {seconds:g}s")


class FirstByteTimeout(aiohttp.SocketTimeoutError):
    """The request was sent but the answer's headers did not come in time."""

    def __init__(self, seconds: float):
        super().__init__(f"no answer within {seconds:g}s")


class NotHttp(aiohttp.ClientResponseError):
    """The backend answered bytes that are not an HTTP response (status 0: there is none)."""

    def __init__(self, url: str, method: str, reason: str):
        info = aiohttp.RequestInfo(URL(url), method, CIMultiDictProxy(CIMultiDict()))
        super().__init__(info, (), status=0, message=reason)

    def __str__(self) -> str:
        return f"the answer is not HTTP ({self.message})"


class BrokenBody(aiohttp.ClientPayloadError):
    """The answer's headers came, its body did not come whole."""

    def __init__(self, reason: str):
        super().__init__(f"the answer broke off: {reason}")


def cannot_connect(host: str, port: int, tls: bool, error: OSError) -> aiohttp.ClientConnectorError:
    """The class aiohttp's connector raises for the same failure (its key is only read for
    `host`, `port` and `ssl`)."""

    key = ConnectionKey(host, port, tls, tls, None, None, None)
    if isinstance(error, ssl.SSLCertVerificationError):
        return aiohttp.ClientConnectorCertificateError(key, error)
    if isinstance(error, ssl.SSLError):
        return aiohttp.ClientConnectorSSLError(key, error)
    if isinstance(error, socket.gaierror):
        return aiohttp.ClientConnectorDNSError(key, error)
    return aiohttp.ClientConnectorError(key, error)


def lost_before_answer(error: BaseException | None, partial: bool) -> aiohttp.ClientError:
    """The connection ended before the answer's headers were whole."""

    if isinstance(error, OSError):
        return aiohttp.ClientOSError(error.errno, error.strerror or str(error))
    where = "within its answer's headers" if partial else "before answering"
    return aiohttp.ServerDisconnectedError(f"the backend closed the connection {where}")


def lost_mid_body(error: BaseException | None) -> BrokenBody:
    if isinstance(error, OSError):
        return BrokenBody(error.strerror or str(error))
    return BrokenBody("the backend closed the connection before the end of the body")
