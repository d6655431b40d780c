"""The development router's injected faults (``nomyo.testing._faults``): statuses, delays,
dropped connections, undecryptable or garbage replies, key rotation, slow bodies."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from router_support import KEY_PATH, detail, open_reply, post_sealed, serve
from router_support import server_key as server_key

from nomyo import _core
from nomyo._exceptions import SecurityError
from nomyo.testing import DevRouter, Fault


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
