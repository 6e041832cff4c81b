"""Translation between Ollama's API and OpenAI's, field by field against
../shared/reference/ollama-api.md (§1-§4 Ollama's shapes, §15 OpenAI's, §19 llama.cpp's)."""

from __future__ import annotations

import base64
import math
import struct

import orjson
import pytest

from nomyo.config import build_config
from nomyo.dialects.from_openai import ToOllama, created_at, embed_answer, embeddings_answer
from nomyo.dialects.openai import SSEParser, UsageMeter, decode_vector, error_message
from nomyo.dialects.to_openai import chat_request, embed_request, generate_request, response_format, sampling
from nomyo.fleet import Backend
from nomyo.openai_models import Described, ollama_tag

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
JPEG = "/9j/4AAQSkZJRgABAQ=="


def test_chat_text_and_images_become_content_parts():
    """§2 message `images` (base64) + §15.1 content parts: the text and every image survive."""
    body = {"model": "m", "messages": [{"role": "user", "content": "what is this?", "images": [PNG, JPEG]}]}
    out = chat_request(body, "M", "openai", stream=False)
    assert out["model"] == "M"
    assert out["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{JPEG}"}},
    ]}]
    assert out["stream"] is False and "stream_options" not in out


def test_stream_options_only_when_streaming():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert chat_request(body, "m", "openai", stream=True)["stream_options"] == {"include_usage": True}
    assert "stream_options" not in chat_request(body, "m", "openai", stream=False)
    assert "stream_options" not in generate_request({"prompt": "x"}, "m", "openai", stream=False)[1]


def test_tools_and_tool_calls_round_trip_with_ids():
    """§2 tool calls carry `arguments` as an object and often no id; OpenAI wants a JSON string
    and a `tool_call_id` on each result, matched here by `tool_name`."""
    tools = [{"type": "function", "function": {"name": "weather", "description": "d",
                                               "parameters": {"type": "object", "properties": {}}}}]
    body = {"model": "m", "tools": tools, "messages": [
        {"role": "user", "content": "weather in Paris and time?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "clock", "arguments": {}}},
            {"function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_name": "weather", "content": "sunny"},
        {"role": "tool", "tool_name": "clock", "content": "noon"},
    ]}
    out = chat_request(body, "m", "openai", stream=False)
    assert out["tools"] == tools
    calls = out["messages"][1]["tool_calls"]
    assert [c["function"] for c in calls] == [{"name": "clock", "arguments": "{}"},
                                              {"name": "weather", "arguments": '{"city":"Paris"}'}]
    assert all(c["type"] == "function" and c["id"] for c in calls)
    assert out["messages"][2] == {"role": "tool", "content": "sunny", "tool_call_id": calls[1]["id"]}
    assert out["messages"][3]["tool_call_id"] == calls[0]["id"]


def test_given_ids_are_kept_and_empty_tools_dropped():
    body = {"model": "m", "tools": [], "messages": [
        {"role": "assistant", "content": "",
         "tool_calls": [{"id": "call_x", "function": {"name": "f", "arguments": {}}}]},
        {"role": "tool", "tool_call_id": "call_x", "content": "1"}]}
    out = chat_request(body, "m", "openai", stream=False)
    assert "tools" not in out  # ollama-python always sends tools: [] (§17.1); hosted APIs reject []
    assert out["messages"][0]["tool_calls"][0]["id"] == "call_x"
    assert out["messages"][1]["tool_call_id"] == "call_x"


def test_options_become_openai_parameters():
    """§14 options -> §15.1 parameters; load-time options are the backend's business."""
    options = {"num_predict": 12, "temperature": 0.2, "top_p": 0.5, "stop": ["\n"], "seed": 3,
               "presence_penalty": 0.1, "frequency_penalty": 0.4, "top_k": 20, "min_p": 0.05,
               "repeat_penalty": 1.1, "num_ctx": 8192, "num_gpu": 1}
    assert sampling(options, "openai") == {
        "max_tokens": 12, "temperature": 0.2, "top_p": 0.5, "stop": ["\n"], "seed": 3,
        "presence_penalty": 0.1, "frequency_penalty": 0.4, "top_k": 20, "min_p": 0.05,
        "repetition_penalty": 1.1}
    llama = sampling(options | {"repeat_last_n": 32}, "llama-server")
    assert llama["repeat_penalty"] == 1.1 and llama["repeat_last_n"] == 32 and "repetition_penalty" not in llama
    assert "max_tokens" not in sampling({"num_predict": -1}, "openai")


def test_format_becomes_a_valid_response_format():
    schema = {"title": "City info", "type": "object", "properties": {"name": {"type": "string"}}}
    assert response_format("json", "openai") == {"type": "json_object"}
    assert response_format(schema, "openai") == {"type": "json_schema",
                                                 "json_schema": {"name": "City_info", "schema": schema}}
    assert response_format(schema, "llama-server") == {"type": "json_object", "schema": schema}
    assert response_format("", "openai") is None
    out = chat_request({"messages": [], "format": "json"}, "m", "openai", stream=False)
    assert out["response_format"] == {"type": "json_object"}


def test_think_becomes_reasoning_controls():
    assert chat_request({"messages": [], "think": "high"}, "m", "openai", False)["reasoning_effort"] == "high"
    out = chat_request({"messages": [], "think": False}, "m", "openai", False)
    assert out["chat_template_kwargs"] == {"enable_thinking": False}


def test_generate_goes_to_completions_unless_it_needs_chat():
    body = {"prompt": "Once", "suffix": "end", "options": {"num_predict": 5}}
    path, out = generate_request(body, "m", "openai", True)
    assert path == "/completions"
    assert out == {"model": "m", "prompt": "Once", "suffix": "end", "max_tokens": 5, "stream": True,
                   "stream_options": {"include_usage": True}}
    path, out = generate_request({"prompt": "describe", "system": "be brief", "images": [PNG]}, "m", "openai", False)
    assert path == "/chat/completions"
    assert out["messages"][0] == {"role": "system", "content": "be brief"}
    assert out["messages"][1]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_embed_request_keeps_the_whole_batch():
    assert embed_request({"input": ["a", "b", "c"], "dimensions": 4}, "E") == {
        "model": "E", "input": ["a", "b", "c"], "dimensions": 4, "encoding_format": "float"}
    assert embed_request({"prompt": "legacy"}, "E")["input"] == ["legacy"]


# -- answers --------------------------------------------------------------------------------------


def chunk(delta=None, finish=None, **extra):
    return {"id": "c", "object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": delta or {}, "finish_reason": finish}], **extra}


