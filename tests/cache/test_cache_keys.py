"""What is cached, and the exact key: everything that changes an answer separates two requests;
spelling that does not (key order, 1 vs 1.0, the model's tag, streaming) does not."""

from __future__ import annotations

import textwrap

import pytest
from multidict import CIMultiDict

from nomyo.cache.config import CacheConfig
from nomyo.cache.request import build_request, strip_nomyo, strip_nomyo_raw
from nomyo.config import build_config, load_config
from nomyo.errors import RouterError
from nomyo.yaml_fields import ConfigError

ON = CacheConfig(enabled=True)
SEMANTIC = CacheConfig(enabled=True, embedding_model="e5")
CHAT = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}


def key(payload, route="/api/chat", scope="", config=ON, headers=None):
    return build_request(config, route, payload, scope, headers).key


def chat(*turns, system=None, **extra):
    messages = [{"role": "system", "content": system}] if system else []
    roles = ["user", "assistant"]
    messages += [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]
    return {"model": "llama3", "messages": messages, **extra}


def test_conversations_that_share_their_last_message_never_collide():
    assert key(chat("Write a poem", "Roses...", "continue")) != key(chat("Write code", "def f():", "continue"))


def test_isolation_by_system_prompt_scope_model_route_and_tools():
    base = key(chat("hi"))
    assert base != key(chat("hi", system="You are a pirate"))
    assert base != key(chat("hi"), scope="alice") != key(chat("hi"), scope="bob")
    assert base != key({**chat("hi"), "model": "mistral"})
    assert base != key(chat("hi"), route="/v1/chat/completions")
    assert base != key(chat("hi", tools=[{"type": "function", "function": {"name": "f"}}]))
    assert key(chat("hi", tools=[{"type": "function", "function": {"name": "f"}}])) != \
        key(chat("hi", tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="none"))


@pytest.mark.parametrize("extra", [
    {"options": {"num_predict": 10}}, {"options": {"top_k": 5}}, {"options": {"seed": 1, "temperature": 0.5}},
    {"format": "json"}, {"format": {"type": "object"}}, {"think": True}, {"think": "high"},
    {"options": {"stop": ["\n"]}}, {"logprobs": True},
])
def test_every_option_changes_the_key(extra):
    assert key(chat("hi")) != key(chat("hi", **extra))


def test_openai_sampling_and_response_format_change_the_key():
    base = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
    route = "/v1/chat/completions"
    variants = [{"top_p": 0.5}, {"max_tokens": 5}, {"response_format": {"type": "json_object"}},
                {"seed": 3}, {"frequency_penalty": 0.5}, {"reasoning_effort": "low"}]
    keys = {key({**base, **v}, route) for v in variants} | {key(base, route)}
    assert len(keys) == len(variants) + 1


def test_images_count_by_digest():
    one = chat("what is this?")
    one["messages"][0]["images"] = ["aGVsbG8="]
    other = chat("what is this?")
    other["messages"][0]["images"] = ["d29ybGQ="]
    assert key(one) != key(other) != key(chat("what is this?"))
    assert key(one) == key({**one})


def test_spellings_that_do_not_change_the_answer_share_a_key():
    assert key(chat("hi")) == key({**chat("hi"), "model": "Llama3:latest"})
    assert key(chat("hi", stream=False)) == key(chat("hi", stream=True, keep_alive="1h"))
    assert key(chat("hi", options={"top_p": 1.0, "seed": 2})) == key(chat("hi", options={"seed": 2.0, "top_p": 1}))
    assert key(chat("hi", tools=[])) == key(chat("hi"))  # ollama-python always sends "tools": []
    assert key(chat("hi", nomyo={"cache": True})) == key(chat("hi"))
    assert key(chat("hi", format=None)) == key(chat("hi"))


def decision(payload, route="/api/chat", config=ON, headers=None):
    req = build_request(config, route, payload, "", headers)
    return req.lookup, req.store, req.reason


def test_what_is_eligible():
    assert decision(chat("hi")) == (True, True, "")
    assert decision(chat("hi", options={"temperature": 0.8}))[2] == "nondeterministic"
    assert decision(chat("hi", options={"temperature": 0.8, "seed": 4}))[2] == ""
    assert decision(chat("hi", options={"temperature": 0}))[2] == ""
    anything = CacheConfig(enabled=True, nondeterministic=True)
    assert decision(chat("hi", options={"temperature": 0.8}), config=anything)[2] == ""
    assert decision({**chat("hi"), "temperature": 1.0}, "/v1/chat/completions")[2] == "nondeterministic"
    assert decision({**chat("hi"), "n": 2}, "/v1/chat/completions")[2] == "several choices"
    assert decision({**chat("hi"), "model": "moe-llama3"})[2] == "moe"
    assert decision({"model": "llama3", "messages": []})[2] == "load or unload"
    assert decision({"model": "llama3", "keep_alive": 0}, "/api/generate")[2] == "load or unload"
    assert decision({"model": "e5", "input": []}, "/api/embed")[2] == "load or unload"
    assert decision({"model": "e5", "input": "x"}, "/api/embed")[:2] == (True, True)
    assert decision(chat("hi"), "/api/show")[2] == "route"
    assert decision(chat("hi"), config=CacheConfig())[2] == "disabled"


