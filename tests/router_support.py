"""What the development router's tests share: the paths, a payload, a module's server key
(``server_key``), and a scenario run against a fresh :class:`DevRouter` with an httpx
client (``serve``), sealed requests and opened replies.

A test module takes ``server_key`` by importing it under its own name
(``from router_support import server_key as server_key``).
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from nomyo import _core
from nomyo.testing import DevRouter

__all__ = [
    "KEY_PATH",
    "PAYLOAD",
    "SECURE_PATH",
    "Scenario",
    "detail",
    "open_reply",
    "post_sealed",
    "secure_headers",
    "serve",
    "server_key",
]

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
