"""YAML configuration -> validated, frozen objects.

Configuration is a value: the daemon parses and validates the whole file before it uses any of
it, so a bad file (at start or on SIGHUP) never leaves the router half-configured. Every error
names the file, the line and the key, because that is what an operator editing
`/etc/nomyo/config.yaml` needs to fix it.

Two forms are accepted in one file: the original NOMYO Router's (`endpoints:` as a list of URLs,
`max_concurrent_connections`, `api_keys`, `llama_server_endpoints`, `nomyo-router-api-key`) and a
richer per-endpoint form (mappings with `name`, `url`, `type`, their own slot limit, per-model
slot overrides and `api_key`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from .cache.config import CACHE_KEYS, CacheConfig, read_cache_config
from .names import normalize_model
from .yaml_fields import ConfigError, FieldReader, ListItem, expand_env

DEFAULT_CONFIG_PATH = "/etc/nomyo/config.yaml"
DEFAULT_LISTEN = "127.0.0.1:12434"
DEFAULT_DB_PATH = "/var/lib/nomyo/usage.db"
ENDPOINT_TYPES = ("ollama", "openai", "llama-server")

# Keys of the original router that have no meaning here; accepted so an existing file keeps
# working, and reported once as ignored. (Its cache_* keys are read by nomyo.cache.config.)
IGNORED_ORIGINAL_KEYS: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """One backend server as configured."""

    name: str
    url: str
    type: str = "ollama"
    max_concurrent_connections: int = 1
    model_slots: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    api_key: str | None = None

    def slots_for(self, model: str) -> int:
        """Slots for one endpoint-model pair: the per-model override, else the endpoint's."""
        return self.model_slots.get(model, self.max_concurrent_connections)

    @property
    def is_ollama(self) -> bool:
        return self.type == "ollama"


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration. Built by `load_config`; never mutated."""

    path: str | None
    endpoints: tuple[EndpointConfig, ...]
    listen_host: str = "127.0.0.1"
    listen_port: int = 12434
    router_api_keys: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    poll_interval: float = 2.0
    poll_timeout: float = 2.0
    queue_timeout: float = 300.0
    max_queue: int = 512
    connect_timeout: float = 5.0
    first_byte_timeout: float = 600.0
    idle_timeout: float = 300.0
    keepalive_interval: float = 0.0
    drain_timeout: float = 60.0
    max_body_size: int = 100 * 1024 * 1024
    routing_policy: str = "loaded-first"
    cold_load_spread: int = 1
    breaker_threshold: int = 3
    breaker_cooldown: float = 10.0
    log_level: str = "info"
    db_path: str = DEFAULT_DB_PATH
    flush_interval: float = 1.0
    usage_stream_interval: float = 0.25
    usage_stream_heartbeat: float = 15.0
    cache: CacheConfig = field(default_factory=CacheConfig)
    warnings: tuple[str, ...] = ()

    @property
    def listen(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"


# ----------------------------------------------------------------------------------------------
# Reading values with their position, so every error can say file:line: key


def guess_type(url: str, plain_urls: list[str]) -> str:
    """The original's URL-based guess, used only for plain URL lists: `/v1` means OpenAI-compatible
    unless the same host is also listed without `/v1` or it is on Ollama's default port."""

    if "/v1" not in url:
        return "ollama"
    if url.replace("/v1", "") in plain_urls or ":11434" in url:
        return "ollama"
    return "openai"


