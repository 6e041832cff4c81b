"""Model management across the fleet through the router: pull, push, create, copy, delete, blobs.

Fake Ollama backends really keep a model list, really stream pull progress (with a delay per
line) and can be told to fail. The router polls every 60 s, so a model that is routable right
after an operation is routable because the operation refreshed the fleet, not by chance.
"""

from __future__ import annotations

import asyncio
import hashlib

import ollama
import orjson
import pytest

from tests.fakes.ollama_formats import ModelSpec, layers

ALL_PULLABLE = ["phi3:mini", "tinyllama:latest", "llama3:latest"]


@pytest.fixture
async def pair(fakes, start_router):
    a = await fakes("a", models=["llama3:latest"], loaded=["llama3:latest"], pullable=ALL_PULLABLE,
                    token_delay=0.005)
    b = await fakes("b", models=["llama3:latest", "qwen3:0.6b"], pullable=ALL_PULLABLE, token_delay=0.005)
    router = await start_router([a, b], poll_interval=60)
    return router, a, b


def routed_to(router, model: str) -> list[str]:
    """Backends the router's snapshot would route `model` to (no I/O, as routing does)."""
    return sorted(b.name for b in router.router.fleet.with_model(model) if b.status.healthy)


def requests_to(fake, path: str) -> list:
    return [r for r in fake.requests if r.path == path]


async def chat(router, model: str) -> str:
    answer = await ollama.AsyncClient(host=router.url).chat(model=model, messages=[{"role": "user", "content": "hi"}])
    return answer.message.content


async def test_streamed_pull_runs_everywhere_at_once_with_progress_summed(pair):
    """Both backends pull phi3:mini in parallel; the client sees one stream whose per-layer
    totals are the two backends' totals added, ending in success; the model is routable to
    both the moment the stream ends."""
    router, a, b = pair
    client = ollama.AsyncClient(host=router.url)
    parts = [p async for p in await client.pull("phi3:mini", stream=True)]
    statuses = [p.status for p in parts]
    assert statuses[0] == "pulling manifest" and statuses.count("pulling manifest") == 1
    assert statuses[-1] == "success" and statuses.count("success") == 1
    for digest, size in layers(ModelSpec.from_name("phi3:mini")):
        lines = [p for p in parts if p.digest == f"sha256:{digest}"]
        assert max(p.total for p in lines) == 2 * size
        assert lines[-1].completed == 2 * size
    pulls = [requests_to(a, "/api/pull")[0], requests_to(b, "/api/pull")[0]]
    assert abs(pulls[0].time - pulls[1].time) < 0.05  # side by side, not one after the other
    assert "phi3:mini" in a.models and "phi3:mini" in b.models
    assert routed_to(router, "phi3:mini") == ["a", "b"]
    assert await chat(router, "phi3:mini") in ("Hello from a", "Hello from b")


async def test_pull_without_stream_answers_once(pair, http):
    router, a, b = pair
    assert (await ollama.AsyncClient(host=router.url).pull("tinyllama")).status == "success"
    assert routed_to(router, "tinyllama:latest") == ["a", "b"]
    for fake in (a, b):  # the backends are asked for progress, which the router merges
        assert requests_to(fake, "/api/pull")[0].json == {"model": "tinyllama", "insecure": False, "stream": True}
    async with http.post(router.url + "/api/pull", data=orjson.dumps({"model": "phi3:mini", "stream": False})) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("application/json")
        body = await r.json()
    assert body == {"status": "success", "backends": {"a": {"status": "success"}, "b": {"status": "success"}}}


async def test_one_backend_failing_mid_pull_does_not_stop_the_others(pair, http):
    """b's download breaks after three lines; a finishes its pull; the stream ends with an
    error line naming b and its error (ollama-python raises it), and a can serve the model."""
    router, a, b = pair
    b.fail_pull(after_steps=3)
    client = ollama.AsyncClient(host=router.url)
    seen = []
    with pytest.raises(ollama.ResponseError) as err:
        async for part in await client.pull("phi3:mini", stream=True):
            seen.append(part.status)
    assert "b failed: max retries exceeded: unexpected EOF" in seen
    assert err.value.error == ("pull 'phi3:mini' failed on 1 of 2 backends: "
                               "b: max retries exceeded: unexpected EOF (succeeded on a)")
    assert "phi3:mini" in a.models and "phi3:mini" not in b.models
    assert routed_to(router, "phi3:mini") == ["a"]
    assert await chat(router, "phi3:mini") == "Hello from a"

    b.fail_pull(error="disk full")
    async with http.post(router.url + "/api/pull", data=orjson.dumps({"model": "tinyllama", "stream": False})) as r:
        assert r.status == 502
        body = await r.json()
    assert body["error"] == "pull 'tinyllama' failed on 1 of 2 backends: b: disk full (succeeded on a)"
    assert body["backends"] == {"a": {"status": "success"},
                                "b": {"status": "failed", "code": 500, "error": "disk full"}}


