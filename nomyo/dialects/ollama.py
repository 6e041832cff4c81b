"""Ollama's native wire format: reading requests and the counts on a stream's final line."""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import bad_request

NDJSON = "application/x-ndjson"
JSON_UTF8 = "application/json; charset=utf-8"


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 in Ollama's words."""

    if not raw.strip():
        raise bad_request("missing request body")
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"invalid JSON in request body: {exc}") from None
    if not isinstance(payload, dict):
        raise bad_request("request body must be a JSON object")
    return payload


def require_model(payload: dict[str, Any], field: str = "model") -> str:
    """The model the request names (`model`, or the deprecated `name`), or a 400."""

    model = payload.get(field)
    if model is None and field == "model":
        model = payload.get("name")
    if model is None or model == "":
        raise bad_request(f"{field} is required", param=field)
    if not isinstance(model, str):
        raise bad_request(f"{field} must be a string", param=field)
    return model


def is_load_or_unload(path: str, payload: dict[str, Any]) -> bool:
    """Empty prompt/messages loads (or with keep_alive 0 unloads) a model: no text is generated."""

    if path.endswith("/chat"):
        return not payload.get("messages")
    if path.endswith("/generate"):
        return not payload.get("prompt") and not payload.get("suffix")
    return False


def last_line(tail: bytes) -> bytes:
    """The last complete non-empty line of an NDJSON tail."""

    for line in reversed(tail.split(b"\n")):
        if line.strip():
            return line
    return b""


def final_counts(tail: bytes) -> tuple[int, int] | None:
    """(prompt tokens, generated tokens) from the `done: true` line of a stream or a whole answer."""

    line = last_line(tail)
    if not line or (b'"done"' not in line and b"prompt_eval_count" not in line):
        return None
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    if not obj.get("done") and "prompt_eval_count" not in obj:
        return None
    return _int(obj.get("prompt_eval_count")), _int(obj.get("eval_count"))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