def summary(final: dict) -> tuple:
    return final["done"], final["done_reason"], final["prompt_eval_count"], final["eval_count"]


def test_chat_stream_to_ndjson_with_usage():
    """§15.1 vLLM-style chunks -> §2 NDJSON: every line has message.role and content; the done
    line has done_reason and the counts from `usage`; zero metrics are omitted."""
    meter = UsageMeter(prompt_estimate=99)
    t = ToOllama("llama3", True, meter, started_ns=0)
    lines = t.event(chunk({"role": "assistant", "content": ""}))
    lines += t.event(chunk({"content": "Hel"}))
    lines += t.event(chunk({"content": "lo"}, "stop"))
    lines += t.event({"choices": [], "usage": {"prompt_tokens": 26, "completion_tokens": 2, "total_tokens": 28}})
    assert [line["message"] for line in lines] == [{"role": "assistant", "content": "Hel"},
                                                   {"role": "assistant", "content": "lo"}]
    assert all(set(line) == {"model", "created_at", "message", "done"} and line["done"] is False for line in lines)
    final = t.final()
    assert final["message"] == {"role": "assistant", "content": ""}
    assert summary(final) == (True, "stop", 26, 2)
    assert "load_duration" not in final and final["total_duration"] > 0


def test_llama_server_timings_give_counts_and_durations():
    """§19: without usage, llama-server's `timings` give counts and ns durations."""
    t = ToOllama("m", False, UsageMeter(), started_ns=0)
    t.event({"choices": [{"index": 0, "text": "hi", "finish_reason": None}]})
    t.event({"choices": [{"index": 0, "text": "", "finish_reason": "length"}],
             "timings": {"prompt_n": 5, "cache_n": 2, "prompt_ms": 1.5, "predicted_n": 9, "predicted_ms": 20.0}})
    final = t.final()
    assert final["response"] == "" and final["done_reason"] == "length"
    assert (final["prompt_eval_count"], final["eval_count"]) == (7, 9)
    assert (final["prompt_eval_duration"], final["eval_duration"]) == (1_500_000, 20_000_000)


def test_no_counts_at_all_are_counted_by_the_router():
    """llama-cpp-python streams no usage: one content event ≈ one token, the prompt estimated."""
    t = ToOllama("m", True, UsageMeter(prompt_estimate=4), started_ns=0)
    for piece in ("a", "", "b", "c"):
        t.event(chunk({"content": piece}))
    t.event(chunk({}, "stop"))
    final = t.final()
    assert (final["prompt_eval_count"], final["eval_count"]) == (4, 3)
    assert final["eval_duration"] > 0


