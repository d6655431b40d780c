"""The development router (nomyo.testing) driven over real sockets with httpx and nomyo._core."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import httpx
import pytest

from nomyo import _core
from nomyo._exceptions import SecurityError
from nomyo.testing import DevRouter, Fault, RecordedRequest, make_test_certificates

KEY_PATH = "/pki/public_key"
SECURE_PATH = "/v1/chat/secure_completion"
PAYLOAD: dict[str, Any] = {
    "model": "test-model",
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello secure world"},
    ],
    "temperature": 0.2,
}

Scenario = Callable[[DevRouter, httpx.AsyncClient], Awaitable[None]]


@pytest.fixture(scope="module")
def server_key() -> _core.PrivateKey:
    return _core.PrivateKey.generate(2048)


def serve(scenario: Scenario, key: _core.PrivateKey, **options: Any) -> None:
    """Run ``scenario`` against a fresh router and an httpx client pointed at it."""

    async def main() -> None:
        verify: Any = options.pop("_verify", True)
        async with (
            DevRouter(key=key, **options) as router,
            httpx.AsyncClient(base_url=router.url, verify=verify, timeout=10) as http,
        ):
            await scenario(router, http)

    asyncio.run(main())


def secure_headers(client: _core.PrivateKey, **extra: str) -> dict[str, str]:
    headers = {
        "X-Payload-ID": str(uuid.uuid4()),
        "X-Public-Key": urllib.parse.quote(client.public_key().to_pem()),
        "Content-Type": "application/octet-stream",
    }
    headers.update(extra)
    return headers


async def post_sealed(
    http: httpx.AsyncClient,
    router: DevRouter,
    client: _core.PrivateKey,
    payload: Any = None,
    **extra: str,
) -> httpx.Response:
    """Seal ``payload`` to the router's current key and POST it."""
    body = _core.seal_json(PAYLOAD if payload is None else payload, router.public_key)
    return await http.post(SECURE_PATH, content=body, headers=secure_headers(client, **extra))


def open_reply(response: httpx.Response, client: _core.PrivateKey) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    value, processed_at, algorithm = _core.open_json(response.content, client)
    assert isinstance(processed_at, int)
    assert abs(processed_at - time.time()) < 60
    assert algorithm == "hybrid-aes256-rsa4096"
    assert isinstance(value, dict)
    return value


def detail(response: httpx.Response) -> str:
    body = response.json()
    assert isinstance(body, dict)
    return str(body["detail"])


# -- public key and echo completions ---------------------------------------------------------


def test_public_key_endpoint(server_key: _core.PrivateKey) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        response = await http.get(KEY_PATH)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert response.headers["content-length"] == str(len(response.content))
        assert _core.PublicKey.from_pem(response.text) == server_key.public_key()
        assert response.text == router.public_key_pem
        assert router.key_fetches == 1
        assert router.secure_requests == 0

    serve(scenario, server_key)


