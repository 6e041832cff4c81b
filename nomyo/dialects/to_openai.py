"""Ollama requests rewritten for OpenAI-compatible backends (vLLM, llama.cpp, hosted APIs).

Used only when the backend chosen for an `/api/*` request speaks `/v1` alone. The aim is to
send everything the backend could use and nothing it would reject: text and images together,
tools and tool calls (Ollama's argument objects become JSON strings, tool results get the ids
OpenAI requires), `format` as a valid `response_format`, sampling options under their OpenAI (or
llama.cpp / vLLM) names, `think` as reasoning controls, and `stream_options` only on streams
(hosted APIs reject it otherwise). Load-time options (`num_ctx`, `num_gpu`, ...) and
`keep_alive` have no OpenAI meaning: the backend decides those.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from .context import decode

# Ollama option -> OpenAI parameter, understood by every OpenAI-compatible server.
COMMON_OPTIONS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed", "stop": "stop",
                  "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty"}
# Sampling options only some servers know, under their names there. `openai` endpoints are
# usually vLLM or SGLang, which accept these extras; llama.cpp has its own names.
EXTRA_OPTIONS = {
    "openai": {"top_k": "top_k", "min_p": "min_p", "repeat_penalty": "repetition_penalty"},
    "llama-server": {"top_k": "top_k", "min_p": "min_p", "typical_p": "typical_p",
                     "repeat_penalty": "repeat_penalty", "repeat_last_n": "repeat_last_n",
                     "num_keep": "n_keep", "mirostat": "mirostat", "mirostat_tau": "mirostat_tau",
                     "mirostat_eta": "mirostat_eta", "penalize_newline": "penalize_nl"},
}
IMAGE_SIGNATURES = (("iVBORw0KGgo", "image/png"), ("/9j/", "image/jpeg"), ("R0lGOD", "image/gif"),
                    ("UklGR", "image/webp"), ("Qk", "image/bmp"))


def sampling(options: Any, kind: str) -> dict[str, Any]:
    """`options` as OpenAI request parameters; unknown and load-time options are dropped."""

    if not isinstance(options, dict):
        return {}
    params: dict[str, Any] = {}
    for name, target in (COMMON_OPTIONS | EXTRA_OPTIONS.get(kind, {})).items():
        value = options.get(name)
        if value is not None and value != []:
            params[target] = value
    limit = options.get("num_predict")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        params["max_tokens"] = limit  # -1 (until done) and -2 (fill the context) mean no limit
    return params


def response_format(fmt: Any, kind: str) -> dict | None:
    """Ollama's `format` ("json" or a JSON schema) as a `response_format` the backend accepts:
    OpenAI's `json_schema` needs a `name`; llama.cpp takes the schema on `json_object`."""

    if fmt == "json":
        return {"type": "json_object"}
    if not isinstance(fmt, dict) or not fmt:
        return None
    if kind == "llama-server":
        return {"type": "json_object", "schema": fmt}
    title = fmt.get("title") if isinstance(fmt.get("title"), str) else ""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", title)[:64] or "response"
    return {"type": "json_schema", "json_schema": {"name": name, "schema": fmt}}


def reasoning(think: Any) -> dict[str, Any]:
    """`think`: a level becomes `reasoning_effort`; true/false switch thinking on or off in the
    chat template (how vLLM, SGLang and llama.cpp control Qwen-style reasoning models)."""

    if isinstance(think, str) and think:
        return {"reasoning_effort": think}
    if isinstance(think, bool):
        return {"chat_template_kwargs": {"enable_thinking": think}}
    return {}


def image_url(data: str) -> str:
    """A base64 image (what Ollama takes) as the data URL OpenAI takes, typed by its magic bytes."""

    if data.startswith("data:"):
        return data
    mime = next((m for prefix, m in IMAGE_SIGNATURES if data.startswith(prefix)), "image/jpeg")
    return f"data:{mime};base64,{data}"


def content_parts(text: str, images: list) -> str | list[dict]:
    """Text alone stays a string; with images, one text part and one part per image."""

    if not images:
        return text
    parts: list[dict] = [{"type": "text", "text": text}] if text else []
    parts.extend({"type": "image_url", "image_url": {"url": image_url(str(i))}} for i in images)
    return parts


class _ToolIds:
    """OpenAI links a tool result to its call by id; Ollama clients often send neither ids nor
    `tool_call_id`. Calls without an id get one, and a result without `tool_call_id` takes the
    oldest open call of its `tool_name` (else the oldest open call)."""

    def __init__(self) -> None:
        self.open: list[tuple[str, str]] = []  # (function name, id) awaiting their results
        self.issued = 0

    def call_id(self, call: dict) -> str:
        given = call.get("id")
        self.issued += 1
        ident = given if isinstance(given, str) and given else f"call_{self.issued}"
        name = (call.get("function") or {}).get("name") or ""
        self.open.append((name, ident))
        return ident

    def result_id(self, message: dict) -> str:
        given = message.get("tool_call_id")
        if isinstance(given, str) and given:
            self.open = [entry for entry in self.open if entry[1] != given]
            return given
        name = message.get("tool_name") or message.get("name")
        for position, (open_name, _) in enumerate(self.open):
            if open_name == name:
                return self.open.pop(position)[1]
        if self.open:
            return self.open.pop(0)[1]
        self.issued += 1
        return f"call_{self.issued}"


