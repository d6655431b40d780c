"""Hardened memory, proven without CAP_IPC_LOCK under real RLIMIT_MEMLOCK limits.

Each client runs in a subprocess whose memlock limit is set with ``setrlimit`` before it
starts and, when the tests run as root, without ``CAP_IPC_LOCK`` (``setpriv`` drops it from
the bounding and inheritable sets, so the new program does not get it in its permitted or
effective set either). The development router runs in this process and counts what it
receives. The core-dump tests dump a live process (with ``gcore``, and by the kernel on
SIGABRT) that holds one canary only in a secret buffer and another in an ordinary Python
object: the control must be in the dump, no 16-byte piece of the secret may be.
"""

from __future__ import annotations

import http.server
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest

import nomyo
from nomyo import _core
from nomyo._exceptions import SecureMemoryError, SecurityError
from nomyo._memory import secure_memory_mode
from nomyo.cli.doctor import diagnose
from nomyo.testing import DevRouter, RouterThread

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="memlock limits and capabilities are Linux's"
)

SMALL = 64 << 10  # a common container default (ulimit -l 64)
BIG_REQUEST = 3_000_000  # the 3 MB request

# One chat completion in a fresh interpreter; prints what happened and the reports as JSON.
CLIENT = r"""
import asyncio, json, os, sys
import nomyo
from nomyo._exceptions import SecureMemoryError, SecurityError

url, mode, size, flavour = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
secure = {"require": "require", "best_effort": True, "off": False}[mode]
messages = [{"role": "user", "content": "x" * size}]
out = {"before": nomyo.get_memory_protection_info()}
try:
    if flavour == "sync":
        with nomyo.SyncSecureChatCompletion(
            base_url=url, allow_http=True, secure_memory=secure
        ) as chat:
            reply = chat.create("m", messages)
    else:
        async def main():
            async with nomyo.SecureChatCompletion(
                base_url=url, allow_http=True, secure_memory=secure
            ) as chat:
                return await chat.create("m", messages)
        reply = asyncio.run(main())
    out["ok"] = True
    out["reply_id"] = reply["id"]
except SecureMemoryError as exc:
    out.update(
        ok=False, error=type(exc).__name__, message=str(exc), needed=exc.needed,
        limit=exc.limit, locked=exc.locked, security_error=isinstance(exc, SecurityError),
    )
out["after"] = nomyo.get_memory_protection_info()
print(json.dumps(out))
"""