def test_echo_round_trip(server_key: _core.PrivateKey, client_key: _core.PrivateKey) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        headers = secure_headers(client_key)
        body = _core.seal_json(PAYLOAD, router.public_key)
        response = await http.post(SECURE_PATH, content=body, headers=headers)
        assert response.headers["content-type"] == "application/octet-stream"
        reply = open_reply(response, client_key)
        assert reply["object"] == "chat.completion"
        assert reply["id"].startswith("chatcmpl-")
        assert reply["model"] == "test-model"
        assert isinstance(reply["created"], int)
        (choice,) = reply["choices"]
        assert choice["index"] == 0
        assert choice["message"] == {"role": "assistant", "content": "hello secure world"}
        assert choice["finish_reason"] == "stop"
        assert reply["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        meta = reply["_metadata"]
        assert meta["payload_id"] == headers["X-Payload-ID"]
        assert meta["security_tier"] == "standard"
        assert meta["response_status"] == "success"
        # What the platform grants (the counters move with every request of this process).
        granted = ("backend", "platform", "has_memory_locking", "has_dump_exclusion", "page_size")
        info = _core.memory_protection_info()
        assert {k: meta["memory_protection"][k] for k in granted} == {k: info[k] for k in granted}
        assert meta["cuda_device"] == {"available": False}
        assert meta["tpm_attestation"] == {"is_available": False}
        recorded = router.requests[-1]
        assert recorded.body == PAYLOAD
        assert recorded.status == 200
        assert recorded.payload_id == headers["X-Payload-ID"]
        assert recorded.headers["content-type"] == "application/octet-stream"
        assert router.secure_requests == 1

        # Deterministic: the same payload id gives the same completion id.
        again = await http.post(
            SECURE_PATH, content=_core.seal_json(PAYLOAD, router.public_key), headers=headers
        )
        assert open_reply(again, client_key)["id"] == reply["id"]

    serve(scenario, server_key)


def test_echo_content_parts(server_key: _core.PrivateKey, client_key: _core.PrivateKey) -> None:
    payload = {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "part one"}]}],
    }

    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        reply = open_reply(await post_sealed(http, router, client_key, payload), client_key)
        assert reply["choices"][0]["message"]["content"] == "part one"

    serve(scenario, server_key)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city", "days"],
            },
        },
    },
    {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}},
]


def test_echo_tool_calls(server_key: _core.PrivateKey, client_key: _core.PrivateKey) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        payload = {"model": "m", "messages": [{"role": "user", "content": "Paris"}]}
        reply = open_reply(
            await post_sealed(http, router, client_key, {**payload, "tools": TOOLS}), client_key
        )
        choice = reply["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        (call,) = choice["message"]["tool_calls"]
        assert call["type"] == "function"
        assert call["id"].startswith("call_")
        assert call["function"]["name"] == "get_weather"
        assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "days": 0}

        named = {**payload, "tools": TOOLS, "tool_choice": {"function": {"name": "other"}}}
        reply = open_reply(await post_sealed(http, router, client_key, named), client_key)
        call = reply["choices"][0]["message"]["tool_calls"][0]
        assert call["function"] == {"name": "other", "arguments": "{}"}

        none = {**payload, "tools": TOOLS, "tool_choice": "none"}
        reply = open_reply(await post_sealed(http, router, client_key, none), client_key)
        assert reply["choices"][0]["finish_reason"] == "stop"

        # A tool result ends the loop: its content is echoed.
        result = {
            "model": "m",
            "tools": TOOLS,
            "messages": [
                *payload["messages"],
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
            ],
        }
        reply = open_reply(await post_sealed(http, router, client_key, result), client_key)
        assert reply["choices"][0]["message"]["content"] == "sunny"
        assert reply["choices"][0]["finish_reason"] == "stop"

    serve(scenario, server_key)


# -- request validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "status", "fragment"),
    [
        ({"X-Payload-ID": None}, 400, "X-Payload-ID"),
        ({"X-Public-Key": None}, 400, "X-Public-Key"),
        ({"X-Public-Key": "not%20a%20key"}, 400, "X-Public-Key"),
        ({"Content-Type": "application/json"}, 400, "Content-Type"),
        ({"X-Security-Tier": "ultra"}, 400, "X-Security-Tier"),
        ({"X-Security-Tier": "maximum"}, 503, "maximum"),
    ],
)
def test_header_errors(
    server_key: _core.PrivateKey,
    client_key: _core.PrivateKey,
    change: dict[str, str | None],
    status: int,
    fragment: str,
) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        headers: dict[str, str] = secure_headers(client_key)
        for name, value in change.items():
            if value is None:
                del headers[name]
            else:
                headers[name] = value
        body = _core.seal_json(PAYLOAD, router.public_key)
        response = await http.post(SECURE_PATH, content=body, headers=headers)
        assert response.status_code == status
        assert fragment in detail(response)
        assert router.requests[-1].status == status
        assert router.requests[-1].body is None

    serve(scenario, server_key)


