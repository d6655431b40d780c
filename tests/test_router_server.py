"""The development router as an HTTP server (``nomyo.testing._router``): keep-alive, limits,
broken and slow requests, TLS, its thread and lifecycle, and ``nomyo.testing``'s exports."""

from __future__ import annotations

import asyncio
import socket
import ssl
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import pytest
from router_support import (
    KEY_PATH,
    PAYLOAD,
    SECURE_PATH,
    detail,
    open_reply,
    post_sealed,
    secure_headers,
    serve,
)
from router_support import server_key as server_key

from nomyo import _core
from nomyo.testing import DevRouter, Fault, RecordedRequest, make_test_certificates


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
