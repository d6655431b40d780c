"""``nomyo chat`` (``nomyo.cli.chat``): ``--local``, against ``serve-dev``, its exit codes and
its trust options (``--pin``, ``--known-hosts``, ``--tofu``, attestation, reply binding)."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import API_KEY, NO_NETWORK, PASSWORD, Server, cli, cli_env, nomyo
from cli_support import auth_router as auth_router
from cli_support import certs as certs
from cli_support import router as router
from cli_support import tls_router as tls_router
from cli_support import unused_port as unused_port

from nomyo.testing import DevCertificates, DevRouter, RouterThread


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


@pytest.fixture(scope="module")
def dev_router() -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048, api_keys=None).run_in_thread() as handle:
        yield handle


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
