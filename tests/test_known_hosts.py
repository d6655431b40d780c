"""Issue 18, findings 3-6 (and issue 19, item 9), each reproduced against a real server.

3. known_hosts could be reset silently (an unparseable line, ``keys trust --fingerprint ""``,
   a file of another user).
4. The native transport reserved whatever ``Content-Length`` the server declared.
5. The CLI could not use pins or known_hosts.
6. An injected httpx transport or client could switch certificate verification off.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import socket
import socketserver
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import nomyo
from nomyo import _core
from nomyo._known_hosts import KnownHosts
from nomyo.testing import DevCertificates, DevRouter, RouterThread, make_test_certificates

NOMYO = [sys.executable, "-m", "nomyo"]
PAYLOAD = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
MiB = 1 << 20


@pytest.fixture(scope="module")
def router() -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        yield handle


def send(url: str, **options: Any) -> dict[str, Any]:
    with nomyo.SyncSecureCompletionClient(url, allow_http=True, **options) as client:
        client.generate_keys()
        return dict(client.send_secure_request(dict(PAYLOAD), "review-security"))


def cli(
    *args: str, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "NO_PROXY": "*", **(env or {})}
    full_env.pop("NOMYO_BASE_URL", None)
    return subprocess.run(
        [*NOMYO, *args], capture_output=True, text=True, timeout=120, env=full_env, input=stdin
    )


# -- 3. known_hosts ------------------------------------------------------------------------


def test_unparseable_entry_refuses_instead_of_starting_over(
    router: RouterThread, tmp_path: Path
) -> None:
    hosts = tmp_path / "known_hosts"
    real = router.router.public_key.fingerprint()
    for broken in (f"{router.url} sha256:0123", f"{router.url}", f"{router.url} {real} extra"):
        hosts.write_text(f"# mine\n{broken}\n")
        hosts.chmod(0o600)
        with pytest.raises(nomyo.SecurityError, match="does not parse") as caught:
            send(router.url, known_hosts=hosts)
        assert f"--known-hosts {hosts}" in str(caught.value)
        assert hosts.read_text() == f"# mine\n{broken}\n"  # not rewritten, not reset
        assert KnownHosts(hosts).entries() == {router.url: set()}


def test_line_naming_no_router_refuses_every_router(router: RouterThread, tmp_path: Path) -> None:
    hosts = tmp_path / "known_hosts"
    hosts.write_text("garbage-without-url\n")
    hosts.chmod(0o600)
    with pytest.raises(nomyo.SecurityError, match="line 1"):
        send(router.url, known_hosts=hosts)
    with pytest.raises(nomyo.SecurityError, match="line 1"):
        KnownHosts(hosts).trust(router.url, router.router.public_key.fingerprint())


def test_broken_entries_of_other_routers_survive_a_first_use(
    router: RouterThread, tmp_path: Path
) -> None:
    hosts = tmp_path / "known_hosts"
    hosts.write_text("https://other.example not-a-fingerprint\n")
    hosts.chmod(0o600)
    send(router.url, known_hosts=hosts)  # first use of this router: remembered
    entries = KnownHosts(hosts).entries()
    assert entries == {
        router.url: {router.router.public_key.fingerprint()},
        "https://other.example": set(),
    }
    assert "https://other.example not-a-fingerprint" in hosts.read_text()


def test_keys_trust_refuses_a_non_fingerprint(router: RouterThread, tmp_path: Path) -> None:
    hosts = tmp_path / "known_hosts"
    for bad in ("", "anything", "sha256:abcd", "md5:" + "0" * 32):
        done = cli(
            "keys", "trust", "--base-url", router.url, "--fingerprint", bad,
            "--known-hosts", str(hosts),
        )  # fmt: skip
        assert done.returncode == 2, (bad, done.stdout, done.stderr)
        assert "fingerprint" in done.stderr
        assert not hosts.exists()
    with pytest.raises(nomyo.ConfigurationError):
        KnownHosts(hosts).trust(router.url, "")
    upper = router.router.public_key.fingerprint().upper().replace("SHA256:", "")
    done = cli(
        "keys", "trust", "--base-url", router.url, "--fingerprint", upper,
        "--known-hosts", str(hosts),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert KnownHosts(hosts).entries() == {router.url: {router.router.public_key.fingerprint()}}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to another user")
def test_known_hosts_of_another_user_is_refused(router: RouterThread, tmp_path: Path) -> None:
    hosts = tmp_path / "known_hosts"
    hosts.write_text(f"{router.url} {router.router.public_key.fingerprint()}\n")
    hosts.chmod(0o600)
    os.chown(hosts, 65534, 65534)
    with pytest.raises(nomyo.SecurityError, match="another user"):
        send(router.url, known_hosts=hosts)


def test_group_writable_known_hosts_is_refused(router: RouterThread, tmp_path: Path) -> None:
    hosts = tmp_path / "known_hosts"
    hosts.write_text(f"{router.url} {router.router.public_key.fingerprint()}\n")
    hosts.chmod(0o620)
    with pytest.raises(nomyo.SecurityError, match="writable by group"):
        send(router.url, known_hosts=hosts)


def test_changed_key_hint_names_the_file_in_use(tmp_path: Path) -> None:
    """Issue 19, item 9: following the hint fixes the file that was read, not the default."""
    hosts = tmp_path / "my hosts"
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        send(handle.url, known_hosts=hosts)
        new = handle.router.rotate_key()
        with pytest.raises(nomyo.SecurityError) as caught:
            send(handle.url, known_hosts=hosts)
        message = str(caught.value)
        hint = message.split("accept it with: ", 1)[1]
        assert f"--known-hosts '{hosts}'" in hint
        args = shlex.split(hint)
        assert args[:3] == ["nomyo", "keys", "trust"]
        env = {"XDG_CONFIG_HOME": str(tmp_path / "elsewhere")}  # the default file is elsewhere
        done = cli(*args[1:], env=env)
        assert done.returncode == 0, done.stderr
        assert not (tmp_path / "elsewhere").exists()
        send(handle.url, known_hosts=hosts)
        assert KnownHosts(hosts).entries() == {handle.url: {new.fingerprint()}}


# -- 4. a declared Content-Length is not reserved ------------------------------------------

_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    import nomyo

    url, limit = sys.argv[1], int(sys.argv[2])
    client = nomyo.SyncSecureCompletionClient(
        url, allow_http=True, max_retries=0, max_response_size=limit
    )
    client.generate_keys()
    client.fetch_server_public_key()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        client.send_secure_request({"model": "m", "messages": []}, "p")
        outcome = "accepted"
    except nomyo.NomyoError as exc:
        outcome = type(exc).__name__
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"outcome": outcome, "grew_kib": after - before}))
    """
)


