"""The native engine on every network: through a real forward proxy (tinyproxy), and over
HTTP/2 to a real HTTP/2 server (nginx terminating TLS in front of the development router).

The proxy choice for an environment is checked against httpx's own decision for the same
environment and URL; the proxy's and nginx's logs show what went over the wire.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import nomyo
from nomyo import _core
from nomyo._transports import NativeTransport
from nomyo._transports.native import environment_proxies, proxy_for
from nomyo.testing import DevCertificates, DevRouter, RouterThread, make_test_certificates

TINYPROXY = shutil.which("tinyproxy")
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
PROXY_VARIABLES = ("https_proxy", "http_proxy", "all_proxy", "no_proxy")

needs_tinyproxy = pytest.mark.skipif(
    TINYPROXY is None, reason="tinyproxy not installed (scripts/install-system-deps.sh)"
)
needs_nginx = pytest.mark.skipif(
    NGINX is None, reason="nginx not installed (scripts/install-system-deps.sh)"
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOMYO_TRANSPORT", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    return make_test_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_router(certs: DevCertificates) -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048, tls_cert=certs.cert, tls_key=certs.key).run_in_thread() as r:
        yield r


@pytest.fixture(scope="module")
def plain_router() -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        yield handle


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


@dataclass
class ForwardProxy:
    """A running tinyproxy: ``url`` (without credentials) and its log."""

    url: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    def lines(self, marker: str) -> list[str]:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line for line in text.splitlines() if marker in line]

    def connects(self, target: str) -> int:
        return len(self.lines(f"CONNECT {target} "))


def start_tinyproxy(
    directory: Path, *, auth: tuple[str, str] | None = None, connect_ports: tuple[int, ...] = ()
) -> ForwardProxy:
    assert TINYPROXY is not None
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = directory / "tinyproxy.log"
    conf = [
        f"Port {port}",
        "Listen 127.0.0.1",
        "Timeout 30",
        f'LogFile "{log}"',
        "LogLevel Info",
        "MaxClients 200",
        "DisableViaHeader Yes",
    ]
    if auth is not None:
        conf.append(f"BasicAuth {auth[0]} {auth[1]}")
    conf += [f"ConnectPort {p}" for p in connect_ports]
    (directory / "tinyproxy.conf").write_text("\n".join(conf) + "\n")
    proc = subprocess.Popen(
        [TINYPROXY, "-d", "-c", str(directory / "tinyproxy.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, proc, "tinyproxy")
    return ForwardProxy(f"http://127.0.0.1:{port}", port, log, proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[ForwardProxy]:
    if TINYPROXY is None:
        pytest.skip("tinyproxy not installed")
    proxy = start_tinyproxy(tmp_path / "open")
    yield proxy
    stop(proxy.proc)


# -- the proxy choice, against httpx's -----------------------------------------------------

#: (environment, URL) cases; each is checked against httpx's choice in the same environment.
ENVIRONMENTS: list[dict[str, str]] = [
    {},
    {"HTTPS_PROXY": "http://p1:3128"},
    {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:2"},
    {"HTTP_PROXY": "http://p2:8080"},
    {"ALL_PROXY": "http://all:1080"},
    {"HTTPS_PROXY": "p3:3128"},  # no scheme: http:// is implied
    {"HTTPS_PROXY": "http://user:pa%40ss@p4:3128", "ALL_PROXY": "http://all:1"},
    {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "example.com"},
    {"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".example.com"},
    {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"},
    {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "127.0.0.1, ::1,localhost"},
    {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "10.0.0.0/8"},
    {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "example.com:8443"},
    {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "https://router.test"},
    {"HTTPS_PROXY": "http://p:1", "no_proxy": "ROUTER.test"},
    {"HTTP_PROXY": "http://h:1", "ALL_PROXY": "http://a:2", "NO_PROXY": "other.test"},
    {"HTTPS_PROXY": "", "ALL_PROXY": "http://a:2"},
]
URLS = [
    "https://example.com/v1/chat/secure_completion",
    "https://api.example.com:8443/x",
    "https://example.com:8443/x",
    "https://notexample.com/",
    "http://example.com/",
    "https://127.0.0.1:9443/",
    "http://[::1]:8000/",
    "https://localhost/",
    "https://10.0.0.0/",
    "https://10.1.2.3/",
    "https://router.test/",
    "http://router.test/",
]


def httpx_choice(url: str) -> tuple[str, str, int | None] | None:
    """The proxy (scheme, host, port) httpx picks for ``url`` from the environment."""
    import httpx

    with httpx.Client(trust_env=True) as client:
        transport = client._transport_for_url(httpx.URL(url))
        if transport is client._transport:
            return None
        proxy_url = transport._pool._proxy_url  # type: ignore[attr-defined]
        return (proxy_url.scheme.decode(), proxy_url.host.decode(), proxy_url.port)


def our_choice(url: str) -> tuple[str, str, int | None] | None:
    import httpx

    chosen = proxy_for(url, environment_proxies())
    if chosen is None:
        return None
    parsed = httpx.URL(chosen)
    return (parsed.scheme, parsed.host, parsed.port)


@pytest.mark.parametrize(
    "env", ENVIRONMENTS, ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items())
)
def test_the_proxy_choice_is_httpx_choice(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for url in URLS:
        assert our_choice(url) == httpx_choice(url), (env, url)


def test_proxy_rules_never_show_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://alice:hunter2@proxy.test:3128")
    rules = environment_proxies()
    assert rules and "hunter2" not in repr(rules)


# -- through a real forward proxy -----------------------------------------------------------


@needs_tinyproxy
def test_https_goes_through_the_proxy_as_a_connect_tunnel(
    tinyproxy: ForwardProxy,
    tls_router: RouterThread,
    certs: DevCertificates,
    client_key: _core.PrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", tinyproxy.url)
    target = tls_router.url.removeprefix("https://")
    with nomyo.SyncSecureChatCompletion(tls_router.url, verify=certs.ca_cert) as client:
        assert isinstance(client.client._transport, NativeTransport), (
            "the native engine handles the proxy"
        )
        client.client._set_key(client_key)
        for i in range(3):
            reply = client.create(model="m", messages=user(f"via proxy {i}"))
            assert reply.choices[0].message.content == f"via proxy {i}"
    assert tinyproxy.connects(target) == 1, "one tunnel, kept alive for three requests"


@needs_tinyproxy
def test_plain_http_is_forwarded_by_the_proxy(
    tinyproxy: ForwardProxy,
    plain_router: RouterThread,
    client_key: _core.PrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", tinyproxy.url)

    async def scenario() -> str:
        async with nomyo.SecureChatCompletion(plain_router.url, allow_http=True) as client:
            assert isinstance(client.client._transport, NativeTransport)
            client.client._set_key(client_key)
            reply = await client.create(model="m", messages=user("forwarded"))
            return str(reply.choices[0].message.content)

    assert asyncio.run(scenario()) == "forwarded"
    forwarded = tinyproxy.lines(f"POST {plain_router.url}/v1/chat/secure_completion")
    assert len(forwarded) == 1, "an absolute-form request through the proxy"


@needs_tinyproxy
def test_no_proxy_bypasses_the_proxy(
    tinyproxy: ForwardProxy,
    tls_router: RouterThread,
    certs: DevCertificates,
    client_key: _core.PrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", tinyproxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    with nomyo.SyncSecureChatCompletion(tls_router.url, verify=certs.ca_cert) as client:
        assert isinstance(client.client._transport, NativeTransport)
        client.client._set_key(client_key)
        assert client.create(model="m", messages=user("direct")).choices[0].message.content
    assert tinyproxy.lines("CONNECT ") == [] or all(
        "Connect (file descriptor" in line for line in tinyproxy.lines("CONNECT ")
    )
    assert tinyproxy.lines("Request (file descriptor") == []


@needs_tinyproxy
def test_proxy_credentials_are_sent_and_never_shown(
    tmp_path: Path,
    tls_router: RouterThread,
    certs: DevCertificates,
    client_key: _core.PrivateKey,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = start_tinyproxy(tmp_path / "auth", auth=("alice", "s3cr3t-pw"))
    target = tls_router.url.removeprefix("https://")
    try:
        host = proxy.url.removeprefix("http://")
        monkeypatch.setenv("HTTPS_PROXY", f"http://alice:s3cr3t-pw@{host}")
        with nomyo.SyncSecureChatCompletion(tls_router.url, verify=certs.ca_cert) as client:
            client.client._set_key(client_key)
            assert client.create(model="m", messages=user("authed")).choices[0].message.content
            for shown in (client, client.client, client.client._transport):
                assert "s3cr3t" not in repr(shown)
        # Through the proxy (its pool may open a spare tunnel besides: see below).
        assert proxy.connects(target) >= 1
    finally:
        stop(proxy.proc)

    caplog.set_level("DEBUG")
    for step, credentials in enumerate(("alice:wrong-pw@", "")):
        # A proxy of its own per step: the pool of an earlier client may still finish a spare
        # tunnel in the background (hyper-util races a new connection against the return of
        # an idle one), which must not be counted as this client's retry.
        proxy = start_tinyproxy(tmp_path / f"refusing-{step}", auth=("alice", "s3cr3t-pw"))
        host = proxy.url.removeprefix("http://")
        try:
            monkeypatch.setenv("HTTPS_PROXY", f"http://{credentials}{host}")
            with nomyo.SyncSecureChatCompletion(
                tls_router.url, verify=certs.ca_cert, max_retries=3
            ) as client:
                client.client._set_key(client_key)
                with pytest.raises(nomyo.APIConnectionError) as caught:
                    client.create(model="m", messages=user("refused"))
            text = str(caught.value)
            refusal = caught.value.__cause__
            assert isinstance(refusal, _core.TransportError), refusal
            assert refusal.kind == "proxy" and refusal.status in (401, 407), text
            assert f"proxy http://{host}" in text, text
            assert "wrong-pw" not in text and "alice" not in text
            assert proxy.connects(target) == 1, "a refusal (4xx) is not retried"
        finally:
            stop(proxy.proc)
    assert "wrong-pw" not in caplog.text and "s3cr3t" not in caplog.text


@needs_tinyproxy
def test_a_proxy_that_refuses_the_connect_is_a_typed_connection_error(
    tmp_path: Path,
    tls_router: RouterThread,
    certs: DevCertificates,
    client_key: _core.PrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy = start_tinyproxy(tmp_path / "strict", connect_ports=(443,))
    try:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        with nomyo.SyncSecureChatCompletion(
            tls_router.url, verify=certs.ca_cert, max_retries=2
        ) as client:
            client.client._set_key(client_key)
            with pytest.raises(nomyo.APIConnectionError, match=r"refused the CONNECT.*403"):
                client.create(model="m", messages=user("x"))
        assert len(proxy.lines("Request (file descriptor")) == 1, "a 403 is not retried"
        # A proxy that is not there: a connect failure naming the proxy.
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{free_port()}")
        with nomyo.SyncSecureChatCompletion(
            tls_router.url, verify=certs.ca_cert, max_retries=0
        ) as client:
            client.client._set_key(client_key)
            with pytest.raises(nomyo.APIConnectionError, match="cannot connect to the proxy"):
                client.create(model="m", messages=user("x"))
    finally:
        stop(proxy.proc)


# -- HTTP/2 ----------------------------------------------------------------------------------


@dataclass
class Nginx:
    url: str
    access_log: Path
    proc: subprocess.Popen[bytes]

    def entries(self) -> list[dict[str, str]]:
        out = []
        for line in self.access_log.read_text().splitlines():
            fields = dict(part.split("=", 1) for part in line.split())
            out.append(fields)
        return out


@pytest.fixture(scope="module")
def nginx_h2(
    tmp_path_factory: pytest.TempPathFactory, certs: DevCertificates, plain_router: RouterThread
) -> Iterator[Nginx]:
    if NGINX is None:
        pytest.skip("nginx not installed")
    prefix = tmp_path_factory.mktemp("nginx")
    port = free_port()
    upstream = plain_router.url.removeprefix("http://")
    log = prefix / "access.log"
    (prefix / "nginx.conf").write_text(
        f"""
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    log_format conn 'connection=$connection requests=$connection_requests '
                    'protocol=$server_protocol status=$status uri=$request_uri';
    upstream router {{ server {upstream}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {certs.cert};
        ssl_certificate_key {certs.key};
        http2_max_concurrent_streams 128;
        access_log {log} conn;
        location / {{
            proxy_pass http://router;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""
    )
    proc = subprocess.Popen(
        [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, proc, "nginx")
    yield Nginx(f"https://127.0.0.1:{port}", log, proc)
    stop(proc)


@needs_nginx
def test_http2_concurrent_requests_share_one_connection(
    nginx_h2: Nginx, certs: DevCertificates, client_key: _core.PrivateKey
) -> None:
    before = len(nginx_h2.entries()) if nginx_h2.access_log.exists() else 0

    async def scenario() -> list[str]:
        async with nomyo.SecureChatCompletion(nginx_h2.url, verify=certs.ca_cert) as client:
            assert isinstance(client.client._transport, NativeTransport)
            client.client._set_key(client_key)
            replies = await asyncio.gather(
                *(client.create(model="m", messages=user(f"h2 {i}")) for i in range(64))
            )
            return [str(r.choices[0].message.content) for r in replies]

    assert asyncio.run(scenario()) == [f"h2 {i}" for i in range(64)]
    time.sleep(0.2)  # nginx writes its log line as each request ends
    entries = nginx_h2.entries()[before:]  # the server key's GET, then the 64 POSTs
    assert [e["uri"] for e in entries].count("/v1/chat/secure_completion") == 64
    assert {e["protocol"] for e in entries} == {"HTTP/2.0"}, "ALPN chose h2"
    assert {e["status"] for e in entries} == {"200"}
    assert len({e["connection"] for e in entries}) == 1, "one TCP connection for 64 requests"
    assert max(int(e["requests"]) for e in entries) == len(entries)


@needs_nginx
def test_http2_with_the_blocking_client_and_a_key_fetch(
    nginx_h2: Nginx, certs: DevCertificates
) -> None:
    with nomyo.SyncSecureChatCompletion(nginx_h2.url, verify=certs.ca_cert) as client:
        for i in range(3):  # the first one fetches the server key (GET) over h2 too
            assert client.create(model="m", messages=user(f"s{i}")).choices[0].message.content


def test_a_router_offering_only_http1_still_serves_concurrent_requests(
    tls_router: RouterThread, certs: DevCertificates, client_key: _core.PrivateKey
) -> None:
    async def scenario() -> list[str]:
        async with nomyo.SecureChatCompletion(tls_router.url, verify=certs.ca_cert) as client:
            client.client._set_key(client_key)
            replies = await asyncio.gather(
                *(client.create(model="m", messages=user(f"h1 {i}")) for i in range(16))
            )
            return [str(r.choices[0].message.content) for r in replies]

    before = tls_router.router.connections
    assert asyncio.run(scenario()) == [f"h1 {i}" for i in range(16)]
    assert tls_router.router.connections - before > 1, "HTTP/1.1: a connection per request"


@needs_nginx
@needs_tinyproxy
def test_http2_through_a_connect_tunnel(
    nginx_h2: Nginx,
    tinyproxy: ForwardProxy,
    certs: DevCertificates,
    client_key: _core.PrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", tinyproxy.url)
    before = len(nginx_h2.entries())

    async def scenario() -> list[str]:
        async with nomyo.SecureChatCompletion(nginx_h2.url, verify=certs.ca_cert) as client:
            client.client._set_key(client_key)
            replies = await asyncio.gather(
                *(client.create(model="m", messages=user(f"t{i}")) for i in range(16))
            )
            return [str(r.choices[0].message.content) for r in replies]

    assert asyncio.run(scenario()) == [f"t{i}" for i in range(16)]
    time.sleep(0.2)
    entries = nginx_h2.entries()[before:]
    assert {e["protocol"] for e in entries} == {"HTTP/2.0"}
    assert len({e["connection"] for e in entries}) == 1
    assert tinyproxy.connects(nginx_h2.url.removeprefix("https://")) == 1
