"""The ``nomyo`` command's entry (``nomyo.cli``): stdin, help texts, exit codes on signals,
``--json`` errors, sampling options and ``serve-dev --tls``, run as a user would:
``python -m nomyo`` subprocesses against development routers. (Written for issue 19, items
3, 10 and 13: the command's first hour.)"""

from __future__ import annotations

import argparse
import json
import re
import signal
import ssl
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import Server, cli_env, nomyo
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from nomyo.cli import build_parser
from nomyo.testing import DevRouter, RouterThread

INVALID_UTF8 = b"hello \xff\xfe world \xc3\x28\n"


def nomyo_bytes(*args: str, stdin: bytes, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "nomyo", *args],
        input=stdin,
        capture_output=True,
        env=cli_env(env),
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def dev_router() -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        yield handle


@pytest.fixture(scope="module")
def auth_dev_router() -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048, api_keys=["right-key"]).run_in_thread() as handle:
        yield handle


# --- item 3: stdin that is not UTF-8 -----------------------------------------------------------


def test_non_utf8_stdin_is_a_usage_error_not_a_traceback() -> None:
    result = nomyo_bytes("chat", "--local", stdin=INVALID_UTF8)
    assert result.returncode == 2
    assert result.stderr.decode() == "nomyo: error: stdin is not valid UTF-8\n"
    assert result.stdout == b""