def test_small_client_key_refused(server_key: _core.PrivateKey) -> None:
    small = (
        "-----BEGIN PUBLIC KEY-----\n"
        "MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAMqZ1QJx0F8a7kJ0mVh0r0bT0V9q0T1c\n"
        "-----END PUBLIC KEY-----\n"
    )

    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        headers = {**secure_headers(_core.PrivateKey.generate(2048))}
        headers["X-Public-Key"] = urllib.parse.quote(small)
        body = _core.seal_json(PAYLOAD, router.public_key)
        response = await http.post(SECURE_PATH, content=body, headers=headers)
        assert response.status_code == 400

    serve(scenario, server_key)


def test_api_keys(server_key: _core.PrivateKey, client_key: _core.PrivateKey) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        missing = await post_sealed(http, router, client_key)
        assert missing.status_code == 401
        wrong = await post_sealed(http, router, client_key, Authorization="Bearer nope")
        assert wrong.status_code == 401
        basic = await post_sealed(http, router, client_key, Authorization="Basic sk-second")
        assert basic.status_code == 401
        good = await post_sealed(http, router, client_key, Authorization="Bearer sk-second")
        open_reply(good, client_key)
        assert "sk-" not in repr(router)
        assert "sk-second" not in repr(router.requests[-1])
        assert router.requests[-1].headers["authorization"] == "Bearer sk-second"

    serve(scenario, server_key, api_keys=["sk-first", "sk-second"])


@pytest.mark.parametrize("tier", ["standard", "high"])
def test_tiers(server_key: _core.PrivateKey, client_key: _core.PrivateKey, tier: str) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        response = await post_sealed(http, router, client_key, **{"X-Security-Tier": tier})
        assert open_reply(response, client_key)["_metadata"]["security_tier"] == tier
        assert router.requests[-1].security_tier == tier

    serve(scenario, server_key)


def test_maximum_tier_with_attestation(
    server_key: _core.PrivateKey, client_key: _core.PrivateKey
) -> None:
    seen: list[str] = []

    def provider(payload_id: str) -> dict[str, Any]:
        seen.append(payload_id)
        return {"is_available": True, "pcr_banks": "sha256:0,7", "quote_b64": "AA=="}

    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        headers = secure_headers(client_key, **{"X-Security-Tier": "maximum"})
        body = _core.seal_json(PAYLOAD, router.public_key)
        reply = open_reply(await http.post(SECURE_PATH, content=body, headers=headers), client_key)
        meta = reply["_metadata"]
        assert meta["security_tier"] == "maximum"
        assert meta["tpm_attestation"]["is_available"] is True
        assert meta["tpm_attestation"]["pcr_banks"] == "sha256:0,7"
        assert seen == [headers["X-Payload-ID"]]

    serve(scenario, server_key, attestation_provider=provider)


def test_maximum_tier_when_attestation_unavailable(
    server_key: _core.PrivateKey, client_key: _core.PrivateKey
) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        response = await post_sealed(http, router, client_key, **{"X-Security-Tier": "maximum"})
        assert response.status_code == 503
        plain = open_reply(await post_sealed(http, router, client_key), client_key)
        assert plain["_metadata"]["tpm_attestation"] == {"is_available": False}

    serve(scenario, server_key, attestation_provider=lambda _pid: {"is_available": False})


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({**PAYLOAD, "stream": True}, "Streaming"),
        ({"messages": []}, "model"),
        ({"model": "m"}, "messages"),
        ([1, 2], "object"),
    ],
)
def test_payload_errors(
    server_key: _core.PrivateKey, client_key: _core.PrivateKey, payload: Any, fragment: str
) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        response = await post_sealed(http, router, client_key, payload)
        assert response.status_code == 400
        assert fragment in detail(response)
        assert router.requests[-1].body == payload

    serve(scenario, server_key)


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"{}", json.dumps({"version": "0.9"}).encode()],
)
def test_envelope_errors(
    server_key: _core.PrivateKey, client_key: _core.PrivateKey, body: bytes
) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        response = await http.post(SECURE_PATH, content=body, headers=secure_headers(client_key))
        assert response.status_code == 400
        assert detail(response)
        assert "decryption failed" not in detail(response).lower()

    serve(scenario, server_key)


