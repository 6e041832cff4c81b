"""Fuzzing the real router from its own OpenAPI document (see tests/fuzzing.py for the requests).

`/openapi.json` describes every route the app registers. From that document hypothesis builds
requests for every operation against the real router in front of a fake Ollama (with its /v1 API)
and a fake vLLM: bodies that follow the schemas; bodies whose fields have the right types but
anything inside (messages that are numbers, options 900 levels deep); bodies that break the
schemas (invalid JSON, non-UTF-8, not an object, a missing required field, a mistyped field or
array element, empty, too large, too deep); random query strings and headers (odd content
types and codings, wrong or missing keys); path tricks (`..`, `%2e%2e`, `//`, encoded NULs, `%2f`,
invalid UTF-8, 9 kB paths), unknown routes and wrong methods. For every request:

- the answer comes within `TIMEOUT` (no hang) and is never a 5xx, nor a stream that ends in an
  error line or event, nor an error in the router's log (the fakes do not fail on what they are
  sent here, so any of these is the router's fault);
- an error is in the caller's dialect: an OpenAI error object under `/v1/*` and `/rerank`, else
  Ollama's `{"error": "..."}` or gin's plain `404 page not found` / `405 method not allowed`
  (except what aiohttp's HTTP parser refuses before there is a request: see `unparsable`);
- a broken body gets exactly its 4xx (400, or 413 over `max_body_size`), a wrong method 405, a
  missing or wrong key 401/403, and none of them reaches a backend (only the poller's own
  requests show there);
- afterwards the router is settled (`RunningRouter.settled`: no slot reserved, nobody queued,
  nothing in flight).

Deterministic (`derandomize`, no example database) and bounded: about 1,500 requests in 10-15 s.
`NOMYO_FUZZ_SCALE=10` runs ten times as many examples, `NOMYO_FUZZ_EXPLORE=1` new random ones on
each run (to look for more; CI always runs the same ones).
"""

from __future__ import annotations

import logging
import os

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tests.conftest import eventually
from tests.fakes.ollama_v1 import FakeOllamaV1
from tests.fakes.openai_backend import FakeOpenAI
from tests.fuzzing import (
    JSON_OPERATIONS,
    KEY,
    LIMIT,
    MODELS,
    TIMEOUT,
    Case,
    Fleet,
    authorized,
    broken_cases,
    check_dialect,
    method_cases,
    odd_cases,
    path_cases,
    resolve,
    send,
    stream_errors,
    types_of,
    unparsable,
    valid_cases,
)

SCALE = int(os.environ.get("NOMYO_FUZZ_SCALE", "1"))
EXPLORE = bool(os.environ.get("NOMYO_FUZZ_EXPLORE"))  # new random examples each run, not CI's fixed ones


def fuzz(examples: int):
    return settings(max_examples=examples * SCALE, deadline=None, derandomize=not EXPLORE, database=None,
                    print_blob=False, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                             HealthCheck.too_slow, HealthCheck.data_too_large,
                                                             HealthCheck.filter_too_much])


@pytest.fixture
async def fleet(backends, start_router):
    ollama = await backends(FakeOllamaV1("a", models=MODELS, loaded=["llama3:latest"], strict_host=True))
    vllm = await backends(FakeOpenAI("o", models=["tiny"]))
    router = await start_router([ollama, {"name": "o", "url": vllm.url + "/v1", "type": "openai"}], slots=4,
                                max_body_size=LIMIT, router_api_keys={"fuzz": KEY}, poll_interval=2.0,
                                poll_timeout=5.0, queue_timeout=5)
    await eventually(lambda: all(b.status.healthy and b.status.models for b in router.router.fleet.backends.values()),
                     what="both backends polled")
    return Fleet(router, ollama, vllm)  # (start_router checks the router settled when the test ends)


