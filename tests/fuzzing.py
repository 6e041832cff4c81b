"""Requests for fuzzing the router, built from its OpenAPI document, and the checks on the answers.

`values(schema)` turns a schema of the document (the subset of JSON Schema it uses) into a
hypothesis strategy; the `*_cases` strategies build whole requests (`Case`) from the operations;
`send` and the checks below are what tests/test_fuzz.py runs for each of them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from urllib.parse import quote

import orjson
from hypothesis import strategies as st
from yarl import URL

from nomyo import openapi
from tests.fakes.ollama_v1 import FakeOllamaV1
from tests.fakes.openai_backend import FakeOpenAI

KEY = "fuzz-router-key"
LIMIT = 32 * 1024  # the fuzzed router's max_body_size
TIMEOUT = 15.0  # seconds for one answer, however it ends
SPEC = openapi.build()
SCHEMAS = SPEC["components"]["schemas"]
MODELS = ["llama3:latest", "nomic-embed-text:latest"]
POLLS = {"/api/tags", "/api/ps", "/api/version", "/v1/models", "/"}  # the poller's requests


# -- strategies from the schemas ----------------------------------------------------------------

def resolve(schema: dict) -> dict:
    while "$ref" in schema:
        schema = SCHEMAS[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def types_of(schema: dict) -> list[str]:
    kinds = resolve(schema).get("type", [])
    return [kinds] if isinstance(kinds, str) else list(kinds)


TEXT = st.text(max_size=20) | st.sampled_from(["", " ", "\x00", "é✓", "../../etc/passwd", "%ff", "\u2028"])
HUGE = st.integers(1000, 40_000).map(lambda n: "y" * n)
SCALAR = st.booleans() | st.integers(-10**6, 10**6) | st.floats(-1e6, 1e6) | TEXT
LEAF = st.none() | SCALAR
ANY_JSON = st.recursive(LEAF, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
SERVED = st.sampled_from(["llama3", "llama3:latest", "LLaMA3", "nomic-embed-text", "tiny", "Tiny"])
NAMES = st.one_of(SERVED, SERVED, SERVED, st.sampled_from(["missing", "ns/model:tag", "a:b:c", "x" * 300]),
                  st.text(min_size=1, max_size=30))
OVERRIDES = {  # fields whose useful values a schema cannot say
    "model": NAMES, "source": NAMES, "from": NAMES,
    "destination": st.sampled_from(["llama3-copy", "fuzzed"]) | st.text(min_size=1, max_size=20),
    "endpoints": st.sampled_from(["a", ["a"], ["o"], ["a", "o"], "nope", []]),
    "quantize": st.sampled_from(["q4_K_M", "q8_0", "bogus"]),
}
KINDS = {"string": st.text(), "integer": st.integers(-2**63, 2**64 - 1),
         "number": st.floats(allow_nan=False, allow_infinity=False), "boolean": st.booleans(),
         "array": st.lists(LEAF, max_size=2), "object": st.dictionaries(st.text(max_size=5), LEAF, max_size=2)}


def values(schema: dict, name: str | None = None) -> st.SearchStrategy:
    """Values that follow `schema` (the subset of JSON Schema the document uses)."""

    schema = resolve(schema)
    if name in OVERRIDES and "string" in types_of(schema):
        return OVERRIDES[name]
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kinds = types_of(schema)
    if not kinds:
        return ANY_JSON
    return st.one_of([of_kind(kind, schema) for kind in kinds])


def of_kind(kind: str, schema: dict) -> st.SearchStrategy:
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True)
        return st.text(min_size=schema.get("minLength", 0), max_size=20) | (TEXT if not schema.get("minLength")
                                                                         else st.just("x")) | HUGE
    if kind == "integer":
        return st.integers(schema.get("minimum", -1000), schema.get("maximum", 4096))
    if kind == "number":
        return st.floats(-1e6, 1e6)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(values(schema.get("items", {})), min_size=schema.get("minItems", 0), max_size=3)
    properties = schema.get("properties")
    if properties is None:
        extra = schema.get("additionalProperties")
        return st.dictionaries(st.text(max_size=8), values(extra) if isinstance(extra, dict) else ANY_JSON,
                               max_size=3)
    required = schema.get("required", [])
    return st.fixed_dictionaries({k: values(properties[k], k) for k in required},
                                 optional={k: values(v, k) for k, v in properties.items() if k not in required})


def nest(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


DEEP = st.integers(2, 1000).map(lambda n: orjson.Fragment(nest(n)))  # the router takes 128 levels
JUNK = st.one_of(ANY_JSON, ANY_JSON, ANY_JSON, DEEP)


def extra_fields(schema: dict) -> st.SearchStrategy:
    known = set(resolve(schema).get("properties", {})) | {"name"}
    return st.dictionaries(st.text(min_size=1, max_size=12).filter(lambda k: k not in known), JUNK, max_size=2)


def well_typed_junk(schema: dict) -> st.SearchStrategy:
    """A value of a type `schema` allows, with anything inside: what the router passes on unchecked."""

    kinds = types_of(schema)
    options = [st.lists(JUNK, min_size=1, max_size=3)] if "array" in kinds else []
    options += [st.dictionaries(st.text(max_size=8), JUNK, min_size=1, max_size=3)] if "object" in kinds else []
    return st.one_of(options) if options else values(schema)


def wrong_value(schema: dict) -> st.SearchStrategy:
    """A value of none of the types `schema` allows (and not null: null counts as absent)."""

    allowed = set(types_of(schema))
    if "number" in allowed:
        allowed.add("integer")
    others = [kind for kind in KINDS if kind not in allowed]
    if "integer" in allowed and "number" not in allowed:  # 1e3 and integers beyond 64 bits read as floats
        beyond = st.sampled_from([b"1e3", b"1180591620717411303424", b"-9223372036854775809", b"2.0"])
        return st.one_of([KINDS[k] for k in others] + [st.floats(allow_nan=False, allow_infinity=False),
                                                        beyond.map(orjson.Fragment)])
    return st.one_of([KINDS[k] for k in others])


# -- requests -----------------------------------------------------------------------------------

@dataclass
class Case:
    kind: str  # valid, odd, broken, path, method (what the strategy meant it to be)
    method: str
    path: str  # as sent: percent-encoded, tricks included
    query: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    chunked: bool = False
    slow: bool = False  # the body comes a moment after the headers
    expect: int | None = None  # the exact status when the key is right
    auth: str = "header"

    def __repr__(self) -> str:
        body = self.body if self.body is None or len(self.body) < 300 else self.body[:300] + b"..."
        return (f"Case({self.kind} {self.method} {self.path}{'?' + self.query if self.query else ''} "
                f"auth={self.auth} chunked={self.chunked} expect={self.expect} headers={self.headers} body={body!r})")

    @property
    def seen_path(self) -> str:
        """The path as the router decodes it (what picks the dialect)."""
        return URL("http://h" + self.path, encoded=True).path

    @property
    def openai(self) -> bool:
        return self.seen_path.startswith("/v1/") or self.seen_path in ("/v1", "/rerank")


OPERATIONS = [(method, path, operation) for path, item in SPEC["paths"].items() for method, operation in item.items()]
JSON_OPERATIONS = [entry for entry in OPERATIONS if "application/json" in entry[2].get("requestBody", {}).get(
    "content", {})]
ROUTED_OPERATIONS = [op for op in JSON_OPERATIONS if op[2]["tags"] in (["inference"], ["openai"])]
PATH_VALUES = {
    "model": NAMES | st.sampled_from(["a/../b", "..", "%00", "ns/x:y"]),
    "digest": st.sampled_from(["sha256:" + "0" * 64, "sha256-" + "a" * 64]) | st.text(max_size=70),
    "name": st.sampled_from(["dashboard.js", "index.html", "favicon.svg", "nope.js", "", "..", "../../README.md"]),
}
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "PROPFIND"]
ODD_HEADERS = st.fixed_dictionaries({}, optional={
    "Content-Type": st.sampled_from(["application/json", "text/plain; charset=latin-1", "multipart/form-data",
                                     "application/x-www-form-urlencoded"]),
    "Accept": st.sampled_from(["*/*", "text/html", "application/x-ndjson"]),
    "Content-Encoding": st.sampled_from(["gzip", "deflate", "br", "identity", "zstd"]),
    "X-Forwarded-For": st.sampled_from(["1.2.3.4", "::1, evil"]),
})
HEADERS = st.one_of(st.just({}), st.just({}), st.just({}), ODD_HEADERS)


def encode(segment: str) -> str:
    return quote(segment, safe="/:@")


@st.composite
def filled_path(draw, path: str) -> str:
    for name, strategy in PATH_VALUES.items():
        if "{" + name + "}" in path:
            path = path.replace("{" + name + "}", encode(draw(strategy)))
    return path


@st.composite
def query_string(draw, operation: dict | None = None) -> str:
    pairs = []
    for param in (operation or {}).get("parameters", []):
        if param["in"] == "query" and draw(st.booleans()):
            value = draw(values(param["schema"], param["name"]))
            for item in value if isinstance(value, list) else [value]:
                pairs.append(f"{param['name']}={quote(str(item)[:100], safe='')}")
    for key, value in draw(st.lists(st.tuples(st.text(max_size=6), st.text(max_size=10)), max_size=2)):
        pairs.append(quote(key, safe="") + "=" + quote(value, safe=""))
    if draw(st.integers(0, 3)) == 0:
        pairs.append(draw(st.sampled_from(["%ff", "x=%00", "=", "&", "a=1&a=2", "minutes=-1", "days=x",
                                           "endpoint=nope", "stream=1"])))
    return "&".join(pairs)


@st.composite
def with_auth(draw, case: Case) -> Case:
    case.auth = draw(st.sampled_from(["header"] * 6 + ["query", "none", "wrong", "other-scheme"]))
    case.headers.update(draw(HEADERS) if case.kind != "broken" or case.body is None else {})
    if case.auth == "header":
        case.headers["Authorization"] = f"Bearer {KEY}"
    elif case.auth == "query":
        case.query = f"api_key={KEY}" + ("&" + case.query if case.query else "")
    elif case.auth == "wrong":
        case.headers["Authorization"] = "Bearer " + draw(st.sampled_from(["nope", KEY + "x", "café"]))
    elif case.auth == "other-scheme":
        case.headers["Authorization"] = "Basic Zm9vOmJhcg=="
    case.chunked = case.body is not None and draw(st.booleans())
    return case


@st.composite
def valid_cases(draw) -> Case:
    method, path, operation = draw(st.sampled_from(OPERATIONS) | st.sampled_from(JSON_OPERATIONS))
    case = Case("valid", method.upper(), draw(filled_path(path)), draw(query_string(operation)))
    content = operation.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        schema = content["application/json"]["schema"]
        case.body = orjson.dumps(draw(values(schema)) | draw(extra_fields(schema)))
    elif content:
        case.body = draw(st.binary(max_size=64))
    return draw(with_auth(case))


@st.composite
def odd_cases(draw) -> Case:
    """Bodies whose top-level fields have the right types, with junk inside them (messages that
    are numbers, options nested 900 deep, ...): the router passes them on, and must not break."""

    method, path, operation = draw(st.sampled_from(JSON_OPERATIONS) | st.sampled_from(ROUTED_OPERATIONS))
    schema = resolve(operation["requestBody"]["content"]["application/json"]["schema"])
    payload = draw(values(schema))
    nested = [k for k, v in schema["properties"].items() if {"array", "object"} & set(types_of(v))]
    for key in draw(st.lists(st.sampled_from(nested), min_size=1, max_size=2, unique=True)) if nested else []:
        payload[key] = draw(well_typed_junk(schema["properties"][key]))
    payload["model"] = draw(SERVED) if "model" in payload else payload.get("model")
    case = Case("odd", method.upper(), path, body=orjson.dumps(payload | draw(extra_fields(schema))))
    case.headers["Authorization"] = f"Bearer {KEY}"
    return case


@st.composite
def broken_cases(draw) -> Case:
    """A body that breaks its operation's schema in one way the router must catch itself."""

    method, path, operation = draw(st.sampled_from(JSON_OPERATIONS))
    body_spec = operation["requestBody"]
    schema = resolve(body_spec["content"]["application/json"]["schema"])
    payload = draw(values(schema))
    raw = orjson.dumps(payload)
    typed = [k for k, v in schema.get("properties", {}).items() if types_of(v)]
    arrays = [k for k in typed if "array" in types_of(schema["properties"][k])
              and types_of(schema["properties"][k].get("items", {}))]
    ways = ["invalid-json", "non-utf8", "not-an-object", "too-large", "too-deep", "wrong-type"]
    ways += ["wrong-element"] if arrays else []
    ways += ["missing-field"] if schema.get("required") else []
    ways += ["empty"] if body_spec.get("required") else []
    way, expect = draw(st.sampled_from(ways)), 400
    if way == "invalid-json":
        raw = draw(st.sampled_from([raw[:-1], raw[1:], b"{" + raw, raw + b"}", b"{'model': 'x'}", b"nul",
                                    b'{"model": "llama3",}', b"\xef\xbb\xbf" + raw, raw + b"\x00", b"1e999",
                                    b'{"model": "\\ud800"}', b'{"model" "x"}', b"{\"model\": NaN}"]))
    elif way == "non-utf8":
        at = draw(st.integers(1, max(1, len(raw) - 1)))
        raw = raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"])) + raw[at:]
    elif way == "not-an-object":
        raw = orjson.dumps(draw(SCALAR | st.lists(LEAF, max_size=3)))
        raw = draw(st.sampled_from([raw, b"null", b"[]", b'"{}"']))
    elif way == "too-large":
        raw = orjson.dumps(payload | {"padding": "z" * draw(st.integers(LIMIT, 3 * LIMIT))})
        expect = 413
    elif way == "too-deep":
        raw = raw[:-1] + (b"," if len(raw) > 2 else b"") + b'"deep":' + nest(draw(st.integers(130, 4000))) + b"}"
    elif way == "wrong-type":
        key = draw(st.sampled_from(typed))
        raw = orjson.dumps(payload | {key: draw(wrong_value(schema["properties"][key]))})
    elif way == "wrong-element":  # an element of the wrong type, or an element object with a mistyped field
        key = draw(st.sampled_from(arrays))
        items = resolve(schema["properties"][key]["items"])
        fields = [k for k, v in items.get("properties", {}).items() if types_of(v)]
        if fields and draw(st.booleans()):
            element, field_name = draw(values(items)), draw(st.sampled_from(fields))
            element[field_name] = draw(wrong_value(items["properties"][field_name]))
        else:
            element = draw(st.none() | wrong_value(items))
        raw = orjson.dumps(payload | {key: [*draw(st.lists(values(items), max_size=2)), element]})
    elif way == "missing-field":
        del payload[draw(st.sampled_from(schema["required"]))]
        raw = orjson.dumps(payload)
    elif way == "empty":
        raw = draw(st.sampled_from([b"", b" ", b"\n\t"]))
    expect = 413 if len(raw) > LIMIT else expect  # the size is checked first, whatever else is wrong
    case = Case("broken", method.upper(), path, draw(query_string()), body=raw, expect=expect)
    case.headers["Content-Type"] = "application/json"
    return draw(with_auth(case))


