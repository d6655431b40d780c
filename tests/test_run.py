"""``nomyo run -- CMD``: a program built on the OpenAI SDK, encrypted without a code change.

Each test runs the real CLI as a subprocess in front of the development router, with a
child program that uses the official ``openai`` SDK exactly as it would against OpenAI
(it only reads ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` from its environment).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import cli_env

from nomyo.testing import DevRouter, RouterThread

NOMYO_RUN = (sys.executable, "-m", "nomyo", "run", "--base-url")
CHILD = """\
import os, sys
import httpx, openai

client = openai.OpenAI(max_retries=0)  # OPENAI_BASE_URL and OPENAI_API_KEY from nomyo run
assert os.environ["OPENAI_API_BASE"] == os.environ["OPENAI_BASE_URL"]
reply = client.chat.completions.create(
    model="m", messages=[{"role": "user", "content": "from a child program"}]
)
print("reply:", reply.choices[0].message.content)
stream = client.chat.completions.create(
    model="m", messages=[{"role": "user", "content": "streamed child"}], stream=True
)
print("stream:", "".join(c.choices[0].delta.content or "" for c in stream if c.choices))
# The proxy is private: a request without its token is refused.
anonymous = httpx.post(
    os.environ["OPENAI_BASE_URL"] + "/chat/completions",
    json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
)
print("anonymous:", anonymous.status_code)
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
"""

WAITS_FOR_TERM = """\
import signal, sys, time

def stop(signum, frame):
    print("child got", signal.Signals(signum).name, flush=True)
    sys.exit(42)

signal.signal(signal.SIGTERM, stop)
print("child ready", flush=True)
time.sleep(60)
sys.exit(1)
"""


@pytest.fixture(scope="module")
def router() -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        yield handle


def run(router: RouterThread, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NOMYO_RUN, router.url, "--allow-http", "--", *command],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
        check=False,
    )


def test_a_child_on_the_sdk_is_encrypted_without_a_code_change(
    router: RouterThread, tmp_path: Path
) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    before = router.router.secure_requests
    result = run(router, sys.executable, str(script))
    assert result.returncode == 0, result.stderr
    assert "reply: from a child program" in result.stdout
    assert "stream: streamed child" in result.stdout
    assert "anonymous: 401" in result.stdout
    # Both completions went through the router's secure endpoint.
    assert router.router.secure_requests - before == 2


def test_the_childs_exit_status_is_ours(router: RouterThread, tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    failed = run(router, sys.executable, str(script), "3")
    assert failed.returncode == 3, failed.stderr
    assert "reply: from a child program" in failed.stdout
    missing = run(router, "nomyo-no-such-command-4711")
    assert missing.returncode == 127
    assert "command not found" in missing.stderr
    nothing = run(router)
    assert nothing.returncode == 2


def test_signals_reach_the_child(router: RouterThread, tmp_path: Path) -> None:
    script = tmp_path / "waits.py"
    script.write_text(WAITS_FOR_TERM)
    proc = subprocess.Popen(
        [*NOMYO_RUN, router.url, "--allow-http", "--", sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        line = proc.stdout.readline()
        assert line.strip() == "child ready" or time.monotonic() > deadline, line
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "child got SIGTERM" in out, err
    assert proc.returncode == 42, err