def test_envelope_sealed_to_another_key(
    server_key: _core.PrivateKey, client_key: _core.PrivateKey
) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        body = _core.seal_json(PAYLOAD, client_key.public_key())
        response = await http.post(SECURE_PATH, content=body, headers=secure_headers(client_key))
        assert response.status_code == 400
        assert "decryption failed" in detail(response).lower()

    serve(scenario, server_key)


def test_not_found_and_method(server_key: _core.PrivateKey) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        assert (await http.get("/v1/models")).status_code == 404
        wrong = await http.get(SECURE_PATH)
        assert wrong.status_code == 405
        assert wrong.headers["allow"] == "POST"
        assert (await http.post(KEY_PATH)).status_code == 405
        head = await http.head(KEY_PATH)
        assert head.status_code == 200
        assert head.content == b""

    serve(scenario, server_key)


# -- faults -----------------------------------------------------------------------------------


def test_fault_status(server_key: _core.PrivateKey, client_key: _core.PrivateKey) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        router.faults.push(Fault(status=503, retry_after="2", detail="busy", times=2))
        router.faults.push(Fault(status=500, body=b"oops"))
        assert router.faults.pending == 3
        for _ in range(2):
            response = await post_sealed(http, router, client_key)
            assert response.status_code == 503
            assert response.headers["retry-after"] == "2"
            assert detail(response) == "busy"
        response = await post_sealed(http, router, client_key)
        assert (response.status_code, response.content) == (500, b"oops")
        assert not router.faults
        open_reply(await post_sealed(http, router, client_key), client_key)
        assert [f.status for f in router.faults.applied] == [503, 503, 500]
        assert [r.status for r in router.requests] == [503, 503, 500, 200]
        assert router.requests[0].fault is not None

    serve(scenario, server_key)


def test_fault_delay(server_key: _core.PrivateKey, client_key: _core.PrivateKey) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        router.faults.push(Fault(delay=0.5))
        started = time.monotonic()
        http.timeout = httpx.Timeout(30.0)  # a loaded machine may add seconds
        open_reply(await post_sealed(http, router, client_key), client_key)
        assert time.monotonic() - started >= 0.45
        router.faults.push(Fault(delay=10.0))
        http.timeout = httpx.Timeout(1.0)  # far below the delay: it must time out
        with pytest.raises(httpx.ReadTimeout):
            await post_sealed(http, router, client_key, payload=None)
        # A client timeout must not break the router.
        await asyncio.sleep(0)

    async def with_timeout(router: DevRouter, http: httpx.AsyncClient) -> None:
        http.timeout = httpx.Timeout(1.0)
        await scenario(router, http)
        http.timeout = httpx.Timeout(10.0)
        open_reply(await post_sealed(http, router, client_key), client_key)

    serve(with_timeout, server_key)


def test_fault_drop_connection(server_key: _core.PrivateKey, client_key: _core.PrivateKey) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        router.faults.push(Fault(drop_connection=True))
        with pytest.raises(httpx.RemoteProtocolError):
            await post_sealed(http, router, client_key)
        assert router.requests[-1].status is None
        open_reply(await post_sealed(http, router, client_key), client_key)
        assert router.connections == 2

    serve(scenario, server_key)