TRICKS = [  # each keeps the leading "/" (else it would be part of the host)
    lambda p: "/.." + p, lambda p: "/%2e%2e" + p, lambda p: "/" + p, lambda p: p + "%00", lambda p: p + "%2500",
    lambda p: "/" + p[1:].replace("/", "%2f"), lambda p: p.rstrip("/") + "/", lambda p: p.upper(),
    lambda p: p + ";x=1", lambda p: p.replace("/", "/./"), lambda p: p + "/%ff", lambda p: p.replace("a", "%61", 1),
    lambda p: "/" + p[1:].replace("/", "\\"), lambda p: "/static/..%2f" + p[1:], lambda p: p + "/../../etc/passwd",
    lambda p: p + "%", lambda p: p + "/" + "x" * 3000, lambda p: p + "/" + "x" * 9000, lambda p: p + "#frag",
    lambda p: p.replace("/", "//"), lambda p: p + "/%2e%2e%2f%2e%2e%2fetc%2fpasswd", lambda p: p + "\t",
]


@st.composite
def path_cases(draw) -> Case:
    """Tricked or random paths, with a body no route accepts: whatever the router makes of the
    path, nothing may reach a backend."""

    if draw(st.booleans()):
        _, path, _ = draw(st.sampled_from([op for op in OPERATIONS if "blobs" not in op[1]]))
        path = draw(st.sampled_from(TRICKS))(draw(filled_path(path)))
    else:
        segments = draw(st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=4))
        path = "/" + "/".join(encode(s) for s in segments)
    method = draw(st.sampled_from(["GET", "POST", "DELETE", "PUT", "OPTIONS"]))
    body = draw(st.sampled_from([None, b"", b"{not json", b"[]", b"\xff\xfe"]))
    return draw(with_auth(Case("path", method, path, draw(query_string()), body=body)))