def test_the_issue_pipeline_from_dev_urandom() -> None:
    # 100 random bytes are valid UTF-8 with a probability far below 2**-50.
    result = subprocess.run(
        f"head -c 100 /dev/urandom | {sys.executable} -m nomyo chat",  # as in the issue
        shell=True,
        capture_output=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert b"stdin is not valid UTF-8" in result.stderr
    assert b"Traceback" not in result.stderr


def test_utf8_stdin_with_a_byte_order_mark_is_read_as_text() -> None:
    result = nomyo_bytes("chat", "--local", stdin="\ufeffgrüße ✓\n".encode())
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == "grüße ✓\n"


def test_non_utf8_password_on_stdin_is_a_usage_error(tmp_path: Path) -> None:
    result = nomyo_bytes(
        "keys", "generate", "--dir", str(tmp_path / "k"), "--bits", "2048", "--password-stdin",
        stdin=b"\xff\xfe\n",
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.decode() == "nomyo: error: stdin is not valid UTF-8\n"
    assert not (tmp_path / "k").exists()


# --- item 13: help text ------------------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_keys_subcommand_and_option_has_help() -> None:
    keys = _subcommands(build_parser())["keys"]
    listing = nomyo("keys", "--help")
    assert listing.returncode == 0
    subcommands = _subcommands(keys)
    assert set(subcommands) >= {"generate", "show", "server-fingerprint", "trust"}
    for name, sub in subcommands.items():
        # the listing of `nomyo keys --help` describes each subcommand on its line
        assert re.search(rf"^\s+{re.escape(name)}\s+\S", listing.stdout, re.M), name
        assert sub.description, f"keys {name} has no description"
        for action in sub._actions:
            assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
        shown = nomyo("keys", name, "--help")
        assert shown.returncode == 0
        for action in sub._actions:
            for flag in action.option_strings:
                assert flag in shown.stdout, (name, flag)


def test_keys_generate_help_explains_its_options() -> None:
    shown = nomyo("keys", "generate", "--help").stdout
    assert "directory to write private_key.pem" in shown
    assert "RSA key size" in shown


def test_serve_dev_help_has_its_own_environment_and_exit_codes() -> None:
    shown = nomyo("serve-dev", "--help")
    assert shown.returncode == 0
    text = shown.stdout
    # nothing of the client's environment or exit codes
    for client_only in ("NOMYO_API_KEY", "NOMYO_MODEL", "server unreachable", "wrong password"):
        assert client_only not in text
    assert "130 stopped by Ctrl-C" in text
    assert "0 stopped by SIGTERM" in text
    assert "export NOMYO_BASE_URL=https://127.0.0.1:12434" in text
    assert "--tls [DIR]" in text
    client = nomyo("chat", "--help").stdout
    assert "NOMYO_API_KEY" in client and "3 server unreachable" in client


# --- item 13: Ctrl-C exits 130 in the servers ----------------------------------------------


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class TerminalServer(Server):
    """A server started as at a terminal (SIGINT not ignored, as it is under `cmd &`)."""

    def __init__(self, *args: str, log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._stderr = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nomyo", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=cli_env(env),
            preexec_fn=_default_sigint,
        )
        import queue
        import threading

        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self.url = self._wait_for_url()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_serve_dev_exit_code_on_signals(tmp_path: Path, sig: int, code: int) -> None:
    log = tmp_path / "stderr.log"
    server = TerminalServer("serve-dev", "--port", "0", "--key-bits", "2048", log=log)
    assert server.stop(sig) == code, log.read_text()
    stderr = log.read_text()
    assert "nomyo serve-dev: stopped" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_proxy_exit_code_on_signals(
    dev_router: RouterThread, tmp_path: Path, sig: int, code: int
) -> None:
    log = tmp_path / "stderr.log"
    server = TerminalServer(
        "proxy", "--listen", "127.0.0.1:0", "--base-url", dev_router.url, "--allow-http",
        log=log,
    )  # fmt: skip
    assert server.stop(sig) == code, log.read_text()
    stderr = log.read_text()
    assert "nomyo proxy: stopped" in stderr
    assert "Traceback" not in stderr


# --- item 13: --json errors --------------------------------------------------------------------


def _json_error(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    document = json.loads(result.stdout)
    assert list(document) == ["error"]
    error: dict[str, Any] = document["error"]
    assert error["exit_code"] == result.returncode
    assert error["message"] in result.stderr  # the same words as the human line
    return error


def test_json_error_for_an_unreachable_server(unused_port: int) -> None:
    url = f"http://127.0.0.1:{unused_port}"
    result = nomyo("chat", "--json", "--base-url", url, "--allow-http", "--max-retries", "0", "hi")
    assert result.returncode == 3
    error = _json_error(result)
    assert error["type"] == "APIConnectionError"
    assert "cannot reach the server" in error["message"]


def test_json_error_for_a_refused_api_key(auth_dev_router: RouterThread) -> None:
    result = nomyo(
        "chat", "--json", "--base-url", auth_dev_router.url, "--allow-http",
        "--api-key", "wrong-key", "hi",
    )  # fmt: skip
    assert result.returncode == 6
    error = _json_error(result)
    assert error["type"] == "AuthenticationError"
    assert error["status_code"] == 401
    assert "wrong-key" not in result.stdout + result.stderr


def test_json_error_for_a_usage_error() -> None:
    result = nomyo("chat", "--json", "--local", stdin="   ")
    assert result.returncode == 2
    error = _json_error(result)
    assert error == {"message": "the prompt is empty", "type": "CLIError", "exit_code": 2}


def test_json_error_for_a_command_line_argparse_refuses() -> None:
    result = nomyo("chat", "--json", "--max-tokens", "many", "hi")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: nomyo chat")
    error = _json_error(result)
    assert error["type"] == "UsageError"
    assert "--max-tokens: not a whole number: 'many'" in error["message"]
    plain = nomyo("chat", "--max-tokens", "many", "hi")
    assert plain.returncode == 2
    assert plain.stdout == ""
    assert plain.stderr == result.stderr


def test_without_json_failures_print_nothing_on_stdout(unused_port: int) -> None:
    url = f"http://127.0.0.1:{unused_port}"
    result = nomyo("chat", "--base-url", url, "--allow-http", "--max-retries", "0", "hi")
    assert result.returncode == 3
    assert result.stdout == ""


# --- item 13: chat --temperature and --max-tokens ------------------------------------------------


def test_chat_sends_temperature_and_max_tokens(dev_router: RouterThread) -> None:
    router = dev_router.router
    result = nomyo(
        "chat", "--base-url", dev_router.url, "--allow-http", "--temperature", "0.3",
        "--max-tokens", "16", "warm",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "warm\n"
    body = router.requests[-1].body
    assert body["temperature"] == 0.3
    assert body["max_tokens"] == 16
    plain = nomyo("chat", "--base-url", dev_router.url, "--allow-http", "plain")
    assert plain.returncode == 0, plain.stderr
    body = router.requests[-1].body
    assert "temperature" not in body and "max_tokens" not in body


@pytest.mark.parametrize(
    "args", [["--temperature", "3"], ["--temperature", "warm"], ["--max-tokens", "0"]]
)
def test_chat_refuses_out_of_range_sampling_options(args: list[str]) -> None:
    result = nomyo("chat", "--local", *args, "hi")
    assert result.returncode == 2
    assert "usage: nomyo chat" in result.stderr


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- item 10: serve-dev --tls ------------------------------------------------------------------


def _exports(server: Server) -> dict[str, str]:
    exports = {}
    for name in ("NOMYO_BASE_URL", "SSL_CERT_FILE"):
        exports[name] = server.read_until(rf"^export {name}=(\S+)$")
    return exports


def test_serve_dev_tls_makes_a_local_ca_and_prints_the_exports(tmp_path: Path) -> None:
    tls_dir = tmp_path / "dev-tls"
    log = tmp_path / "stderr.log"
    server = TerminalServer(
        "serve-dev", "--tls", str(tls_dir), "--port", "0", "--key-bits", "2048", log=log
    )
    try:
        exports = _exports(server)
        assert server.url.startswith("https://127.0.0.1:")
        assert exports == {"NOMYO_BASE_URL": server.url, "SSL_CERT_FILE": str(tls_dir / "ca.pem")}
        assert stat.S_IMODE((tls_dir / "server-key.pem").stat().st_mode) == 0o600
        assert not (tls_dir / "ca-key.pem").exists()  # the CA key is never written

        # the client, with only the two exported variables, over both transports
        for transport in ("native", "httpx"):
            result = nomyo("chat", "hello over TLS", env={**exports, "NOMYO_TRANSPORT": transport})
            assert result.returncode == 0, (transport, result.stderr)
            assert result.stdout == "hello over TLS\n"

        # OpenSSL (Python's ssl) trusts the chain for 127.0.0.1 too
        context = ssl.create_default_context(cafile=exports["SSL_CERT_FILE"])
        with urllib.request.urlopen(server.url + "/pki/public_key", context=context) as reply:
            assert b"BEGIN PUBLIC KEY" in reply.read()

        # without the CA the certificate is refused (exit 4), so TLS really is checked
        untrusted = nomyo("chat", "hi", env={"NOMYO_BASE_URL": exports["NOMYO_BASE_URL"]})
        assert untrusted.returncode == 4, untrusted.stderr
        assert "TLS certificate was refused" in untrusted.stderr
    finally:
        assert server.stop(signal.SIGINT) == 130, log.read_text()


def test_serve_dev_tls_certificate_fields(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from nomyo.cli._support import local_certificates;"
         "local_certificates(sys.argv[1])", str(tmp_path)],
        capture_output=True, text=True, env=cli_env(), timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    cert = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.issuer == ca.subject
    ca.public_key().verify(  # type: ignore[union-attr,call-arg]
        cert.signature,
        cert.tbs_certificate_bytes,
        __import__("cryptography.hazmat.primitives.asymmetric.ec", fromlist=["ECDSA"]).ECDSA(
            cert.signature_hash_algorithm
        ),
    )
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime.days == 30  # 30 days from an hour ago
    assert b"BEGIN PRIVATE KEY" in (tmp_path / "server-key.pem").read_bytes()


def test_serve_dev_tls_reuses_its_files_and_defaults_to_the_config_dir(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    tls_dir = tmp_path / "config" / "nomyo" / "dev-tls"
    first_ca = None
    for _ in range(2):
        log = tmp_path / "stderr.log"
        server = TerminalServer("serve-dev", "--tls", "--port", "0", "--key-bits", "2048",
                                log=log, env=env)  # fmt: skip
        try:
            exports = _exports(server)
        finally:
            assert server.stop() == 0, log.read_text()
        assert exports["SSL_CERT_FILE"] == str(tls_dir / "ca.pem")
        ca = (tls_dir / "ca.pem").read_bytes()
        assert first_ca in (None, ca)  # a client that trusts ca.pem keeps working
        first_ca = ca


def test_serve_dev_tls_replaces_files_that_do_not_fit_together(tmp_path: Path) -> None:
    make = [sys.executable, "-c", "import sys; from nomyo.cli._support import local_certificates;"
            "local_certificates(sys.argv[1])", str(tmp_path)]  # fmt: skip
    assert subprocess.run(make, env=cli_env(), timeout=60, check=False).returncode == 0
    first_ca = (tmp_path / "ca.pem").read_bytes()
    (tmp_path / "server-key.pem").write_text("not a key")  # e.g. a half-finished copy
    assert subprocess.run(make, env=cli_env(), timeout=60, check=False).returncode == 0
    assert (tmp_path / "ca.pem").read_bytes() != first_ca  # a new set was made
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(tmp_path / "server.pem"), str(tmp_path / "server-key.pem"))


def test_serve_dev_tls_usage_errors(tmp_path: Path) -> None:
    both = nomyo("serve-dev", "--tls", "--tls-cert", "a.pem", "--tls-key", "b.pem")
    assert both.returncode == 2
    assert "--tls cannot be combined" in both.stderr
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    unwritable = nomyo("serve-dev", "--tls", str(blocked / "dev-tls"), "--port", "0")
    assert unwritable.returncode == 1
    assert "cannot write the TLS files" in unwritable.stderr
    assert "Traceback" not in unwritable.stderr
