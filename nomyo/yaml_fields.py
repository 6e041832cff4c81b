"""Reading a YAML document with positions, so every configuration error can say file:line: key.

ruamel.yaml's round-trip loader keeps the line of every key and list item; these readers use it
to phrase errors the way an operator needs them, and expand `${VAR}` references. A reader notes
each problem in the file's `Problems` and goes on with the default, so one check of a file
reports all its errors (an operator fixing them one run at a time would need as many runs).
"""

from __future__ import annotations

import os
import re
from typing import Any

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(ValueError):
    """Configuration problems, already phrased for the operator (file:line: key: what), in the
    order of their lines. `str()` joins them with "; " (one line: logs and sd_notify STATUS);
    `problems` has them one by one."""

    def __init__(self, *problems: str, line: int = 0):
        super().__init__("; ".join(problems))
        self.problems = problems
        self.line = line


class Problems:
    """Every error found in one file so far; `raise_any` once the whole file was read."""

    def __init__(self) -> None:
        self.found: list[ConfigError] = []

    def note(self, error: ConfigError) -> None:
        self.found.append(error)

    def raise_any(self) -> None:
        if self.found:
            ordered = sorted(self.found, key=lambda error: error.line)  # stable: same line keeps its order
            raise ConfigError(*(problem for error in ordered for problem in error.problems))


class FieldReader:
    """Reads one YAML mapping and phrases errors with the file, line and key. An invalid value is
    noted in `problems` and read as the default, so reading goes on to the next key."""

    def __init__(self, path: str, node: Any, where: str = "", problems: Problems | None = None):
        self.path = path
        self.node = node
        self.where = where
        self.problems = problems if problems is not None else Problems()

    def nested(self, node: Any, where: str) -> FieldReader:
        """A reader for a mapping inside this one, noting its errors with this one's."""

        return FieldReader(self.path, node, where, self.problems)

    def item(self, index: int, label: str) -> ListItem:
        """The position of one item of this reader's list (for errors about the item itself)."""

        return ListItem(self.path, self.node, index, label, self.problems)

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
        line = self.line_of(key)
        return ConfigError(f"{self.path}:{line}: {label}: {message}", line=line)

    def invalid(self, key: str | None, message: str, default=None):
        """Note the problem with `key` and read it as `default`."""

        self.problems.note(self.error(key, message))
        return default

    def check_keys(self, allowed: frozenset[str], ignored: frozenset[str] = frozenset()) -> list[str]:
        notes = []
        for key in self.node:
            if key in ignored:
                notes.append(f"{self.path}:{self.line_of(key)}: {self.where}{key}: not supported, ignored")
            elif key not in allowed:
                self.invalid(key, f"unknown key (known keys: {', '.join(sorted(allowed))})")
        return notes

    def number(self, key: str, default, *, kind=float, minimum=None):
        if key not in self.node or self.node[key] is None:
            return default
        value = self.node[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return self.invalid(key, f"must be a number, got {value!r}", default)
        if kind is int and not float(value).is_integer():
            return self.invalid(key, f"must be a whole number, got {value!r}", default)
        if minimum is not None and value < minimum:
            return self.invalid(key, f"must be at least {minimum}, got {value!r}", default)
        return kind(value)

    def string(self, key: str, default=None, *, choices=None) -> str | None:
        if key not in self.node or self.node[key] is None:
            return default
        value = self.node[key]
        if not isinstance(value, str):
            return self.invalid(key, f"must be a string, got {value!r}", default)
        if choices is not None and value not in choices:
            return self.invalid(key, f"must be one of {', '.join(choices)}, got {value!r}", default)
        return value

    def flag(self, key: str, default: bool) -> bool:
        if key not in self.node or self.node[key] is None:
            return default
        value = self.node[key]
        if not isinstance(value, bool):
            return self.invalid(key, f"must be true or false, got {value!r}", default)
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        """A list of non-empty strings (a single string counts as a list of one)."""

        value = self.node.get(key)
        if value is None:
            return ()
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(item, str) and item.strip() for item in items):
            return self.invalid(key, "must be a list of non-empty strings", ())
        return tuple(item.strip() for item in items)

    def child(self, key: str, kind: type, kind_name: str):
        value = self.node.get(key)
        if value is None:
            return None
        if not isinstance(value, kind):
            return self.invalid(key, f"must be a {kind_name}")
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

    def __init__(self, path, seq, index, label, problems: Problems | None = None):
        super().__init__(path, seq, "", problems)
        self.index = index
        self.label = label

    def line_of(self, key=None) -> int:
        try:
            return self.node.lc.item(self.index)[0] + 1
        except (AttributeError, KeyError, TypeError, IndexError):
            return super().line_of()

    def error(self, key, message) -> ConfigError:
        line = self.line_of()
        return ConfigError(f"{self.path}:{line}: {self.label}: {message}", line=line)


# ----------------------------------------------------------------------------------------------
# The top level
