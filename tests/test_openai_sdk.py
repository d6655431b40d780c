"""The official ``openai`` SDK, sync and async, end-to-end encrypted through
``nomyo.openai_http_client`` / ``nomyo.openai_async_http_client``."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import nomyo
from nomyo import _core
from nomyo.testing import DevRouter, Fault, RouterThread, make_test_certificates

MESSAGES = [{"role": "user", "content": "hello from the official SDK"}]


@pytest.fixture(scope="module")
def router() -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048, api_keys=["sk-nomyo"]).run_in_thread() as handle:
        yield handle


@pytest.fixture(autouse=True)
def _clean(router: RouterThread, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("NOMYO_API_KEY", "NOMYO_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    router.router.faults.clear()
    yield
    router.router.faults.clear()


def http_client(url: str, key: _core.PrivateKey, **kwargs: Any) -> httpx.Client:
    kwargs.setdefault("api_key", "sk-nomyo")
    client = nomyo.openai_http_client(url, allow_http=True, **kwargs)
    transport = client._transport
    assert isinstance(transport, nomyo._openai.OpenAITransport)
    transport.chat.client._set_key(key)
    return client


def async_http_client(url: str, key: _core.PrivateKey, **kwargs: Any) -> httpx.AsyncClient:
    kwargs.setdefault("api_key", "sk-nomyo")
    client = nomyo.openai_async_http_client(url, allow_http=True, **kwargs)
    transport = client._transport
    assert isinstance(transport, nomyo._openai.AsyncOpenAITransport)
    transport.chat.client._set_key(key)
    return client


def sdk(url: str, key: _core.PrivateKey, max_retries: int = 0, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="sk-openai-must-not-leak",
        base_url="https://api.openai.invalid/v1",
        max_retries=max_retries,
        http_client=http_client(url, key, **kwargs),
    )


def test_the_sdk_accepts_our_client_class() -> None:
    # Newer SDKs build on httpx2 (openai.DefaultHttpxClient subclasses httpx2.Client); older
    # ones on httpx itself. Ours is a client of the one the installed SDK builds on.
    from nomyo._openai import sdk_http

    http = sdk_http()
    assert http.__name__ == openai.DefaultHttpxClient.__mro__[1].__module__.split(".")[0]
    client = nomyo.openai_http_client("https://router.invalid")
    assert isinstance(client, http.Client)
    assert isinstance(client._transport, http.BaseTransport)
    openai.OpenAI(api_key="x", http_client=client).close()
    async_client = nomyo.openai_async_http_client("https://router.invalid")
    assert isinstance(async_client, http.AsyncClient)
    asyncio.run(openai.AsyncOpenAI(api_key="x", http_client=async_client).close())


def test_sync_sdk_completion_is_encrypted(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    with sdk(router.url, client_key) as client:
        before = router.router.secure_requests
        out = client.chat.completions.create(
            model="Qwen/Qwen3-0.6B", messages=MESSAGES, temperature=0.2, max_tokens=16, seed=1
        )
    assert isinstance(out, openai.types.chat.ChatCompletion)
    assert out.choices[0].message.content == "hello from the official SDK"
    assert out.usage is not None and out.usage.total_tokens > 0
    assert router.router.secure_requests == before + 1, "went through the secure endpoint"
    recorded = router.router.requests[-1]
    assert recorded.body == {
        "model": "Qwen/Qwen3-0.6B",
        "messages": MESSAGES,
        "temperature": 0.2,
        "max_tokens": 16,
        "seed": 1,
    }
    assert out._request_id == recorded.payload_id
    assert out.model_extra is not None
    assert out.model_extra["_metadata"]["is_encrypted"] is True
    assert recorded.headers["authorization"] == "Bearer sk-nomyo"
    assert "sk-openai-must-not-leak" not in str(recorded.headers)


def test_async_sdk_completion_is_encrypted(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    async def go() -> list[str]:
        client = openai.AsyncOpenAI(
            api_key="unused", max_retries=0, http_client=async_http_client(router.url, client_key)
        )
        async with client:
            outs = await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": f"async sdk {i}"}]
                    )
                    for i in range(5)
                )
            )
        return [o.choices[0].message.content or "" for o in outs]

    before = router.router.secure_requests
    assert asyncio.run(go()) == [f"async sdk {i}" for i in range(5)]
    assert router.router.secure_requests == before + 5


def test_tools_round_trip(router: RouterThread, client_key: _core.PrivateKey) -> None:
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    with sdk(router.url, client_key) as client:
        out = client.chat.completions.create(model="m", messages=MESSAGES, tools=tools)
    call = out.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert router.router.requests[-1].body["tools"] == tools


def test_security_tier_by_extra_body_or_header(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    with sdk(router.url, client_key) as client:
        client.chat.completions.create(
            model="m", messages=MESSAGES, extra_body={"security_tier": "high"}
        )
        assert router.router.requests[-1].headers["x-security-tier"] == "high"
        assert "security_tier" not in router.router.requests[-1].body
        client.chat.completions.create(
            model="m", messages=MESSAGES, extra_headers={"X-Security-Tier": "standard"}
        )
        assert router.router.requests[-1].headers["x-security-tier"] == "standard"
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(
                model="m", messages=MESSAGES, extra_body={"security_tier": "ultra"}
            )
        assert info.value.code == "configuration_error"


def test_models_and_unknown_endpoints(router: RouterThread, client_key: _core.PrivateKey) -> None:
    with sdk(router.url, client_key, models=["Qwen/Qwen3-0.6B", "other"]) as client:
        assert [m.id for m in client.models.list()] == ["Qwen/Qwen3-0.6B", "other"]
        assert client.models.retrieve("other").id == "other"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("missing")
        with pytest.raises(openai.InternalServerError) as refused:  # 501: never encrypted
            client.embeddings.create(model="m", input="x")
        assert refused.value.status_code == 501
    with sdk(router.url, client_key) as client, pytest.raises(openai.NotFoundError):
        client.models.list()


def test_stream_is_emulated_with_one_sealed_request(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    # Streaming in depth (SDK, LangChain, bytes): tests/test_streaming.py.
    before = router.router.secure_requests
    with sdk(router.url, client_key) as client:
        stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == MESSAGES[0]["content"]
    assert router.router.secure_requests == before + 1
    with sdk(router.url, client_key) as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="m", messages=MESSAGES, stream_options={"include_usage": True}
        )
    assert info.value.param == "stream_options"


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, openai.BadRequestError),
        (403, openai.PermissionDeniedError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_router_statuses_become_sdk_errors(
    router: RouterThread, client_key: _core.PrivateKey, status: int, cls: type[Exception]
) -> None:
    router.router.faults.push(Fault(status=status, detail=f"detail {status}"))
    with sdk(router.url, client_key) as client, pytest.raises(cls) as info:
        client.chat.completions.create(model="m", messages=MESSAGES)
    err = info.value
    assert isinstance(err, openai.APIStatusError)
    assert err.status_code == status
    assert f"detail {status}" in err.message
    assert isinstance(err.body, dict)
    assert err.request_id == router.router.requests[-1].payload_id


def test_api_key_errors(router: RouterThread, client_key: _core.PrivateKey) -> None:
    wrong = sdk(router.url, client_key, api_key="sk-wrong")
    with wrong, pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="m", messages=MESSAGES)
    # The SDK's own api_key is not forwarded unless asked for.
    forwarded = openai.OpenAI(
        api_key="sk-nomyo",
        max_retries=0,
        http_client=http_client(router.url, client_key, api_key=None, forward_sdk_api_key=True),
    )
    with forwarded:
        forwarded.chat.completions.create(model="m", messages=MESSAGES)
    not_forwarded = openai.OpenAI(
        api_key="sk-nomyo",
        max_retries=0,
        http_client=http_client(router.url, client_key, api_key=None),
    )
    with not_forwarded, pytest.raises(openai.AuthenticationError):
        not_forwarded.chat.completions.create(model="m", messages=MESSAGES)


def test_sdk_retries_reencrypt(router: RouterThread, client_key: _core.PrivateKey) -> None:
    router.router.faults.push(
        Fault(status=503, retry_after="0"), Fault(status=429, retry_after="0")
    )
    before = router.router.secure_requests
    with sdk(router.url, client_key, max_retries=2) as client:
        out = client.chat.completions.create(model="m", messages=MESSAGES)
    assert out.choices[0].message.content == MESSAGES[0]["content"]
    assert router.router.secure_requests == before + 3
    ids = [r.payload_id for r in list(router.router.requests)[-3:]]
    assert len(set(ids)) == 3, "every try is a fresh encrypted request"


def test_security_error_is_a_502_never_retried(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    router.router.faults.push(Fault(tamper_reply=True, times=3))
    before = router.router.secure_requests
    client = sdk(router.url, client_key, max_retries=2)
    with client, pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert info.value.status_code == 502
    assert info.value.type == "security_error"
    assert router.router.secure_requests == before + 1
    assert MESSAGES[0]["content"] not in str(info.value)


def test_timeout_becomes_sdk_timeout(router: RouterThread, client_key: _core.PrivateKey) -> None:
    router.router.faults.push(Fault(delay=1.5))
    client = openai.OpenAI(
        api_key="x", max_retries=0, timeout=0.3, http_client=http_client(router.url, client_key)
    )
    with client, pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="m", messages=MESSAGES)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_error_becomes_sdk_connection_error(client_key: _core.PrivateKey) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    with sdk(url, client_key) as client, pytest.raises(openai.APIConnectionError) as info:
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert not isinstance(info.value, openai.APITimeoutError)

    async def go() -> None:
        async_client = openai.AsyncOpenAI(
            api_key="x", max_retries=0, http_client=async_http_client(url, client_key)
        )
        async with async_client:
            await async_client.chat.completions.create(model="m", messages=MESSAGES)

    with pytest.raises(openai.APIConnectionError):
        asyncio.run(go())


def test_local_key_errors_are_raised_unchanged(router: RouterThread, tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    key_dir.mkdir()
    private = key_dir / "private_key.pem"
    private.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    private.chmod(0o600)
    client = openai.OpenAI(
        api_key="x",
        max_retries=0,
        http_client=nomyo.openai_http_client(router.url, allow_http=True, key_dir=key_dir),
    )
    with client, pytest.raises(nomyo.KeyFormatError):
        client.chat.completions.create(model="m", messages=MESSAGES)


def test_https_with_ca_from_the_environment(
    tmp_path: Path, client_key: _core.PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    certs = make_test_certificates(tmp_path)
    with DevRouter(key_bits=2048, tls_cert=certs.cert, tls_key=certs.key).run_in_thread() as h:
        monkeypatch.setenv("SSL_CERT_FILE", certs.ca_cert)
        monkeypatch.setenv("NOMYO_BASE_URL", h.url)
        http = nomyo.openai_http_client()
        http._transport.chat.client._set_key(client_key)  # type: ignore[attr-defined]
        with openai.OpenAI(api_key="x", max_retries=0, http_client=http) as client:
            out = client.chat.completions.create(model="m", messages=MESSAGES)
        assert out.choices[0].message.content == MESSAGES[0]["content"]
        assert h.url.startswith("https://")