def _caps_dropped_prefix() -> list[str]:
    """The command prefix that runs a program without CAP_IPC_LOCK (empty when not root)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop CAP_IPC_LOCK as root")
    return [setpriv, "--bounding-set=-ipc_lock", "--inh-caps=-ipc_lock"]


def run_limited(
    args: list[str], memlock: int, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``args`` without CAP_IPC_LOCK under a soft and hard RLIMIT_MEMLOCK of ``memlock``."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (memlock, memlock))

    return subprocess.run(
        [*_caps_dropped_prefix(), *args],
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def sufficient_limit(size: int) -> int:
    """A memlock limit that holds a request of ``size`` bytes and its reply (skip if the hard
    limit here is lower: an unprivileged process cannot raise it)."""
    need = _core.secure_memory_needed(size) + 2 * size
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"the hard memlock limit ({hard} bytes) is below {need} bytes")
    return need if hard == resource.RLIM_INFINITY else hard


def chat(
    router: RouterThread,
    mode: str,
    size: int,
    memlock: int,
    flavour: str = "async",
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One request from a limited subprocess; asserts it ran without CAP_IPC_LOCK."""
    proc = run_limited(
        [sys.executable, "-c", CLIENT, router.url, mode, str(size), flavour], memlock, env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["before"]["has_ipc_lock"] is False
    assert result["before"]["memlock_limit"] == memlock
    return result


NOMYO = [sys.executable, "-m", "nomyo"]

FLAVOURS = [
    pytest.param("async", {}, id="async-native"),
    pytest.param("sync", {}, id="sync-native"),
    pytest.param("async", {"NOMYO_TRANSPORT": "httpx"}, id="async-httpx"),
]


def test_best_effort_completes_under_a_small_limit_and_says_partial(router: RouterThread) -> None:
    result = chat(router, "best_effort", BIG_REQUEST, SMALL)
    assert result["ok"] is True
    before, after = result["before"], result["after"]
    assert before["protection_level"] == "full"  # nothing was held unlocked yet
    assert before["secret_buffers_not_locked"] == 0
    assert before["locked_bytes"] == 0  # the probe page is not counted
    assert before["lockable_bytes"] == SMALL
    assert after["protection_level"] == "partial"
    assert after["secret_buffers_not_locked"] > 0
    assert after["secret_bytes_not_locked"] >= BIG_REQUEST
    assert after["lock_failures"] > 0
    assert after["require_refusals"] == 0
    assert after["largest_lockable_request"] < BIG_REQUEST
    # The reference's keys keep their meaning: a probe page can still be locked.
    assert after["has_memory_locking"] is True


@pytest.mark.parametrize(("flavour", "env"), FLAVOURS)
def test_require_refuses_before_sending(
    router: RouterThread, flavour: str, env: dict[str, str]
) -> None:
    sent = router.router.secure_requests
    result = chat(router, "require", BIG_REQUEST, SMALL, flavour, env)
    assert result["ok"] is False
    assert result["error"] == "SecureMemoryError"
    assert result["security_error"] is True
    assert result["limit"] == SMALL
    assert result["needed"] > 0
    assert result["needed"] + result["locked"] > SMALL
    message = result["message"]
    assert f"{result['needed']} bytes" in message
    assert f"{SMALL} bytes" in message
    assert "ulimit -l" in message and "memlock" in message
    assert "xxxx" not in message  # no plaintext in the error
    # Nothing reached the router, and nothing was held unlocked.
    assert router.router.secure_requests == sent
    after = result["after"]
    assert after["require_refusals"] >= 1
    assert after["secret_buffers_not_locked"] == 0
    assert after["protection_level"] == "full"


def test_require_serves_a_request_that_fits_a_small_limit(router: RouterThread) -> None:
    sent = router.router.secure_requests
    result = chat(router, "require", 1000, SMALL)
    assert result["ok"] is True, result
    assert router.router.secure_requests == sent + 1
    after = result["after"]
    assert after["secret_buffers_locked"] > 0
    assert after["secret_buffers_not_locked"] == 0
    assert after["require_refusals"] == 0
    assert after["protection_level"] == "full"


class _BigReplyUpstream(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible upstream whose completion is BIG_REQUEST bytes of text."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps(
            {
                "id": "chatcmpl-big",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "y" * BIG_REQUEST},
                        "finish_reason": "stop",
                    }
                ],
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("flavour", "env"), FLAVOURS)
def test_require_refuses_to_open_a_reply_too_large_to_lock(
    flavour: str, env: dict[str, str]
) -> None:
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BigReplyUpstream)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{upstream.server_address[1]}/v1"
        with DevRouter(key_bits=2048, api_keys=None, upstream=base).run_in_thread() as big:
            result = chat(big, "require", 100, SMALL, flavour, env)
            # The small request was sent; the reply's plaintext buffer could not be locked,
            # so the reply was refused before it was decrypted into memory.
            assert big.router.secure_requests == 1
    finally:
        upstream.shutdown()
        upstream.server_close()
    assert result["ok"] is False and result["error"] == "SecureMemoryError", result
    assert result["needed"] >= BIG_REQUEST
    after = result["after"]
    assert after["require_refusals"] >= 1
    assert after["secret_buffers_not_locked"] == 0
    assert after["protection_level"] == "full"


def test_the_environment_forces_require(router: RouterThread) -> None:
    sent = router.router.secure_requests
    result = chat(router, "best_effort", BIG_REQUEST, SMALL, env={"NOMYO_SECURE_MEMORY": "require"})
    assert result["ok"] is False and result["error"] == "SecureMemoryError"
    assert router.router.secure_requests == sent


@pytest.mark.parametrize("mode", ["best_effort", "require"])
def test_both_modes_work_with_a_sufficient_limit(router: RouterThread, mode: str) -> None:
    size = 1 << 20
    limit = sufficient_limit(size)
    sent = router.router.secure_requests
    result = chat(router, mode, size, limit)
    assert result["ok"] is True, result
    assert router.router.secure_requests == sent + 1
    after = result["after"]
    assert after["protection_level"] == "full"
    assert after["secret_buffers_not_locked"] == 0
    assert after["lock_failures"] == 0
    assert after["secret_bytes_locked"] >= size
    assert after["require_refusals"] == 0


def test_secure_memory_argument_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOMYO_SECURE_MEMORY", raising=False)
    assert secure_memory_mode(True) == "best_effort"
    assert secure_memory_mode(False) == "off"
    assert secure_memory_mode("require") == "require"
    with pytest.raises(nomyo.ConfigurationError, match="secure_memory"):
        secure_memory_mode("yes")
    monkeypatch.setenv("NOMYO_SECURE_MEMORY", "require")
    assert secure_memory_mode(False) == "require"
    client = nomyo.SecureCompletionClient("https://example.invalid")
    assert client.secure_memory_mode == "require"
    monkeypatch.setenv("NOMYO_SECURE_MEMORY", "sometimes")
    with pytest.raises(nomyo.ConfigurationError, match="NOMYO_SECURE_MEMORY"):
        secure_memory_mode(True)


