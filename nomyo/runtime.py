"""The swappable runtime: everything a request reads that a reload may change, as one value.

A reload builds a new `Runtime` off to the side (new fleet, polled; new policy, timings and
limits) and the router swaps it in with one assignment. A request takes the runtime once, when
it arrives, and keeps it to its end: a swap never tears a request in flight, and no setting can
be forgotten by a reload that assigns fields one by one. Settings that a running process cannot
change (`listen`, `db_path`) are named in a warning instead.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .config import Config, EndpointConfig
from .fleet import Backend, Fleet
from .policy import Policy, make_policy
from .upstream import Timing

# Keys that a running router cannot change: a reload names them and keeps the old value.
RESTART_KEYS = {"listen_host": "listen", "listen_port": "listen", "db_path": "db_path"}
SECRET_KEYS = frozenset({"router_api_keys"})  # a change is reported, never its values


@dataclass(frozen=True, slots=True)
class Runtime:
    """Config, fleet, policy and timings of one configuration."""

    config: Config
    fleet: Fleet
    policy: Policy
    timing: Timing


def build_fleet(config: Config, previous: Fleet | None = None) -> Fleet:
    """Backends for `config`; an endpoint whose configuration did not change keeps its Backend
    object (and with it its status and polling task) across a reload."""

    backends = []
    for endpoint in config.endpoints:
        old = previous.backends.get(endpoint.name) if previous else None
        backends.append(old if old is not None and old.config == endpoint else Backend(endpoint))
    return Fleet(backends)


def timing_of(config: Config) -> Timing:
    return Timing(connect=config.connect_timeout, first_byte=config.first_byte_timeout, idle=config.idle_timeout,
                  response=config.response_timeout)


def build_runtime(config: Config, previous: Runtime | None = None) -> Runtime:
    return Runtime(config=config, fleet=build_fleet(config, previous.fleet if previous else None),
                   policy=make_policy(config.routing_policy, config.cold_load_spread), timing=timing_of(config))


def changes(old: Config, new: Config) -> list[str]:
    """What a reload changed, in an operator's words: backends added, removed and changed, then
    the other keys that changed (values shown unless they are secrets)."""

    said = _endpoint_changes(old.endpoints, new.endpoints)
    for item in fields(Config):
        name = item.name
        if name in ("path", "endpoints", "warnings") or name in RESTART_KEYS:
            continue
        before, after = getattr(old, name), getattr(new, name)
        if before != after:
            said.append(f"{name} changed" if name in SECRET_KEYS else f"{name}: {before!r} -> {after!r}")
    return said


def restart_warnings(old: Config, new: Config) -> list[str]:
    """Settings the file changed that only a restart applies (the old value stays in force)."""

    said = []
    if (old.listen_host, old.listen_port) != (new.listen_host, new.listen_port):
        said.append(f"`listen` changed to {new.listen}: that takes a restart; still serving on {old.listen}")
    if old.db_path != new.db_path:
        said.append(f"`db_path` changed to {new.db_path}: that takes a restart; still writing {old.db_path}")
    return said


def _endpoint_changes(old: tuple[EndpointConfig, ...], new: tuple[EndpointConfig, ...]) -> list[str]:
    before = {e.name: e for e in old}
    after = {e.name: e for e in new}
    said = [f"backend {name} added" for name in after if name not in before]
    said += [f"backend {name} removed" for name in before if name not in after]
    said += [f"backend {name} changed" for name in after if name in before and before[name] != after[name]]
    return said