def test_streamed_tool_call_fragments_become_one_call_with_an_object():
    t = ToOllama("m", True, UsageMeter(), started_ns=0)
    lines = t.event(chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                           "function": {"name": "weather", "arguments": ""}}]}))
    lines += t.event(chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}))
    lines += t.event(chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}, "tool_calls"))
    assert len(lines) == 1
    assert lines[0]["message"] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "function": {"index": 0, "name": "weather", "arguments": {"city": "Paris"}}}]}
    assert t.final()["done_reason"] == "stop"


def test_reasoning_becomes_thinking():
    t = ToOllama("m", True, UsageMeter(), started_ns=0)
    assert t.event(chunk({"reasoning_content": "hmm"}))[0]["message"]["thinking"] == "hmm"
    g = ToOllama("m", False, UsageMeter(), started_ns=0)
    assert g.event({"choices": [{"index": 0, "delta": {"reasoning": "so"}}]})[0]["thinking"] == "so"


def test_whole_chat_answer():
    t = ToOllama("m", True, UsageMeter(), started_ns=0, collect=True)
    t.event({"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
    final = t.final()
    assert final["message"] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "function": {"index": 0, "name": "f", "arguments": {"x": 1}}}]}
    assert summary(final) == (True, "stop", 3, 4)


def test_completion_logprobs_in_ollamas_shape():
    t = ToOllama("m", False, UsageMeter(), started_ns=0)
    line = t.event({"choices": [{"index": 0, "text": "a", "logprobs": {
        "tokens": ["a"], "token_logprobs": [-0.5], "top_logprobs": [{"a": -0.5, "b": -1.0}]}}]})[0]
    assert line["logprobs"] == [{"token": "a", "logprob": -0.5, "top_logprobs": [
        {"token": "a", "logprob": -0.5}, {"token": "b", "logprob": -1.0}]}]


def test_embeddings_normalised_for_embed_raw_for_legacy():
    """§3 /api/embed: every vector, L2-normalised; §4 /api/embeddings: raw."""
    answer = {"data": [{"index": 1, "embedding": [0.0, 2.0]}, {"index": 0, "embedding": [3.0, 4.0]}],
              "usage": {"prompt_tokens": 6, "total_tokens": 6}}
    out = embed_answer(answer, "e", UsageMeter(), 0)
    assert out["model"] == "e" and [float(x) for v in out["embeddings"] for x in v] == pytest.approx([0.6, 0.8, 0, 1])
    assert orjson.dumps(out["embeddings"], option=orjson.OPT_SERIALIZE_NUMPY) == b"[[0.6,0.8],[0.0,1.0]]"
    assert out["prompt_eval_count"] == 6
    legacy = embeddings_answer({"data": [{"index": 0, "embedding": [3.0, 4.0]}]}, UsageMeter())
    assert legacy == {"embedding": [3.0, 4.0]}
    packed = base64.b64encode(struct.pack("<2f", 0.5, -1.0)).decode()
    assert decode_vector(packed) == [0.5, -1.0]
    assert math.isclose(sum(v * v for v in out["embeddings"][0]), 1.0)


def test_sse_parser_any_chunking_crlf_comments():
    stream = b": keep-alive\r\ndata: {\"a\":1}\r\n\r\ndata: {\"b\":\ndata: 2}\n\ndata: [DONE]\n\n"
    for size in (1, 3, 7, len(stream)):
        parser = SSEParser()
        events = []
        for i in range(0, len(stream), size):
            events += parser.feed(stream[i:i + size])
        assert events == [b'{"a":1}', b'{"b":\n2}', b"[DONE]"]


def test_error_messages_of_every_shape():
    assert error_message(b'{"error":{"message":"bad","type":"x"}}', 400) == "bad"
    assert error_message(b'{"object":"error","message":"old vllm","code":404}', 404) == "old vllm"
    assert error_message(b'{"error":"ollama"}', 500) == "ollama"
    assert error_message(b"Internal Server Error", 500) == "Internal Server Error"


def test_created_at_and_tags_shapes():
    assert created_at(1_729_000_000_123_400_000) == "2024-10-15T13:46:40.1234Z"
    assert created_at(1_729_000_000_000_000_000) == "2024-10-15T13:46:40Z"
    config = build_config({"endpoints": [{"name": "l", "url": "http://h/v1", "type": "llama-server"}]}, "t.yaml")
    entry = {"id": "tiny", "created": 1729000000, "meta": {"n_params": 1_500_000, "size": 6, "n_embd": 64}}
    tag = ollama_tag(Described(Backend(config.endpoints[0]), entry, None))
    assert tag["name"] == tag["model"] == "tiny" and tag["size"] == 6 and len(tag["digest"]) == 64
    assert tag["details"]["parameter_size"] == "1.5M" and tag["details"]["embedding_length"] == 64
    assert orjson.loads(orjson.dumps(tag))["modified_at"].startswith("2024-10-15T13:46:40")