def test_native_policy_names_are_checked() -> None:
    with pytest.raises(ValueError, match="secure_memory"):
        _core.dumps({"a": 1}, secure_memory="always")
    buf = _core.dumps({"a": 1}, secure_memory="off")
    assert bytes(buf) == b'{"a":1}'
    assert not buf.locked  # not locked by choice
    assert issubclass(SecureMemoryError, SecurityError)


# -- the command line -----------------------------------------------------------------------


@pytest.mark.parametrize(("size", "code"), [(1000, 0), (BIG_REQUEST, 4)])
def test_chat_secure_memory_require(size: int, code: int) -> None:
    proc = subprocess.run(
        [*_caps_dropped_prefix(), *NOMYO, "chat", "--local", "--secure-memory", "require"],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_MEMLOCK, (SMALL, SMALL)),
        input="hello " + "x" * size,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == code, proc.stderr[-2000:]
    if code:
        assert "secure_memory='require'" in proc.stderr and "ulimit -l" in proc.stderr
        assert "xxxx" not in proc.stderr
    else:
        assert "hello" in proc.stdout


@pytest.mark.parametrize(("size", "refused"), [(1000, False), (BIG_REQUEST, True)])
def test_proxy_secure_memory_require(router: RouterThread, size: int, refused: bool) -> None:
    """`nomyo proxy --secure-memory require` under 64 KiB: a small request is served, a
    large one is answered with an error and never reaches the router."""
    proxy = subprocess.Popen(
        [
            *_caps_dropped_prefix(),
            *NOMYO,
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--base-url",
            router.url,
            "--allow-http",
            "--secure-memory",
            "require",
        ],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_MEMLOCK, (SMALL, SMALL)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proxy.stdout is not None
    try:
        line = proxy.stdout.readline()
        assert "listening on http://" in line, line + (proxy.stderr.read() if proxy.stderr else "")
        base = line.split("listening on ", 1)[1].split()[0]
        sent = router.router.secure_requests
        response = httpx.post(
            f"{base}/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "x" * size}]},
            timeout=60,
        )
        if refused:
            assert response.status_code == 503, response.text[:500]
            assert response.json()["error"]["code"] == "secure_memory"
            assert "xxxx" not in response.text
            assert router.router.secure_requests == sent
        else:
            assert response.status_code == 200, response.text[:500]
            assert router.router.secure_requests == sent + 1
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)


def test_secure_memory_option_on_proxy_and_run() -> None:
    for command in ("proxy", "run"):
        proc = subprocess.run(
            [*NOMYO, command, "--help"], capture_output=True, text=True, timeout=60, check=False
        )
        assert proc.returncode == 0
        assert "--secure-memory {require,best-effort,off}" in proc.stdout


# -- nomyo doctor ---------------------------------------------------------------------------

DOCTOR = [sys.executable, "-m", "nomyo", "doctor"]


def test_doctor_fails_when_require_would_fail() -> None:
    proc = run_limited([*DOCTOR, "--size", str(BIG_REQUEST)], SMALL)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "soft 64 KiB (65536 bytes)" in out
    assert "CAP_IPC_LOCK: NO" in out
    assert "REFUSED" in out
    assert "advice: memlock limit 64 KiB (65536 bytes) is too small" in out
    assert "limits.conf" in out and "LimitMEMLOCK=infinity" in out
    assert "docker run --ulimit memlock=-1:-1" in out and "Kubernetes" in out
    assert "RSA private keys live on its heap" in out  # said, not hidden


def test_doctor_passes_with_a_sufficient_limit() -> None:
    size = 1 << 20
    proc = run_limited([*DOCTOR, "--size", str(size), "--json"], sufficient_limit(size))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["require_ok"] is True
    assert report["memory"]["has_ipc_lock"] is False
    assert report["memory"]["largest_lockable_request"] >= size
    assert report["crypto"]["library"] == "aws-lc"
    # No advice about the memlock limit when require holds the size.
    proc = run_limited([*DOCTOR, "--size", str(size)], sufficient_limit(size))
    assert proc.returncode == 0 and "memlock limit" not in proc.stdout.split("advice:", 1)[-1]