def test_request_switches():
    opt_in = CacheConfig(enabled=True, default="opt-in")
    assert decision(chat("hi"), config=opt_in)[2] == "not asked"
    assert decision(chat("hi", nomyo={"cache": True}), config=opt_in)[:2] == (True, True)
    assert decision(chat("hi", nomyo={"cache": False}))[2] == "declined by the request"
    assert decision(chat("hi"), headers={"X-Nomyo-Cache": "no-cache"})[:2] == (False, True)
    assert decision(chat("hi"), headers=CIMultiDict({"x-nomyo-cache": "No-Store"}))[:2] == (True, False)
    assert decision(chat("hi"), headers={"X-Nomyo-Cache": "no-cache, no-store"})[:2] == (False, False)
    for bad in ({"nomyo": "yes"}, {"nomyo": {"cache": 1}}):
        with pytest.raises(RouterError) as raised:
            decision(chat("hi", **bad))
        assert raised.value.status == 400


def test_the_nomyo_field_never_goes_upstream():
    payload = chat("hi", nomyo={"cache": True})
    raw = b'{"model":"llama3","nomyo":{"cache":true},"messages":[]}'
    assert "nomyo" not in strip_nomyo(payload) and b"nomyo" not in strip_nomyo_raw(raw, {"nomyo": {}})
    untouched = b'{"model": "llama3"}'
    assert strip_nomyo_raw(untouched, {"model": "llama3"}) is untouched


def test_semantic_only_for_plain_conversations():
    def texts(payload, route="/api/chat"):
        return build_request(SEMANTIC, route, payload, "").texts

    assert texts(chat("a", "b", "c")) == ("user: a\nassistant: b\nuser: c", "c")
    assert texts(chat("hi", system="be brief")) == ("user: hi", "hi")
    with_image = chat("what is this?")
    with_image["messages"][0]["images"] = ["aGVsbG8="]
    assert texts(with_image) is None
    assert texts({**chat("hi"), "messages": [*chat("hi")["messages"], {"role": "tool", "content": "21C"}]}) is None
    assert texts({"model": "m", "prompt": "x", "suffix": "y"}, "/api/generate") is None
    assert build_request(SEMANTIC, "/api/chat", chat("hi", system="A"), "").context != \
        build_request(SEMANTIC, "/api/chat", chat("hi", system="B"), "").context


def test_config_keys_with_positions(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent("""\
        endpoints: [http://127.0.0.1:11434]
        cache_enabled: true
        cache_backend: sqlite
        cache_ttl: null
        cache_similarity: 0.97
        cache_history_weight: 0.4
        cache_db_path: /tmp/x.db
        cache_max_entries: 50
        cache_embedding_model: multilingual-e5-small
        cache_default: opt-in
        """))
    cache = load_config(path).cache
    assert (cache.enabled, cache.backend, cache.ttl, cache.similarity, cache.history_weight) == \
        (True, "sqlite", None, 0.97, 0.4)
    assert cache.db_path == "/tmp/x.db" and cache.max_entries == 50 and cache.default == "opt-in"
    assert cache.semantic
    for bad, message in (({"cache_backend": "disk"}, "cache_backend: must be one of"),
                         ({"cache_similarity": 1.5}, "between 0 and 1"),
                         ({"cache_enabled": "yes"}, "true or false"),
                         ({"cache_redis_url": "http://x"}, "redis://")):
        with pytest.raises(ConfigError, match=message):
            build_config({"endpoints": ["http://127.0.0.1:11434"], **bad}, "c.yaml")


@pytest.mark.parametrize("payload", [
    {"model": 3, "messages": "hi"}, {"model": "m", "messages": [1, None, "x"]}, {"model": "m", "n": "2",
    "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, {"model": "m", "options": "hot", "prompt": 5},
    {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream_options": [1], "temperature": "warm"},
    {"model": "m", "input": {"a": 1}}, {"name": "m", "prompt": "x", "images": [None, 3]},
])
def test_odd_bodies_get_a_decision_not_an_exception(payload):
    """Whatever a client sends (the handlers' own checks may come later), deciding never fails."""

    for route in ("/api/chat", "/api/generate", "/api/embed", "/v1/chat/completions", "/v1/completions"):
        req = build_request(SEMANTIC, route, payload, "")
        assert req.bypass or len(req.key) > 64