async def test_a_pull_that_fails_everywhere_reports_every_backend(pair):
    router, _, _ = pair
    with pytest.raises(ollama.ResponseError) as err:
        await ollama.AsyncClient(host=router.url).pull("not-in-registry")
    assert err.value.status_code == 500  # what each backend said (Ollama's stream:false failure)
    missing = "pull model manifest: file does not exist"
    assert err.value.error == f"pull 'not-in-registry' failed on 2 of 2 backends: a: {missing}; b: {missing}"


async def test_model_absent_everywhere_is_404_and_no_backend_is_asked(pair):
    router, a, b = pair
    client = ollama.AsyncClient(host=router.url)
    with pytest.raises(ollama.ResponseError) as err:
        await client.delete("nope")
    assert (err.value.status_code, err.value.error) == (404, "model 'nope' not found")
    with pytest.raises(ollama.ResponseError) as err:
        await client.copy("nope", "other")
    assert (err.value.status_code, err.value.error) == (404, 'model "nope" not found')
    with pytest.raises(ollama.ResponseError) as err:
        await client.push("nope")
    assert err.value.status_code == 404
    for fake in (a, b):
        assert not requests_to(fake, "/api/delete") and not requests_to(fake, "/api/copy")
        assert not requests_to(fake, "/api/push")


async def test_copy_goes_where_the_source_is_and_is_routable_at_once(pair):
    router, a, b = pair
    client = ollama.AsyncClient(host=router.url)
    assert (await client.copy("llama3", "llama3-backup")).status == "success"
    assert "llama3-backup:latest" in a.models and "llama3-backup:latest" in b.models
    assert routed_to(router, "llama3-backup:latest") == ["a", "b"]
    assert (await client.copy("qwen3:0.6b", "q-copy")).status == "success"
    assert not requests_to(a, "/api/copy")[1:] and "q-copy:latest" in b.models
    assert routed_to(router, "q-copy:latest") == ["b"]
    assert await chat(router, "q-copy") == "Hello from b"


async def test_delete_everywhere_makes_the_model_unroutable_at_once(pair):
    router, a, b = pair
    client = ollama.AsyncClient(host=router.url)
    assert await chat(router, "llama3") in ("Hello from a", "Hello from b")
    assert (await client.delete("llama3")).status == "success"
    assert "llama3:latest" not in a.models + b.models
    assert routed_to(router, "llama3:latest") == []
    listed = await client.list()
    assert "llama3:latest" not in [m.model for m in listed.models]
    with pytest.raises(ollama.ResponseError) as err:
        await chat(router, "llama3")
    assert err.value.status_code == 404


async def test_delete_on_named_endpoints_only(pair, http):
    """`endpoints` in the body limits the operation: llama3 goes from a only; b serves it."""
    router, a, b = pair
    body = orjson.dumps({"model": "llama3", "endpoints": ["a"]})
    async with http.delete(router.url + "/api/delete", data=body) as r:
        assert r.status == 200
        assert (await r.json())["backends"] == {"a": {"status": "success"}}
    assert "llama3:latest" not in a.models and "llama3:latest" in b.models
    assert requests_to(a, "/api/delete")[0].json == {"model": "llama3"}  # the router's own field stays here
    assert routed_to(router, "llama3:latest") == ["b"]
    assert await chat(router, "llama3") == "Hello from b"


async def test_endpoint_query_by_url_and_unknown_names(pair, http):
    router, a, b = pair
    async with http.post(router.url + f"/api/pull?endpoint={b.url}", data=b'{"model":"tinyllama"}') as r:
        assert r.status == 200 and r.headers["Content-Type"] == "application/x-ndjson"
        assert orjson.loads((await r.read()).splitlines()[-1]) == {"status": "success"}
    assert "tinyllama:latest" in b.models and "tinyllama:latest" not in a.models
    async with http.post(router.url + "/api/pull?endpoint=nowhere", data=b'{"model":"tinyllama"}') as r:
        assert r.status == 400 and (await r.json()) == {"error": "unknown endpoint 'nowhere'"}
    async with http.post(router.url + "/api/pull", data=b'{"model":"x","endpoints":7}') as r:
        assert r.status == 400
    assert len(requests_to(a, "/api/pull")) == 0


