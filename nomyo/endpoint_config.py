"""The `endpoints` (and `llama_server_endpoints`) of a configuration file -> EndpointConfig values.

Two forms are accepted: the original NOMYO Router's plain URL lists (with its `api_keys` mapping and
its URL-based guess of the server type) and mappings with `name`, `url`, `type`, their own slot
limit, per-model slot overrides and `api_key`. A URL's userinfo becomes Basic auth (see urls.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from .names import normalize_model
from .urls import shown, split_credentials
from .yaml_fields import FieldReader, expand_env

ENDPOINT_TYPES = ("ollama", "openai", "llama-server")


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """One backend server as configured."""

    name: str
    url: str
    type: str = "ollama"
    max_concurrent_connections: int = 1
    model_slots: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    api_key: str | None = field(default=None, repr=False)
    # `Basic ...` from the user:password of the configured URL (which `url` no longer carries)
    basic_auth: str | None = field(default=None, repr=False)

    @property
    def authorization(self) -> str | None:
        """The Authorization header for this backend: its api_key as a Bearer token, else the
        credentials of its URL as Basic auth."""
        return f"Bearer {self.api_key}" if self.api_key else self.basic_auth

    def slots_for(self, model: str) -> int:
        """Slots for one endpoint-model pair: the per-model override, else the endpoint's."""
        return self.model_slots.get(model, self.max_concurrent_connections)

    @property
    def is_ollama(self) -> bool:
        return self.type == "ollama"


def guess_type(url: str, plain_urls: list[str]) -> str:
    """The original's URL-based guess, used only for plain URL lists: `/v1` means OpenAI-compatible
    unless the same host is also listed without `/v1` or it is on Ollama's default port."""

    if "/v1" not in url:
        return "ollama"
    if url.replace("/v1", "") in plain_urls or ":11434" in url:
        return "ollama"
    return "openai"


def _validate_url(reader: FieldReader, key: str, url: str) -> tuple[str | None, str | None]:
    """The URL without userinfo (and trailing slash), and the Basic auth its userinfo gives;
    (None, None) with the problem noted when it is not a URL."""

    try:
        parts = urlsplit(url)
        _ = parts.port  # urlsplit validates the port lazily
    except ValueError:
        return reader.invalid(key, f"has an invalid host or port: {shown(url)!r}", (None, None))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return reader.invalid(key, f"must be an http:// or https:// URL, got {shown(url)!r}", (None, None))
    clean, basic = split_credentials(url)
    return clean.rstrip("/"), basic


def _default_name(url: str) -> str:
    parts = urlsplit(url)
    name = parts.netloc
    path = parts.path.rstrip("/")
    return f"{name}{path}" if path else name


ENDPOINT_KEYS = frozenset({"name", "url", "type", "max_concurrent_connections", "model_slots", "api_key"})


class EndpointBuilder:
    """Turns the `endpoints` and `llama_server_endpoints` lists into EndpointConfig values."""

    def __init__(self, top: FieldReader, warnings: list[str]):
        self.top = top
        self.path = top.path
        self.warnings = warnings
        self.default_slots = top.number("max_concurrent_connections", 1, kind=int, minimum=1)
        self.api_keys = self._read_api_keys()

    def _read_api_keys(self) -> dict[str, str | None]:
        keys = self.top.child("api_keys", dict, "mapping of endpoint URL to key")
        if not keys:
            return {}
        reader = self.top.nested(keys, "api_keys.")
        result = {}
        for url, value in keys.items():
            if not isinstance(value, str):
                reader.invalid(str(url), "must be a string")
                continue
            result[split_credentials(str(url))[0].rstrip("/")] = expand_env(value, reader, str(url), self.warnings)
        return result

    def build(self) -> tuple[EndpointConfig, ...]:
        plain = self._items("endpoints")
        llama = self._items("llama_server_endpoints")
        plain_urls = [split_credentials(item)[0].rstrip("/") for _, item, _ in plain + llama if isinstance(item, str)]
        endpoints = [self._one(r, i, item, None, plain_urls) for r, item, i in plain]
        endpoints += [self._one(r, i, item, "llama-server", plain_urls) for r, item, i in llama]
        endpoints = [endpoint for endpoint in endpoints if endpoint is not None]  # invalid ones: noted
        self._check_unique(endpoints)
        for url in self.api_keys:
            if url not in {e.url for e in endpoints}:
                self.warnings.append(f"{self.path}: api_keys: {url!r} matches no endpoint")
        return tuple(endpoints)

    def _items(self, key: str) -> list[tuple[FieldReader, Any, int]]:
        items = self.top.child(key, list, "list")
        if items is None:
            return []
        reader = self.top.nested(items, f"{key}")
        return [(reader, item, index) for index, item in enumerate(items)]

    def _one(self, reader, index, item, forced_type, plain_urls) -> EndpointConfig | None:
        """One item of an endpoint list; None when it is invalid (its problems are noted)."""

        label = f"{reader.where}[{index}]"
        if isinstance(item, str):
            url, basic = _validate_url(reader.item(index, label), "", item)
            if url is None:
                return None
            return EndpointConfig(
                name=_default_name(url),
                url=url,
                type=forced_type or guess_type(url, plain_urls),
                max_concurrent_connections=self.default_slots,
                api_key=self.api_keys.get(url),
                basic_auth=basic,
            )
        if not isinstance(item, dict):
            return reader.item(index, label).invalid("", "must be a URL or a mapping")
        return self._mapping(reader.nested(item, f"{label}."), forced_type)

    def _mapping(self, r: FieldReader, forced_type: str | None) -> EndpointConfig | None:
        r.check_keys(ENDPOINT_KEYS)
        url = r.string("url")
        url, basic = _validate_url(r, "url", url) if url else (r.invalid("url", "is required"), None)
        kind = r.string("type", forced_type or "ollama", choices=ENDPOINT_TYPES)
        key = r.string("api_key")
        api_key = expand_env(key, r, "api_key", self.warnings) if key else self.api_keys.get(url)
        slots = r.number("max_concurrent_connections", self.default_slots, kind=int, minimum=1)
        model_slots = MappingProxyType(self._model_slots(r))  # read even without a URL: its errors count
        if url is None:
            return None
        return EndpointConfig(name=r.string("name") or _default_name(url), url=url, type=kind,
                              max_concurrent_connections=slots, model_slots=model_slots, api_key=api_key,
                              basic_auth=basic)

    def _model_slots(self, r: FieldReader) -> dict[str, int]:
        node = r.child("model_slots", dict, "mapping of model name to slots")
        if not node:
            return {}
        inner = r.nested(node, f"{r.where}model_slots.")
        return {normalize_model(str(m)): inner.number(m, 1, kind=int, minimum=1) for m in node}

    def _check_unique(self, endpoints: list[EndpointConfig]) -> None:
        seen: dict[str, str] = {}
        for endpoint in endpoints:
            if endpoint.name in seen:
                self.top.invalid("endpoints", f"two endpoints are named {endpoint.name!r} "
                                 f"({seen[endpoint.name]} and {endpoint.url}); give them distinct `name`s")
            seen[endpoint.name] = endpoint.url