@st.composite
def method_cases(draw) -> Case:
    path = draw(st.sampled_from(list(SPEC["paths"])))
    allowed = {m.upper() for m in SPEC["paths"][path]}
    method = draw(st.sampled_from([m for m in METHODS if m not in allowed] + ["FOO", "BREW"]))
    for name, value in (("model", "llama3"), ("digest", "sha256:" + "0" * 64), ("name", "dashboard.js")):
        path = path.replace("{" + name + "}", value)
    case = Case("method", method, path, expect=400 if method in ("FOO", "BREW") else 405)
    case.body = draw(st.sampled_from([None, b'{"model": "llama3", "prompt": "hi"}']))
    return draw(with_auth(case))


# -- sending them and judging the answers -------------------------------------------------------

@dataclass
class Fleet:
    router: object
    ollama: FakeOllamaV1
    openai: FakeOpenAI

    def mark(self) -> tuple[int, int]:
        return len(self.ollama.requests), len(self.openai.requests)

    def reached(self, mark: tuple[int, int]) -> list[str]:
        """What reached a backend since `mark`, besides the poller's own requests."""
        seen = [f"a {r.method} {r.path}" for r in self.ollama.requests[mark[0]:] if r.path not in POLLS]
        return seen + [f"o {r.path}" for r in self.openai.requests[mark[1]:] if r.path not in POLLS]

    async def restore(self) -> None:
        """Management requests pull, copy and delete models: put the fleet back as it was, and
        let the router see it (a stale view would send a push to a backend without the model)."""
        if self.ollama.models != MODELS:
            self.ollama.set_models(MODELS)
            self.ollama.set_loaded(["llama3:latest"])
            await self.router.router.poller.refresh_all()