def tool_call(call: dict, ids: _ToolIds) -> dict:
    """An Ollama tool call (arguments as an object) as OpenAI's (arguments as a JSON string)."""

    function = call.get("function") or {}
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        arguments = orjson.dumps(arguments if arguments is not None else {}).decode()
    return {"id": ids.call_id(call), "type": "function",
            "function": {"name": function.get("name") or "", "arguments": arguments}}


def message(msg: Any, ids: _ToolIds, kind: str) -> dict:
    """One chat message. Ollama's `images` join the text as content parts; an assistant's
    `thinking` goes back to llama.cpp as `reasoning_content` (its templates use it)."""

    if not isinstance(msg, dict):
        return {"role": "user", "content": str(msg)}
    role = str(msg.get("role") or "user").lower()
    content = msg.get("content")
    text = content if isinstance(content, str) else ("" if content is None else str(content))
    out: dict[str, Any] = {"role": role, "content": content_parts(text, msg.get("images") or [])}
    calls = msg.get("tool_calls")
    if role == "assistant" and isinstance(calls, list) and calls:
        out["tool_calls"] = [tool_call(c, ids) for c in calls if isinstance(c, dict)]
    if role == "tool":
        out["tool_call_id"] = ids.result_id(msg)
    if role == "assistant" and kind == "llama-server" and msg.get("thinking"):
        out["reasoning_content"] = msg["thinking"]
    return out


def _common(body: dict, kind: str, stream: bool) -> dict[str, Any]:
    params = sampling(body.get("options"), kind)
    fmt = response_format(body.get("format"), kind)
    if fmt is not None:
        params["response_format"] = fmt
    params["stream"] = stream
    if stream:
        params["stream_options"] = {"include_usage": True}
    return params


def chat_request(body: dict, model_id: str, kind: str, stream: bool) -> dict:
    """`/api/chat` as `/v1/chat/completions`."""

    ids = _ToolIds()
    payload: dict[str, Any] = {"model": model_id,
                               "messages": [message(m, ids, kind) for m in body.get("messages") or []]}
    tools = body.get("tools")
    if isinstance(tools, list) and tools:  # ollama-python always sends `tools: []`
        payload["tools"] = tools
    payload |= reasoning(body.get("think"))
    if body.get("logprobs"):
        payload["logprobs"] = True
        if isinstance(body.get("top_logprobs"), int):
            payload["top_logprobs"] = body["top_logprobs"]
    return payload | _common(body, kind, stream)


def conversation(body: dict) -> list[dict] | None:
    """The messages a non-`raw` /api/generate becomes, as Ollama's template renders it: the
    conversation its `context` carries (see `context`), the `system` prompt, then the user's
    prompt with its images. None for `raw` (and fill-in-the-middle `suffix`) requests, which
    go to `/completions` untemplated."""

    if body.get("raw") or body.get("suffix"):
        return None
    history = decode(body.get("context"))
    messages: list[dict] = []
    system = body.get("system")
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
        history = [m for m in history if m["role"] != "system"]
    messages += history
    messages.append({"role": "user", "content": body.get("prompt") or "", "images": body.get("images") or []})
    return messages


def generate_request(body: dict, model_id: str, kind: str, stream: bool) -> tuple[str, dict]:
    """`/api/generate` as a chat (`/chat/completions`: the backend applies the model's chat
    template, as Ollama does), or, `raw` or with a `suffix`, as `/completions`."""

    messages = conversation(body)
    if messages is not None:
        return "/chat/completions", chat_request({**body, "messages": messages}, model_id, kind, stream)
    payload: dict[str, Any] = {"model": model_id, "prompt": body.get("prompt") or ""}
    if body.get("suffix"):
        payload["suffix"] = body["suffix"]
    if body.get("logprobs"):
        top = body.get("top_logprobs")
        payload["logprobs"] = top if isinstance(top, int) else 0
    return "/completions", payload | _common(body, kind, stream)


def generate_context(body: dict, payload: dict) -> list[dict] | None:
    """What the answer's `context` remembers (the messages sent, text only); None when Ollama
    sends no `context` (`raw`)."""

    if conversation(body) is None:
        return None
    return [{"role": m["role"], "content": text_of(m.get("content"))} for m in payload.get("messages") or ()]


def text_of(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return content if isinstance(content, str) else ""


def embed_request(body: dict, model_id: str) -> dict:
    """`/api/embed` (`input`) or `/api/embeddings` (`prompt`) as `/v1/embeddings`; every input
    of a batch goes in one request."""

    inputs = body.get("input") if "input" in body else body.get("prompt")
    payload: dict[str, Any] = {"model": model_id, "input": [inputs] if isinstance(inputs, str) else list(inputs or [])}
    if isinstance(body.get("dimensions"), int) and not isinstance(body.get("dimensions"), bool):
        payload["dimensions"] = body["dimensions"]
    payload["encoding_format"] = "float"
    return payload


def embed_inputs(body: dict) -> list[str]:
    """The texts an /api/embed or /api/embeddings request asks for (empty: nothing to embed)."""

    inputs = body.get("input") if "input" in body else body.get("prompt")
    if isinstance(inputs, str):
        return [inputs] if inputs else []
    return [i for i in inputs or [] if isinstance(i, str)]
