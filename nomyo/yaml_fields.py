"""Reading a YAML document with positions, so every configuration error can say file:line: key.

ruamel.yaml's round-trip loader keeps the line of every key and list item; these readers use it
to phrase errors the way an operator needs them, and expand `${VAR}` references.
"""

from __future__ import annotations

import os
import re
from typing import Any

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(ValueError):
    """A configuration problem, already phrased for the operator (file:line: key: what)."""


class FieldReader:
    """Reads one YAML mapping and phrases errors with the file, line and key."""

    def __init__(self, path: str, node: Any, where: str = ""):
        self.path = path
        self.node = node
        self.where = where

    def line_of(self, key: str | None = None) -> int:
        lc = getattr(self.node, "lc", None)
        if lc is None:
            return 1
        if key is not None:
            try:
                return lc.key(key)[0] + 1
            except (KeyError, TypeError):
                pass
        return lc.line + 1

    def error(self, key: str | None, message: str) -> ConfigError:
        label = f"{self.where}{key}" if key is not None else self.where.rstrip(".") or "config"
        return ConfigError(f"{self.path}:{self.line_of(key)}: {label}: {message}")

    def check_keys(self, allowed: frozenset[str], ignored: frozenset[str] = frozenset()) -> list[str]:
        notes = []
        for key in self.node:
            if key in ignored:
                notes.append(f"{self.path}:{self.line_of(key)}: {self.where}{key}: not supported, ignored")
            elif key not in allowed:
                known = ", ".join(sorted(allowed))
                raise self.error(key, f"unknown key (known keys: {known})")
        return notes

    def number(self, key: str, default, *, kind=float, minimum=None):
        if key not in self.node or self.node[key] is None:
            return default
        value = self.node[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, f"must be a number, got {value!r}")
        if kind is int and not float(value).is_integer():
            raise self.error(key, f"must be a whole number, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value!r}")
        return kind(value)

    def string(self, key: str, default=None, *, choices=None) -> str | None:
        if key not in self.node or self.node[key] is None:
            return default
        value = self.node[key]
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {value!r}")
        if choices is not None and value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        if key not in self.node or self.node[key] is None:
            return default
        value = self.node[key]
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        """A list of non-empty strings (a single string counts as a list of one)."""

        value = self.node.get(key)
        if value is None:
            return ()
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(item, str) and item.strip() for item in items):
            raise self.error(key, "must be a list of non-empty strings")
        return tuple(item.strip() for item in items)

    def child(self, key: str, kind: type, kind_name: str):
        value = self.node.get(key)
        if value is None:
            return None
        if not isinstance(value, kind):
            raise self.error(key, f"must be a {kind_name}")
        return value


def expand_env(value: str, reader: FieldReader, key: str, warnings: list[str]) -> str | None:
    """Expand `${VAR}` references; an unset variable is reported, and yields no key at all."""

    missing = [name for name in ENV_REF.findall(value) if name not in os.environ]
    if missing:
        warnings.append(
            f"{reader.path}:{reader.line_of(key)}: {reader.where}{key}: environment variable "
            f"{', '.join(missing)} is not set; no key is sent"
        )
        return None
    return ENV_REF.sub(lambda m: os.environ[m.group(1)], value) or None


# ----------------------------------------------------------------------------------------------
# Endpoints


class ListItem(FieldReader):
    """A position inside a YAML list (for errors about one item)."""

    def __init__(self, path, seq, index, label):
        super().__init__(path, seq, "")
        self.index = index
        self.label = label

    def line_of(self, key=None) -> int:
        try:
            return self.node.lc.item(self.index)[0] + 1
        except (AttributeError, KeyError, TypeError, IndexError):
            return super().line_of()

    def error(self, key, message) -> ConfigError:
        return ConfigError(f"{self.path}:{self.line_of()}: {self.label}: {message}")


# ----------------------------------------------------------------------------------------------
# The top level
