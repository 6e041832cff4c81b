"""The router's OpenAPI document (`nomyo.openapi`, served at `/openapi.json`): it describes every
route the app registers and nothing else, is valid OpenAPI 3.1, and is served behind the key."""

from __future__ import annotations

import orjson
import pytest

from nomyo import openapi
from nomyo.app import build_app
from tests.conftest import router_config
from tests.fuzzing import KEY, SCHEMAS, SPEC


def test_every_route_is_described_and_nothing_else():
    app = build_app(router_config([{"name": "x", "url": "http://127.0.0.1:9"}]))
    served = {(route.method.lower(), route.resource.canonical) for route in app.router.routes()}
    assert served == {(method, path) for path, item in SPEC["paths"].items() for method in item}
    assert openapi.document(app) is openapi.document(app)  # built once per application


def test_the_document_is_valid_openapi_3_1():
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(SPEC)


def test_operations_are_complete():
    ids = set()
    for path, item in SPEC["paths"].items():
        for method, operation in item.items():
            ids.add(operation["operationId"])
            assert "200" in operation["responses"] or "201" in operation["responses"], (method, path)
            guarded = operation.get("security") != []
            assert ({"401", "403"} <= set(operation["responses"])) == guarded, (method, path)
            dialect = "OpenAI" if path.startswith("/v1/") or path == "/rerank" else "Ollama"
            for code, answer in operation["responses"].items():
                if code >= "400":
                    assert answer == {"$ref": f"#/components/responses/{dialect}Error"}, (method, path, code)
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                assert body["schema"]["$ref"].rsplit("/", 1)[1] in SCHEMAS
    assert len(ids) == sum(len(item) for item in SPEC["paths"].values())
    text = orjson.dumps(SPEC).decode()
    for name in SCHEMAS:
        assert f'"#/components/schemas/{name}"' in text, name


async def test_the_document_is_served_behind_the_key(fakes, start_router, http):
    a = await fakes("a")
    router = await start_router([a], router_api_keys={"ci": KEY})
    async with http.get(router.url + "/openapi.json") as resp:
        assert resp.status == 401 and isinstance((await resp.json())["error"], str)
    async with http.get(router.url + "/openapi.json", headers={"Authorization": f"Bearer {KEY}"}) as resp:
        assert (resp.status, resp.headers["Content-Type"]) == (200, "application/json")
        assert await resp.json() == SPEC
    async with http.head(router.url + f"/openapi.json?api_key={KEY}") as resp:
        assert resp.status == 200
    open_router = await start_router([a])
    async with http.get(open_router.url + "/openapi.json") as resp:
        assert (await resp.json())["openapi"] == "3.1.0"
