"""Backend URLs without their secrets.

`http://user:password@host:11434` is a common way to reach an Ollama behind a proxy with basic
auth. The credentials are taken out of the URL once, when the configuration is read, and sent as
an `Authorization: Basic` header; the URL the router keeps (and shows in logs, `/health`,
`/api/config`, `/metrics`, `/api/ps_details` and error messages, and names a backend by) has no
userinfo at all, so no code path can print the password by accident.
"""

from __future__ import annotations

import base64
from urllib.parse import unquote, urlsplit, urlunsplit


def split_credentials(url: str) -> tuple[str, str | None]:
    """(the URL without userinfo, the `Authorization` value for its credentials or None).
    A string that is no URL at all comes back as it is (validation reports it)."""

    try:
        parts = urlsplit(url)
    except ValueError:
        return url, None
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return url, None
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    return urlunsplit(parts._replace(netloc=hostport)), f"Basic {token}"


def shown(url: str) -> str:
    """`url` as it may appear in a message: any userinfo replaced by `***`."""

    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an invalid URL)" if "@" in url else url
    _, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return url
    return urlunsplit(parts._replace(netloc=f"***@{hostport}"))
