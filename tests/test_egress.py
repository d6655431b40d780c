"""``nomyo run`` for programs on the Responses and Messages APIs, and its egress guard.

The real CLI runs child programs on the real libraries: pydantic-ai's default ``openai:``
model and openai-agents' default model (both on the Responses API), the ``anthropic`` SDK.
The guard is shown against a real local HTTP server standing for "somewhere else".
"""

from __future__ import annotations

import asyncio
import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import cli_env

from nomyo._egress import Destination, EgressGuard, parse_destination
from nomyo.testing import DevRouter, RouterThread

FETCH = """\
import sys, urllib.request
import httpx

for attempt in range(2):
    got = httpx.get(sys.argv[1])
    print("httpx:", got.status_code, got.text.strip()[:20])
try:
    print("urllib:", urllib.request.urlopen(sys.argv[1]).read().decode().strip()[:20])
except Exception as exc:
    print("urllib refused:", exc)
"""
CHILD = (
    """\
import anthropic, openai

reply = openai.OpenAI(max_retries=0).responses.create(model="m", input="via responses")
print("responses:", reply.output_text)
message = anthropic.Anthropic(max_retries=0).messages.create(
    model="m", max_tokens=16, messages=[{"role": "user", "content": "via messages"}]
)
print("messages:", message.content[0].text)
"""
    + FETCH
)

PYDANTIC_AI = """\
from pydantic_ai import Agent

result = Agent("openai:gpt-4o-mini", instructions="be brief").run_sync("hello pydantic")
print("pydantic-ai:", result.output, result.response.provider_response_id[:5])
"""

OPENAI_AGENTS = """\
from agents import Agent, Runner, function_tool
from agents.tracing.processors import default_exporter

default_exporter().max_retries = 0  # its trace upload is refused: do not wait for retries

@function_tool
def get_weather(city: str) -> str:
    \"\"\"The weather in a city.\"\"\"
    return f"sunny in {city}"

result = Runner.run_sync(Agent(name="a", instructions="brief", tools=[get_weather]), "Oslo")
print("agents:", result.final_output, result.raw_responses[0].response_id[:5])
"""


class _Outside(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"outside world\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def outside() -> Iterator[str]:
    """A real HTTP server on loopback, standing for a destination outside the proxy."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Outside)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def router() -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        yield handle


def run(
    router: RouterThread,
    tmp_path: Path,
    script: str,
    *options: str,
    argument: str = "",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``nomyo run OPTIONS -- python SCRIPT ARGUMENT``."""
    child = tmp_path / "child.py"
    child.write_text(script)
    command = [sys.executable, "-m", "nomyo", "run", "--base-url", router.url, "--allow-http"]
    return subprocess.run(
        [*command, *options, "--", sys.executable, str(child), argument],
        capture_output=True,
        text=True,
        env=cli_env(env),
        timeout=120,
        check=False,
    )


def test_the_guard_refuses_and_reports_once(
    router: RouterThread, tmp_path: Path, outside: str
) -> None:
    url = f"http://{outside}/"
    guarded = run(router, tmp_path, CHILD, argument=url)
    assert guarded.returncode == 0, guarded.stderr
    assert "responses: via responses" in guarded.stdout
    assert "messages: via messages" in guarded.stdout  # ANTHROPIC_BASE_URL/_API_KEY
    assert guarded.stdout.count("httpx: 403") == 2
    assert "urllib refused: HTTP Error 403" in guarded.stdout
    assert "outside world" not in guarded.stdout
    reports = [line for line in guarded.stderr.splitlines() if "refused a connection" in line]
    assert len(reports) == 1, guarded.stderr  # once per host, however often it is tried
    assert f"--allow-egress {outside}" in reports[0]


def test_the_guard_allows_what_is_named(router: RouterThread, tmp_path: Path, outside: str) -> None:
    url = f"http://{outside}/"
    allowed = run(router, tmp_path, FETCH, "--allow-egress", outside, argument=url)
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.count("httpx: 200 outside world") == 2
    assert "urllib: outside world" in allowed.stdout
    assert "refused" not in allowed.stderr
    off = run(router, tmp_path, FETCH, "--egress", "allow", argument=url)
    assert off.returncode == 0 and off.stdout.count("httpx: 200 outside world") == 2


def test_bad_allow_egress_is_a_usage_error(router: RouterThread, tmp_path: Path) -> None:
    bad = run(router, tmp_path, "", "--allow-egress", "http://x/")
    assert bad.returncode == 2 and "--allow-egress" in bad.stderr


def test_pydantic_ais_default_openai_model(router: RouterThread, tmp_path: Path) -> None:
    result = run(router, tmp_path, PYDANTIC_AI)
    assert result.returncode == 0, result.stderr
    assert "pydantic-ai: hello pydantic resp_" in result.stdout  # the Responses API


def test_openai_agents_default_model_and_its_trace_upload(
    router: RouterThread, tmp_path: Path
) -> None:
    result = run(router, tmp_path, OPENAI_AGENTS)
    assert result.returncode == 0, result.stderr
    assert "agents: sunny in Oslo resp_" in result.stdout  # a tool call and its output
    # The SDK uploads traces (prompts and outputs) to OpenAI: the guard refuses it.
    assert "refused a connection to api.openai.com:443" in result.stderr


def test_the_proxy_keeps_the_native_engine_when_no_proxy_covers_the_router(
    router: RouterThread, tmp_path: Path
) -> None:
    dead = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    script = "import openai; print(openai.OpenAI(max_retries=0).responses.create("
    script += "model='m', input='native').output_text)"
    covered = run(router, tmp_path, script, "-vv", env={**dead, "NO_PROXY": "127.0.0.1"})
    assert covered.returncode == 0, covered.stderr
    assert "native" in covered.stdout
    assert "httpcore" not in covered.stderr  # -vv logs httpcore's lines when httpx is used


def test_the_guard_tunnels_through_the_users_own_proxy() -> None:
    async def main() -> tuple[bytes, bytes, dict[str, int]]:
        echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
        port = echo.sockets[0].getsockname()[1]
        # The user's proxy: another guard, which refuses this port.
        async with EgressGuard(report=lambda line: None) as users:
            env = {"https_proxy": users.url}
            async with EgressGuard([Destination("127.0.0.1", port)], environ=env) as guard:
                refused = await _connect(guard.port, port)
                users.allowed.append(Destination("127.0.0.1", port))
                through = await _connect(guard.port, port)
        echo.close()
        return refused, through, users.refused

    refused, through, seen = asyncio.run(main())
    assert refused.startswith(b"HTTP/1.1 502")  # the user's proxy said no
    assert list(seen) == [next(iter(seen))] and seen[next(iter(seen))] == 1
    assert through == b"HTTP/1.1 200 Connection established\r\n\r\nping"


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.read(4))
    await writer.drain()
    writer.close()


async def _connect(guard_port: int, port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", guard_port)
    writer.write(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 200 " in head:
        writer.write(b"ping")
    data = head + await reader.read()
    writer.close()
    return data


def test_destinations() -> None:
    assert parse_destination("API.example.com:443") == Destination("api.example.com", 443)
    assert parse_destination("[::1]") == Destination("::1")
    assert Destination("::1").allows("[::1]", 8080) and not Destination("a", 1).allows("a", 2)
    for bad in ("http://x/", "x:port", "", "x/y"):
        with pytest.raises(ValueError):
            parse_destination(bad)
