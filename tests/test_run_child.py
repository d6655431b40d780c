"""``nomyo run``'s child (second security review, findings 1 and 2; issue 24).

1. After ``kill -9`` of ``nomyo run`` the child kept sending its prompts and the proxy token
   to the freed port, where another local user received them. Now the child dies with
   ``nomyo run`` (Linux: parent-death signal, armed before exec and checked against a parent
   that already died), and what it leaves running ends when ``nomyo run`` exits.
2. The child inherited ``NOMYO_API_KEY``, ``NOMYO_KEY_PASSWORD``, ``NOMYO_PROXY_TOKEN`` and
   ``NOMYO_BASE_URL``. Now they are withheld unless ``--pass-env`` hands one over.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import cli_env
from other_user import as_nobody, nobody_runs_this_python

from nomyo.cli import _tether
from nomyo.cli._child import WITHHELD_VARIABLES, child_environment
from nomyo.testing import DevRouter, RouterThread

linux = pytest.mark.skipif(not _tether.SUPPORTED, reason="PR_SET_PDEATHSIG is Linux only")

CHATTY = """\
import os, sys, time
import httpx

url = os.environ["OPENAI_BASE_URL"]
print(os.getpid(), url, flush=True)
headers = {"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]}
body = {"model": "m", "messages": [{"role": "user", "content": "PLAINTEXT PROMPT 0"}]}
while True:
    try:
        httpx.post(url + "/chat/completions", json=body, headers=headers, timeout=1)
    except httpx.HTTPError:
        pass
    time.sleep(0.05)
"""

LEAVES_A_DAEMON = """\
import os, subprocess, sys
daemon = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(300)"],
    start_new_session=True,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
)
print(daemon.pid, flush=True)
"""

PRINTS_ENV = """\
import json, os
print(json.dumps({k: os.environ.get(k) for k in %r}))
"""


@pytest.fixture(scope="module")
def router() -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        yield handle


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that is not there counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :][:1] not in (b"Z", b"X")


def wait_dead(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def nomyo_run(router: RouterThread, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "nomyo", "run", "--base-url", router.url, "--allow-http", *args,
    ]  # fmt: skip


def listen_as_another_user(port: int, seconds: float) -> bytes:
    """What a stranger who binds ``port`` receives (as nobody when we are root)."""
    code = (
        "import socket, sys\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('127.0.0.1', {port})); s.listen(16); s.settimeout({seconds})\n"
        "got = b''\n"
        "try:\n"
        "    while True:\n"
        "        c, _ = s.accept(); c.settimeout(1)\n"
        "        try: got += c.recv(65536)\n"
        "        except OSError: pass\n"
        "except OSError:\n"
        "    pass\n"
        "sys.stdout.buffer.write(got)\n"
    )
    command = [sys.executable, "-c", code]
    if nobody_runs_this_python():  # else a process of ours stands in for the stranger
        command = as_nobody(*command)
    done = subprocess.run(command, capture_output=True, timeout=seconds + 30, check=True)
    return done.stdout


@linux
def test_the_child_dies_with_a_killed_nomyo_run(router: RouterThread, tmp_path: Path) -> None:
    """The review's replay: kill -9 nomyo run, bind its port as another user, listen."""
    script = tmp_path / "chatty.py"
    script.write_text(CHATTY)
    proc = subprocess.Popen(
        [*nomyo_run(router), "--", sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=cli_env(),
    )
    child = 0
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().split()
        child, port = int(first[0]), int(first[1].rsplit(":", 1)[1].split("/")[0])
        time.sleep(0.3)  # it is sending
        assert alive(child)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert wait_dead(child), "the child outlived nomyo run"
        received = listen_as_another_user(port, 2.0)
        assert b"PLAINTEXT PROMPT" not in received
        assert b"nomyo-run-" not in received
    finally:
        if proc.poll() is None:
            proc.kill()
        if child and alive(child):
            os.kill(child, signal.SIGKILL)


@linux
def test_a_child_is_not_started_when_nomyo_run_died_first(tmp_path: Path) -> None:
    """The race: nomyo run dies before the child armed its parent-death signal."""
    marker = tmp_path / "ran"
    touch = shutil.which("touch")
    assert touch is not None
    not_our_parent = 1
    argv = _tether.launch_argv(touch, ["touch", str(marker)], parent=not_our_parent)
    done = subprocess.run(argv, capture_output=True, timeout=60)
    assert done.returncode == _tether.EXIT_ORPHANED
    assert not marker.exists()
    argv = _tether.launch_argv(touch, ["touch", str(marker)])  # our own pid: runs
    assert subprocess.run(argv, timeout=60).returncode == 0
    assert marker.exists()


@linux
def test_what_the_child_leaves_running_ends_with_nomyo_run(
    router: RouterThread, tmp_path: Path
) -> None:
    script = tmp_path / "daemon.py"
    script.write_text(LEAVES_A_DAEMON)
    done = subprocess.run(
        [*nomyo_run(router), "--", sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    daemon = int(done.stdout.split()[0])
    try:
        assert wait_dead(daemon), "a daemon of the child outlived nomyo run"
    finally:
        if alive(daemon):
            os.kill(daemon, signal.SIGKILL)


def test_the_child_gets_no_router_secrets(router: RouterThread, tmp_path: Path) -> None:
    script = tmp_path / "env.py"
    script.write_text(PRINTS_ENV % (WITHHELD_VARIABLES,))
    secrets = {
        "NOMYO_API_KEY": "sk-router-key",
        "NOMYO_KEY_PASSWORD": "key password",
        "NOMYO_PROXY_TOKEN": "proxy token",
        "NOMYO_BASE_URL": router.url,
    }
    command = [sys.executable, "-m", "nomyo", "run", "--allow-http"]
    for extra, passed in (((), set()), (("--pass-env", "NOMYO_API_KEY"), {"NOMYO_API_KEY"})):
        done = subprocess.run(
            [*command, *extra, "--", sys.executable, str(script)],
            capture_output=True,
            text=True,
            env=cli_env(secrets),
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stdout)
        assert seen == {k: (secrets[k] if k in passed else None) for k in WITHHELD_VARIABLES}
    assert (
        "--pass-env"
        in subprocess.run(
            [*command, "--help"], capture_output=True, text=True, env=cli_env(), check=True
        ).stdout
    )


def test_child_environment_keeps_everything_else() -> None:
    parent = {"PATH": "/bin", "HOME": "/h", "NOMYO_LOG": "debug", "NOMYO_API_KEY": "k"}
    assert child_environment(parent) == {"PATH": "/bin", "HOME": "/h", "NOMYO_LOG": "debug"}
    assert child_environment(parent, ["NOMYO_API_KEY"]) == parent
    assert set(WITHHELD_VARIABLES) == {
        "NOMYO_API_KEY",
        "NOMYO_KEY_PASSWORD",
        "NOMYO_PROXY_TOKEN",
        "NOMYO_BASE_URL",
    }
