"""The development router (``nomyo.testing._router``) checking requests: headers, client
keys, API keys, security tiers, payloads, envelopes, routes and methods."""

from __future__ import annotations

import json
import urllib.parse
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
from nomyo.testing import DevRouter


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