async def chunks(body: bytes, delay: float = 0.0):
    for start in range(0, len(body), 4096):
        await asyncio.sleep(delay)
        yield body[start:start + 4096]


async def send(http, fleet: Fleet, case: Case) -> tuple[int, str, bytes]:
    url = URL(fleet.router.url + case.path + ("?" + case.query if case.query else ""), encoded=True)
    data = chunks(case.body, 0.05 if case.slow else 0.0) if case.chunked and case.body else case.body
    async with asyncio.timeout(TIMEOUT), http.request(case.method, url, data=data, headers=case.headers,
                                                      allow_redirects=False) as resp:
        if resp.content_type == "text/event-stream" and case.seen_path == "/api/usage-stream":
            body = await resp.content.readany()  # an endless stream: its first event is enough
        else:
            body = await resp.read()
        return resp.status, resp.headers.get("Content-Type", ""), body


def stream_errors(content_type: str, body: bytes) -> list:
    """The error lines (NDJSON) or events (SSE) of a streamed answer: how a failure after the first
    byte shows, since the status was sent already."""

    if content_type.startswith("application/x-ndjson"):
        lines = body.splitlines()
    elif content_type.startswith("text/event-stream"):
        lines = [line[5:] for line in body.splitlines() if line.startswith(b"data:") and line[5:].strip() != b"[DONE]"]
    else:
        return []
    found = []
    for line in filter(bytes.strip, lines):
        obj = orjson.loads(line)
        if isinstance(obj, dict) and "error" in obj and "status" not in obj:
            found.append(obj)
    return found


