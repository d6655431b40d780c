"""SecureChatCompletion end to end against the development router (a real HTTP server)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import nomyo
from nomyo import _core, _pipeline
from nomyo.testing import DevRouter, Fault, RouterThread, make_test_certificates

sys.path.insert(0, str(Path(__file__).resolve().parent))
from oracle_server import OracleServer


@pytest.fixture(autouse=True)
def _clean_faults(router: RouterThread) -> Iterator[None]:
    router.router.faults.clear()
    yield
    router.router.faults.clear()


@pytest.fixture
def delays(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the retry delays the client asks for, and sleep only briefly."""
    asked: list[float] = []
    real = _pipeline.retry_delay

    def fast(attempt: int, retry_after: float | None = None) -> float:
        asked.append(real(attempt, retry_after))
        return 0.01

    monkeypatch.setattr(_pipeline, "retry_delay", fast)
    return asked


def chat(url: str, key: _core.PrivateKey, **kwargs: Any) -> nomyo.SecureChatCompletion:
    client = nomyo.SecureChatCompletion(base_url=url, allow_http=True, **kwargs)
    client.client._set_key(key)
    return client


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def one(client: nomyo.SecureChatCompletion, text: str, **kwargs: Any) -> dict[str, Any]:
    async with client:
        return await client.create(
            model="m", messages=[{"role": "user", "content": text}], **kwargs
        )


def content(reply: dict[str, Any]) -> Any:
    return reply["choices"][0]["message"]["content"]


def test_plain_request(router: RouterThread, client_key: _core.PrivateKey) -> None:
    reply = run(one(chat(router.url, client_key), "hello there"))
    assert content(reply) == "hello there"
    assert reply["object"] == "chat.completion"
    meta = reply["_metadata"]
    recorded = router.router.requests[-1]
    assert meta["payload_id"] == recorded.payload_id
    assert meta["is_encrypted"] is True
    assert meta["encryption_algorithm"] == "hybrid-aes256-rsa4096"
    assert isinstance(meta["processed_at"], int)
    assert recorded.body == {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}


def test_multi_turn_and_parameters_pass_through(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "second"},
    ]
    params = {
        "temperature": 0.25,
        "seed": 7,
        "logit_bias": {"50256": -100},
        "response_format": {"type": "json_object"},
        "stop": ["\n\n"],
        "user": "u-1",
    }

    async def go() -> dict[str, Any]:
        async with chat(router.url, client_key, api_key="ignored-by-router") as client:
            return await client.create(
                "m", messages, security_tier="high", base_url=router.url, **params
            )

    reply = run(go())
    assert content(reply) == "second"
    body = router.router.requests[-1].body
    assert body == {"model": "m", "messages": messages, **params}
    headers = router.router.requests[-1].headers
    assert headers["x-security-tier"] == "high"
    assert headers["authorization"] == "Bearer ignored-by-router"
    assert "ignored-by-router" not in repr(router.router.requests[-1])


def test_tools_are_echoed_as_tool_calls(router: RouterThread, client_key: _core.PrivateKey) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    reply = run(one(chat(router.url, client_key), "weather?", tools=tools, tool_choice="auto"))
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert router.router.requests[-1].body["tools"] == tools


@pytest.mark.parametrize(
    "text",
    ["héllo wörld", "日本語のテキスト", "مرحبا", "👩‍👩‍👧‍👦 🎉", 'quotes " and \\ and \n\t\x00', ""],
)
def test_unicode(router: RouterThread, client_key: _core.PrivateKey, text: str) -> None:
    assert content(run(one(chat(router.url, client_key), text))) == text


