"""The router's API as an OpenAPI 3.1 document, served at `GET /openapi.json`.

Every route the application registers is described here (a test walks the route table against
it): the request bodies, the main answers, and the errors of both dialects, Ollama's
`{"error": "..."}` on native routes and OpenAI's error object on `/v1/*` and `/rerank`.

In a request schema, a property with a `type` is one the router checks itself before routing (at
the top level, and in the elements of top-level arrays such as `messages`): a value of another
type is a 400 that never reaches a backend (`null` counts as absent). Properties without a type
are passed to the backend as sent, and so are properties not listed, and anything nested deeper.
Bodies nested deeper than 128 levels are refused. The document is built once per application, on
its first request, and kept as bytes.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from . import __version__

JSON = "application/json"
JSON_UTF8 = "application/json; charset=utf-8"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


# -- schema building blocks ---------------------------------------------------------------------

def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def typed(*types: str, **extra: Any) -> dict:
    return {"type": types[0] if len(types) == 1 else list(types), **extra}


def array(items: dict, **extra: Any) -> dict:
    return {"type": "array", "items": items, **extra}


def obj(properties: dict, *required: str, **extra: Any) -> dict:
    schema = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = list(required)
    return schema


def passed(description: str) -> dict:
    """A field the router forwards without looking at it."""

    return {"description": description + " (passed to the backend as sent)"}


STR, BOOL, INT, NUM, OBJ = typed("string"), typed("boolean"), typed("integer"), typed("number"), typed("object")
COUNT = typed("integer", minimum=0)
MODEL = typed("string", minLength=1, description="`name:tag` (tag `latest` if left out), matched as Ollama "
                                                 "matches names; Ollama's deprecated `name` is accepted instead")
DURATION = typed("string", "number", description="a duration (`5m`), seconds, negative = forever, 0 = unload")
OPTIONS = typed("object", description="model parameters, Ollama's Modelfile options")
FORMAT = typed("string", "object", description="`json`, or a JSON schema")
THINK = typed("boolean", "string", description="`true`/`false`, or `low`/`medium`/`high`")
STREAM = typed("boolean", description="stream the answer (default: true on native routes, false on /v1)")
ENDPOINTS = typed("array", "string", items=STR, description="router extension: the backends (names or URLs) to "
                                                          "run on; default every healthy Ollama backend")
PROMPTS = typed("string", "array", items=STR)
TEXTS = typed("string", "array", items=passed("a text, or token ids"))
TOOL_CALLS = array(obj({"function": obj({"name": STR, "arguments": passed("an object (Ollama) or a JSON string "
                                                                       "(OpenAI)")})}))
TOOLS = array(obj({"type": STR, "function": typed("object", description="`name`, `description`, `parameters` (a "
                                                                        "JSON schema)")},
                  "type", "function"))
STOP = typed("string", "array", items=passed("a stop sequence"))
SAMPLING = {"temperature": NUM, "top_p": NUM, "presence_penalty": NUM, "frequency_penalty": NUM, "seed": INT,
            "n": typed("integer", minimum=1), "max_tokens": COUNT, "stop": STOP, "stream": STREAM,
            "stream_options": obj({"include_usage": BOOL}), "user": STR}
OLLAMA_COMMON = {"stream": STREAM, "format": FORMAT, "keep_alive": DURATION, "options": OPTIONS, "think": THINK,
                 "truncate": BOOL, "shift": BOOL, "logprobs": BOOL,
                 "top_logprobs": typed("integer", minimum=0, maximum=20)}
DURATIONS = {k: COUNT for k in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
                                "eval_count", "eval_duration")}
ANSWER = {"model": STR, "created_at": STR, "done": BOOL, "done_reason": STR, **DURATIONS}
TIME_ROW = {"timestamp": INT, "input_tokens": INT, "output_tokens": INT, "total_tokens": INT, "requests": INT}

SCHEMAS: dict[str, dict] = {
    # errors
    "OllamaError": obj({"error": STR}, "error"),
    "OpenAIError": obj({"error": obj({"message": STR, "type": STR, "param": typed("string", "null"),
                                      "code": typed("string", "integer", "null")}, "message", "type")}, "error"),
    # Ollama requests
    "Message": obj({"role": typed("string", description="system, user, assistant or tool"), "content": STR,
                    "thinking": STR, "images": array(STR, description="base64"), "tool_calls": TOOL_CALLS,
                    "tool_name": STR, "tool_call_id": STR}, "role"),
    "ChatRequest": obj({"model": MODEL, "messages": array(ref("Message"), description="empty or absent: load "
                                                          "the model (with keep_alive 0: unload it)"),
                        "tools": TOOLS, **OLLAMA_COMMON}, "model"),
    "GenerateRequest": obj({"model": MODEL, "prompt": STR, "suffix": STR, "system": STR, "template": STR,
                            "context": array(INT), "images": array(STR), "raw": BOOL, **OLLAMA_COMMON}, "model"),
    "EmbedRequest": obj({"model": MODEL, "input": PROMPTS, "truncate": BOOL, "dimensions": typed("integer", minimum=1),
                         "keep_alive": DURATION, "options": OPTIONS}, "model"),
    "EmbeddingsRequest": obj({"model": MODEL, "prompt": STR, "keep_alive": DURATION, "options": OPTIONS}, "model"),
    "ShowRequest": obj({"model": MODEL, "verbose": BOOL, "system": STR, "template": STR, "options": OPTIONS}, "model"),
    "PullRequest": obj({"model": MODEL, "insecure": BOOL, "stream": STREAM, "endpoints": ENDPOINTS}, "model"),
    "CreateRequest": obj({"model": MODEL, "from": STR, "files": typed("object", additionalProperties=STR),
                          "adapters": typed("object", additionalProperties=STR), "template": STR,
                          "license": typed("string", "array"), "system": STR, "parameters": OBJ,
                          "messages": array(ref("Message")), "quantize": STR, "stream": STREAM,
                          "endpoints": ENDPOINTS}, "model"),
    "CopyRequest": obj({"source": typed("string", minLength=1), "destination": typed("string", minLength=1),
                        "endpoints": ENDPOINTS}, "source", "destination"),
    "DeleteRequest": obj({"model": MODEL, "endpoints": ENDPOINTS}, "model"),
    # OpenAI requests
    "ChatMessage": obj({"role": STR, "content": typed("string", "array", "null", items=OBJ), "name": STR,
                        "tool_calls": TOOL_CALLS, "tool_call_id": STR}, "role"),
    "ChatCompletionRequest": obj({"model": MODEL, "messages": array(ref("ChatMessage"), minItems=1),
                                  "max_completion_tokens": COUNT, "tools": TOOLS,
                                  "tool_choice": typed("string", "object"), "response_format": OBJ, "logprobs": BOOL,
                                  "top_logprobs": COUNT, **SAMPLING}, "model", "messages"),
    "CompletionRequest": obj({"model": MODEL, "prompt": TEXTS, "suffix": STR, "logprobs": COUNT, "echo": BOOL,
                              **SAMPLING}, "model", "prompt"),
    "EmbeddingRequest": obj({"model": MODEL, "input": {**TEXTS, "minItems": 1},
                             "encoding_format": typed("string", enum=["float", "base64"]),
                             "dimensions": typed("integer", minimum=1), "user": STR}, "model", "input"),
    "RerankRequest": obj({"model": MODEL, "query": STR, "documents": array(passed("a text, or an object with `text`")),
                          "top_n": typed("integer", minimum=1), "return_documents": passed("include documents")},
                         "model", "query", "documents"),
    # monitoring requests
    "StatsRequest": obj({"model": MODEL, "days": typed("integer", minimum=1, default=30)}, "model"),
    "AggregateRequest": obj({"days": typed("integer", minimum=1, default=30), "trim_old": BOOL}),
    # Ollama answers
    "Version": obj({"version": STR}, "version"),
    "ModelEntry": obj({"name": STR, "model": STR, "modified_at": STR, "size": INT, "digest": STR, "details": OBJ}),
    "Tags": obj({"models": array(ref("ModelEntry"))}, "models"),
    "LoadedModel": obj({"name": STR, "model": STR, "size": INT, "size_vram": INT, "digest": STR, "details": OBJ,
                        "expires_at": STR, "context_length": INT}),
    "Ps": obj({"models": array(ref("LoadedModel"))}, "models"),
    "PsDetails": obj({"models": array(obj({"backend": STR, "endpoint": STR, "model": STR,
                                           "size": typed("integer", "null"), "size_vram": typed("integer", "null"),
                                           "expires_at": typed("string", "null")}))}, "models"),
    "ShowResponse": obj({"modelfile": STR, "parameters": STR, "template": STR, "details": OBJ, "model_info": OBJ,
                         "capabilities": array(STR)}, "model_info"),
    "ChatResponse": obj({**ANSWER, "message": ref("Message")}, "model", "done"),
    "GenerateResponse": obj({**ANSWER, "response": STR, "thinking": STR, "context": array(INT)}, "model", "done"),
    "EmbedResponse": obj({"model": STR, "embeddings": array(array(NUM)), **DURATIONS}, "embeddings"),
    "EmbeddingsResponse": obj({"embedding": array(NUM)}, "embedding"),
    "Progress": obj({"status": STR, "digest": STR, "total": INT, "completed": INT, "error": STR,
                     "backends": typed("object", description="router extension: how each backend ended")}),
    "Report": obj({"status": STR, "error": STR, "backends": OBJ}),
    # OpenAI answers
    "Usage": obj({"prompt_tokens": INT, "completion_tokens": INT, "total_tokens": INT}),
    "ChatCompletion": obj({"id": STR, "object": STR, "created": INT, "model": STR, "usage": ref("Usage"),
                           "choices": array(obj({"index": INT, "message": ref("ChatMessage"), "delta": OBJ,
                                                 "finish_reason": typed("string", "null")}))}, "choices"),
    "Completion": obj({"id": STR, "object": STR, "created": INT, "model": STR, "usage": ref("Usage"),
                       "choices": array(obj({"index": INT, "text": STR, "finish_reason": typed("string", "null")}))},
                      "choices"),
    "EmbeddingList": obj({"object": STR, "model": STR, "usage": ref("Usage"),
                          "data": array(obj({"object": STR, "index": INT, "embedding": typed("array", "string",
                                                                                         items=NUM)}))}, "data"),
    "RerankResponse": obj({"id": STR, "model": STR, "usage": OBJ, "results": array(obj({"index": INT, "document": OBJ,
                                                                                  "relevance_score": NUM}))}),
    "Model": obj({"id": STR, "object": STR, "created": INT, "owned_by": STR}, "id", "object"),
    "ModelList": obj({"object": STR, "data": array(ref("Model"))}, "object", "data"),
    # monitoring answers
    "UsageView": obj({"usage_counts": OBJ, "slot_limits": OBJ, "token_usage_counts": OBJ, "queued": OBJ,
                      "queued_total": INT}),
    "TokenCounts": obj({"total_tokens": INT, "breakdown": array(obj({"endpoint": STR, "model": STR, **TIME_ROW}))}),
    "Stats": obj({"model": STR, "input_tokens": INT, "output_tokens": INT, "total_tokens": INT, "requests": INT,
                  "time_series": array(obj({"endpoint": STR, **TIME_ROW})), "endpoint_distribution": OBJ}),
    "TimeSeries": obj({"bucket_seconds": INT, "since": INT, "model": typed("string", "null"),
                       "time_series": array(obj(TIME_ROW))}),
    "Aggregated": obj({"status": STR, "days": INT, "trim_old": BOOL, "aggregated_groups": INT}),
    "Config": obj({"endpoints": array(OBJ), "require_router_api_key": BOOL, "router_version": STR}),
    "Health": obj({"status": typed("string", enum=["ok", "degraded", "error"]), "healthy_backends": INT,
                   "backends": INT, "endpoints": OBJ}),
}


# -- operations ---------------------------------------------------------------------------------

def error_refs(dialect: str, codes) -> dict:
    return {str(code): {"$ref": f"#/components/responses/{dialect}Error"} for code in codes}


def op(summary: str, tag: str, answer: str | dict | None = None, *, body: str | None = None,
       dialect: str = "Ollama", errors=(400,), stream: str | None = None, content: str = JSON_UTF8,
       status: str = "200", params: list | None = None, optional_body: bool = False, **extra) -> dict:
    """One operation: its body (a schema name), its answer and the errors it can give."""

    schema = ref(answer) if isinstance(answer, str) else answer
    ok: dict[str, Any] = {"description": "success"}
    if schema is not None:
        ok["content"] = {content: {"schema": schema}}
        if stream:  # the schema is then that of one NDJSON line or one SSE `data:` event
            ok["content"][stream] = {"schema": schema}
            ok["description"] = f"success; streamed as {stream}, one object per line or event"
    guarded = extra.get("security") != []  # (open routes need no key, so cannot refuse one)
    # 403 everywhere: a foreign Origin or (on loopback) a non-local Host; 415/413/408: a body
    # compressed, too large, or stalled
    codes = sorted({*errors, 403} | ({401} if guarded else set()) | ({408, 413, 415} if body else set()))
    operation = {"summary": summary, "tags": [tag], "responses": {status: ok, **error_refs(dialect, codes)}, **extra}
    if body:
        operation["requestBody"] = {"required": not optional_body, "content": {JSON: {"schema": ref(body)}}}
    if params:
        operation["parameters"] = params
    return operation


def query(name: str, schema: dict, description: str, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


def path_param(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


ENDPOINT_QUERY = query("endpoint", array(STR), "backends to run on, by name or URL (repeatable or comma-separated)")
ROUTED = (400, 404, 502, 503)
OPEN = {"security": []}


def ollama_inference(summary: str, body: str, answer: str, stream: bool = True) -> dict:
    return {"post": op(summary, "inference", answer, body=body, errors=ROUTED, stream=NDJSON if stream else None)}


def openai(summary: str, body: str, answer: str, stream: bool = True) -> dict:
    return {"post": op(summary, "openai", answer, body=body, dialect="OpenAI", errors=ROUTED, content=JSON,
                       stream=SSE if stream else None)}


def management(method: str, summary: str, body: str, answer: str, stream: bool = False) -> dict:
    return {method: op(summary, "models", answer, body=body, errors=(400, 404, 502, 503), params=[ENDPOINT_QUERY],
                       stream=NDJSON if stream else None)}


def get(summary: str, tag: str, answer: str | dict | None, errors=(), **kwargs) -> dict:
    return {"get": op(summary, tag, answer, errors=errors, **kwargs)}


PLAIN = typed("string")
DIGEST = path_param("digest", typed("string", pattern="^sha256[:-][0-9a-f]{64}$"), "`sha256:<64 hex digits>`")
RERANK = openai("Rerank documents against a query (OpenAI-compatible backends only)", "RerankRequest",
                "RerankResponse", stream=False)

PATHS: dict[str, dict] = {
    "/": get("Liveness: `Ollama is running`; a browser (Accept: text/html) gets the dashboard", "fleet",
             PLAIN, content="text/plain; charset=utf-8", **OPEN),
    "/api/version": get("The lowest version among healthy Ollama backends", "fleet", "Version", errors=(503,)),
    "/api/tags": get("Every model of every healthy backend, once", "fleet", "Tags"),
    "/api/ps": get("Loaded models across the fleet, asked of the backends now", "fleet", "Ps"),
    "/api/show": {"post": op("Model details, from a backend that has the model", "fleet", "ShowResponse",
                             body="ShowRequest", errors=ROUTED)},
    "/api/chat": ollama_inference("Chat, routed to the best backend for the model", "ChatRequest", "ChatResponse"),
    "/api/generate": ollama_inference("Generate, routed to the best backend", "GenerateRequest", "GenerateResponse"),
    "/api/embed": ollama_inference("Embeddings of one or more inputs", "EmbedRequest", "EmbedResponse", False),
    "/api/embeddings": ollama_inference("Legacy single-prompt embedding", "EmbeddingsRequest", "EmbeddingsResponse",
                                        False),
    "/v1/chat/completions": openai("Chat completion, routed to any backend with the model",
                                   "ChatCompletionRequest", "ChatCompletion"),
    "/v1/completions": openai("Text completion", "CompletionRequest", "Completion"),
    "/v1/embeddings": openai("Embeddings", "EmbeddingRequest", "EmbeddingList", stream=False),
    "/v1/rerank": RERANK,
    "/rerank": RERANK,
    "/v1/models": get("Every model of every healthy backend, once", "openai", "ModelList", dialect="OpenAI",
                      content=JSON),
    "/v1/models/{model}": get("One model (`id` echoes the path)", "openai", "Model", errors=(404,), dialect="OpenAI",
                              content=JSON, params=[path_param("model", STR, "a model name; may contain `/`")]),
    "/api/pull": management("post", "Pull on every target backend; progress merged", "PullRequest", "Progress", True),
    "/api/push": management("post", "Push from one backend that has the model", "PullRequest", "Progress", True),
    "/api/create": management("post", "Create on every target backend", "CreateRequest", "Progress", True),
    "/api/copy": management("post", "Copy on every target that has `source`", "CopyRequest", "Report"),
    "/api/delete": management("delete", "Delete from every target that has the model", "DeleteRequest", "Report"),
    "/api/blobs/{digest}": {
        "head": op("200 if every target has the blob, else 404", "models", errors=(400, 404, 503),
                   params=[DIGEST, ENDPOINT_QUERY]),
        "post": {**op("Upload a blob to every target that lacks it (not limited by max_body_size)", "models",
                      "Report", errors=(400, 502, 503), status="201", params=[DIGEST, ENDPOINT_QUERY]),
                 "requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {}}}}},
    },
    "/api/ps_details": get("Loaded models per backend instance", "models", "PsDetails"),
    "/api/usage": get("Requests in flight and tokens per backend and model, and the queue", "monitoring",
                      "UsageView"),
    "/api/token_counts": get("Tokens per backend and model since the database began", "monitoring", "TokenCounts"),
    "/api/stats": {
        "get": op("Token totals and time series of one model", "monitoring", "Stats", errors=(400, 404),
                  params=[query("model", MODEL, "the model", True), query("days", SCHEMAS["StatsRequest"]
                                                                          ["properties"]["days"], "days back")]),
        "post": op("Token totals and time series of one model", "monitoring", "Stats", body="StatsRequest",
                   errors=(400, 404)),
    },
    "/api/time_series": get("Fleet-wide tokens per minute", "monitoring", "TimeSeries", errors=(400,), params=[
        query("minutes", typed("integer", minimum=1, maximum=44640, default=60), "minutes back"),
        query("model", STR, "only this model")]),
    "/api/aggregate_time_series_days": {"post": op(
        "Roll minute rows older than `days` into daily rows", "monitoring", "Aggregated", body="AggregateRequest",
        errors=(400, 503), optional_body=True)},
    "/api/config": get("Each backend with its status, models and slots", "monitoring", "Config"),
    "/api/usage-stream": get("Live state as Server-Sent Events (a `data:` event per change)", "monitoring",
                             STR, content=SSE),
    "/health": get("200 while a backend is healthy, else 503", "monitoring", "Health", errors=(503,)),
    "/metrics": get("Prometheus metrics (text format 0.0.4)", "monitoring", PLAIN,
                    content="text/plain; version=0.0.4; charset=utf-8"),
    "/static/{name}": get("The dashboard's files", "dashboard", {}, content="application/octet-stream",
                          errors=(404,), params=[path_param("name", STR, "a file name")], **OPEN),
    "/openapi.json": get("This document", "meta", OBJ, content=JSON),
}

DESCRIPTION = """One address for a fleet of Ollama and OpenAI-compatible servers. Native routes
answer as Ollama does, errors as `{"error": "..."}`; `/v1/*` and `/rerank` answer as OpenAI does,
errors as `{"error": {"message", "type", "param", "code"}}`. An unknown route is `404 page not
found` and a wrong method `405 method not allowed` (text/plain) on native paths, an OpenAI error
object under `/v1`. The router key (`Authorization: Bearer <key>` or `?api_key=<key>`) is required
on every route but `/` and `/static/*` when `router_api_keys` is configured, and nowhere when it
is not; with `admin_api_keys` configured, the model management routes and the usage roll-up need an
admin key (403 for a router key). A request from a browser page whose `Origin` is not allowed, or
(while the router listens on loopback) with a `Host` that is not local, is a 403. A body with a
`Content-Encoding` is a 415, one over `max_body_size` a 413, one whose sending stalls a 408, one
nested deeper than 128 levels a 400. In request schemas, typed properties (at the top level, in
the elements of top-level arrays, and in their tool calls) are checked by the router before
routing; untyped, unlisted and deeper ones are passed to the backend as sent."""


def build() -> dict:
    """The whole document (a new dict each call)."""

    paths = orjson.loads(orjson.dumps(PATHS))  # a private copy: operations share building blocks
    for path, item in paths.items():
        if "get" in item and "head" not in item and path != "/api/usage-stream":  # aiohttp adds HEAD to GET
            head = {k: v for k, v in item["get"].items() if k != "responses"}
            head["summary"] = "Headers only: " + head["summary"]
            head["responses"] = {code: {"description": answer.get("description", "")} if "$ref" not in answer
                                 else answer for code, answer in item["get"]["responses"].items()}
            item["head"] = head
        for method, operation in item.items():
            operation["operationId"] = method + path.replace("/", "_").replace("{", "").replace("}", "").replace(
                ".", "_").replace("-", "_")
    error_schema = {"Ollama": ref("OllamaError"), "OpenAI": ref("OpenAIError")}
    return {
        "openapi": "3.1.0",
        "info": {"title": "nomyo-router", "version": __version__, "description": DESCRIPTION,
                 "license": {"name": "AGPL-3.0-or-later", "identifier": "AGPL-3.0-or-later"}},
        "servers": [{"url": "/"}],
        "security": [{"routerKey": []}, {"routerKeyQuery": []}],
        "tags": [{"name": name} for name in ("inference", "openai", "fleet", "models", "monitoring", "dashboard",
                                              "meta")],
        "paths": paths,
        "components": {
            "schemas": orjson.loads(orjson.dumps(SCHEMAS)),
            "responses": {f"{dialect}Error": {"description": f"an error in {dialect}'s dialect",
                                              "content": {JSON: {"schema": schema}}}
                          for dialect, schema in error_schema.items()},
            "securitySchemes": {
                "routerKey": {"type": "http", "scheme": "bearer", "description": "a key of `router_api_keys`"},
                "routerKeyQuery": {"type": "apiKey", "in": "query", "name": "api_key"},
            },
        },
    }


# -- serving ------------------------------------------------------------------------------------

CACHE: web.AppKey[dict] = web.AppKey("openapi", dict)


def document(app: web.Application) -> dict:
    """The document of `app`, built on first use."""

    cache = app[CACHE]
    if "spec" not in cache:
        cache["spec"] = build()
        cache["body"] = orjson.dumps(cache["spec"])
    return cache["spec"]


async def serve(request: web.Request) -> web.Response:
    document(request.app)
    response = web.Response(body=request.app[CACHE]["body"])
    response.headers["Content-Type"] = JSON
    return response


def add_routes(app: web.Application) -> None:
    app[CACHE] = {}
    app.router.add_get("/openapi.json", serve)