@pytest.mark.parametrize("fault", [Fault(tamper_reply=True), Fault(wrong_key_reply=True)])
def test_fault_undecryptable_reply(
    server_key: _core.PrivateKey, client_key: _core.PrivateKey, fault: Fault
) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        router.faults.push(fault)
        response = await post_sealed(http, router, client_key)
        assert response.status_code == 200
        envelope = json.loads(response.content)
        assert envelope["version"] == "1.0"
        with pytest.raises(SecurityError):
            _core.open_json(response.content, client_key)
        open_reply(await post_sealed(http, router, client_key), client_key)

    serve(scenario, server_key)


def test_fault_garbage_reply(server_key: _core.PrivateKey, client_key: _core.PrivateKey) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        router.faults.push(Fault(garbage_reply=b"\x00garbage"))
        response = await post_sealed(http, router, client_key)
        assert (response.status_code, response.content) == (200, b"\x00garbage")

    serve(scenario, server_key)


def test_fault_rotate_key(server_key: _core.PrivateKey, client_key: _core.PrivateKey) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        old = router.public_key
        router.faults.push(Fault(rotate_key=True))
        response = await post_sealed(http, router, client_key)  # sealed to the old key
        assert response.status_code == 400
        assert "decryption failed" in detail(response).lower()
        new = _core.PublicKey.from_pem((await http.get(KEY_PATH)).text)
        assert new != old
        assert new == router.public_key
        assert new.key_size == 2048
        open_reply(await post_sealed(http, router, client_key), client_key)

    serve(scenario, server_key)


def test_fault_slow_body(server_key: _core.PrivateKey, client_key: _core.PrivateKey) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        router.faults.push(Fault(slow_body=0.6))
        started = time.monotonic()
        open_reply(await post_sealed(http, router, client_key), client_key)
        assert time.monotonic() - started >= 0.5

    serve(scenario, server_key)


def test_key_faults(server_key: _core.PrivateKey) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        router.key_faults.push(Fault(status=500), Fault(garbage_reply=b"not a key"))
        assert (await http.get(KEY_PATH)).status_code == 500
        assert (await http.get(KEY_PATH)).content == b"not a key"
        assert (await http.get(KEY_PATH)).text == router.public_key_pem
        assert router.key_fetches == 3

    serve(scenario, server_key)


def test_fault_validation() -> None:
    with pytest.raises(ValueError, match="status"):
        Fault(status=42)
    with pytest.raises(ValueError, match="negative"):
        Fault(delay=-1)
    with pytest.raises(ValueError, match="times"):
        Fault(times=0)


# -- HTTP behaviour ---------------------------------------------------------------------------


def test_keep_alive(server_key: _core.PrivateKey, client_key: _core.PrivateKey) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        await http.get(KEY_PATH)
        for _ in range(5):
            open_reply(await post_sealed(http, router, client_key), client_key)
        await http.post(SECURE_PATH, content=b"bad", headers=secure_headers(client_key))
        await http.get("/missing")
        assert router.connections == 1
        assert router.secure_requests == 6

    serve(scenario, server_key)


def test_body_too_large(server_key: _core.PrivateKey, client_key: _core.PrivateKey) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        response = await http.post(
            SECURE_PATH, content=b"x" * 5000, headers=secure_headers(client_key)
        )
        assert response.status_code == 413
        assert "4096" in detail(response)

        async def chunks() -> Any:
            for _ in range(10):
                yield b"y" * 1000

        chunked = await http.post(SECURE_PATH, content=chunks(), headers=secure_headers(client_key))
        assert chunked.status_code == 413
        assert router.secure_requests == 0

    serve(scenario, server_key, max_body=4096)


def raw_exchange(url: str, data: bytes, wait: float = 5.0) -> bytes:
    """Send raw bytes to the router and read until it closes the connection."""
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=wait) as sock:
        sock.sendall(data)
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk


