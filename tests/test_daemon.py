"""The real daemon process: command line, readiness, signals (`make demo`: test_demo.py)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

PYTHON = sys.executable


async def run_cli(*args, env=None):
    process = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "nomyo", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})})
    out, err = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode, out.decode(), err.decode()


async def test_version_and_check_config(tmp_path):
    code, out, _ = await run_cli("--version")
    assert code == 0 and re.match(r"nomyo-router \d+\.\d+", out)
    good = tmp_path / "good.yaml"
    good.write_text("endpoints: [http://127.0.0.1:11434]\n")
    code, out, _ = await run_cli("--check-config", str(good))
    assert code == 0 and f"{good}: OK (1 endpoint, listen 127.0.0.1:12434)" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("endpoints: [http://127.0.0.1:11434]\nmax_concurent_connections: 2\npoll_interval: often\n")
    code, _, err = await run_cli("--check-config", str(bad))
    assert code == 1
    lines = err.splitlines()  # every error, one a line
    assert len(lines) == 2 and lines[0].startswith(f"nomyo-router: {bad}:2: max_concurent_connections: unknown key")
    assert lines[1] == f"nomyo-router: {bad}:3: poll_interval: must be a number, got 'often'"
    code, _, err = await run_cli("--config", str(bad))
    assert code == 2 and "unknown key" in err


async def test_daemon_serves_and_stops_cleanly_on_sigterm(fakes, tmp_path, unused_tcp_port):
    a = await fakes("a", loaded=["llama3:latest"])
    config = tmp_path / "config.yaml"
    config.write_text(f"listen: 127.0.0.1:{unused_tcp_port}\nendpoints:\n  - {a.url}\n")
    process = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "nomyo", "--config", str(config), stderr=asyncio.subprocess.PIPE)
    url = f"http://127.0.0.1:{unused_tcp_port}"
    try:
        async with aiohttp.ClientSession() as http:
            async def ready():
                try:
                    async with http.post(url + "/api/generate",
                                         json={"model": "llama3", "prompt": "hi", "stream": False}) as resp:
                        return (await resp.json())["response"]
                except aiohttp.ClientError:
                    return None
            for _ in range(100):
                answer = await ready()
                if answer:
                    break
                await asyncio.sleep(0.1)
            assert answer == "Hello from a"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
        log = (await process.stderr.read()).decode()
        assert "listening on http://127.0.0.1" in log
        assert "POST /api/generate model=llama3 backend=" in log and "status=200" in log
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.parametrize("flag", ["--listen", "--log-level"])
async def test_bad_flag_values_are_rejected(flag):
    code, _, err = await run_cli("--config", "etc/nomyo/config.yaml", flag, "nonsense")
    assert code == 2 and err


async def test_an_empty_configuration_fails_the_check_and_the_start(tmp_path):
    """An empty file or `endpoints: []` once passed --check-config and started a router with no
    backend and no warning; `--check-config` without a path reported a missing default file OK."""

    for text, message in (("", "the configuration is empty"), ("endpoints: []\n", "no backends configured")):
        path = tmp_path / "config.yaml"
        path.write_text(text)
        code, out, err = await run_cli("--check-config", str(path))
        assert (code, out) == (1, "") and message in err
        code, _, err = await run_cli("--config", str(path))
        assert code == 2 and message in err and err.count("\n") == 1
    if Path("/etc/nomyo/config.yaml").exists():  # noqa: ASYNC240 (one stat)
        pytest.skip("this machine has /etc/nomyo/config.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("NOMYO_ROUTER_CONFIG", "NOMYO_ROUTER_CONFIG_PATH")}
    process = await asyncio.create_subprocess_exec(PYTHON, "-m", "nomyo", "--check-config", env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1 and b"OK" not in out
    assert b"/etc/nomyo/config.yaml: cannot read the configuration" in err


async def test_a_port_in_use_is_one_clear_error(fakes, tmp_path):
    a = await fakes("a")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "config.yaml"
        config.write_text(f"listen: 127.0.0.1:{port}\nendpoints:\n  - {a.url}\n")
        code, _, err = await run_cli("--config", str(config))
    assert code == 1
    assert [line for line in err.splitlines() if "WARNING" in line or "ERROR" in line or "nomyo-router:" in line] \
        == [f"nomyo-router: cannot listen on 127.0.0.1:{port}: Address already in use"], err
    assert "Unclosed" not in err and "Traceback" not in err


async def test_health_says_error_when_no_backend_is_up(fakes, daemon):
    a = await fakes("a")
    router = await daemon(f"endpoints:\n  - {a.url}\n")
    await a.go_down()
    await router.wait_for_log("is down")
    async with aiohttp.ClientSession() as http, http.get(router.url + "/health") as resp:
        assert resp.status == 503 and (await resp.json())["status"] == "error"
