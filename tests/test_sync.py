"""The blocking twins against the development router: one thread, many threads, and the
openai-style ``client.chat.completions.create`` namespace on both twins."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from chat_support import sync_chat

import nomyo
from nomyo import _core, _pipeline
from nomyo.testing import DevRouter, Fault, RouterThread


@pytest.fixture(autouse=True)
def _clean_faults(router: RouterThread) -> Iterator[None]:
    router.router.faults.clear()
    yield
    router.router.faults.clear()


@pytest.fixture
def delays(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    asked: list[float] = []
    real = _pipeline.retry_delay

    def fast(attempt: int, retry_after: float | None = None) -> float:
        asked.append(real(attempt, retry_after))
        return 0.01

    monkeypatch.setattr(_pipeline, "retry_delay", fast)
    return asked


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def test_sync_request(router: RouterThread, client_key: _core.PrivateKey) -> None:
    with sync_chat(router.url, client_key, api_key="sk-sync") as client:
        reply = client.create("m", user("hello sync"), temperature=0.5, security_tier="high")
    assert isinstance(reply, nomyo.ChatCompletion)
    assert isinstance(reply, dict)
    assert reply["choices"][0]["message"]["content"] == "hello sync"
    assert reply.choices[0].message.content == "hello sync"
    recorded = router.router.requests[-1]
    assert recorded.body == {"model": "m", "messages": user("hello sync"), "temperature": 0.5}
    assert recorded.headers["authorization"] == "Bearer sk-sync"
    assert recorded.headers["x-security-tier"] == "high"
    assert reply._metadata.payload_id == recorded.payload_id
    assert reply["_metadata"]["is_encrypted"] is True


def test_sync_low_level_client(router: RouterThread, client_key: _core.PrivateKey) -> None:
    with nomyo.SyncSecureCompletionClient(router.url, allow_http=True) as client:
        client._set_key(client_key)
        pem = client.fetch_server_public_key()
        assert "BEGIN PUBLIC KEY" in pem
        payload = {"model": "m", "messages": user("low level")}
        reply = client.send_secure_request(payload, "payload-1", security_tier="standard")
        assert reply.choices[0].message.content == "low level"
        assert reply._metadata.payload_id == "payload-1"
        sealed = client.encrypt_payload(payload)
        assert b'"encrypted_aes_key"' in sealed
        assert client.server_key_fetches == 1
    with pytest.raises(nomyo.ConfigurationError):
        client.send_secure_request(payload, "p", security_tier="ultra")


def test_not_given_none_and_extra_body(router: RouterThread, client_key: _core.PrivateKey) -> None:
    with sync_chat(router.url, client_key) as client:
        client.create(
            "m",
            user("x"),
            temperature=None,
            top_p=nomyo.NOT_GIVEN,
            max_tokens=5,
            stop=["\n"],
            seed=3,
            custom_field={"a": 1},
            extra_body={"top_k": 40},
        )
    body = router.router.requests[-1].body
    assert body == {
        "model": "m",
        "messages": user("x"),
        "temperature": None,
        "max_tokens": 5,
        "stop": ["\n"],
        "seed": 3,
        "custom_field": {"a": 1},
        "top_k": 40,
    }


def test_messages_may_be_any_iterable_and_replies_feed_back(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    with sync_chat(router.url, client_key) as client:
        first = client.create("m", (m for m in user("first")))
        history = [*user("first"), first.choices[0].message, *user("second")]
        second = client.create("m", history)
    assert second.choices[0].message.content == "second"
    sent = router.router.requests[-1].body["messages"]
    assert sent[1] == {"role": "assistant", "content": "first"}


def test_refused_before_sending(router: RouterThread, client_key: _core.PrivateKey) -> None:
    before = router.router.secure_requests
    with sync_chat(router.url, client_key) as client:
        with pytest.raises(nomyo.InvalidRequestError, match="stream"):
            client.create("m", user("x"), stream=True)
        with pytest.raises(nomyo.ConfigurationError, match="extra_headers may not set"):
            client.create("m", user("x"), extra_headers={"X-Public-Key": "b"})
        with pytest.raises(TypeError, match="messages must be a list"):
            client.create("m", "x")  # type: ignore[arg-type]
        with pytest.raises(nomyo.ConfigurationError, match="security_tier"):
            client.create("m", user("x"), security_tier="ultra")
    assert router.router.secure_requests == before


@pytest.mark.parametrize(
    ("status", "cls", "retried"),
    [
        (400, nomyo.InvalidRequestError, False),
        (401, nomyo.AuthenticationError, False),
        (429, nomyo.RateLimitError, True),
        (503, nomyo.ServiceUnavailableError, True),
    ],
)
def test_sync_error_statuses_and_retries(
    router: RouterThread,
    client_key: _core.PrivateKey,
    delays: list[float],
    status: int,
    cls: type[nomyo.APIError],
    retried: bool,
) -> None:
    router.router.faults.push(Fault(status=status, detail=f"detail {status}", times=3))
    before = router.router.secure_requests
    client = sync_chat(router.url, client_key, max_retries=2)
    with client, pytest.raises(cls) as info:
        client.create("m", user("x"))
    assert type(info.value) is cls
    assert info.value.status_code == status
    assert info.value.detail == f"detail {status}"
    assert router.router.secure_requests - before == (3 if retried else 1)
    assert len(delays) == (2 if retried else 0)


def test_sync_retry_then_success(
    router: RouterThread, client_key: _core.PrivateKey, delays: list[float]
) -> None:
    router.router.faults.push(Fault(status=500), Fault(drop_connection=True))
    with sync_chat(router.url, client_key, max_retries=2) as client:
        assert client.create("m", user("again")).choices[0].message.content == "again"
    assert len(delays) == 2


def test_sync_timeout_and_per_request_timeout(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    router.router.faults.push(Fault(delay=1.5))
    with sync_chat(router.url, client_key, max_retries=0) as client:
        with pytest.raises(nomyo.APITimeoutError):
            client.create("m", user("slow"), timeout=httpx.Timeout(5.0, read=0.2))
        assert client.create("m", user("fast"), timeout=5.0).choices[0].message.content == "fast"


def test_sync_untrustworthy_reply(router: RouterThread, client_key: _core.PrivateKey) -> None:
    router.router.faults.push(Fault(tamper_reply=True))
    with sync_chat(router.url, client_key) as client:
        with pytest.raises(nomyo.SecurityError) as info:
            client.create("m", user("secret words"))
        assert "secret words" not in str(info.value)
        assert client.create("m", user("next")).choices[0].message.content == "next"


def test_sync_key_rotation_refetches_once(client_key: _core.PrivateKey) -> None:
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        with sync_chat(handle.url, client_key) as client:
            assert client.create("m", user("a")).choices[0].message.content == "a"
            handle.router.faults.push(Fault(rotate_key=True))
            assert client.create("m", user("b")).choices[0].message.content == "b"
        assert handle.router.key_fetches == 2


def test_sync_pinning_refuses_before_sending(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    before = router.router.secure_requests
    wrong = "sha256:" + "0" * 64
    client = sync_chat(router.url, client_key, server_key_fingerprint=wrong)
    with client, pytest.raises(nomyo.SecurityError, match="pinned"):
        client.create("m", user("x"))
    assert router.router.secure_requests == before


def test_sync_key_dir(router: RouterThread, tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    with nomyo.SyncSecureChatCompletion(router.url, allow_http=True, key_dir=key_dir) as client:
        client.client.key_size = 2048
        client.create("m", user("a"))
    pem = (key_dir / "public_key.pem").read_text()
    with nomyo.SyncSecureChatCompletion(router.url, allow_http=True, key_dir=key_dir) as again:
        again.create("m", user("b"))
        assert again.client.public_key_pem is not None
        assert again.client.public_key_pem.strip() == pem.strip()


def test_sequential_sync_requests_reuse_one_connection(client_key: _core.PrivateKey) -> None:
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        with sync_chat(handle.url, client_key) as client:
            for i in range(5):
                client.create("m", user(str(i)))
        assert handle.router.connections == 1
        assert handle.router.key_fetches == 1


def test_many_threads_one_client() -> None:
    """16 threads x 5 requests on one client: each gets its own reply; one key, one fetch."""
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        client = nomyo.SyncSecureChatCompletion(handle.url, allow_http=True)
        client.client.key_size = 2048  # generated on first use, once for all threads
        start = threading.Barrier(16)

        def worker(t: int) -> list[tuple[str, str]]:
            start.wait()
            out = []
            for i in range(5):
                text = f"thread {t} request {i}"
                reply = client.chat.completions.create(model="m", messages=user(text))
                out.append((text, reply.choices[0].message.content))
            return out

        with client, ThreadPoolExecutor(16) as pool:
            results = [pair for chunk in pool.map(worker, range(16)) for pair in chunk]
            assert len(results) == 80
            assert all(sent == got for sent, got in results)
            assert handle.router.key_fetches == 1
            assert client.client.server_key_fetches == 1
            keys = {r.headers["x-public-key"] for r in handle.router.requests}
            assert len(keys) == 1, "one client key pair for every thread"
            assert len({r.payload_id for r in handle.router.requests}) == 80


def test_async_namespace_and_concurrency(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    async def go() -> list[str]:
        client = nomyo.SecureChatCompletion(router.url, allow_http=True)
        client.client._set_key(client_key)
        async with client:
            replies = await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model="m", messages=user(f"async {i}"), max_tokens=8
                    )
                    for i in range(10)
                )
            )
        return [r.choices[0].message.content for r in replies]

    assert asyncio.run(go()) == [f"async {i}" for i in range(10)]
    assert router.router.requests[-1].body["max_tokens"] == 8


def test_sync_and_async_share_the_base() -> None:
    from nomyo._base import BaseSecureClient
    from nomyo._chat import BaseSecureChat

    assert issubclass(nomyo.SyncSecureCompletionClient, BaseSecureClient)
    assert issubclass(nomyo.SecureCompletionClient, BaseSecureClient)
    assert issubclass(nomyo.SyncSecureChatCompletion, BaseSecureChat)
    assert issubclass(nomyo.SecureChatCompletion, BaseSecureChat)
    own = set(vars(nomyo.SyncSecureCompletionClient)) & set(vars(nomyo.SecureCompletionClient))
    shared_logic = {"_should_retry", "_request_headers", "_accept_server_key", "_finish_reply"}
    assert not own & shared_logic, "non-I/O logic lives only in the base"