async def run(http, fleet: Fleet, case: Case, caplog) -> None:
    mark, logged = fleet.mark(), len(caplog.records)
    try:
        status, content_type, body = await send(http, fleet, case)
    except TimeoutError:
        pytest.fail(f"no answer within {TIMEOUT}s: {case!r}")
    except aiohttp.ClientResponseError as exc:  # the parser's 400 carries a body even for HEAD
        assert unparsable(case) and exc.status == 400, f"{case!r}: {exc!r}"
        status, content_type, body = 400, "text/plain", b""
    where = f"{case!r} -> {status} {body[:300]!r}"
    if os.environ.get("NOMYO_FUZZ_DEBUG"):
        print("FUZZ", where[:400])
    event(f"{status} {'reached a backend' if fleet.reached(mark) else 'answered by the router'}")
    if unparsable(case) and status == 400 and content_type.startswith("text/plain"):
        assert fleet.reached(mark) == [], where
        return
    assert status < 500, where
    check_dialect(case, status, content_type, body)
    assert stream_errors(content_type, body) == [], where  # a backend failing mid-answer is a 5xx too
    if case.kind not in ("valid", "odd"):
        assert fleet.reached(mark) == [], where
    if case.expect is not None and authorized(case):
        assert status == case.expect, where
    elif not authorized(case) and case.expect != 400 and case.method != "OPTIONS":
        assert status in (401, 403), where
    await fleet.router.settled()
    # an exception after the answer started cannot become a 500: the log is where it shows
    errors = [r.getMessage() for r in caplog.records[logged:]
              if r.levelno >= logging.ERROR and r.name.startswith(("nomyo", "asyncio"))]
    assert errors == [], where
    await fleet.restore()


GOOD = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "prompt": "hi", "input": "hi",
        "query": "q", "documents": ["d"], "source": "llama3", "destination": "llama3-copy"}
WRONG = [{"x": 1}, [1], "x", 1.5, True, 7]


def is_a(value, kinds: list[str]) -> bool:
    python = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict}
    if isinstance(value, bool):
        return "boolean" in kinds
    return any(isinstance(value, python[kind]) for kind in kinds if kind in python)


async def test_every_typed_field_is_checked_before_routing(fleet, http):
    """Exhaustive where the fuzzing samples: in every request schema, each typed property, and each
    typed field of an array's elements, given a value of another type, is a 400 naming it that
    reaches no backend. (This is what makes the document's "typed means checked" true.)"""

    tried = 0
    for method, path, operation in JSON_OPERATIONS:
        schema = resolve(operation["requestBody"]["content"]["application/json"]["schema"])
        base = {key: GOOD[key] for key in schema.get("required", [])}
        for key, prop in schema["properties"].items():
            kinds, items = types_of(prop), resolve(prop.get("items", {}))
            bodies = [base | {key: value} for value in WRONG if kinds and not is_a(value, kinds)][:1]
            if "array" in kinds and types_of(items):  # an element of the wrong type, or a mistyped field in one
                bodies += [base | {key: [value]} for value in WRONG if not is_a(value, types_of(items))][:1]
                for field_name, field_schema in items.get("properties", {}).items():
                    wrong = [v for v in WRONG if types_of(field_schema) and not is_a(v, types_of(field_schema))]
                    bodies += [base | {key: [{field_name: wrong[0]}]}] if wrong else []
            for body in bodies:
                case = sent(path, body)
                case.method, mark, tried = method.upper(), fleet.mark(), tried + 1
                status, content_type, answer = await send(http, fleet, case)
                assert status == 400 and key.encode() in answer, (path, body, status, answer)
                check_dialect(case, status, content_type, answer)
                assert fleet.reached(mark) == [], (path, body)
    assert tried > 150, tried


def sent(path: str, body: dict) -> Case:
    return Case("valid", "POST", path, headers={"Authorization": f"Bearer {KEY}"}, body=orjson.dumps(body))


ONE = [{"role": "user", "content": "hi"}]