async def test_openai_backends_are_skipped_and_the_report_says_so(fakes, start_router, http):
    a = await fakes("a", pullable=ALL_PULLABLE)
    openai_backend = {"name": "oa", "url": "http://127.0.0.1:9/v1", "type": "openai"}
    router = await start_router([a, openai_backend], poll_interval=60)
    async with http.post(router.url + "/api/pull", data=b'{"model":"phi3:mini"}') as r:
        lines = [orjson.loads(line) for line in (await r.read()).splitlines()]
    assert lines[0] == {"status": "skipping oa: not an Ollama backend"}
    assert lines[-1] == {"status": "success"}
    async with http.post(router.url + "/api/pull", data=b'{"model":"phi3:mini","stream":false}') as r:
        assert r.status == 200
        assert (await r.json())["backends"]["oa"] == {"status": "skipped", "reason": "not an Ollama backend"}


async def test_push_goes_from_one_backend_that_has_the_model(pair):
    router, a, b = pair
    client = ollama.AsyncClient(host=router.url)
    statuses = [p.status async for p in await client.push("llama3", stream=True)]
    assert statuses[:2] == ["skipping b: pushed from a", "retrieving manifest"] and statuses[-1] == "success"
    assert len(requests_to(a, "/api/push")) == 1 and not requests_to(b, "/api/push")
    assert (await client.push("qwen3:0.6b")).status == "success"
    assert len(requests_to(b, "/api/push")) == 1


async def test_create_show_and_ps_through_the_router(pair, http):
    router, a, b = pair
    client = ollama.AsyncClient(host=router.url)
    made = [p.status async for p in await client.create("mine", from_="llama3", system="be brief", stream=True)]
    assert made[0] == "gathering model components" and made[-1] == "success"
    assert "mine:latest" in a.models and "mine:latest" in b.models
    assert routed_to(router, "mine:latest") == ["a", "b"]
    assert (await client.create("mine2", from_="llama3")).status == "success"
    assert (await client.show("mine")).modelinfo is not None
    await client.generate(model="qwen3:0.6b", prompt="")  # loads it on b
    assert sorted(m.model for m in (await client.ps()).models) == ["llama3:latest", "qwen3:0.6b"]
    async with http.get(router.url + "/api/ps_details") as r:
        rows = (await r.json())["models"]
    assert sorted((row["backend"], row["model"]) for row in rows) == [("a", "llama3:latest"), ("b", "qwen3:0.6b")]
    for row in rows:
        assert row["size"] > 0 and row["size_vram"] > 0 and row["context_length"] == 4096
        assert row["expires_at"] and row["endpoint"] in (a.url, b.url)


async def test_create_from_missing_source_fails_where_it_is_missing(fakes, start_router):
    a = await fakes("a", models=["llama3:latest"])
    b = await fakes("b", models=["qwen3:0.6b"])
    router = await start_router([a, b], poll_interval=60)
    with pytest.raises(ollama.ResponseError) as err:
        await ollama.AsyncClient(host=router.url).create("mine", from_="llama3")
    assert err.value.status_code == 502 and "b: model 'llama3' not found" in err.value.error
    assert "mine:latest" in a.models and routed_to(router, "mine:latest") == ["a"]


