"""YAML configuration -> validated, frozen objects.

Configuration is a value: the daemon parses and validates the whole file before it uses any of
it, so a bad file (at start or on SIGHUP) never leaves the router half-configured. Every error
names the file, the line and the key, because that is what an operator editing
`/etc/nomyo/config.yaml` needs to fix it.

Two forms are accepted in one file: the original NOMYO Router's (`endpoints:` as a list of URLs,
`max_concurrent_connections`, `api_keys`, `llama_server_endpoints`, `nomyo-router-api-key`) and a
richer per-endpoint form (see endpoint_config.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from .cache.config import CACHE_KEYS, CacheConfig, read_cache_config
from .endpoint_config import ENDPOINT_TYPES, EndpointBuilder, EndpointConfig
from .names import normalize_model
from .yaml_fields import ConfigError, FieldReader, expand_env

__all__ = ["ENDPOINT_TYPES", "Config", "ConfigError", "EndpointConfig", "build_config", "load_config"]

DEFAULT_CONFIG_PATH = "/etc/nomyo/config.yaml"
DEFAULT_LISTEN = "127.0.0.1:12434"
DEFAULT_DB_PATH = "/var/lib/nomyo/usage.db"

# Keys of the original router that have no meaning here; accepted so an existing file keeps
# working, and reported once as ignored. (Its cache_* keys are read by nomyo.cache.config.)
IGNORED_ORIGINAL_KEYS: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration. Built by `load_config`; never mutated."""

    path: str | None
    endpoints: tuple[EndpointConfig, ...]
    listen_host: str = "127.0.0.1"
    listen_port: int = 12434
    router_api_keys: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    admin_api_keys: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    health_requires_key: bool = True
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    client_header_timeout: float = 60.0
    client_body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    max_connections: int = 4096
    poll_interval: float = 2.0
    poll_timeout: float = 2.0
    queue_timeout: float = 300.0
    max_queue: int = 512
    connect_timeout: float = 5.0
    first_byte_timeout: float = 600.0
    idle_timeout: float = 300.0
    response_timeout: float = 1800.0
    keepalive_interval: float = 0.0
    drain_timeout: float = 60.0
    max_body_size: int = 100 * 1024 * 1024
    routing_policy: str = "loaded-first"
    cold_load_spread: int = 2
    breaker_threshold: int = 3
    breaker_cooldown: float = 10.0
    log_level: str = "info"
    db_path: str = DEFAULT_DB_PATH
    flush_interval: float = 1.0
    usage_stream_interval: float = 0.25
    usage_stream_heartbeat: float = 15.0
    # model (normalised) -> what /api/show says it can do, for OpenAI-compatible backends' models
    model_capabilities: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    cache: CacheConfig = field(default_factory=CacheConfig)
    warnings: tuple[str, ...] = ()

    @property
    def listen(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"




TOP_KEYS = frozenset(
    {
        "endpoints", "llama_server_endpoints", "max_concurrent_connections", "api_keys",
        "nomyo-router-api-key", "router_api_keys", "listen", "poll_interval", "poll_timeout",
        "queue_timeout", "max_queue", "connect_timeout", "first_byte_timeout", "idle_timeout",
        "response_timeout",
        "keepalive_interval", "drain_timeout", "max_body_size", "routing_policy",
        "cold_load_spread", "breaker_threshold", "breaker_cooldown",
        "log_level", "db_path", "flush_interval", "usage_stream_interval", "usage_stream_heartbeat",
        "admin_api_keys", "health_requires_key", "allowed_origins", "allowed_hosts",
        "client_header_timeout", "client_body_timeout", "keepalive_timeout", "max_connections",
        "model_capabilities",
    }
) | CACHE_KEYS
LOG_LEVELS = ("debug", "info", "warning", "error")
ROUTING_POLICIES = ("loaded-first", "original")
CAPABILITIES = ("completion", "embedding", "tools", "vision", "thinking", "insert")


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` -> (host, port)."""

    match = re.fullmatch(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})", value)
    if not match or not 0 < int(match["port"]) < 65536:
        raise ValueError(f"must be host:port (e.g. {DEFAULT_LISTEN}), got {value!r}")
    return match["v6"] or match["host"] or "0.0.0.0", int(match["port"])


def _named_keys(top: FieldReader, key: str, warnings: list[str]) -> dict[str, str]:
    """A mapping of caller name -> key (`router_api_keys`, `admin_api_keys`), ${VAR} expanded."""

    keys: dict[str, str] = {}
    named = top.child(key, dict, "mapping of caller name to key")
    if named:
        reader = top.nested(named, f"{key}.")
        for name, value in named.items():
            if not isinstance(value, str) or not value:
                reader.invalid(str(name), "must be a non-empty string")
                continue
            expanded = expand_env(value, reader, str(name), warnings)
            if expanded:
                keys[str(name)] = expanded
    return keys


def _router_keys(top: FieldReader, warnings: list[str]) -> dict[str, str]:
    keys: dict[str, str] = {}
    single = top.string("nomyo-router-api-key")
    if single:
        expanded = expand_env(single, top, "nomyo-router-api-key", warnings)
        if expanded:
            keys["default"] = expanded
    keys.update(_named_keys(top, "router_api_keys", warnings))
    env_key = os.environ.get("NOMYO_ROUTER_API_KEY")
    if env_key:
        keys.setdefault("default", env_key)
    return keys


def _front_door(top: FieldReader, warnings: list[str]) -> dict[str, Any]:
    """Who may call (keys, origins, hosts) and how long a client may hold a connection."""

    return {
        "router_api_keys": MappingProxyType(_router_keys(top, warnings)),
        "admin_api_keys": MappingProxyType(_named_keys(top, "admin_api_keys", warnings)),
        "health_requires_key": top.flag("health_requires_key", True),
        "allowed_origins": top.strings("allowed_origins"),
        "allowed_hosts": top.strings("allowed_hosts"),
        "client_header_timeout": top.number("client_header_timeout", 60.0, minimum=0.1),
        "client_body_timeout": top.number("client_body_timeout", 60.0, minimum=0.1),
        "keepalive_timeout": top.number("keepalive_timeout", 75.0, minimum=0),
        "max_connections": top.number("max_connections", 4096, kind=int, minimum=16),
    }


def _require_endpoints(top: FieldReader, endpoints: tuple[EndpointConfig, ...]) -> None:
    """A router without backends cannot answer anything: that is a mistake, not a setting."""

    if endpoints or top.problems.found:  # endpoints that were listed but invalid are reported as such
        return
    if not top.node:
        raise ConfigError(f"{top.path}: the configuration is empty: list at least one backend URL under "
                          f"`endpoints:` (e.g. `endpoints: [http://127.0.0.1:11434]`)")
    raise top.error("endpoints" if "endpoints" in top.node else None,
                    "no backends configured: list at least one backend URL under `endpoints:` "
                    "(or `llama_server_endpoints:`)")
def _model_capabilities(top: FieldReader) -> dict[str, tuple[str, ...]]:
    table = top.child("model_capabilities", dict, "mapping of model name to a list of capabilities")
    reader = FieldReader(top.path, table or {}, "model_capabilities.")
    found = {}
    for name, value in (table or {}).items():
        if not isinstance(value, list) or not value or not all(v in CAPABILITIES for v in value):
            raise reader.error(str(name), f"must be a non-empty list of: {', '.join(CAPABILITIES)}")
        found[normalize_model(str(name))] = tuple(value)
    return found


def build_config(data: Any, path: str) -> Config:
    """Validate the parsed YAML document `data` (read from `path`) into a Config. Every problem
    in it is found before one ConfigError lists them all."""

    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: config: the top level must be a mapping of keys")
    top = FieldReader(path, data)
    warnings = top.check_keys(TOP_KEYS, IGNORED_ORIGINAL_KEYS)
    endpoints = EndpointBuilder(top, warnings).build()
    listen = top.string("listen", DEFAULT_LISTEN)
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        host, port = top.invalid("listen", str(exc), parse_listen(DEFAULT_LISTEN))
    front_door = _front_door(top, warnings)
    _require_endpoints(top, endpoints)
    config = Config(
        path=path,
        endpoints=endpoints,
        listen_host=host,
        listen_port=port,
        poll_interval=top.number("poll_interval", 2.0, minimum=0.1),
        poll_timeout=top.number("poll_timeout", 2.0, minimum=0.1),
        queue_timeout=top.number("queue_timeout", 300.0, minimum=0),
        max_queue=top.number("max_queue", 512, kind=int, minimum=0),
        connect_timeout=top.number("connect_timeout", 5.0, minimum=0.1),
        first_byte_timeout=top.number("first_byte_timeout", 600.0, minimum=0.1),
        idle_timeout=top.number("idle_timeout", 300.0, minimum=0.1),
        response_timeout=top.number("response_timeout", 1800.0, minimum=0.1),
        keepalive_interval=top.number("keepalive_interval", 0.0, minimum=0),
        drain_timeout=top.number("drain_timeout", 60.0, minimum=0),
        max_body_size=top.number("max_body_size", 100 * 1024 * 1024, kind=int, minimum=1024),
        routing_policy=top.string("routing_policy", "loaded-first", choices=ROUTING_POLICIES),
        cold_load_spread=top.number("cold_load_spread", 2, kind=int, minimum=1),
        breaker_threshold=top.number("breaker_threshold", 3, kind=int, minimum=1),
        breaker_cooldown=top.number("breaker_cooldown", 10.0, minimum=0.1),
        log_level=top.string("log_level", "info", choices=LOG_LEVELS),
        # The original's NOMYO_ROUTER_DB_PATH is the default when the file names no path.
        db_path=top.string("db_path") or os.environ.get("NOMYO_ROUTER_DB_PATH") or DEFAULT_DB_PATH,
        flush_interval=top.number("flush_interval", 1.0, minimum=0.01),
        usage_stream_interval=top.number("usage_stream_interval", 0.25, minimum=0.01),
        usage_stream_heartbeat=top.number("usage_stream_heartbeat", 15.0, minimum=0.1),
        model_capabilities=MappingProxyType(_model_capabilities(top)),
        cache=read_cache_config(top),
        warnings=tuple(warnings),
        **front_door,
    )
    top.problems.raise_any()
    return config


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