@fuzz(examples=400)
@given(case=valid_cases())
@example(case=sent("/v1/chat/completions", {"model": "llama3", "messages": ONE, "max_tokens": 0, "stream": True}))
@example(case=sent("/api/chat", {"model": "tiny", "messages": ONE, "options": {"num_predict": 0}}))
@example(case=sent("/v1/completions", {"model": "llama3", "prompt": "hi"}))  # Ollama without /v1/completions
@example(case=sent("/v1/rerank", {"model": "llama3", "query": "q", "documents": ["d"]}))  # no rerank on Ollama
async def test_requests_that_follow_the_document(fleet, http, case, caplog):
    await run(http, fleet, case, caplog)


@fuzz(examples=300)
@given(case=odd_cases())
async def test_well_typed_bodies_with_anything_inside(fleet, http, case, caplog):
    await run(http, fleet, case, caplog)


@fuzz(examples=400)
@given(case=broken_cases())
async def test_broken_bodies_get_their_4xx_and_never_reach_a_backend(fleet, http, case, caplog):
    await run(http, fleet, case, caplog)


@fuzz(examples=300)
@given(case=st.one_of(path_cases(), method_cases()))
async def test_path_tricks_unknown_routes_and_wrong_methods(fleet, http, case, caplog):
    await run(http, fleet, case, caplog)


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "message"), [
    ("POST", "/api/chat", b'{"model": "llama3"}', {"Content-Encoding": "gzip"}, 415,
     "compressed request bodies are not supported"),
    ("POST", "/v1/embeddings", b"not deflate data", {"Content-Encoding": "deflate"}, 415,
     "compressed request bodies are not supported"),
    ("POST", "/api/pull", b'{"model": "llama3", "x": ' + b"[" * 300 + b"]" * 300 + b"}", {}, 400,
     "request body nested too deeply"),
    ("POST", "/api/show", b'{"model": "llama3", "verbose": "yes"}', {}, 400, "invalid type for 'verbose'"),
    ("POST", "/api/pull", b'{"model": "llama3", "insecure": 1}', {}, 400, "invalid type for 'insecure'"),
    ("POST", "/api/create", b'{"model": "x", "from": "llama3", "messages": [1]}', {}, 400,
     "invalid type for 'messages[0]'"),
    ("POST", "/api/chat", b'{"model": "tiny", "messages": [{"role": "user", "content": 5}]}', {}, 400,
     "invalid type for 'messages[0].content': expected a string"),
    ("POST", "/v1/chat/completions", b'{"model": "tiny", "messages": [0]}', {}, 400,
     "invalid type for 'messages[0]': expected an object"),
    ("POST", "/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user"}], "max_tokens": "9"}', {}, 400,
     "invalid type for 'max_tokens': expected an integer"),
    ("POST", "/v1/rerank", b'{"model": "tiny", "documents": ["a"]}', {}, 400, "'query' is a required property"),
    ("GET", "/static/", None, {}, 404, "404 page not found"),
    ("GET", "/static/nope.js", None, {}, 404, "404 page not found"),
    ("GET", "/static/..%2f..%2fREADME.md", None, {}, 404, "404 page not found"),
])
async def test_what_the_fuzzing_found(fleet, http, method, path, body, headers, status, message):
    """Each of these once reached a backend or ended in a 500 (or, for /static/, in aiohttp's own
    403 text or an empty 404)."""
    case = Case("regression", method, path, headers={**headers, "Authorization": f"Bearer {KEY}"}, body=body)
    case.chunked = case.slow = "Content-Encoding" in headers  # the handler, not the parser, reads the body
    mark = fleet.mark()
    got, content_type, answer = await send(http, fleet, case)
    assert got == status, answer
    check_dialect(case, got, content_type, answer)
    error = answer.decode() if content_type.startswith("text/plain") else orjson.loads(answer)["error"]
    assert (error["message"] if case.openai else error).startswith(message)
    assert fleet.reached(mark) == []