class DeclaringServer(socketserver.ThreadingTCPServer):
    """Serves a real key, then declares ``declared`` reply bytes, sends 1 KiB and closes."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, declared: int) -> None:
        self.declared = declared
        self.key_pem = _core.PrivateKey.generate(2048).public_key().to_pem().encode()
        super().__init__(("127.0.0.1", 0), _DeclaringHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _DeclaringHandler(socketserver.StreamRequestHandler):
    server: DeclaringServer

    def handle(self) -> None:
        while True:
            line = self.rfile.readline(65536)
            if not line:
                return
            head = [line]
            while head[-1] not in (b"\r\n", b"\n", b""):
                head.append(self.rfile.readline(65536))
            length = 0
            for header in head[1:]:
                name, _, value = header.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            self.rfile.read(length)
            if line.startswith(b"GET"):
                body = self.server.key_pem
                self.wfile.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
                continue
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                + f"Content-Length: {self.server.declared}\r\n\r\n".encode()
                + b"{" * 1024
            )
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return


@pytest.mark.parametrize("transport", ["native", "httpx"])
def test_declared_length_is_not_reserved(transport: str) -> None:
    """A reply declaring (almost) 1 GiB and sending 1 KiB costs no more than it sends.

    Before the fix the native transport reserved the declared length up front (and, with
    every freed block wiped, touched all of it): the child's peak RSS grew by ~1 GiB.
    """
    server = DeclaringServer((1 << 30) - 1)
    try:
        env = {**os.environ, "NOMYO_TRANSPORT": transport, "NO_PROXY": "*"}
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, server.url, str(1 << 30)],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr  # no abort (134)
    result = json.loads(done.stdout)
    assert result["outcome"] in ("APIConnectionError", "EnvelopeError"), result
    assert result["grew_kib"] * 1024 < 64 * MiB, result


def test_declared_terabyte_is_refused_not_fatal() -> None:
    server = DeclaringServer(1 << 40)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, server.url, str(1 << 30)],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "NO_PROXY": "*"},
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outcome"] in ("APIConnectionError", "EnvelopeError")


@pytest.mark.parametrize("size", [0, -1, (1 << 30) + 1, 1 << 40, 2.5, True])
def test_max_response_size_is_bounded(size: Any) -> None:
    for cls in (nomyo.SecureCompletionClient, nomyo.SyncSecureCompletionClient):
        with pytest.raises(nomyo.ConfigurationError, match="max_response_size"):
            cls("https://x.example", max_response_size=size)
    nomyo.SyncSecureCompletionClient("https://x.example", max_response_size=1 << 30).close()


# -- 5. the CLI's trust options ------------------------------------------------------------


def test_cli_chat_pin(router: RouterThread) -> None:
    right = router.router.public_key.fingerprint()
    wrong = "sha256:" + "ab" * 32
    base = ["chat", "--base-url", router.url, "--allow-http", "-q", "hello"]
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
            "reply_binding": "require",
        }
    args = parser.parse_args(["proxy"])
    assert _trust_kwargs(args) == {
        "server_key_fingerprint": None,
        "known_hosts": None,
        "attestation": "off",
        "trusted_aik": None,
        "reply_binding": "off",
    }


# -- 6. injected transports must verify -------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    return make_test_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def https_router(certs: DevCertificates) -> Iterator[RouterThread]:
    """A router whose certificate no default trust store accepts (a stranger's)."""
    router = DevRouter(key_bits=2048, tls_cert=certs.cert, tls_key=certs.key)
    with router.run_in_thread() as handle:
        yield handle


def test_unverifying_transport_or_client_is_refused(https_router: RouterThread) -> None:
    """Before the fix each of these talked to a server with an untrusted certificate."""
    url = https_router.url
    refused: list[tuple[type[Any], dict[str, Any]]] = [
        (nomyo.SecureCompletionClient, {"transport": httpx.AsyncHTTPTransport(verify=False)}),
        (nomyo.SecureCompletionClient, {"http_client": httpx.AsyncClient(verify=False)}),
        (nomyo.SyncSecureCompletionClient, {"transport": httpx.HTTPTransport(verify=False)}),
        (nomyo.SyncSecureCompletionClient, {"http_client": httpx.Client(verify=False)}),
        (
            nomyo.SyncSecureCompletionClient,
            {"http_client": httpx.Client(proxy="http://127.0.0.1:9", verify=False)},
        ),
        (nomyo.SecureChatCompletion, {"transport": httpx.AsyncHTTPTransport(verify=False)}),
        (nomyo.SyncSecureChatCompletion, {"http_client": httpx.Client(verify=False)}),
    ]
    for cls, options in refused:
        with pytest.raises(nomyo.ConfigurationError, match="verification cannot be turned off"):
            cls(url, **options)


def test_verifying_transport_still_works(
    https_router: RouterThread, certs: DevCertificates
) -> None:
    import ssl

    context = ssl.create_default_context(cafile=certs.ca_cert)
    with nomyo.SyncSecureCompletionClient(
        https_router.url, transport=httpx.HTTPTransport(verify=context)
    ) as client:
        client.generate_keys()
        reply = client.send_secure_request(dict(PAYLOAD), "verified")
    assert reply["choices"]
    # A verifying transport without the CA is refused by TLS itself.
    with nomyo.SyncSecureCompletionClient(
        https_router.url, transport=httpx.HTTPTransport(), max_retries=0
    ) as client:
        client.generate_keys()
        with pytest.raises(nomyo.APIConnectionError):
            client.send_secure_request(dict(PAYLOAD), "untrusted")


def test_uninspectable_transport_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    class Custom(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("unused")

    with caplog.at_level("WARNING", logger="nomyo"):
        nomyo.SecureCompletionClient("https://x.example", transport=Custom())
        nomyo.SecureCompletionClient("https://x.example", transport=Custom())
    notes = [r for r in caplog.records if "cannot be inspected" in r.getMessage()]
    assert len(notes) == 1
    assert "Custom" in notes[0].getMessage()


def test_mock_transport_is_accepted_silently(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="nomyo"):
        nomyo.SecureCompletionClient(
            "https://x.example", transport=httpx.MockTransport(lambda r: httpx.Response(500))
        )
    assert not [r for r in caplog.records if "cannot be inspected" in r.getMessage()]


def test_async_clients_refuse_before_any_request(https_router: RouterThread) -> None:
    async def go() -> None:
        async with httpx.AsyncClient(verify=False) as unverified:
            with pytest.raises(nomyo.ConfigurationError):
                nomyo.SecureCompletionClient(https_router.url, http_client=unverified)

    asyncio.run(go())


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
