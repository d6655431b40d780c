"""What the ``nomyo`` command tests share: running ``python -m nomyo`` (to completion, or
as a long-running :class:`Server`), the OpenAI error shape, and the ``serve-dev`` fixtures
(``router``, ``auth_router``, ``certs``, ``tls_router``) and ``unused_port``.

A test module takes a fixture by importing it under its own name
(``from cli_support import router as router``): the plain HTTP ``router`` here is not
conftest's in-process ``router``.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from nomyo.testing import DevCertificates, make_test_certificates

__all__ = [
    "API_KEY",
    "NOMYO",
    "NO_NETWORK",
    "PASSWORD",
    "RunReference",
    "Server",
    "assert_openai_error",
    "auth_router",
    "certs",
    "chat_body",
    "cli",
    "cli_env",
    "nomyo",
    "router",
    "tls_router",
    "unused_port",
]

#: the conftest fixture: run_reference(*driver_args) -> (exit code, JSON output)
RunReference = Callable[..., tuple[int, dict[str, Any]]]
PASSWORD = "correct horse ✓ battery"
API_KEY = "dev-secret-key-4711"
NO_NETWORK = {
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "ALL_PROXY": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "all_proxy": "http://127.0.0.1:9",
}
_DROPPED_ENV = ("NO_PROXY", "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR")


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("NOMYO_") and k not in _DROPPED_ENV
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def nomyo(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m nomyo ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "nomyo", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env=cli_env(env),
        timeout=timeout,
        check=False,
    )


class Server:
    """A long-running ``nomyo`` subprocess (serve-dev or proxy) that prints its URL."""

    def __init__(self, *args: str, log: Path) -> None:
        self.log = log
        self._stderr: IO[str] = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nomyo", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=cli_env(),
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self.url = self._wait_for_url()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put("")

    def _wait_for_url(self) -> str:
        return self.read_until(r"listening on (https?://\S+)")

    def read_until(self, pattern: str) -> str:
        """The first group of the first output line matching ``pattern`` (waits for it)."""
        for line in self.stdout:
            match = re.search(pattern, line)
            if match:
                return match.group(1)
        while True:
            try:
                line = self.lines.get(timeout=60)
            except queue.Empty:
                self.proc.kill()
                raise AssertionError(f"no {pattern!r}; stderr: {self.log.read_text()}") from None
            if not line:
                self.proc.wait(10)
                raise AssertionError(
                    f"exited {self.proc.returncode} before {pattern!r}: {self.log.read_text()}"
                )
            self.stdout.append(line)
            match = re.search(pattern, line)
            if match:
                return match.group(1)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._stderr.close()
        return code


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``nomyo serve-dev`` over plain HTTP, echo backend, no API key."""
    log = tmp_path_factory.mktemp("serve-dev") / "stderr.log"
    server = Server("serve-dev", "--port", "0", "--key-bits", "2048", log=log)
    yield server
    assert server.stop(signal.SIGINT) == 130, log.read_text()  # Ctrl-C: "130 interrupted"


@pytest.fixture(scope="module")
def auth_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``nomyo serve-dev`` that requires an API key."""
    log = tmp_path_factory.mktemp("serve-dev-auth") / "stderr.log"
    server = Server("serve-dev", "--port", "0", "--key-bits", "2048", "--api-key", API_KEY, log=log)
    yield server
    assert server.stop() == 0, log.read_text()
    assert API_KEY not in log.read_text()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    return make_test_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_router(
    tmp_path_factory: pytest.TempPathFactory, certs: DevCertificates
) -> Iterator[Server]:
    """``nomyo serve-dev`` over HTTPS with a throwaway CA."""
    log = tmp_path_factory.mktemp("serve-dev-tls") / "stderr.log"
    server = Server(
        "serve-dev",
        "--port",
        "0",
        "--key-bits",
        "2048",
        "--tls-cert",
        certs.cert,
        "--tls-key",
        certs.key,
        log=log,
    )
    assert server.url.startswith("https://127.0.0.1:")
    yield server
    assert server.stop() == 0, log.read_text()


def chat_body(text: str = "hello proxy", **extra: Any) -> dict[str, Any]:
    return {"model": "test-model", "messages": [{"role": "user", "content": text}], **extra}


def assert_openai_error(response: httpx.Response, status: int, kind: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if kind is not None:
        assert error["type"] == kind


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


NOMYO = [sys.executable, "-m", "nomyo"]


def cli(
    *args: str, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "NO_PROXY": "*", **(env or {})}
    full_env.pop("NOMYO_BASE_URL", None)
    return subprocess.run(
        [*NOMYO, *args], capture_output=True, text=True, timeout=120, env=full_env, input=stdin
    )
