"""``nomyo._transports``: the factory's choice, each transport's pool, lifecycle and error
mapping (table-driven, against a development router, a closed port and a silent server), and
the httpx transport's checks of a caller's transport or client (an unverifying one is
refused, one that cannot be inspected is logged once), an ``SSLContext`` must verify,
replies are asked for uncompressed. (The checks come from issue 18, finding 6, and the
security review.)"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import nomyo
from nomyo import _core
from nomyo._config import ClientOptions, Timeouts
from nomyo._constants import CONNECT_TIMEOUT, POOL_TIMEOUT, READ_TIMEOUT, WRITE_TIMEOUT
from nomyo._effects import adrive, drive
from nomyo._transports import HttpxTransport, NativeTransport, Transport, make_transport
from nomyo.testing import DevCertificates, DevRouter, RouterThread, make_test_certificates

PAYLOAD = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def router() -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        yield handle


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


def test_ssl_context_must_verify() -> None:
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    with pytest.raises(nomyo.ConfigurationError, match="CERT_REQUIRED"):
        nomyo.SecureChatCompletion(verify=unverified)
    no_hostname = ssl.create_default_context()
    no_hostname.check_hostname = False
    with pytest.raises(nomyo.ConfigurationError):
        nomyo.SyncSecureChatCompletion(verify=no_hostname)


def test_replies_are_requested_uncompressed() -> None:
    key = _core.PrivateKey.generate(2048)
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        client = nomyo.SecureChatCompletion(base_url=handle.url, allow_http=True)
        client.client._set_key(key)
        asyncio.run(client.create("m", [{"role": "user", "content": "x"}]))
        assert handle.router.requests[-1].headers["accept-encoding"] == "identity"


# -- the factory ---------------------------------------------------------------------------


def verifying_context() -> ssl.SSLContext:
    return ssl.create_default_context()


@pytest.mark.parametrize(
    ("options", "environment", "chosen"),
    [
        ({}, {}, NativeTransport),
        ({"verify": "/etc/ssl/certs/ca-certificates.crt"}, {}, NativeTransport),
        ({}, {"NOMYO_TRANSPORT": "native"}, NativeTransport),
        ({}, {"NOMYO_TRANSPORT": "httpx"}, HttpxTransport),
        ({"verify": "context"}, {}, HttpxTransport),
        ({"transport": "mock"}, {}, HttpxTransport),
        ({"http_client": "client"}, {}, HttpxTransport),
        ({}, {"HTTPS_PROXY": "http://127.0.0.1:9"}, NativeTransport),
        ({}, {"HTTPS_PROXY": "https://127.0.0.1:9"}, HttpxTransport),
    ],
    ids=[
        "default",
        "ca-file",
        "env-native",
        "env-httpx",
        "ssl-context",
        "caller-transport",
        "caller-client",
        "http-proxy",
        "https-proxy",
    ],
)
@pytest.mark.parametrize("asynchronous", [False, True])
def test_the_factory_picks_one_transport(
    monkeypatch: pytest.MonkeyPatch,
    options: dict[str, Any],
    environment: dict[str, str],
    chosen: type[Transport],
    asynchronous: bool,
) -> None:
    for name in ("NOMYO_TRANSPORT", "https_proxy", "http_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    given = dict(options)
    if given.get("verify") == "context":
        given["verify"] = verifying_context()
    mock = httpx.MockTransport(lambda request: httpx.Response(200))
    if given.get("transport") == "mock":
        given["transport"] = mock
    if given.get("http_client") == "client":
        given["http_client"] = (httpx.AsyncClient if asynchronous else httpx.Client)(transport=mock)
    transport = make_transport(ClientOptions(**given), asynchronous=asynchronous)
    assert type(transport) is chosen
    if isinstance(transport, HttpxTransport):
        kind = httpx.AsyncClient if asynchronous else httpx.Client
        assert isinstance(transport.http, kind)
    transport.close()
    assert transport.closed


@pytest.mark.parametrize("value", ["h2", "none", "HTTPX2"])
def test_an_unknown_transport_name_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("NOMYO_TRANSPORT", value)
    with pytest.raises(nomyo.ConfigurationError, match="NOMYO_TRANSPORT"):
        make_transport(ClientOptions(), asynchronous=False)


@pytest.mark.parametrize(
    ("timeout", "expected"),
    [
        (None, Timeouts(CONNECT_TIMEOUT, READ_TIMEOUT, WRITE_TIMEOUT, POOL_TIMEOUT)),
        (2.5, Timeouts(2.5, 2.5, 2.5, 2.5)),
        (httpx.Timeout(1.0, read=7.0), Timeouts(1.0, 7.0, 1.0, 1.0)),
    ],
    ids=["default", "seconds", "httpx-timeout"],
)
def test_one_timeouts_type_for_both_transports(timeout: Any, expected: Timeouts) -> None:
    assert ClientOptions(timeout=timeout).timeouts == expected
    assert Timeouts.of(timeout).to_httpx() == httpx.Timeout(
        connect=expected.connect, read=expected.read, write=expected.write, pool=expected.pool
    )
    assert Timeouts.of_call(nomyo.NOT_GIVEN) is None  # the client's
    assert Timeouts.of_call(None) == Timeouts(None, None, None, None)  # no limit


# -- lifecycle: each transport owns its pool ---------------------------------------------


def test_a_callers_pool_is_never_closed_an_owned_one_is() -> None:
    mock = httpx.MockTransport(lambda request: httpx.Response(200))
    theirs = httpx.Client(transport=mock)
    transport = HttpxTransport(False, theirs)
    transport.close()
    assert transport.closed and not theirs.is_closed
    owned = HttpxTransport(False, transport=mock)
    owned.close()
    assert owned.http.is_closed
    theirs.close()


def test_an_async_pool_moves_to_a_new_loop_unless_it_is_the_callers() -> None:
    mock = httpx.MockTransport(lambda request: httpx.Response(200))
    owned = HttpxTransport(True, transport=mock)
    theirs = HttpxTransport(True, httpx.AsyncClient(transport=mock))

    async def bind() -> tuple[bool, bool, bool]:
        return owned.bind_loop(), owned.bind_loop(), theirs.bind_loop()

    first_pool, their_pool = owned.http, theirs.http
    assert asyncio.run(bind()) == (True, False, True)
    assert owned.http is first_pool  # the first loop keeps the pool made for it
    assert asyncio.run(bind()) == (True, False, True)  # a second asyncio.run: a new loop
    assert owned.http is not first_pool and theirs.http is their_pool
    asyncio.run(owned.aclose())  # the pool of an ended loop is dropped, not awaited
    assert owned.closed


def test_native_transport_owns_its_pool_and_closes(
    router: RouterThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOMYO_TRANSPORT", raising=False)
    with nomyo.SyncSecureChatCompletion(router.url, allow_http=True) as client:
        client.client._set_key(_core.PrivateKey.generate(2048))
        client.create("m", [{"role": "user", "content": "hi"}])
        transport = client.client._transport
        assert isinstance(transport, NativeTransport)
        assert transport.pool.idle_connections >= 1  # its own pool, kept alive
    assert transport.closed
    assert repr(transport).startswith("<NativeTransport idle=")
    with pytest.raises(nomyo.ClientClosedError):
        client.create("m", [{"role": "user", "content": "again"}])


# -- error mapping: each transport maps its own failures ------------------------------------


class SilentServer:
    """Accepts connections and never answers (a read timeout)."""

    def __init__(self) -> None:
        import socket

        self.socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"

    def close(self) -> None:
        self.socket.close()


def closed_port_url() -> str:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


@pytest.mark.parametrize("kind", ["native", "httpx"])
@pytest.mark.parametrize("driver", ["blocking", "awaited"])
@pytest.mark.parametrize(
    ("where", "error"),
    [("closed-port", nomyo.APIConnectionError), ("silent", nomyo.APITimeoutError)],
)
def test_network_failures_are_mapped_by_each_transport(
    silent: SilentServer,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    driver: str,
    where: str,
    error: type[Exception],
) -> None:
    monkeypatch.setenv("NOMYO_TRANSPORT", kind)
    asynchronous = driver == "awaited"
    options = ClientOptions(silent.url, allow_http=True, timeout=0.3)
    transport = make_transport(options, asynchronous=asynchronous)
    assert type(transport) is (NativeTransport if kind == "native" else HttpxTransport)
    url = (silent.url if where == "silent" else closed_port_url()) + "/pki/public_key"

    async def awaited() -> Any:
        try:
            return await adrive(transport.get_key(url), transport)
        finally:
            await transport.aclose()

    def blocking() -> Any:
        try:
            return drive(transport.get_key(url), transport)
        finally:
            transport.close()

    with pytest.raises(error) as caught:
        asyncio.run(awaited()) if asynchronous else blocking()
    assert type(caught.value) is error
    assert "fetching the server key" in str(caught.value)
    assert caught.value.__cause__ is not None  # the transport's own failure, chained