@pytest.mark.parametrize("size", [1 << 20, 8 << 20])
def test_large_messages(router: RouterThread, client_key: _core.PrivateKey, size: int) -> None:
    text = ("abcdefghé" * (size // 9 + 1))[:size]
    assert content(run(one(chat(router.url, client_key), text))) == text


def test_api_key_accepted_and_refused(client_key: _core.PrivateKey) -> None:
    with DevRouter(key_bits=2048, api_keys=["sk-good"]).run_in_thread() as handle:
        ok = run(one(chat(handle.url, client_key, api_key="sk-good"), "hi"))
        assert content(ok) == "hi"
        with pytest.raises(nomyo.AuthenticationError) as info:
            run(one(chat(handle.url, client_key, api_key="sk-bad"), "hi"))
        assert info.value.status_code == 401
        assert info.value.payload_id == handle.router.requests[-1].payload_id
        assert "sk-bad" not in str(info.value)
        assert "sk-bad" not in repr(info.value)
        with pytest.raises(nomyo.AuthenticationError):
            run(one(chat(handle.url, client_key), "no key"))


@pytest.mark.parametrize("tier", ["standard", "high"])
def test_tiers(router: RouterThread, client_key: _core.PrivateKey, tier: str) -> None:
    reply = run(one(chat(router.url, client_key), "t", security_tier=tier))
    assert reply["_metadata"]["security_tier"] == tier
    assert router.router.requests[-1].headers["x-security-tier"] == tier


def test_maximum_tier_without_tpm_is_503(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    with pytest.raises(nomyo.ServiceUnavailableError) as info:
        run(one(chat(router.url, client_key, max_retries=0), "t", security_tier="maximum"))
    assert info.value.status_code == 503


def test_invalid_tier_and_stream_refused_before_sending(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    before = router.router.secure_requests
    with pytest.raises(nomyo.ConfigurationError, match="security_tier"):
        run(one(chat(router.url, client_key), "t", security_tier="ultra"))
    with pytest.raises(ValueError, match="security_tier"):
        run(one(chat(router.url, client_key), "t", security_tier="ultra"))
    with pytest.raises(nomyo.InvalidRequestError, match="stream"):
        run(one(chat(router.url, client_key), "t", stream=True))
    assert router.router.secure_requests == before


def test_http_refused_without_allow_http(router: RouterThread) -> None:
    with pytest.raises(nomyo.SecurityError, match="HTTP"):
        nomyo.SecureChatCompletion(base_url=router.url)
    with pytest.raises(nomyo.SecurityError):
        nomyo.SecureCompletionClient(router_url=router.url)


STATUS_CLASSES = [
    (400, nomyo.InvalidRequestError, False),
    (401, nomyo.AuthenticationError, False),
    (403, nomyo.ForbiddenError, False),
    (404, nomyo.APIError, False),
    (418, nomyo.APIError, False),
    (429, nomyo.RateLimitError, True),
    (500, nomyo.ServerError, True),
    (502, nomyo.APIError, True),
    (503, nomyo.ServiceUnavailableError, True),
    (504, nomyo.APIError, True),
]


@pytest.mark.parametrize(("status", "cls", "retried"), STATUS_CLASSES)
def test_every_error_status(
    router: RouterThread,
    client_key: _core.PrivateKey,
    delays: list[float],
    status: int,
    cls: type[nomyo.APIError],
    retried: bool,
) -> None:
    router.router.faults.push(Fault(status=status, detail=f"detail {status}", times=3))
    before = router.router.secure_requests
    with pytest.raises(cls) as info:
        run(one(chat(router.url, client_key, max_retries=2), "x"))
    err = info.value
    assert type(err) is cls
    assert err.status_code == status
    assert err.detail == f"detail {status}"
    assert err.payload_id is not None
    assert router.router.secure_requests - before == (3 if retried else 1)
    assert len(delays) == (2 if retried else 0)


def test_error_body_empty_or_not_json(router: RouterThread, client_key: _core.PrivateKey) -> None:
    for body in (b"", b"<html>oops</html>", b"[1, 2]"):
        router.router.faults.push(Fault(status=400, body=body))
        with pytest.raises(nomyo.InvalidRequestError) as info:
            run(one(chat(router.url, client_key), "x"))
        assert info.value.detail is None


def test_retry_then_success_reencrypts(
    router: RouterThread,
    client_key: _core.PrivateKey,
    delays: list[float],
) -> None:
    router.router.requests.clear()
    router.router.faults.push(Fault(status=503, times=1), Fault(status=500, times=1))
    reply = run(one(chat(router.url, client_key, max_retries=2), "again"))
    assert content(reply) == "again"
    sealed = [r.envelope_sha256 for r in router.router.requests]
    assert len(sealed) == 3
    assert len(set(sealed)) == 3, "each attempt is encrypted afresh"
    assert len(delays) == 2
    assert delays[1] > delays[0] * 1.4, "exponential backoff"


def test_retry_after_is_honoured(
    router: RouterThread, client_key: _core.PrivateKey, delays: list[float]
) -> None:
    router.router.faults.push(Fault(status=429, retry_after="0.2"))
    assert content(run(one(chat(router.url, client_key), "later"))) == "later"
    assert delays == [0.2]


def test_long_retry_after_raises_at_once(
    router: RouterThread, client_key: _core.PrivateKey, delays: list[float]
) -> None:
    router.router.faults.push(Fault(status=503, retry_after="1800", detail="cool-down", times=3))
    before = router.router.secure_requests
    with pytest.raises(nomyo.ServiceUnavailableError) as info:
        run(one(chat(router.url, client_key, max_retries=2), "x"))
    assert info.value.retry_after == 1800
    assert router.router.secure_requests - before == 1
    assert delays == []


def test_timeout_is_a_connection_error(router: RouterThread, client_key: _core.PrivateKey) -> None:
    router.router.faults.push(Fault(delay=2.0))
    client = chat(router.url, client_key, max_retries=0, timeout=httpx.Timeout(5.0, read=0.3))
    with pytest.raises(nomyo.APITimeoutError) as info:
        run(one(client, "slow"))
    assert isinstance(info.value, nomyo.APIConnectionError)
    assert info.value.payload_id is not None


def test_dropped_connection_retried(
    router: RouterThread, client_key: _core.PrivateKey, delays: list[float]
) -> None:
    router.router.faults.push(Fault(drop_connection=True))
    assert content(run(one(chat(router.url, client_key, max_retries=1), "drop"))) == "drop"
    router.router.faults.push(Fault(drop_connection=True))
    with pytest.raises(nomyo.APIConnectionError):
        run(one(chat(router.url, client_key, max_retries=0), "drop"))


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault(tamper_reply=True), nomyo.SecurityError),
        (Fault(wrong_key_reply=True), nomyo.SecurityError),
        (Fault(garbage_reply=b"\x00\xffgarbage"), nomyo.EnvelopeError),
        (Fault(garbage_reply=b'{"version": "1.0"}'), nomyo.EnvelopeError),
        (Fault(garbage_reply=b"[]"), nomyo.EnvelopeError),
    ],
)
def test_untrustworthy_replies_then_recovery(
    router: RouterThread, client_key: _core.PrivateKey, fault: Fault, error: type[Exception]
) -> None:
    async def go() -> tuple[BaseException, dict[str, Any]]:
        async with chat(router.url, client_key) as client:
            router.router.faults.push(fault)
            try:
                await client.create("m", [{"role": "user", "content": "secret words"}])
            except Exception as exc:
                caught: BaseException = exc
            else:
                raise AssertionError("no error")
            reply = await client.create("m", [{"role": "user", "content": "next"}])
            return caught, reply

    caught, reply = run(go())
    assert type(caught) is error
    assert "secret words" not in str(caught)
    assert content(reply) == "next"


def test_security_errors_are_identical(router: RouterThread, client_key: _core.PrivateKey) -> None:
    messages = set()
    for fault in (Fault(tamper_reply=True), Fault(wrong_key_reply=True)):
        router.router.faults.push(fault)
        with pytest.raises(nomyo.SecurityError) as info:
            run(one(chat(router.url, client_key), "x"))
        messages.add(str(info.value))
    assert len(messages) == 1


def test_key_rotation_refetches_once(client_key: _core.PrivateKey) -> None:
    with DevRouter(key_bits=2048).run_in_thread() as handle:

        async def go() -> list[dict[str, Any]]:
            async with chat(handle.url, client_key) as client:
                first = await client.create("m", [{"role": "user", "content": "a"}])
                handle.router.faults.push(Fault(rotate_key=True))
                second = await client.create("m", [{"role": "user", "content": "b"}])
                return [first, second]

        first, second = run(go())
        assert (content(first), content(second)) == ("a", "b")
        assert handle.router.key_fetches == 2


def test_hundred_concurrent_requests_one_key_fetch(client_key: _core.PrivateKey) -> None:
    with DevRouter(key_bits=2048).run_in_thread() as handle:

        async def go() -> list[dict[str, Any]]:
            async with chat(handle.url, client_key) as client:
                tasks = [
                    client.create("m", [{"role": "user", "content": f"request {i}"}])
                    for i in range(100)
                ]
                replies = await asyncio.gather(*tasks)
                after_burst = handle.router.connections
                for i in range(10):
                    reply = await client.create("m", [{"role": "user", "content": f"seq {i}"}])
                    assert content(reply) == f"seq {i}"
                assert handle.router.connections == after_burst, "keep-alive reuse"
                return list(replies)

        replies = run(go())
        assert [content(r) for r in replies] == [f"request {i}" for i in range(100)]
        assert len({r["_metadata"]["payload_id"] for r in replies}) == 100
        assert handle.router.key_fetches == 1
        assert handle.router.connections <= 100


def test_sequential_requests_reuse_one_connection(client_key: _core.PrivateKey) -> None:
    with DevRouter(key_bits=2048).run_in_thread() as handle:

        async def go() -> None:
            async with chat(handle.url, client_key) as client:
                for i in range(5):
                    await client.create("m", [{"role": "user", "content": str(i)}])

        run(go())
        assert handle.router.connections == 1
        assert handle.router.key_fetches == 1


def test_https_with_ca(tmp_path: Path, client_key: _core.PrivateKey) -> None:
    certs = make_test_certificates(tmp_path)
    router = DevRouter(key_bits=2048, tls_cert=certs.cert, tls_key=certs.key)
    with router.run_in_thread() as handle:
        assert handle.url.startswith("https://")
        client = nomyo.SecureChatCompletion(base_url=handle.url, verify=certs.ca_cert)
        client.client._set_key(client_key)
        assert content(run(one(client, "tls"))) == "tls"
        untrusted = nomyo.SecureChatCompletion(base_url=handle.url, max_retries=0)
        untrusted.client._set_key(client_key)
        with pytest.raises(nomyo.APIConnectionError):
            run(one(untrusted, "tls"))
        with pytest.raises(nomyo.ConfigurationError):
            nomyo.SecureChatCompletion(base_url=handle.url, verify=False)


def test_server_key_pinning(router: RouterThread, client_key: _core.PrivateKey) -> None:
    good = router.router.public_key.fingerprint()
    reply = run(one(chat(router.url, client_key, server_key_fingerprint=[good]), "pinned"))
    assert content(reply) == "pinned"
    before = router.router.secure_requests
    wrong = "sha256:" + "0" * 64
    with pytest.raises(nomyo.SecurityError, match="pinned"):
        run(one(chat(router.url, client_key, server_key_fingerprint=wrong), "x"))
    assert router.router.secure_requests == before, "nothing sent to an unpinned key"


def test_key_dir_generated_once_and_reused(router: RouterThread, tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    first = nomyo.SecureChatCompletion(base_url=router.url, allow_http=True, key_dir=key_dir)
    run(one(first, "a"))
    pem = (key_dir / "public_key.pem").read_text()
    assert (key_dir / "private_key.pem").stat().st_mode & 0o777 == 0o600
    second = nomyo.SecureChatCompletion(base_url=router.url, allow_http=True, key_dir=key_dir)
    run(one(second, "b"))
    assert second.client.public_key_pem is not None
    assert second.client.public_key_pem.strip() == pem.strip()


def test_corrupt_key_dir_is_an_error_not_a_regeneration(
    router: RouterThread, tmp_path: Path
) -> None:
    key_dir = tmp_path / "keys"
    key_dir.mkdir()
    private = key_dir / "private_key.pem"
    private.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    private.chmod(0o600)
    client = nomyo.SecureChatCompletion(base_url=router.url, allow_http=True, key_dir=key_dir)
    with pytest.raises(nomyo.KeyFormatError):
        run(one(client, "x"))
    assert "AAAA" in private.read_text(), "the user's file is untouched"


def test_requests_open_in_a_cryptography_only_server(client_key: _core.PrivateKey) -> None:
    with OracleServer(key_bits=2048) as server:
        reply = run(one(chat(server.url, client_key), "oracle ✓", temperature=0.5))
        assert content(reply) == "oracle ✓"
        recorded = server.requests[-1]
        assert recorded["body"] == {
            "model": "m",
            "messages": [{"role": "user", "content": "oracle ✓"}],
            "temperature": 0.5,
        }


def test_one_client_across_event_loops(router: RouterThread, client_key: _core.PrivateKey) -> None:
    """Reference-style code calls asyncio.run() once per request on one client."""
    client = chat(router.url, client_key)
    for text in ("first loop", "second loop", "third loop"):
        reply = asyncio.run(client.create("m", [{"role": "user", "content": text}]))
        assert content(reply) == text
