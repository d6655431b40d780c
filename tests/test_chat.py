"""``nomyo._chat``, the chat clients as a new user meets them against the development
router: messages checked before anything is encrypted, the request size limit, a closed
client, errors carrying the payload id. (Written for issue 19, the library's rough edges;
its other items moved to test_params, test_retry, test_config, test_response, test_exports.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chat_support import HELLO, async_chat, sync_chat

import nomyo
from nomyo import _core
from nomyo.testing import DevRouter, Fault, RouterThread, make_test_certificates

pytestmark = pytest.mark.usefixtures("_clean")

TESTS = Path(__file__).resolve().parent

#: Both transports: the native one (default) and httpx.


# -- 1. messages of the wrong shape are refused, not mangled -------------------------------------


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ("hello", r"messages must be a list of messages .* not a str"),
        (b"hello", r"not a bytes"),
        ({"role": "user", "content": "hi"}, r"not a dict"),
        (["hello"], r"messages\[0\] must be a message mapping .* not a str"),
        ([{"role": "user", "content": "a"}, ("role", "user")], r"messages\[1\] .* not a tuple"),
        (42, r"not a int"),
        (None, r"not a NoneType"),
    ],
)
def test_wrong_messages_refused_before_anything_is_encrypted(
    router: RouterThread, client_key: _core.PrivateKey, messages: Any, match: str
) -> None:
    before = (router.router.secure_requests, router.router.key_fetches)
    with sync_chat(router.url, client_key) as client:
        with pytest.raises(TypeError, match=match):
            client.create("m", messages)
        with pytest.raises(TypeError, match=match):
            client.chat.completions.create(model="m", messages=messages)

    async def go() -> None:
        async with async_chat(router.url, client_key) as client:
            with pytest.raises(TypeError, match=match):
                await client.create("m", messages)
            with pytest.raises(TypeError, match=match):
                await client.chat.completions.create(model="m", messages=messages)

    asyncio.run(go())
    # Not even the server key was fetched: nothing was encrypted or sent.
    assert (router.router.secure_requests, router.router.key_fetches) == before


def test_any_iterable_of_message_mappings_is_sent_as_a_list(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    from types import MappingProxyType

    with sync_chat(router.url, client_key) as client:
        messages = (m for m in [MappingProxyType({"role": "user", "content": "from a generator"})])
        reply = client.create("m", messages)
    assert reply.choices[0].message.content == "from a generator"
    assert router.router.requests[-1].body["messages"] == [
        {"role": "user", "content": "from a generator"}
    ]


# -- 2. per-call options are honoured, never sent in the payload ---------------------------------


# -- 4. failures that cannot succeed are not retried ---------------------------------------------


@pytest.fixture(scope="module")
def tls_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterThread]:
    certs = make_test_certificates(tmp_path_factory.mktemp("certs"))
    router = DevRouter(key_bits=2048, tls_cert=certs.cert, tls_key=certs.key)
    with router.run_in_thread() as handle:
        yield handle


# -- 5. a base URL ending in /v1 ------------------------------------------------------------------


# -- 6. no output unless the application asks for it ----------------------------------------------


# -- 7. a request too large is refused before it is encrypted -------------------------------------


def test_too_large_refused_before_sealing(
    router: RouterThread, client_key: _core.PrivateKey, transport: str
) -> None:
    before = (router.router.secure_requests, router.router.key_fetches)
    big = [{"role": "user", "content": "x" * 4096}]
    with sync_chat(router.url, client_key, max_request_size=4000) as client:
        with pytest.raises(nomyo.RequestTooLargeError) as info:
            client.create("m", big)
        assert info.value.limit == 4000
        assert info.value.size is not None and info.value.size > 4000
        assert "max_request_size=4000" in str(info.value)
        assert isinstance(info.value, nomyo.InvalidRequestError)
        # the default limit (32 MiB) lets it through
    with sync_chat(router.url, client_key) as client:
        assert client.client.max_request_size == 32 * 1024 * 1024
        assert client.create("m", big).choices[0].message.content == "x" * 4096
    assert router.router.secure_requests - before[0] == 1


def test_default_limit_refuses_a_60_mb_prompt_without_sealing(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    huge = [{"role": "user", "content": "y" * (60 * 1000 * 1000)}]
    before = (router.router.secure_requests, router.router.key_fetches)
    with (
        sync_chat(router.url, client_key) as client,
        pytest.raises(nomyo.RequestTooLargeError, match="max_request_size=33554432"),
    ):
        client.create("m", huge)
    assert (router.router.secure_requests, router.router.key_fetches) == before


def test_router_413_names_the_limit(
    client_key: _core.PrivateKey, transport: str, fast_retries: list[float]
) -> None:
    # The router takes 64 KiB bodies; the client allows 1 MiB of text.
    with (
        DevRouter(key_bits=2048, max_body=64 * 1024).run_in_thread() as handle,
        sync_chat(handle.url, client_key, max_request_size=1 << 20) as client,
        pytest.raises(nomyo.RequestTooLargeError) as info,
    ):
        client.create("m", [{"role": "user", "content": "z" * 100_000}])
    assert fast_retries == [], "413 is not retried"
    error = info.value
    assert error.status_code == 413
    assert error.limit == 1 << 20
    message = str(error)
    assert "HTTP 413" in message and "exceeds 65536 bytes" in message  # the router's limit
    assert "max_request_size=1048576" in message  # and the client's
    assert error.size is not None and error.size > 100_000
    assert "Unexpected status" not in message


def test_invalid_limit_refused() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(nomyo.ConfigurationError, match="max_request_size"):
            nomyo.SecureChatCompletion(max_request_size=bad)  # type: ignore[arg-type]


# -- 11. typed like the SDK under mypy --strict ---------------------------------------------------


# -- 12. replies, errors, a closed client ---------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault(tamper_reply=True), nomyo.SecurityError),
        (Fault(garbage_reply=b'{"version": "1.0"}'), nomyo.EnvelopeError),
    ],
)
def test_security_and_envelope_errors_carry_the_payload_id(
    router: RouterThread,
    client_key: _core.PrivateKey,
    transport: str,
    fault: Fault,
    error: type[Exception],
) -> None:
    router.router.faults.push(fault)
    with sync_chat(router.url, client_key) as client, pytest.raises(error) as info:
        client.create("m", HELLO)
    sent = router.router.requests[-1].payload_id
    assert sent is not None
    assert info.value.payload_id == sent  # type: ignore[attr-defined]
    assert sent not in str(info.value), "the message stays as it was"

    async def go() -> None:
        router.router.faults.push(fault)
        async with async_chat(router.url, client_key) as client:
            with pytest.raises(error) as info:
                await client.create("m", HELLO)
        assert info.value.payload_id == router.router.requests[-1].payload_id  # type: ignore[attr-defined]

    asyncio.run(go())


def test_closed_client_raises_a_nomyo_error(
    router: RouterThread, client_key: _core.PrivateKey, transport: str
) -> None:
    client = sync_chat(router.url, client_key)
    client.close()
    with pytest.raises(nomyo.ClientClosedError, match="closed") as info:
        client.create("m", HELLO)
    assert isinstance(info.value, nomyo.NomyoError)
    assert isinstance(info.value, RuntimeError)  # what httpx (and earlier nomyo) raised

    async def go() -> None:
        client = async_chat(router.url, client_key)
        await client.aclose()
        with pytest.raises(nomyo.ClientClosedError):
            await client.create("m", HELLO)

    asyncio.run(go())
