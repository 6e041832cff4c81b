"""Type checks of the top-level fields of a request body, shared by both dialects.

A mistyped field is the client's mistake: it gets a 400 naming the field before the request is
routed, instead of reaching (and occupying a slot on) a backend that would refuse it anyway.
`null` counts as absent, as in Go and in OpenAI's API. The tables live with their handlers and
match the typed properties of the request schemas in `nomyo.openapi`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import bad_request

STRING, BOOL, LIST, OBJECT, INTEGER = str, bool, list, dict, int
NUMBER = (int, float)
DURATION = (str, int, float)
JSON_NAMES = {str: "a string", bool: "a boolean", list: "an array", dict: "an object", int: "an integer",
              float: "a number"}

# A field's type: a type, a tuple of types, a table (an object with typed fields) or a list
# holding one table (an array of such objects).
FieldTypes = Mapping[str, Any]

# the elements of `messages` and `tools`, as Ollama and OpenAI type them; a tool call's
# `function` is an object with a string `name` in both (Go's json refuses anything else)
TOOL_CALL = {"function": {"name": STRING}}
OLLAMA_MESSAGE = {"role": STRING, "content": STRING, "thinking": STRING, "images": LIST, "tool_calls": [TOOL_CALL],
                  "tool_name": STRING, "tool_call_id": STRING}
OPENAI_MESSAGE = {"role": STRING, "content": (str, list), "name": STRING, "tool_calls": [TOOL_CALL],
                  "tool_call_id": STRING}
TOOL = {"type": STRING, "function": OBJECT}


def check_fields(payload: dict[str, Any], types: FieldTypes, where: str = "") -> None:
    """A 400 for the first field of `payload` whose value has none of the types `types` allows."""

    for name, expected in types.items():
        value = payload.get(name)
        if value is None:
            continue
        if isinstance(expected, Mapping):
            check_value(value, dict, where + name)
            check_fields(value, expected, f"{where}{name}.")
        elif isinstance(expected, list):
            check_value(value, list, where + name)
            for index, item in enumerate(value):
                check_value(item, dict, f"{where}{name}[{index}]")
                check_fields(item, expected[0], f"{where}{name}[{index}].")
        else:
            check_value(value, expected, where + name)


def check_value(value: Any, expected: type | tuple[type, ...], name: str) -> None:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        wanted = " or ".join(JSON_NAMES[k] for k in kinds if k is not int or float not in kinds)
        raise bad_request(f"invalid type for '{name}': expected {wanted}", param=name)


def check_items(payload: dict[str, Any], items: Mapping[str, type | FieldTypes]) -> None:
    """The elements of the arrays named in `items`: each of a type, or each an object whose
    fields have the types of a table (`{"messages": {"role": STRING, ...}}`)."""

    for name, expected in items.items():
        values = payload.get(name)
        if not isinstance(values, list):
            continue
        for index, value in enumerate(values):
            if isinstance(expected, Mapping):
                check_value(value, dict, f"{name}[{index}]")
                check_fields(value, expected, f"{name}[{index}].")
            else:
                check_value(value, expected, f"{name}[{index}]")
