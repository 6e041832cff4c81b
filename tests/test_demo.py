"""`make demo` as a new user meets it: the banner's URLs and client lines, and both APIs at work.

The demo script (tests/fakes/demo.py) starts the real daemon in front of two simulated Ollama
servers and one simulated OpenAI-compatible server. The test reads the banner like a person,
runs its `ollama` and `openai` client lines exactly as printed (from the checkout, as the README
says), then drives the real `ollama` and `openai` Python clients through every /v1 route the demo
advertises (chat streamed and not, completions streamed and not, embeddings, models) and the
Ollama API across the translation to the OpenAI-compatible backend.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

import ollama
import openai
import pytest

REPO = Path(__file__).resolve().parent.parent
HELLO = [{"role": "user", "content": "hello"}]


async def read_banner(process: asyncio.subprocess.Process) -> str:
    text = ""
    while "Ctrl-C" not in text:
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        assert line, f"the demo ended before printing its banner:\n{text}"
        text += line.decode()
    return text


@pytest.fixture
async def demo(unused_tcp_port):
    """The demo script running from the checkout; yields its banner."""

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakes.demo", "--port", str(unused_tcp_port), "--seconds", "120",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        yield await read_banner(process)
    finally:
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 30) == 0


def field(banner: str, label: str) -> str:
    found = re.search(rf"^\s*{label}:\s+(\S+)", banner, re.MULTILINE)
    assert found, f"the banner names no {label}:\n{banner}"
    return found.group(1)


async def run_line(line: str) -> str:
    """One shell line from the banner, run from the checkout as the reader would."""

    process = await asyncio.create_subprocess_shell(line, cwd=REPO, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, f"{line}\nfailed: {err.decode()}"
    return out.decode()


async def test_demo_banner_lines_work_for_both_clients(demo):
    """1. The demo prints its banner.  2. It names the Ollama URL, the /v1 base URL and the
    dashboard, and a runnable line for each Python client.  3. Both lines, run as printed, print
    the simulated servers' answers: the ollama client's from the OpenAI-compatible backend
    (translated by the router), the openai client's from a simulated Ollama."""

    url = field(demo, "Ollama API")
    assert field(demo, "OpenAI API") == url + "/v1"
    assert field(demo, "dashboard") == url + "/"
    ollama_line = next(line.strip() for line in demo.splitlines() if "import ollama" in line)
    openai_line = next(line.strip() for line in demo.splitlines() if "import openai" in line)
    assert "OpenAI-compatible server" in await run_line(ollama_line)
    assert "simulated Ollama" in await run_line(openai_line)


async def test_demo_serves_v1_and_translation_to_real_clients(demo):
    """The real clients against the demo's URLs: every /v1 route, streamed and not, on the
    simulated Ollama servers and the OpenAI-compatible one; and the Ollama API in front of the
    OpenAI-compatible server (the router translates)."""

    url = field(demo, "Ollama API")
    oa = openai.AsyncOpenAI(base_url=field(demo, "OpenAI API"), api_key="demo", max_retries=0)
    ids = {model.id async for model in oa.models.list()}
    assert {"llama3.2:latest", "all-minilm:latest", "mistral-7b-instruct"} <= ids
    for model in ("llama3.2", "mistral-7b-instruct"):
        answer = await oa.chat.completions.create(model=model, messages=HELLO)
        assert answer.choices[0].message.content.startswith("Hello from")
        stream = await oa.chat.completions.create(model=model, messages=HELLO, stream=True)
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
        assert text == answer.choices[0].message.content
        done = await oa.completions.create(model=model, prompt="hi")
        assert done.choices[0].text.startswith("Hello from")
        stream = await oa.completions.create(model=model, prompt="hi", stream=True)
        assert "".join([chunk.choices[0].text async for chunk in stream if chunk.choices]) == done.choices[0].text
    vectors = await oa.embeddings.create(model="all-minilm", input=["a", "b"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 8

    client = ollama.AsyncClient(host=url)
    reply = await client.chat(model="mistral-7b-instruct", messages=HELLO)
    assert "OpenAI-compatible server" in reply.message.content
    parts = [part.message.content async for part in await client.chat(model="llama3.2", messages=HELLO, stream=True)]
    assert "simulated Ollama" in "".join(parts) and len(parts) > 3
    assert len((await client.embed(model="all-minilm", input="hi")).embeddings) == 1
    names = {m.model for m in (await client.list()).models}
    assert {"llama3.2:latest", "qwen3:0.6b", "mistral-7b-instruct"} <= names
