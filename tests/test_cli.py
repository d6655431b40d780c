"""The ``nomyo`` command, run as ``python -m nomyo`` subprocesses."""

from __future__ import annotations

import hashlib
import json
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
from cryptography.hazmat.primitives import serialization

from nomyo import _core
from nomyo._keys import load_private_key
from nomyo.testing import DevCertificates, DevRouter, RouterThread, make_test_certificates

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


@pytest.fixture(scope="module")
def proxy(router: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``nomyo proxy`` in front of the plain-HTTP dev router."""
    log = tmp_path_factory.mktemp("proxy") / "stderr.log"
    server = Server(
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--base-url",
        router.url,
        "--allow-http",
        "--model",
        "test-model",
        log=log,
    )
    yield server
    assert server.stop(signal.SIGINT) == 130, log.read_text()  # Ctrl-C: "130 interrupted"


def chat_body(text: str = "hello proxy", **extra: Any) -> dict[str, Any]:
    return {"model": "test-model", "messages": [{"role": "user", "content": text}], **extra}


def assert_openai_error(response: httpx.Response, status: int, kind: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if kind is not None:
        assert error["type"] == kind


# --- help and usage ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["chat"],
        ["proxy"],
        ["serve-dev"],
        ["keys"],
        ["keys", "generate"],
        ["keys", "show"],
        ["keys", "server-fingerprint"],
    ],
)
def test_help_on_every_subcommand(command: list[str]) -> None:
    result = nomyo(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: nomyo")


def test_usage_errors_exit_2() -> None:
    assert nomyo().returncode == 2
    assert nomyo("chat", "--bogus").returncode == 2
    assert nomyo("keys").returncode == 2
    empty = nomyo("chat", "--local", stdin="  \n")
    assert empty.returncode == 2
    assert "prompt is empty" in empty.stderr
    both = nomyo("chat", "--local", "--base-url", "https://example.invalid", "hi")
    assert both.returncode == 2
    assert nomyo("serve-dev", "--tls-cert", "x.pem").returncode == 2


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "nomyo"
    if not script.exists():
        pytest.skip("the nomyo console script is not installed next to this python")
    result = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, check=False, timeout=30
    )
    assert result.returncode == 0
    assert result.stdout.startswith("nomyo-rs ")


# --- chat --local ----------------------------------------------------------------------------


def test_chat_local_prints_the_echoed_reply() -> None:
    result = nomyo("chat", "--local", "hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello\n"
    summary = result.stderr.strip()
    assert len(summary.splitlines()) == 1
    assert "http://127.0.0.1:" in summary
    assert "tier standard" in summary
    assert re.search(r"server key sha256:[0-9a-f]{64}", summary)
    assert "TPM attestation absent" in summary


def test_chat_local_works_without_network() -> None:
    result = nomyo("chat", "--local", "offline hello", env=NO_NETWORK)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "offline hello\n"


def test_chat_prompt_from_stdin() -> None:
    result = nomyo("chat", "--local", "--quiet", stdin="from stdin\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "from stdin\n"
    assert result.stderr == ""


def test_chat_json_has_metadata() -> None:
    result = nomyo(
        "chat", "--local", "--json", "--model", "my-model", "--system", "be brief", "json please"
    )
    assert result.returncode == 0, result.stderr
    response = json.loads(result.stdout)
    assert response["object"] == "chat.completion"
    assert response["model"] == "my-model"
    assert response["choices"][0]["message"]["content"] == "json please"
    metadata = response["_metadata"]
    assert re.fullmatch(r"[0-9a-f-]{36}", metadata["payload_id"])
    assert metadata["is_encrypted"] is True
    assert metadata["tpm_attestation"] == {"is_available": False}


def test_chat_local_with_password_protected_key_dir(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    made = nomyo("keys", "generate", "--dir", str(key_dir), "--password-stdin", stdin=PASSWORD)
    assert made.returncode == 0, made.stderr
    ok = nomyo(
        "chat",
        "--local",
        "-q",
        "--key-dir",
        str(key_dir),
        "hi",
        env={"NOMYO_KEY_PASSWORD": PASSWORD},
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "hi\n"
    bad = nomyo(
        "chat", "--local", "--key-dir", str(key_dir), "hi", env={"NOMYO_KEY_PASSWORD": "wrong"}
    )
    assert bad.returncode == 5
    assert "wrong" not in bad.stderr.replace("wrong password", "")


# --- chat against serve-dev, error exits -----------------------------------------------------


def test_chat_against_serve_dev_with_env_defaults(router: Server) -> None:
    result = nomyo(
        "chat",
        "--allow-http",
        "--security-tier",
        "high",
        "via env",
        env={"NOMYO_BASE_URL": router.url, "NOMYO_MODEL": "env-model"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "via env\n"
    assert router.url in result.stderr
    assert "tier high" in result.stderr


def test_unreachable_server_exits_3(unused_port: int) -> None:
    url = f"http://127.0.0.1:{unused_port}"
    chat = nomyo("chat", "--base-url", url, "--allow-http", "--max-retries", "0", "hi")
    assert chat.returncode == 3, chat.stderr
    assert "cannot reach" in chat.stderr
    fingerprint = nomyo("keys", "server-fingerprint", "--base-url", url, "--allow-http")
    assert fingerprint.returncode == 3


def test_plain_http_without_allow_http_exits_4(router: Server) -> None:
    result = nomyo("chat", "--base-url", router.url, "hi")
    assert result.returncode == 4
    assert "--allow-http" in result.stderr
    assert "Traceback" not in result.stderr


def test_api_key_required_exits_6_without_leaking_it(auth_router: Server) -> None:
    wrong = "wrong-key-0815"
    missing = nomyo("chat", "--base-url", auth_router.url, "--allow-http", "hi")
    assert missing.returncode == 6
    assert "401" in missing.stderr
    bad = nomyo("chat", "--base-url", auth_router.url, "--allow-http", "--api-key", wrong, "hi")
    assert bad.returncode == 6
    assert wrong not in bad.stderr + bad.stdout
    good = nomyo(
        "chat", "--base-url", auth_router.url, "--allow-http", "hi", env={"NOMYO_API_KEY": API_KEY}
    )
    assert good.returncode == 0, good.stderr
    assert API_KEY not in good.stderr + good.stdout


def test_chat_over_https_with_ca_file(tls_router: Server, certs: DevCertificates) -> None:
    result = nomyo("chat", "--base-url", tls_router.url, "--ca-file", certs.ca_cert, "tls hi")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "tls hi\n"
    untrusted = nomyo("chat", "--base-url", tls_router.url, "--max-retries", "0", "tls hi")
    assert untrusted.returncode == 4, untrusted.stderr
    assert "certificate" in untrusted.stderr


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_exits_130_without_traceback() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(60)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "nomyo", "chat", "--base-url", url, "--allow-http", "hi"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env({"PYTHONFAULTHANDLER": "1"}),
            # Ctrl-C as at a terminal: a suite started in the background by a shell (`cmd &`)
            # runs with SIGINT ignored, and children inherit an ignored signal.
            preexec_fn=_default_sigint,
        )
        connection, _ = listener.accept()
        with connection:
            connection.settimeout(60)
            head = b""
            while b"\r\n\r\n" not in head:  # the whole request: now it waits for the key
                chunk = connection.recv(4096)
                assert chunk, "the client closed the connection before asking for the key"
                head += chunk
            assert head.startswith(b"GET /pki/public_key ")
            proc.send_signal(signal.SIGINT)
            try:
                _, stderr = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGABRT)  # faulthandler: every thread's stack
                _, stderr = proc.communicate()
                pytest.fail(f"no exit 30 s after Ctrl-C; the child's threads:\n{stderr}")
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted" in stderr


# --- keys ------------------------------------------------------------------------------------


def test_keys_round_trip_with_password_from_stdin(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    made = nomyo(
        "keys", "generate", "--dir", str(key_dir), "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert made.returncode == 0, made.stderr
    private, public = key_dir / "private_key.pem", key_dir / "public_key.pem"
    assert private.stat().st_mode & 0o777 == 0o600
    assert public.stat().st_mode & 0o777 == 0o644
    assert b"ENCRYPTED PRIVATE KEY" in private.read_bytes()
    fingerprint = load_private_key(private, PASSWORD).public_key().fingerprint()
    assert f"fingerprint:  {fingerprint}" in made.stdout
    assert "4096 bits" in made.stdout

    shown = nomyo("keys", "show", "--dir", str(key_dir))
    assert shown.returncode == 0, shown.stderr
    assert fingerprint in shown.stdout
    assert "mode 0600" in shown.stdout and "mode 0644" in shown.stdout
    assert "password:     yes" in shown.stdout

    checked = nomyo("keys", "show", "--dir", str(key_dir), "--password-stdin", stdin=PASSWORD)
    assert checked.returncode == 0, checked.stderr
    assert "password checked" in checked.stdout

    wrong = nomyo("keys", "show", "--dir", str(key_dir), "--password-stdin", stdin="nope\n")
    assert wrong.returncode == 5
    assert "nope" not in wrong.stderr

    again = nomyo("keys", "generate", "--dir", str(key_dir), "--bits", "2048")
    assert again.returncode == 1
    assert "--force" in again.stderr
    forced = nomyo("keys", "generate", "--dir", str(key_dir), "--bits", "2048", "--force")
    assert forced.returncode == 0, forced.stderr
    assert fingerprint not in forced.stdout
    assert "NOT password-protected" in forced.stdout
    plain = nomyo("keys", "show", "--dir", str(key_dir))
    assert "password:     no" in plain.stdout
    assert "2048 bits" in plain.stdout

    for result in (made, shown, checked, wrong):
        assert PASSWORD not in result.stdout + result.stderr


def test_keys_show_missing_dir_exits_5(tmp_path: Path) -> None:
    assert nomyo("keys", "show", "--dir", str(tmp_path / "none")).returncode == 5


def test_server_fingerprint_matches_spki_sha256(router: Server) -> None:
    result = nomyo("keys", "server-fingerprint", "--base-url", router.url, "--allow-http")
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip()
    pem = httpx.get(router.url + "/pki/public_key", timeout=10).text
    assert printed == _core.PublicKey.from_pem(pem).fingerprint()
    der = serialization.load_pem_public_key(pem.encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert printed == "sha256:" + hashlib.sha256(der).hexdigest()
    assert printed == router.read_until(r"server key (sha256:[0-9a-f]{64})")
    refused = nomyo("keys", "server-fingerprint", "--base-url", router.url)
    assert refused.returncode == 4


def test_server_fingerprint_over_https(tls_router: Server, certs: DevCertificates) -> None:
    result = nomyo(
        "keys", "server-fingerprint", "--base-url", tls_router.url, "--ca-file", certs.ca_cert
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", result.stdout)


# --- proxy -----------------------------------------------------------------------------------


def test_proxy_answers_openai_requests(proxy: Server) -> None:
    with httpx.Client(base_url=proxy.url, timeout=30) as http:
        reply = http.post("/v1/chat/completions", json=chat_body("hello proxy"))
        assert reply.status_code == 200, reply.text
        completion = reply.json()
        assert completion["object"] == "chat.completion"
        assert completion["model"] == "test-model"
        assert completion["choices"][0]["message"]["content"] == "hello proxy"
        assert completion["_metadata"]["is_encrypted"] is True

        models = http.get("/v1/models")
        assert models.status_code == 200
        assert models.json() == {
            "object": "list",
            "data": [{"id": "test-model", "object": "model", "created": 0, "owned_by": "nomyo"}],
        }
        health = http.get("/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"

        no_model = http.post("/v1/chat/completions", json={"messages": chat_body()["messages"]})
        assert no_model.status_code == 200
        assert no_model.json()["model"] == "test-model"


def test_proxy_errors_have_openai_shape(proxy: Server) -> None:
    with httpx.Client(base_url=proxy.url, timeout=30) as http:
        options = http.post(
            "/v1/chat/completions", json=chat_body(stream_options={"include_usage": True})
        )
        assert_openai_error(options, 400, "invalid_request_error")
        assert options.json()["error"]["param"] == "stream_options"
        empty = http.post("/v1/chat/completions", json={"model": "m", "messages": []})
        assert_openai_error(empty, 400)
        assert empty.json()["error"]["param"] == "messages"
        assert_openai_error(http.get("/v1/models/other-model"), 404)
        assert http.get("/v1/models/test-model").json()["id"] == "test-model"
        assert_openai_error(http.post("/v1/chat/completions", content=b"{nope"), 400)
        assert_openai_error(http.post("/v1/chat/completions", json={"model": "m"}), 400)
        redirect = http.post("/v1/chat/completions", json=chat_body(base_url="http://evil"))
        assert_openai_error(redirect, 400)
        assert_openai_error(http.get("/v1/chat/completions"), 405)
        assert_openai_error(http.get("/v2/unknown"), 404)
        browser = http.post(
            "/v1/chat/completions", json=chat_body(), headers={"Origin": "https://evil.example"}
        )
        assert_openai_error(browser, 403)
        rebinding = http.get("/v1/models", headers={"Host": "evil.example"})
        assert_openai_error(rebinding, 403)


def test_proxy_with_the_openai_package(proxy: Server) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
    try:
        completion = client.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "hi from openai"}]
        )
        assert completion.choices[0].message.content == "hi from openai"
        assert [m.id for m in client.models.list()] == ["test-model"]
        stream = client.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "streamed"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "streamed"
    finally:
        client.close()


def test_proxy_forwards_the_callers_bearer_token_only_when_asked(
    auth_router: Server, tmp_path: Path
) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    by_default = Server(
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--base-url",
        auth_router.url,
        "--allow-http",
        log=tmp_path / "default.log",
    )
    try:
        # A tool's own key (OPENAI_API_KEY) stays local unless --forward-api-key is given.
        kept = httpx.post(
            by_default.url + "/v1/chat/completions", json=chat_body(), headers=auth, timeout=30
        )
        assert_openai_error(kept, 401, "authentication_error")
    finally:
        assert by_default.stop() == 0
    server = Server(
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--base-url",
        auth_router.url,
        "--allow-http",
        "--forward-api-key",
        log=tmp_path / "proxy.log",
    )
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            missing = http.post("/v1/chat/completions", json=chat_body())
            assert_openai_error(missing, 401, "authentication_error")
            good = http.post("/v1/chat/completions", json=chat_body("authed"), headers=auth)
            assert good.status_code == 200, good.text
            assert good.json()["choices"][0]["message"]["content"] == "authed"
    finally:
        assert server.stop() == 0
    assert API_KEY not in (tmp_path / "proxy.log").read_text()
    help_text = nomyo("proxy", "--help").stdout
    assert "--forward-api-key" in help_text and "--auth-token" in help_text


def test_proxy_auth_token(router: Server, tmp_path: Path) -> None:
    token = "s3cret-proxy-token"
    server = Server(
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--base-url",
        router.url,
        "--allow-http",
        "--auth-token",
        token,
        "-v",
        log=tmp_path / "proxy.log",
    )
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            missing = http.post("/v1/chat/completions", json=chat_body())
            assert_openai_error(missing, 401, "authentication_error")
            wrong = http.post(
                "/v1/chat/completions", json=chat_body(), headers={"Authorization": "Bearer x"}
            )
            assert_openai_error(wrong, 401, "authentication_error")
            assert_openai_error(http.get("/v1/models"), 401)
            auth = {"Authorization": f"Bearer {token}"}
            good = http.post("/v1/chat/completions", json=chat_body("with token"), headers=auth)
            assert good.status_code == 200, good.text
            assert good.json()["choices"][0]["message"]["content"] == "with token"
    finally:
        assert server.stop() == 0
    assert token not in (tmp_path / "proxy.log").read_text()
    assert token not in router.log.read_text()
    empty = nomyo("proxy", "--listen", "127.0.0.1:0", "--auth-token", "")
    assert empty.returncode == 2


def test_proxy_reports_an_unreachable_router_as_502(unused_port: int, tmp_path: Path) -> None:
    server = Server(
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--base-url",
        f"http://127.0.0.1:{unused_port}",
        "--allow-http",
        log=tmp_path / "proxy.log",
    )
    try:
        reply = httpx.post(server.url + "/v1/chat/completions", json=chat_body(), timeout=60)
        assert_openai_error(reply, 502, "api_connection_error")
    finally:
        assert server.stop() == 0


def test_proxy_refuses_a_non_loopback_listen_address() -> None:
    result = nomyo("proxy", "--listen", "0.0.0.0:0")
    assert result.returncode == 2
    assert "--allow-remote" in result.stderr
    assert nomyo("proxy", "--listen", "not-a-port").returncode == 2


def test_proxy_refuses_plain_http_without_allow_http(router: Server) -> None:
    result = nomyo("proxy", "--listen", "127.0.0.1:0", "--base-url", router.url)
    assert result.returncode == 4


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- serve-dev and the reference client ------------------------------------------------------


@pytest.mark.reference
def test_serve_dev_serves_the_reference_client_over_http(
    run_reference: RunReference, router: Server
) -> None:
    code, out = run_reference(
        "chat",
        router.url,
        "--model",
        "ref-model",
        "--message",
        "hello reference",
        "--allow-http",
    )
    assert code == 0, out
    response = out["responses"][0]
    assert response["choices"][0]["message"]["content"] == "hello reference"
    assert response["_metadata"]["payload_id"]


@pytest.mark.reference
def test_serve_dev_serves_the_reference_client_over_https(
    run_reference: RunReference, tls_router: Server, certs: DevCertificates
) -> None:
    code, out = run_reference(
        "chat",
        tls_router.url,
        "--model",
        "ref-model",
        "--message",
        "hello over tls",
        "--ca-file",
        certs.ca_cert,
    )
    assert code == 0, out
    assert out["responses"][0]["choices"][0]["message"]["content"] == "hello over tls"


@pytest.mark.reference
def test_serve_dev_api_key_with_the_reference_client(
    run_reference: RunReference, auth_router: Server
) -> None:
    args = ["chat", auth_router.url, "--model", "m", "--message", "x", "--allow-http"]
    code, out = run_reference(*args, "--max-retries", "0")
    assert code == 3, out
    assert out["status_code"] == 401
    code, out = run_reference(*args, "--api-key", API_KEY)
    assert code == 0, out


def test_serve_dev_reports_a_busy_port(router: Server) -> None:
    port = router.url.rsplit(":", 1)[1]
    result = nomyo("serve-dev", "--port", port, "--key-bits", "2048", timeout=60)
    assert result.returncode == 1
    assert "cannot start the dev router" in result.stderr


@pytest.fixture(scope="module")
def dev_router() -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048, api_keys=None).run_in_thread() as handle:
        yield handle


NOMYO = [sys.executable, "-m", "nomyo"]


def cli(
    *args: str, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "NO_PROXY": "*", **(env or {})}
    full_env.pop("NOMYO_BASE_URL", None)
    return subprocess.run(
        [*NOMYO, *args], capture_output=True, text=True, timeout=120, env=full_env, input=stdin
    )


def test_cli_chat_pin(dev_router: RouterThread) -> None:
    right = dev_router.router.public_key.fingerprint()
    wrong = "sha256:" + "ab" * 32
    base = ["chat", "--base-url", dev_router.url, "--allow-http", "-q", "hello"]
    done = cli(*base, "--pin", wrong)
    assert done.returncode == 4, done.stderr
    assert "pinned" in done.stderr
    done = cli(*base, "--server-key-fingerprint", wrong, "--pin", right)
    assert done.returncode == 0, done.stderr
    assert cli(*base, "--pin", "nonsense").returncode == 2


def test_cli_chat_reads_the_file_keys_trust_keeps(tmp_path: Path) -> None:
    hosts = tmp_path / "known_hosts"
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        base = ["chat", "--base-url", handle.url, "--allow-http", "-q", "hello"]
        done = cli("keys", "trust", "--base-url", handle.url, "--allow-http",
                   "--known-hosts", str(hosts))  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert cli(*base, "--known-hosts", str(hosts)).returncode == 0
        handle.router.rotate_key()
        done = cli(*base, "--known-hosts", str(hosts))
        assert done.returncode == 4
        assert "changed" in done.stderr and str(hosts) in done.stderr
        # --tofu reads the default file ($NOMYO_KNOWN_HOSTS here), which keys trust writes.
        env = {"NOMYO_KNOWN_HOSTS": str(tmp_path / "default_hosts")}
        assert cli(*base, "--tofu", env=env).returncode == 0
        handle.router.rotate_key()
        assert cli(*base, "--tofu", env=env).returncode == 4
        done = cli("keys", "trust", "--base-url", handle.url, "--allow-http", env=env)
        assert done.returncode == 0, done.stderr
        assert cli(*base, "--tofu", env=env).returncode == 0


def test_cli_chat_attestation_and_reply_binding() -> None:
    with DevRouter(key_bits=2048, reply_binding=False).run_in_thread() as handle:
        base = ["chat", "--base-url", handle.url, "--allow-http", "-q", "hello"]
        assert cli(*base).returncode == 0
        done = cli(*base, "--reply-binding", "require")
        assert done.returncode == 4 and "reply binding" in done.stderr
        done = cli(*base, "--trusted-aik", "sha256:" + "cd" * 32)  # implies require
        assert done.returncode == 4 and "attestation" in done.stderr
        done = cli(*base, "--attestation", "off", "--trusted-aik", "sha256:" + "cd" * 32)
        assert done.returncode == 2
    assert cli("chat", "--local", "-q", "--reply-binding", "require", "hi").returncode == 0


def test_cli_trust_options_reach_the_proxy_client() -> None:
    """proxy and run share one option set with chat (the lead wires it into the proxy)."""
    from nomyo.cli import build_parser
    from nomyo.cli._args import trust_kwargs as _trust_kwargs

    parser = build_parser()
    fp = "sha256:" + "ab" * 32
    for command in (["chat", "x"], ["proxy"]):
        args = parser.parse_args(
            [*command, "--pin", fp, "--known-hosts", "/tmp/kh", "--trusted-aik", fp,
             "--reply-binding", "require"]
        )  # fmt: skip
        assert _trust_kwargs(args) == {
            "server_key_fingerprint": [fp],
            "known_hosts": "/tmp/kh",
            "attestation": "require",
            "trusted_aik": [fp],
            "expected_pcrs": None,
            "known_pcrs": None,
            "receipts": None,
            "reply_binding": "require",
        }
    args = parser.parse_args(["proxy"])
    assert _trust_kwargs(args) == {
        "server_key_fingerprint": None,
        "known_hosts": None,
        "attestation": "off",
        "trusted_aik": None,
        "expected_pcrs": None,
        "known_pcrs": None,
        "receipts": None,
        "reply_binding": "off",
    }


class Proxy:
    """``nomyo proxy`` as a subprocess on a free loopback port."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "NO_PROXY": "*"}
        env.pop("NOMYO_BASE_URL", None)
        self.proc = subprocess.Popen(
            [*NOMYO, "proxy", "--listen", "127.0.0.1:0", "--allow-http", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "listening on " in line:
                self.url = line.split("listening on ", 1)[1].split()[0]
                break
        else:
            raise AssertionError(f"the proxy exited with {self.proc.wait(10)}")

    def complete(self) -> httpx.Response:
        body = {"model": "m", "messages": [{"role": "user", "content": "through the proxy"}]}
        with httpx.Client(base_url=self.url, timeout=60, trust_env=False) as http:
            return http.post("/v1/chat/completions", json=body)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def test_cli_proxy_applies_the_trust_options() -> None:
    with DevRouter(key_bits=2048, reply_binding=False).run_in_thread() as plain:
        wrong = "sha256:" + "ab" * 32
        cases = [
            (["--pin", plain.router.public_key.fingerprint()], 200),
            (["--pin", wrong], None),
            (["--reply-binding", "require"], None),
            (["--trusted-aik", wrong], None),
        ]
        for options, status in cases:
            proxy = Proxy("--base-url", plain.url, *options)
            try:
                reply = proxy.complete()
            finally:
                proxy.stop()
            if status is None:
                assert reply.status_code >= 400, (options, reply.text)
                assert "error" in reply.json(), (options, reply.text)
            else:
                assert reply.status_code == status, (options, reply.text)
                assert reply.json()["choices"][0]["message"]["content"] == "through the proxy"


def test_serve_dev_refuses_non_loopback_without_flag() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nomyo", "serve-dev", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "--allow-remote" in proc.stderr
