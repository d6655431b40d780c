"""``nomyo._transport``, the httpx plumbing: a caller's httpx transport or client must verify
certificates (an unverifying one is refused, one that cannot be inspected is logged once),
an ``SSLContext`` must verify, replies are asked for uncompressed. (From issue 18,
finding 6, and the security review.)"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import nomyo
from nomyo import _core
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