def test_doctor_report_in_process() -> None:
    report = diagnose(1000)
    assert report["require_size"] == 1000
    assert report["require_needs"] == _core.secure_memory_needed(1000) > 4000
    assert report["dumpable"] in (0, 1, 2)
    assert set(report) >= {"core_dump_limit", "trust_store", "proxy_variables", "crypto"}


def test_doctor_redacts_proxy_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://user:hunter2@proxy.example:3128")
    report = diagnose(0)
    assert report["proxy_variables"]["HTTPS_PROXY"] == "http://user:***@proxy.example:3128"
    assert "hunter2" not in json.dumps(report)


# -- core dumps -----------------------------------------------------------------------------

# Holds one canary only in a secret buffer (read from the pipe straight into a bytearray,
# copied into secret memory, the bytearray wiped) and one in an ordinary bytes object.
HOLDER = r"""
import os, resource, sys
from nomyo import _core
n = int(sys.argv[1])
if sys.argv[2] == "kernel":  # let the kernel write a core file when SIGABRT arrives
    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
secret = bytearray(n)
view = memoryview(secret)
got = 0
while got < n:
    got += os.readv(0, [view[got:]])
view.release()
buf = _core.SecretBuffer(secret)  # copies, then wipes the bytearray
assert not any(secret)
control = os.read(0, 32)
assert len(control) == 32
print("ready", buf.locked, buf.dump_excluded, flush=True)
os.read(0, 1)  # until the parent closes the pipe
"""


def _gcore(pid: int, where: Path) -> None:
    gcore = shutil.which("gcore")
    if gcore is None:
        pytest.skip("gcore (Debian's gdb) is not installed: run scripts/install-system-deps.sh")
    proc = subprocess.run(
        [gcore, "-o", str(where / "core"), str(pid)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0 or not list(where.glob("core*")):
        if "ptrace" in proc.stderr or "Operation not permitted" in proc.stderr:
            pytest.skip(f"the kernel forbids ptrace here: {proc.stderr.strip()[-300:]}")
        pytest.fail(f"gcore failed: {proc.stdout[-1000:]} {proc.stderr[-1000:]}")


def _kernel_dump_possible() -> None:
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    if pattern.startswith("|") or "/" in pattern:
        pytest.skip(f"core files go to {pattern!r} here, not to the process's directory")
    if resource.getrlimit(resource.RLIMIT_CORE)[1] == 0:
        pytest.skip("the hard RLIMIT_CORE is 0: the kernel writes no core file")


# 32 bytes: an AES key's size, copied through vector registers (which lazy symbol binding
# saves to the stack unless the native code clears them); 4096: a page of plaintext.
@pytest.mark.parametrize("size", [32, 4096])
@pytest.mark.parametrize("dumper", ["gcore", "kernel"])
def test_core_dump_holds_the_control_canary_but_not_the_secret(
    tmp_path: Path, dumper: str, size: int
) -> None:
    if dumper == "kernel":
        _kernel_dump_possible()
    secret, control = os.urandom(size), os.urandom(32)
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(size), dumper],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        child.stdin.write(secret + control)
        child.stdin.flush()
        line = child.stdout.readline().decode().split()
        assert line == ["ready", "True", "True"], line
        if dumper == "gcore":
            _gcore(child.pid, tmp_path)
        else:
            child.send_signal(signal.SIGABRT)
            child.wait(timeout=60)
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    dumps = list(tmp_path.glob("core*"))
    assert dumps, f"no core file in {tmp_path} (exit {child.returncode})"
    data = dumps[0].read_bytes()
    assert len(data) > 1 << 20
    assert control in data, "the control canary in a Python object must be in the dump"
    # Not the canary, and not any 16-byte piece of it.
    leaked = [i for i in range(0, size, 16) if secret[i : i + 16] in data]
    assert not leaked, f"pieces of the secret buffer's canary are in the dump at {leaked[:8]}"


def test_wipe_on_fork_reported() -> None:
    info = _core.memory_protection_info()
    assert isinstance(info["has_wipe_on_fork"], bool)
    if sys.platform == "linux":
        assert info["has_wipe_on_fork"] is True


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_forked_child_sees_zeros() -> None:
    if not _core.memory_protection_info()["has_wipe_on_fork"]:
        pytest.skip("MADV_WIPEONFORK unavailable")
    secret = b"top secret plaintext"
    buf = _core.SecretBuffer(secret)
    r, w = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.write(w, bytes(buf))
        finally:
            os._exit(0)
    os.close(w)
    child = b""
    while chunk := os.read(r, 4096):
        child += chunk
    os.close(r)
    os.waitpid(pid, 0)
    assert bytes(buf) == secret
    assert child == b"\0" * len(secret)
