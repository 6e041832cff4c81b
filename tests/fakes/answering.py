"""What both fakes answer to tools, `format`, `think` and images: plausible content, decided
from the request alone, so a test can check that each feature made it through the router.

- tools: a request that offers tools gets a call of the scripted tool (`tool_call`), else of
  the first tool offered, with arguments filled in from its JSON schema;
- `format` ("json" or a schema; OpenAI's `response_format`): the text is a JSON object, shaped
  by the schema when there is one;
- `think` (OpenAI: `reasoning_effort` or `chat_template_kwargs.enable_thinking`): thinking text
  comes first, separately;
- images (Ollama's `images`, OpenAI's `image_url` parts): the reply starts by counting them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

THINKING = "Let me think about this."
SAMPLE = {"string": "fake", "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}


@dataclass
class Answer:
    """The content of one reply, before a fake puts it in its wire format."""

    text: str
    thinking: str = ""
    tool_calls: list[tuple[str, dict]] = field(default_factory=list)


def sample_of(schema: Any) -> Any:
    """A value that satisfies a (simple) JSON schema: what a model under `format` would write."""

    if not isinstance(schema, dict):
        return {}
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or "properties" in schema:
        return {name: sample_of(sub) for name, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [sample_of(schema.get("items"))]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    return SAMPLE.get(kind, "fake")


def structured(fmt: Any, text: str) -> str | None:
    """The reply under Ollama's `format`: a JSON object (None: no format asked)."""

    if fmt == "json":
        return json.dumps({"answer": text})
    if isinstance(fmt, dict) and fmt:
        return json.dumps(sample_of(fmt))
    return None


def called_tool(tools: Any, scripted: tuple[str, dict] | None) -> tuple[str, dict] | None:
    """The tool call a request that offers `tools` gets (None when it offers none)."""

    if not isinstance(tools, list) or not tools:
        return None
    if scripted is not None:
        return scripted
    function = (tools[0] or {}).get("function") or {}
    arguments = sample_of(function.get("parameters") or {"type": "object"})
    return str(function.get("name") or "tool"), arguments if isinstance(arguments, dict) else {}


def with_images(text: str, count: int) -> str:
    return f"I see {count} image{'s' if count != 1 else ''}. {text}" if count else text


def ollama_answer(body: dict, text: str, scripted: tuple[str, dict] | None = None, *, chat: bool) -> Answer:
    """The answer to an Ollama /api/chat or /api/generate body."""

    if chat:
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        images = sum(len(m.get("images") or []) for m in messages)
    else:
        images = len(body.get("images") or [])
    think = body.get("think")
    answer = Answer(with_images(text, images), THINKING if think not in (None, False) else "")
    call = called_tool(body.get("tools"), scripted) if chat else None
    if call is not None:
        return Answer("", answer.thinking, [call])
    answer.text = structured(body.get("format"), answer.text) or answer.text
    return answer


def openai_format(response_format: Any) -> Any:
    """OpenAI's `response_format` as Ollama's `format` (for `structured`)."""

    if not isinstance(response_format, dict):
        return None
    if response_format.get("type") == "json_schema":
        return (response_format.get("json_schema") or {}).get("schema") or "json"
    if response_format.get("type") == "json_object":
        return response_format.get("schema") or "json"
    return None


def openai_images(body: dict) -> int:
    count = 0
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            count += sum(1 for part in content if isinstance(part, dict) and part.get("type") == "image_url")
    return count


def openai_thinks(body: dict) -> bool:
    kwargs = body.get("chat_template_kwargs") or {}
    return bool(kwargs.get("enable_thinking")) or body.get("reasoning_effort") not in (None, "none")