def test_invalid_and_slow_requests(server_key: _core.PrivateKey) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        garbage = await asyncio.to_thread(raw_exchange, router.url, b"NOT HTTP AT ALL\r\n\r\n")
        assert garbage.startswith(b"HTTP/1.1 400")
        assert b"content-length:" in garbage.lower()
        slow = await asyncio.to_thread(
            raw_exchange, router.url, b"POST /v1/chat/secure_completion HTTP/1.1\r\nHost: x\r\n"
        )
        assert slow == b"" or slow.startswith(b"HTTP/1.1 400")
        body = await asyncio.to_thread(
            raw_exchange,
            router.url,
            b"POST /v1/chat/secure_completion HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab",
        )
        assert body.startswith(b"HTTP/1.1 400")
        huge = b"GET /pki/public_key HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n"
        too_long = await asyncio.to_thread(raw_exchange, router.url, huge)
        assert too_long.startswith(b"HTTP/1.1 431")
        # Still serving.
        assert (await http.get(KEY_PATH)).status_code == 200

    serve(scenario, server_key, request_timeout=0.5)


def test_idle_connection_closed(server_key: _core.PrivateKey) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        received = await asyncio.to_thread(raw_exchange, router.url, b"")
        assert received == b""

    serve(scenario, server_key, idle_timeout=0.3)


def test_https(tmp_path: Path, server_key: _core.PrivateKey, client_key: _core.PrivateKey) -> None:
    certs = make_test_certificates(tmp_path)
    context = ssl.create_default_context(cafile=certs.ca_cert)

    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        assert router.url.startswith("https://127.0.0.1:")
        assert (await http.get(KEY_PATH)).text == router.public_key_pem
        open_reply(await post_sealed(http, router, client_key), client_key)
        assert router.connections == 1
        # An untrusting client fails the handshake; the router keeps serving.
        async with httpx.AsyncClient(verify=True) as stranger:
            with pytest.raises(httpx.ConnectError):
                await stranger.get(router.url + KEY_PATH)
        assert (await http.get(KEY_PATH)).status_code == 200

    serve(scenario, server_key, tls_cert=certs.cert, tls_key=certs.key, _verify=context)


def test_https_localhost_name(tmp_path: Path, server_key: _core.PrivateKey) -> None:
    certs = make_test_certificates(tmp_path)
    context = ssl.create_default_context(cafile=certs.ca_cert)

    async def main() -> None:
        async with DevRouter(key=server_key, tls_cert=certs.cert, tls_key=certs.key) as router:
            url = router.url.replace("127.0.0.1", "localhost")
            async with httpx.AsyncClient(verify=context) as http:
                assert (await http.get(url + KEY_PATH)).status_code == 200

    asyncio.run(main())


# -- upstream forwarding ----------------------------------------------------------------------