async def test_ollama_cli_create_flow_uploads_the_blob_to_every_backend(fakes, start_router, http):
    """What `ollama create mine -f Modelfile` (FROM ./weights.gguf) sends: HEAD the blob (404),
    POST its bytes, then create with `files`. The upload is larger than max_body_size and sent
    in chunks: it streams through to both backends; then the model exists on both."""
    a = await fakes("a")
    b = await fakes("b")
    router = await start_router([a, b], poll_interval=60, max_body_size=4096)
    weights = bytes(range(256)) * 1024  # 256 KiB
    digest = "sha256:" + hashlib.sha256(weights).hexdigest()
    async with http.head(router.url + f"/api/blobs/{digest}") as r:
        assert r.status == 404

    async def chunks():
        for start in range(0, len(weights), 32 * 1024):
            yield weights[start:start + 32 * 1024]

    async with http.post(router.url + f"/api/blobs/{digest}", data=chunks()) as r:
        assert r.status == 201, await r.text()
    for fake in (a, b):
        assert requests_to(fake, f"/api/blobs/{digest}")[-1].body == weights
    async with http.head(router.url + f"/api/blobs/{digest}") as r:
        assert r.status == 200
    async with http.post(router.url + f"/api/blobs/{digest}", data=weights) as r:
        assert r.status == 200  # every backend has it: nothing is sent again
    assert [r.method for r in requests_to(a, f"/api/blobs/{digest}")].count("POST") == 1
    create = {"model": "mine", "files": {"weights.gguf": digest}}
    async with http.post(router.url + "/api/create", data=orjson.dumps(create)) as r:
        lines = [orjson.loads(line) for line in (await r.read()).splitlines()]
    assert lines[-1] == {"status": "success"}
    assert f"using existing layer {digest}" in [line["status"] for line in lines]
    assert routed_to(router, "mine:latest") == ["a", "b"]


async def test_blob_upload_with_the_ollama_client_and_bad_digests(fakes, start_router, http, tmp_path):
    a = await fakes("a")
    b = await fakes("b")
    router = await start_router([a, b], poll_interval=60)
    path = tmp_path / "w.gguf"
    path.write_bytes(b"GGUF fake weights")
    client = ollama.AsyncClient(host=router.url)
    digest = await client.create_blob(path)
    assert (await client.create("fromfile", files={"w.gguf": digest})).status == "success"
    assert "fromfile:latest" in a.models and "fromfile:latest" in b.models
    async with http.head(router.url + "/api/blobs/sha256:xyz") as r:
        assert r.status == 400
    async with http.post(router.url + "/api/blobs/md5:abc", data=b"x") as r:
        assert r.status == 400 and (await r.json()) == {"error": "invalid digest format"}
    wrong = "sha256:" + "0" * 64
    async with http.post(router.url + f"/api/blobs/{wrong}", data=b"x") as r:
        assert r.status == 400  # both backends refused it alike: digest mismatch
        assert (await r.json())["error"].startswith("upload of sha256:000")


async def test_a_client_that_leaves_mid_pull_cancels_it_everywhere(fakes, start_router, http):
    """As Ollama cancels a pull whose client went away: the backends see their connection close
    before the end, so neither commits the model; the router is left with nothing in flight."""
    a = await fakes("a", pullable=ALL_PULLABLE, token_delay=0.05)
    b = await fakes("b", pullable=ALL_PULLABLE, token_delay=0.05)
    router = await start_router([a, b], poll_interval=60)
    resp = await http.post(router.url + "/api/pull", data=b'{"model":"phi3:mini"}')
    assert orjson.loads(await resp.content.readline()) == {"status": "pulling manifest"}
    resp.close()
    await asyncio.sleep(1.0)  # longer than a whole pull takes (13 lines x 50 ms)
    assert "phi3:mini" not in a.models and "phi3:mini" not in b.models
    assert router.router.active_requests == 0


async def test_a_backend_that_died_does_not_stop_the_upload_to_the_others(fakes, start_router, http):
    """Named explicitly, a dead backend is tried: its failure is reported, a still gets the blob."""
    a = await fakes("a")
    b = await fakes("b")
    router = await start_router([a, b], poll_interval=60)
    await b.go_down()
    await router.router.poller.refresh(router.backend("b"))  # the router sees it down
    weights = b"GGUF" * 50_000
    digest = "sha256:" + hashlib.sha256(weights).hexdigest()
    async with http.post(router.url + f"/api/blobs/{digest}", data=weights) as r:
        assert r.status == 201  # unreachable backends are left out (and the report says so)
        assert (await r.json())["backends"]["b"]["status"] == "skipped"
    digest = "sha256:" + hashlib.sha256(weights[1:]).hexdigest()
    async with http.post(router.url + f"/api/blobs/{digest}?endpoint=a,b", data=weights[1:]) as r:
        assert r.status == 502
        body = await r.json()
    assert body["error"].startswith(f"upload of {digest} failed on 1 of 2 backends: b: cannot connect")
    assert body["error"].endswith("(succeeded on a)")
    assert body["backends"]["a"] == {"status": "success"}
    assert requests_to(a, f"/api/blobs/{digest}")[-1].body == weights[1:]
