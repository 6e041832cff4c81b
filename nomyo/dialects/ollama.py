"""Ollama's native wire format: reading requests and the counts on a stream's final line."""

from __future__ import annotations

import re
from typing import Any

import orjson

from ..errors import bad_request

NDJSON = "application/x-ndjson"
JSON_UTF8 = "application/json; charset=utf-8"
# Deeper bodies are refused: the router re-encodes bodies it translates or fans out, and orjson
# writes at most 254 levels (it reads 1024). No real request comes near this.
MAX_DEPTH = 128


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
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and too_deep(payload, MAX_DEPTH):
        raise bad_request(f"request body nested too deeply (more than {MAX_DEPTH} levels)")
    return payload


def too_deep(value: Any, limit: int) -> bool:
    """Whether `value` nests more than `limit` arrays and objects (without recursing)."""

    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


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


def check_semantics(path: str, payload: dict[str, Any]) -> None:
    """Ollama's own 400s for well-typed requests it refuses, given before any routing, so a
    backend of any kind (and its slot) never sees them."""

    if path == "/api/generate" and payload.get("raw") and (
            payload.get("template") or payload.get("system") or payload.get("context")):
        raise bad_request("raw mode does not support template, system, or context", param="raw")
    top = payload.get("top_logprobs")
    if path in ("/api/generate", "/api/chat") and isinstance(top, int) and not 0 <= top <= 20:
        raise bad_request("top_logprobs must be between 0 and 20", param="top_logprobs")


def keeps_alive_zero(value: Any) -> bool:
    """`keep_alive: 0` (or "0", "0s", "0m"): Ollama unloads the model."""

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value == 0
    return isinstance(value, str) and value.rstrip("smh") in ("0", "0.0")


# Ollama's metrics are the last fields of the final object, after `context` (which can run to
# tens of kilobytes), so they are read off the end with a pattern, not by parsing the line. A
# quote before the name keeps `"eval_count"` from matching inside `"prompt_eval_count"`, and a
# JSON string can never contain an unescaped quote, so no message text can imitate them.
COUNTS = re.compile(rb'"(prompt_eval_count|eval_count)"\s*:\s*(\d+)')
COUNTS_WINDOW = 600


def final_counts(tail: bytes) -> tuple[int, int] | None:
    """(prompt tokens, generated tokens) from the end of a stream or of a whole answer; None if
    its last line carries no counts (a stream cut before its `done` line)."""

    end = tail.rstrip(b"\n")
    start = max(end.rfind(b"\n") + 1, len(end) - COUNTS_WINDOW)
    found = dict(COUNTS.findall(end, start))
    if not found:
        return None
    return int(found.get(b"prompt_eval_count", 0)), int(found.get(b"eval_count", 0))


def answer_counts(answer: Any) -> tuple[int, int] | None:
    """(prompt tokens, generated tokens) of a whole answer already parsed."""

    if not isinstance(answer, dict) or ("prompt_eval_count" not in answer and "eval_count" not in answer):
        return None
    return _whole_number(answer.get("prompt_eval_count")), _whole_number(answer.get("eval_count"))


def answer_load_seconds(answer: Any) -> float | None:
    value = answer.get("load_duration") if isinstance(answer, dict) else None
    return _whole_number(value) / 1e9 if value is not None else None


def _whole_number(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