UPSTREAM_REPLY = {
    "id": "chatcmpl-upstream",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "llama",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "fixed"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Stay quiet."""


class FakeUpstream:
    """A tiny OpenAI-compatible server (a stand-in for llama.cpp) in a thread."""

    def __init__(self) -> None:
        self.received: list[tuple[str, Any]] = []
        self.status = 200
        self.httpd = make_server("127.0.0.1", 0, self.app, handler_class=_QuietHandler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"

    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        self.received.append((environ["PATH_INFO"], json.loads(environ["wsgi.input"].read(length))))
        reply = UPSTREAM_REPLY if self.status == 200 else {"error": "upstream failure"}
        data = json.dumps(reply).encode()
        start_response(
            f"{self.status} X",
            [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
        )
        return [data]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def fake_upstream() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream()
    yield upstream
    upstream.close()


def test_upstream_forwarding(
    server_key: _core.PrivateKey, client_key: _core.PrivateKey, fake_upstream: FakeUpstream
) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        headers = secure_headers(client_key, **{"X-Security-Tier": "high"})
        body = _core.seal_json(PAYLOAD, router.public_key)
        reply = open_reply(await http.post(SECURE_PATH, content=body, headers=headers), client_key)
        assert reply["choices"][0]["message"]["content"] == "fixed"
        assert reply["id"] == "chatcmpl-upstream"
        assert reply["_metadata"]["payload_id"] == headers["X-Payload-ID"]
        assert reply["_metadata"]["security_tier"] == "high"
        assert fake_upstream.received == [("/v1/chat/completions", PAYLOAD)]

        fake_upstream.status = 500
        failed = await post_sealed(http, router, client_key)
        assert failed.status_code == 502
        assert "500" in detail(failed)

    serve(scenario, server_key, upstream=fake_upstream.url)


def test_upstream_unreachable(server_key: _core.PrivateKey, client_key: _core.PrivateKey) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        response = await post_sealed(http, router, client_key)
        assert response.status_code == 502
        assert "upstream" in detail(response)

    serve(scenario, server_key, upstream=f"http://127.0.0.1:{port}/v1")


# -- lifecycle --------------------------------------------------------------------------------


def test_run_in_thread(server_key: _core.PrivateKey, client_key: _core.PrivateKey) -> None:
    router = DevRouter(key=server_key)
    with router.run_in_thread() as handle:
        assert handle.router is router
        with httpx.Client(base_url=handle.url) as http:
            pem = http.get(KEY_PATH).text
            server = _core.PublicKey.from_pem(pem)
            router.faults.push(Fault(status=429, detail="slow down"))
            body = _core.seal_json(PAYLOAD, server)
            limited = http.post(SECURE_PATH, content=body, headers=secure_headers(client_key))
            assert limited.status_code == 429
            response = http.post(SECURE_PATH, content=body, headers=secure_headers(client_key))
            reply, _, _ = _core.open_json(response.content, client_key)
            assert reply["choices"][0]["message"]["content"] == "hello secure world"
    assert not handle.is_alive()
    assert not router.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{router.port}{KEY_PATH}", timeout=2)


def test_run_in_thread_start_failure(server_key: _core.PrivateKey) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="address"):
            DevRouter(port=port, key=server_key).run_in_thread()


def test_serve_forever_and_stop(server_key: _core.PrivateKey) -> None:
    async def main() -> None:
        router = DevRouter(key=server_key)
        task = asyncio.create_task(router.serve_forever())
        while not router.running:
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient() as http:
            assert (await http.get(router.url + KEY_PATH)).status_code == 200
            # An open keep-alive connection must not keep stop() waiting.
            await router.stop()
        await asyncio.wait_for(task, 5)
        assert not router.running
        with pytest.raises(RuntimeError):
            _ = router.url

        # Restartable, and cancellation of serve_forever() stops it.
        task = asyncio.create_task(router.serve_forever())
        while not router.running:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not router.running

    asyncio.run(main())


def test_generated_key_and_options() -> None:
    router = DevRouter(key_bits=2048)
    assert router.public_key.key_size == 2048
    assert "stopped" in repr(router)
    with pytest.raises(ValueError, match="together"):
        DevRouter(key_bits=2048, tls_cert="cert.pem")
    with pytest.raises(TypeError):
        DevRouter(key_bits=2048, api_keys="sk-one")


def test_recorded_request_repr_hides_secrets() -> None:
    record = RecordedRequest(
        payload_id="p",
        headers={"authorization": "Bearer sk-secret", "x-public-key": "PEM", "x-payload-id": "p"},
        body={"messages": [{"role": "user", "content": "private words"}]},
        status=200,
    )
    text = repr(record)
    for secret in ("sk-secret", "private words", "PEM"):
        assert secret not in text


def test_exported_names() -> None:
    import nomyo.testing

    assert sorted(nomyo.testing.__all__) == [
        "AttestationProvider",
        "DevCertificates",
        "DevRouter",
        "Fault",
        "FaultQueue",
        "RecordedRequest",
        "RouterThread",
        "SwtpmAttestation",
        "echo_completion",
        "make_test_certificates",
    ]