def _validate_url(reader: FieldReader, key: str, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise reader.error(key, f"must be an http:// or https:// URL, got {url!r}")
    try:
        _ = parts.port  # urlsplit validates the port lazily
    except ValueError:
        raise reader.error(key, f"has an invalid port: {url!r}") from None
    return url.rstrip("/")


def _default_name(url: str) -> str:
    parts = urlsplit(url)
    name = parts.netloc
    path = parts.path.rstrip("/")
    return f"{name}{path}" if path else name


ENDPOINT_KEYS = frozenset({"name", "url", "type", "max_concurrent_connections", "model_slots", "api_key"})


class _EndpointBuilder:
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
        reader = FieldReader(self.path, keys, "api_keys.")
        result = {}
        for url, value in keys.items():
            if not isinstance(value, str):
                raise reader.error(str(url), "must be a string")
            result[str(url).rstrip("/")] = expand_env(value, reader, str(url), self.warnings)
        return result

    def build(self) -> tuple[EndpointConfig, ...]:
        plain = self._items("endpoints")
        llama = self._items("llama_server_endpoints")
        plain_urls = [item.rstrip("/") for _, item, _ in plain + llama if isinstance(item, str)]
        endpoints = [self._one(r, i, item, None, plain_urls) for r, item, i in plain]
        endpoints += [self._one(r, i, item, "llama-server", plain_urls) for r, item, i in llama]
        self._check_unique(endpoints)
        for url in self.api_keys:
            if url not in {e.url for e in endpoints}:
                self.warnings.append(f"{self.path}: api_keys: {url!r} matches no endpoint")
        return tuple(endpoints)

    def _items(self, key: str) -> list[tuple[FieldReader, Any, int]]:
        items = self.top.child(key, list, "list")
        if items is None:
            return []
        reader = FieldReader(self.path, items, f"{key}")
        return [(reader, item, index) for index, item in enumerate(items)]

    def _one(self, reader, index, item, forced_type, plain_urls) -> EndpointConfig:
        label = f"{reader.where}[{index}]"
        if isinstance(item, str):
            position = ListItem(self.path, reader.node, index, label)
            url = _validate_url(position, "", item)
            return EndpointConfig(
                name=_default_name(url),
                url=url,
                type=forced_type or guess_type(url, plain_urls),
                max_concurrent_connections=self.default_slots,
                api_key=self.api_keys.get(url),
            )
        if not isinstance(item, dict):
            raise ListItem(self.path, reader.node, index, label).error("", "must be a URL or a mapping")
        return self._mapping(FieldReader(self.path, item, f"{label}."), forced_type)

    def _mapping(self, r: FieldReader, forced_type: str | None) -> EndpointConfig:
        r.check_keys(ENDPOINT_KEYS)
        url = r.string("url")
        if not url:
            raise r.error("url", "is required")
        url = _validate_url(r, "url", url)
        kind = r.string("type", forced_type or "ollama", choices=ENDPOINT_TYPES)
        key = r.string("api_key")
        api_key = expand_env(key, r, "api_key", self.warnings) if key else self.api_keys.get(url)
        return EndpointConfig(
            name=r.string("name") or _default_name(url),
            url=url,
            type=kind,
            max_concurrent_connections=r.number(
                "max_concurrent_connections", self.default_slots, kind=int, minimum=1
            ),
            model_slots=MappingProxyType(self._model_slots(r)),
            api_key=api_key,
        )

    def _model_slots(self, r: FieldReader) -> dict[str, int]:
        node = r.child("model_slots", dict, "mapping of model name to slots")
        if not node:
            return {}
        inner = FieldReader(self.path, node, f"{r.where}model_slots.")
        return {normalize_model(str(m)): inner.number(m, 1, kind=int, minimum=1) for m in node}

    def _check_unique(self, endpoints: list[EndpointConfig]) -> None:
        seen: dict[str, str] = {}
        for endpoint in endpoints:
            if endpoint.name in seen:
                raise ConfigError(
                    f"{self.path}: endpoints: two endpoints are named {endpoint.name!r} "
                    f"({seen[endpoint.name]} and {endpoint.url}); give them distinct `name`s"
                )
            seen[endpoint.name] = endpoint.url


TOP_KEYS = frozenset(
    {
        "endpoints", "llama_server_endpoints", "max_concurrent_connections", "api_keys",
        "nomyo-router-api-key", "router_api_keys", "listen", "poll_interval", "poll_timeout",
        "queue_timeout", "max_queue", "connect_timeout", "first_byte_timeout", "idle_timeout",
        "keepalive_interval", "drain_timeout", "max_body_size", "routing_policy",
        "cold_load_spread", "breaker_threshold", "breaker_cooldown",
        "log_level", "db_path", "flush_interval", "usage_stream_interval", "usage_stream_heartbeat",
    }
) | CACHE_KEYS
LOG_LEVELS = ("debug", "info", "warning", "error")
ROUTING_POLICIES = ("loaded-first", "original")


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` -> (host, port)."""

    match = re.fullmatch(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})", value)
    if not match or not 0 < int(match["port"]) < 65536:
        raise ValueError(f"must be host:port (e.g. {DEFAULT_LISTEN}), got {value!r}")
    return match["v6"] or match["host"] or "0.0.0.0", int(match["port"])


def _router_keys(top: FieldReader, warnings: list[str]) -> dict[str, str]:
    keys: dict[str, str] = {}
    single = top.string("nomyo-router-api-key")
    if single:
        expanded = expand_env(single, top, "nomyo-router-api-key", warnings)
        if expanded:
            keys["default"] = expanded
    named = top.child("router_api_keys", dict, "mapping of caller name to key")
    if named:
        reader = FieldReader(top.path, named, "router_api_keys.")
        for name, value in named.items():
            if not isinstance(value, str) or not value:
                raise reader.error(str(name), "must be a non-empty string")
            expanded = expand_env(value, reader, str(name), warnings)
            if expanded:
                keys[str(name)] = expanded
    env_key = os.environ.get("NOMYO_ROUTER_API_KEY")
    if env_key:
        keys.setdefault("default", env_key)
    return keys


def build_config(data: Any, path: str) -> Config:
    """Validate the parsed YAML document `data` (read from `path`) into a Config."""

    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: config: the top level must be a mapping of keys")
    top = FieldReader(path, data)
    warnings = top.check_keys(TOP_KEYS, IGNORED_ORIGINAL_KEYS)
    endpoints = _EndpointBuilder(top, warnings).build()
    listen = top.string("listen", DEFAULT_LISTEN)
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise top.error("listen", str(exc)) from None
    return Config(
        path=path,
        endpoints=endpoints,
        listen_host=host,
        listen_port=port,
        router_api_keys=MappingProxyType(_router_keys(top, warnings)),
        poll_interval=top.number("poll_interval", 2.0, minimum=0.1),
        poll_timeout=top.number("poll_timeout", 2.0, minimum=0.1),
        queue_timeout=top.number("queue_timeout", 300.0, minimum=0),
        max_queue=top.number("max_queue", 512, kind=int, minimum=0),
        connect_timeout=top.number("connect_timeout", 5.0, minimum=0.1),
        first_byte_timeout=top.number("first_byte_timeout", 600.0, minimum=0.1),
        idle_timeout=top.number("idle_timeout", 300.0, minimum=0.1),
        keepalive_interval=top.number("keepalive_interval", 0.0, minimum=0),
        drain_timeout=top.number("drain_timeout", 60.0, minimum=0),
        max_body_size=top.number("max_body_size", 100 * 1024 * 1024, kind=int, minimum=1024),
        routing_policy=top.string("routing_policy", "loaded-first", choices=ROUTING_POLICIES),
        cold_load_spread=top.number("cold_load_spread", 1, kind=int, minimum=1),
        breaker_threshold=top.number("breaker_threshold", 3, kind=int, minimum=1),
        breaker_cooldown=top.number("breaker_cooldown", 10.0, minimum=0.1),
        log_level=top.string("log_level", "info", choices=LOG_LEVELS),
        # The original's NOMYO_ROUTER_DB_PATH is the default when the file names no path.
        db_path=top.string("db_path") or os.environ.get("NOMYO_ROUTER_DB_PATH") or DEFAULT_DB_PATH,
        flush_interval=top.number("flush_interval", 1.0, minimum=0.01),
        usage_stream_interval=top.number("usage_stream_interval", 0.25, minimum=0.01),
        usage_stream_heartbeat=top.number("usage_stream_heartbeat", 15.0, minimum=0.1),
        cache=read_cache_config(top),
        warnings=tuple(warnings),
    )


def load_config(path: str | os.PathLike) -> Config:
    """Read and validate the file at `path`. Raises ConfigError with an operator-ready message."""

    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the configuration is not UTF-8 text") from None
    try:
        data = YAML(typ="rt").load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}{line}: invalid YAML: {problem}") from None
    return build_config(data, path)


def load_config_or_default(path: str) -> Config:
    """Like `load_config`, except that a missing file at the default path means the defaults: a
    router in front of the local Ollama, as a fresh install should behave."""

    if path == DEFAULT_CONFIG_PATH and not Path(path).exists():
        config = build_config({"endpoints": ["http://127.0.0.1:11434"]}, path)
        note = f"{path} does not exist; using the defaults (one endpoint, http://127.0.0.1:11434)"
        return replace(config, path=None, warnings=(note, *config.warnings))
    return load_config(path)


def resolve_config_path(cli_path: str | None) -> str:
    """--config, else NOMYO_ROUTER_CONFIG (or the original's NOMYO_ROUTER_CONFIG_PATH), else /etc."""

    return (
        cli_path
        or os.environ.get("NOMYO_ROUTER_CONFIG")
        or os.environ.get("NOMYO_ROUTER_CONFIG_PATH")
        or DEFAULT_CONFIG_PATH
    )
