"""What real backends send, byte for byte, for the cache's tests (compact Ollama NDJSON with its
final metrics line; OpenAI SSE, spaced JSON from some servers, usage only when asked)."""

from __future__ import annotations

import json

import orjson

OLLAMA_FINAL = {"done_reason": "stop", "total_duration": 912000000, "load_duration": 1200000,
                "prompt_eval_count": 26, "prompt_eval_duration": 42000000, "eval_count": 7,
                "eval_duration": 800000000}
TOOL_CALL = {"id": "call_ab12cd34", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}
THOUGHTS = ["The user asks ", "about Paris."]
WORDS = ["It is ", "sunny ", "in Paris ", "today."]


def _line(obj: dict) -> bytes:
    return orjson.dumps(obj) + b"\n"


def ollama_chat(model: str, stream: bool, tools: bool = False) -> list[bytes]:
    head = {"model": model, "created_at": "2025-10-26T17:15:24.097767Z"}
    if not stream:
        message = {"role": "assistant", "content": "".join(WORDS), "thinking": "".join(THOUGHTS)}
        if tools:
            message["tool_calls"] = [TOOL_CALL]
        return [orjson.dumps({**head, "message": message, "done": True, **OLLAMA_FINAL})]
    lines = [_line({**head, "message": {"role": "assistant", "content": "", "thinking": t}, "done": False})
             for t in THOUGHTS]
    lines += [_line({**head, "message": {"role": "assistant", "content": w}, "done": False}) for w in WORDS]
    if tools:
        lines.append(_line({**head, "message": {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]},
                            "done": False}))
    lines.append(_line({**head, "message": {"role": "assistant", "content": ""}, "done": True, **OLLAMA_FINAL}))
    return lines


def ollama_generate(model: str, stream: bool) -> list[bytes]:
    head = {"model": model, "created_at": "2025-10-26T17:15:24.097767Z"}
    final = {**OLLAMA_FINAL, "context": [1, 2, 3, 4]}
    if not stream:
        return [orjson.dumps({**head, "response": "".join(WORDS), "done": True, **final})]
    lines = [_line({**head, "response": w, "done": False}) for w in WORDS]
    return [*lines, _line({**head, "response": "", "done": True, **final})]


def ollama_embed(model: str, legacy: bool = False) -> list[bytes]:
    if legacy:
        return [orjson.dumps({"embedding": [0.5, -0.25, 0.125]})]
    return [orjson.dumps({"model": model, "embeddings": [[0.1, 0.2, 0.3]], "total_duration": 14143917,
                          "load_duration": 1019500, "prompt_eval_count": 8})]


def _sse(obj: dict | str, spaced: bool) -> bytes:
    if isinstance(obj, str):
        return f"data: {obj}\n\n".encode()
    text = json.dumps(obj) if spaced else json.dumps(obj, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


def openai_chat(model: str, stream: bool, tools: bool = False, usage: bool = False) -> list[bytes]:
    """A vLLM-like answer: `reasoning_content`, spaced JSON, tool arguments in two pieces."""

    head = {"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1729000000, "model": model}
    counts = {"prompt_tokens": 21, "completion_tokens": 9, "total_tokens": 30}
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    if not stream:
        message = {"role": "assistant", "content": "".join(WORDS), "reasoning_content": "".join(THOUGHTS)}
        if tools:
            message["tool_calls"] = [call]
        choice = {"index": 0, "message": message, "finish_reason": "tool_calls" if tools else "stop"}
        return [orjson.dumps({**head, "object": "chat.completion", "choices": [choice], "usage": counts})]

    def chunk(delta: dict, finish=None) -> bytes:
        return _sse({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}, spaced=True)

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"reasoning_content": t}) for t in THOUGHTS]
    events += [chunk({"content": w}) for w in WORDS]
    if tools:
        pieces = ['{"city": ', '"Paris"}']
        events.append(chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                             "function": {"name": "get_weather", "arguments": pieces[0]}}]}))
        events.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": pieces[1]}}]}))
    events.append(chunk({}, "tool_calls" if tools else "stop"))
    if usage:
        events.append(_sse({**head, "choices": [], "usage": counts}, spaced=True))
    return [*events, _sse("[DONE]", False)]


def openai_completion(model: str, stream: bool) -> list[bytes]:
    head = {"id": "cmpl-7", "object": "text_completion", "created": 1729000000, "model": model}
    counts = {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
    if not stream:
        choice = {"text": "".join(WORDS), "index": 0, "logprobs": None, "finish_reason": "stop"}
        return [orjson.dumps({**head, "choices": [choice], "usage": counts})]
    events = [_sse({**head, "choices": [{"text": w, "index": 0, "finish_reason": None}]}, False) for w in WORDS]
    events.append(_sse({**head, "choices": [{"text": "", "index": 0, "finish_reason": "length"}]}, False))
    return [*events, _sse("[DONE]", False)]


def openai_embeddings(model: str, base64: bool) -> list[bytes]:
    import base64 as b64
    import struct

    vector = [0.25, -0.5, 0.75]
    value = b64.b64encode(struct.pack("<3f", *vector)).decode() if base64 else vector
    return [orjson.dumps({"object": "list", "data": [{"object": "embedding", "embedding": value, "index": 0}],
                          "model": model, "usage": {"prompt_tokens": 3, "total_tokens": 3}})]


def answer_for(route: str, payload: dict, tools: bool = False) -> tuple[str, list[bytes]]:
    """(content type, chunks) a backend sends for `payload` on `route`."""

    model = payload.get("model", "")
    ollama_stream = payload.get("stream", True)
    openai_stream = payload.get("stream", False)
    usage = (payload.get("stream_options") or {}).get("include_usage", False)
    table = {
        "/api/chat": lambda: ("application/x-ndjson" if ollama_stream else "application/json; charset=utf-8",
                              ollama_chat(model, ollama_stream, tools or bool(payload.get("tools")))),
        "/api/generate": lambda: ("application/x-ndjson" if ollama_stream else "application/json; charset=utf-8",
                                  ollama_generate(model, ollama_stream)),
        "/api/embed": lambda: ("application/json; charset=utf-8", ollama_embed(model)),
        "/api/embeddings": lambda: ("application/json; charset=utf-8", ollama_embed(model, legacy=True)),
        "/v1/chat/completions": lambda: ("text/event-stream" if openai_stream else "application/json",
                                         openai_chat(model, openai_stream, bool(payload.get("tools")), usage)),
        "/v1/completions": lambda: ("text/event-stream" if openai_stream else "application/json",
                                    openai_completion(model, openai_stream)),
        "/v1/embeddings": lambda: ("application/json",
                                   openai_embeddings(model, payload.get("encoding_format") == "base64")),
    }
    return table[route]()
