"""Server-key pinning, trust on first use, reply binding and TPM attestation policies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nomyo
from nomyo import _core
from nomyo._known_hosts import KnownHosts, trust_server_key
from nomyo.testing import DevRouter, RouterThread

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tpm"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


class Quotes:
    """An attestation provider that serves a chosen fixture block."""

    def __init__(self) -> None:
        self.block: dict[str, Any] = {"is_available": False}

    def __call__(self, payload_id: str) -> dict[str, Any]:
        return self.block


@pytest.fixture(scope="module")
def quotes() -> Quotes:
    return Quotes()


@pytest.fixture(scope="module")
def router(quotes: Quotes) -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048, attestation_provider=quotes).run_in_thread() as handle:
        yield handle


def client(url: str, key: _core.PrivateKey, **kwargs: Any) -> nomyo.SecureCompletionClient:
    c = nomyo.SecureCompletionClient(url, allow_http=True, **kwargs)
    c._set_key(key)
    return c


def send(c: nomyo.SecureCompletionClient, payload_id: str, text: str = "hi") -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        async with c:
            payload = {"model": "m", "messages": [{"role": "user", "content": text}]}
            return await c.send_secure_request(payload, payload_id)

    return asyncio.run(go())


@pytest.mark.parametrize(
    "name", ["valid/q1_rsa_rsassa.json", "valid/q3_ecc_ecdsa.json", "valid/q5_rsa_multibank.json"]
)
def test_verify_attaches_result_and_require_passes(
    router: RouterThread, quotes: Quotes, client_key: _core.PrivateKey, name: str
) -> None:
    fx = fixture(name)
    quotes.block = fx["tpm_attestation"]
    reply = send(client(router.url, client_key, attestation="verify"), fx["payload_id"])
    result = reply["_metadata"]["attestation_verification"]
    assert result["valid"] is True
    assert result["bound_to_request"] is True
    assert result["genuine_tpm_proven"] is False
    assert "AIK" in result["caveat"] or "aik" in result["caveat"].lower()
    reply = send(client(router.url, client_key, attestation="require"), fx["payload_id"])
    assert reply["choices"][0]["message"]["content"] == "hi"


def test_require_refuses_quote_of_another_request(
    router: RouterThread, quotes: Quotes, client_key: _core.PrivateKey
) -> None:
    quotes.block = fixture("valid/q1_rsa_rsassa.json")["tpm_attestation"]
    with pytest.raises(nomyo.SecurityError, match="extra_data_mismatch"):
        send(client(router.url, client_key, attestation="require"), "another-id", "plain secret")
    reply = send(client(router.url, client_key, attestation="verify"), "another-id")
    assert reply["_metadata"]["attestation_verification"]["reason"] == "extra_data_mismatch"


@pytest.mark.parametrize(
    "name",
    [
        "invalid/rsa_flipped_signature_byte.json",
        "invalid/rsa_tampered_pcr_value.json",
        "invalid/rsa_wrong_magic.json",
        "invalid/ecc_sig_with_rsa_aik.json",
    ],
)
def test_require_refuses_invalid_quotes(
    router: RouterThread, quotes: Quotes, client_key: _core.PrivateKey, name: str
) -> None:
    fx = fixture(name)
    quotes.block = fx["tpm_attestation"]
    with pytest.raises(nomyo.SecurityError) as info:
        send(client(router.url, client_key, attestation="require"), fx["payload_id"])
    assert fx["expected"]["reason"] in str(info.value)
    assert "hi" not in str(info.value)


def test_require_refuses_absent_attestation(
    router: RouterThread, quotes: Quotes, client_key: _core.PrivateKey
) -> None:
    quotes.block = {"is_available": False}
    with pytest.raises(nomyo.SecurityError, match="absent"):
        send(client(router.url, client_key, attestation="require"), "pid")
    off = send(client(router.url, client_key), "pid")
    assert "attestation_verification" not in off["_metadata"]
    assert off["_metadata"]["tpm_attestation"] == {"is_available": False}


def test_expected_pcrs_policy(
    router: RouterThread, quotes: Quotes, client_key: _core.PrivateKey
) -> None:
    fx = fixture("valid/q1_rsa_rsassa.json")
    quotes.block = fx["tpm_attestation"]
    bank, values = next(iter(fx["tpm_attestation"]["pcr_values"].items()))
    index, digest = next(iter(values.items()))
    good = {bank: {int(index): digest.upper()}}
    reply = send(
        client(router.url, client_key, attestation="require", expected_pcrs=good),
        fx["payload_id"],
    )
    assert reply["_metadata"]["attestation_verification"]["pcr_policy_matched"] is True
    bad = {bank: {int(index): "00" * 32}}
    with pytest.raises(nomyo.SecurityError, match="pcr_policy_mismatch"):
        send(
            client(router.url, client_key, attestation="require", expected_pcrs=bad),
            fx["payload_id"],
        )


def test_payload_id_must_be_a_header_value(client_key: _core.PrivateKey) -> None:
    c = client("http://127.0.0.1:9", client_key)
    for bad in ("", "ünïcødé", "line\nbreak"):
        with pytest.raises(nomyo.ConfigurationError, match="payload_id"):
            send(c, bad)


def test_invalid_attestation_mode() -> None:
    with pytest.raises(nomyo.ConfigurationError):
        nomyo.SecureCompletionClient(attestation="sometimes")  # type: ignore[arg-type]


def test_trust_on_first_use(tmp_path: Path, client_key: _core.PrivateKey) -> None:
    hosts = tmp_path / "cfg" / "known_hosts"
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        first_fp = handle.router.public_key.fingerprint()
        send(client(handle.url, client_key, known_hosts=hosts), "a")
        assert hosts.stat().st_mode & 0o777 == 0o600
        assert KnownHosts(hosts).entries() == {handle.url: {first_fp}}
        send(client(handle.url, client_key, known_hosts=hosts), "b")
        new_key = handle.router.rotate_key()
        before = handle.router.secure_requests
        with pytest.raises(nomyo.SecurityError, match="changed") as info:
            send(client(handle.url, client_key, known_hosts=hosts), "c")
        assert new_key.fingerprint() in str(info.value)
        assert handle.router.secure_requests == before, "nothing sent to an unknown key"
        trust_server_key(handle.url, new_key.fingerprint(), known_hosts=hosts)
        reply = send(client(handle.url, client_key, known_hosts=hosts), "d")
        assert reply["_metadata"]["payload_id"] == "d"


def test_reply_bound_to_request_id(client_key: _core.PrivateKey) -> None:
    """A reply whose server metadata names another payload id is refused."""
    c = client("http://127.0.0.1:9", client_key)
    reply = {"choices": [], "_metadata": {"payload_id": "someone-else"}}
    envelope = _core.seal_json(reply, client_key.public_key(), processed_at=1)
    with pytest.raises(nomyo.SecurityError, match="another request"):
        asyncio.run(c.decrypt_response(envelope, "mine"))
    ok = asyncio.run(c.decrypt_response(envelope, "someone-else"))
    assert ok["_metadata"]["payload_id"] == "someone-else"


def test_password_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client_key: _core.PrivateKey
) -> None:
    key_dir = tmp_path / "keys"
    monkeypatch.setenv("NOMYO_KEY_PASSWORD", "from env ✓")
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        first = nomyo.SecureChatCompletion(handle.url, allow_http=True, key_dir=key_dir)
        asyncio.run(first.create("m", [{"role": "user", "content": "x"}]))
        assert "ENCRYPTED" in (key_dir / "private_key.pem").read_text()
        monkeypatch.setenv("NOMYO_KEY_PASSWORD", "wrong")
        second = nomyo.SecureChatCompletion(handle.url, allow_http=True, key_dir=key_dir)
        with pytest.raises(nomyo.KeyFormatError, match="password"):
            asyncio.run(second.create("m", [{"role": "user", "content": "x"}]))


def test_cli_keys_trust_accepts_a_changed_key(tmp_path: Path, client_key: _core.PrivateKey) -> None:
    import subprocess
    import sys

    hosts = tmp_path / "known_hosts"
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        send(client(handle.url, client_key, known_hosts=hosts), "first")
        new_key = handle.router.rotate_key()
        with pytest.raises(nomyo.SecurityError, match="nomyo keys trust"):
            send(client(handle.url, client_key, known_hosts=hosts), "second")
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "nomyo",
                "keys",
                "trust",
                "--base-url",
                handle.url,
                "--allow-http",
                "--known-hosts",
                str(hosts),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert new_key.fingerprint() in proc.stdout
        assert KnownHosts(hosts).entries() == {handle.url: {new_key.fingerprint()}}
        reply = send(client(handle.url, client_key, known_hosts=hosts), "third")
        assert reply["_metadata"]["payload_id"] == "third"