def authorized(case: Case) -> bool:
    open_path = case.seen_path == "/" or case.seen_path.startswith("/static/")
    return case.auth in ("header", "query") or (case.method in ("GET", "HEAD") and open_path)


def unparsable(case: Case) -> bool:
    """aiohttp's HTTP parser answers an unknown method, a request line over 8190 bytes or a body it
    cannot decode (`br` without Brotli; gzip that is not, when the body came with the headers) with
    a plain-text 400 of its own before the request exists: no middleware can give it a dialect."""
    return (case.method in ("FOO", "BREW") or case.headers.get("Content-Encoding", "identity") != "identity"
            or len(case.path) + len(case.query) > 8000)


def check_dialect(case: Case, status: int, content_type: str, body: bytes) -> None:
    if status < 400 or case.method == "HEAD":
        return
    where = f"{case.method} {case.path} -> {status} {content_type} {body[:200]!r}"
    if case.openai:
        error = orjson.loads(body)["error"]
        assert content_type == "application/json", where
        assert isinstance(error["message"], str) and isinstance(error["type"], str), where
        assert "param" in error and "code" in error, where
    elif content_type.startswith("text/plain"):
        assert (status, body) in ((404, b"404 page not found"), (405, b"405 method not allowed")), where
    else:
        assert content_type.startswith("application/json"), where
        assert isinstance(orjson.loads(body)["error"], str), where
