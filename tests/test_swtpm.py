"""TPM attestation end to end with a real software TPM (swtpm + tpm2-tools).

The DevRouter gets its quotes from ``SwtpmAttestation`` (a live swtpm process); the client
verifies them natively. The fixture generator ``tests/fixtures/tpm/make.sh`` is also run
into a temporary folder and every fresh fixture is checked against its expected result.

Skipped only off Linux when swtpm is missing; on Linux a missing swtpm is a failure
(install with ``bash scripts/install-system-deps.sh``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nomyo
from nomyo import _core
from nomyo.testing import DevRouter, RouterThread, SwtpmAttestation

pytestmark = pytest.mark.swtpm

TESTS = Path(__file__).resolve().parent
MAKE_SH = TESTS / "fixtures" / "tpm" / "make.sh"
SELECTION = "sha256:0,7,10"


def _require_swtpm() -> None:
    if SwtpmAttestation.available():
        return
    if not sys.platform.startswith("linux"):
        pytest.skip("swtpm and tpm2-tools are not installed (needed for TPM attestation tests)")
    pytest.fail(
        "swtpm and tpm2-tools are not installed; run: sudo bash scripts/install-system-deps.sh",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def tpm() -> Iterator[SwtpmAttestation]:
    _require_swtpm()
    with SwtpmAttestation(SELECTION) as provider:
        yield provider
    assert not provider.running


@pytest.fixture(scope="module")
def router(tpm: SwtpmAttestation) -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048, attestation_provider=tpm).run_in_thread() as handle:
        yield handle


def client(url: str, key: _core.PrivateKey, **kwargs: Any) -> nomyo.SecureCompletionClient:
    c = nomyo.SecureCompletionClient(url, allow_http=True, max_retries=0, **kwargs)
    c._set_key(key)
    return c


async def _send(
    c: nomyo.SecureCompletionClient, payload_id: str, text: str, tier: str | None
) -> dict[str, Any]:
    payload = {"model": "m", "messages": [{"role": "user", "content": text}]}
    return await c.send_secure_request(payload, payload_id, security_tier=tier)


def send(
    c: nomyo.SecureCompletionClient,
    payload_id: str,
    text: str = "hello tpm",
    tier: str | None = None,
) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        async with c:
            return await _send(c, payload_id, text, tier)

    return asyncio.run(go())


def content(reply: dict[str, Any]) -> Any:
    return reply["choices"][0]["message"]["content"]


# --- the provider on its own ------------------------------------------------------------------


def test_provider_block_has_the_protocol_shape(tpm: SwtpmAttestation) -> None:
    block = tpm("shape-check")
    assert set(block) == {
        "is_available",
        "pcr_banks",
        "pcr_values",
        "quote_b64",
        "signature_b64",
        "aik_pubkey_b64",
    }
    assert block["is_available"] is True
    assert block["pcr_banks"] == SELECTION
    values = block["pcr_values"]["sha256"]
    assert sorted(values, key=int) == ["0", "7", "10"]
    assert all(len(v) == 64 and v == v.lower() for v in values.values())
    assert any(v != "00" * 32 for v in values.values()), "PCRs were extended"
    result = _core.verify_attestation(block, "shape-check", None)
    assert result["valid"] is True, result
    assert result["reason"] == "ok"
    assert result["aik_type"] == "rsa"
    assert result["signature_scheme"] == "rsassa"
    assert result["genuine_tpm_proven"] is False
    other = _core.verify_attestation(block, "another-request", None)
    assert other["valid"] is False
    assert other["reason"] == "extra_data_mismatch"


@pytest.mark.parametrize(("scheme", "aik"), [("rsapss", "rsa"), ("ecdsa", "ecc")])
def test_other_signature_schemes(scheme: Any, aik: str) -> None:
    _require_swtpm()
    with SwtpmAttestation(scheme=scheme) as provider:
        payload_id = "payload-ünïcødé-✓" if scheme == "rsapss" else "payload-ecc"
        result = _core.verify_attestation(provider(payload_id), payload_id, None)
    assert result["valid"] is True, result
    assert (result["aik_type"], result["signature_scheme"]) == (aik, scheme)
    with pytest.raises(RuntimeError, match="closed"):
        provider("after-close")


def test_provider_is_thread_safe(tpm: SwtpmAttestation) -> None:
    results: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            pid = f"thread-{i}"
            results[pid] = _core.verify_attestation(tpm(pid), pid, None)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(results) == 12
    assert all(r["valid"] and r["bound_to_request"] for r in results.values())


# --- end to end: DevRouter + client -----------------------------------------------------------


def test_require_succeeds_with_a_real_quote(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    reply = send(client(router.url, client_key, attestation="require"), "swtpm-e2e-1")
    assert content(reply) == "hello tpm"
    meta = reply["_metadata"]
    assert meta["tpm_attestation"]["is_available"] is True
    result = meta["attestation_verification"]
    assert result["valid"] is True, result
    assert result["bound_to_request"] is True
    assert result["signature_valid"] is True
    assert result["pcr_digest_valid"] is True
    assert result["pcr_policy_matched"] is None
    assert result["pcr_values"] == meta["tpm_attestation"]["pcr_values"]
    assert set(result["pcr_values"]["sha256"]) == {"0", "7", "10"}


def test_expected_pcrs_from_the_quote_match(
    router: RouterThread, tpm: SwtpmAttestation, client_key: _core.PrivateKey
) -> None:
    quoted = tpm.pcr_values()
    expected = {bank: {int(i): v.upper() for i, v in vals.items()} for bank, vals in quoted.items()}
    c = client(router.url, client_key, attestation="require", expected_pcrs=expected)
    reply = send(c, "swtpm-policy-ok")
    result = reply["_metadata"]["attestation_verification"]
    assert result["valid"] is True
    assert result["pcr_policy_matched"] is True
    subset = {"sha256": {7: quoted["sha256"]["7"]}}
    reply = send(client(router.url, client_key, attestation="require", expected_pcrs=subset), "s")
    assert reply["_metadata"]["attestation_verification"]["pcr_policy_matched"] is True


@pytest.mark.parametrize(
    "policy",
    [
        {"sha256": {7: "00" * 32}},
        {"sha256": {0: "ff" * 32, 7: "00" * 32}},
        {"sha256": {16: "00" * 32}},  # a PCR that is not quoted
        {"sha1": {0: "00" * 20}},  # a bank that is not quoted
    ],
)
def test_wrong_expected_pcrs_raise(
    router: RouterThread, client_key: _core.PrivateKey, policy: dict[str, dict[int, str]]
) -> None:
    c = client(router.url, client_key, attestation="require", expected_pcrs=policy)
    with pytest.raises(nomyo.SecurityError, match="pcr_policy_mismatch") as info:
        send(c, "swtpm-policy-bad", "secret words")
    assert "secret words" not in str(info.value)
    verify = client(router.url, client_key, attestation="verify", expected_pcrs=policy)
    result = send(verify, "swtpm-policy-bad")["_metadata"]["attestation_verification"]
    assert result["valid"] is False
    assert result["signature_valid"] and result["bound_to_request"]
    assert result["pcr_policy_matched"] is False


def test_maximum_tier_succeeds_with_tpm(router: RouterThread, client_key: _core.PrivateKey) -> None:
    reply = send(client(router.url, client_key, attestation="require"), "swtpm-max", tier="maximum")
    assert content(reply) == "hello tpm"
    assert router.router.requests[-1].security_tier == "maximum"
    assert router.router.requests[-1].status == 200
    assert reply["_metadata"]["attestation_verification"]["valid"] is True


def test_maximum_tier_refused_without_tpm(client_key: _core.PrivateKey) -> None:
    with (
        DevRouter(key_bits=2048).run_in_thread() as plain,
        pytest.raises(nomyo.ServiceUnavailableError),
    ):
        send(client(plain.url, client_key), "no-tpm", tier="maximum")


def test_concurrent_requests_each_get_their_own_quote(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    async def go() -> list[dict[str, Any]]:
        async with client(router.url, client_key, attestation="require") as c:
            return await asyncio.gather(
                *(_send(c, f"swtpm-par-{i}", f"m{i}", None) for i in range(8))
            )

    replies = asyncio.run(go())
    assert [content(r) for r in replies] == [f"m{i}" for i in range(8)]
    quotes = {r["_metadata"]["tpm_attestation"]["quote_b64"] for r in replies}
    assert len(quotes) == 8


# --- fresh fixtures from make.sh ----------------------------------------------------------------


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port pair")


def test_fresh_make_sh_fixtures_verify_as_expected(tmp_path: Path) -> None:
    _require_swtpm()
    for tool in ("openssl", "python3", "tpm2_checkquote", "tpm2_sign"):
        if shutil.which(tool) is None:
            pytest.fail(f"make.sh needs {tool}; run scripts/install-system-deps.sh")
    out = tmp_path / "fresh"
    env = {**os.environ, "OUT": str(out), "SWTPM_PORT": str(_free_port_pair())}
    proc = subprocess.run(
        ["bash", str(MAKE_SH)], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    entries = manifest["fixtures"]
    assert len(entries) >= 23
    committed = json.loads((TESTS / "fixtures" / "tpm" / "manifest.json").read_text())
    assert {e["file"] for e in entries} == {e["file"] for e in committed["fixtures"]}
    for entry in entries:
        doc = json.loads((out / entry["file"]).read_text(encoding="utf-8"))
        got = _core.verify_attestation(doc["tpm_attestation"], doc["payload_id"], None)
        expected = doc["expected"]
        assert got["genuine_tpm_proven"] is False and got["aik_trusted"] is False
        if entry["file"].startswith("forged/"):
            # consistent, so it verifies; only a trusted AIK could tell it apart
            assert got["valid"] is True and got["reason"] == "ok", (entry["file"], got)
        else:
            assert got["valid"] is expected["valid"], (entry["file"], got)
            assert got["reason"] == expected["reason"], (entry["file"], got)
    # fresh keys and signatures: the genuine quotes differ from the committed ones
    fresh = json.loads((out / "valid" / "q1_rsa_rsassa.json").read_text())["tpm_attestation"]
    old_path = TESTS / "fixtures" / "tpm" / "valid" / "q1_rsa_rsassa.json"
    old = json.loads(old_path.read_text())["tpm_attestation"]
    assert fresh["aik_pubkey_b64"] != old["aik_pubkey_b64"]
    assert fresh["pcr_values"] == old["pcr_values"]


# --- a pinned AIK (issue 18, finding 1) -------------------------------------------------------


def _aik_fingerprint_by_tpm2_tools(tpm: SwtpmAttestation, tmp_path: Path) -> str:
    """What an operator gets from the AK's public part: tpm2_print | openssl | sha256."""
    import base64
    import hashlib

    public = tmp_path / "ak.tpm2b_public"
    public.write_bytes(base64.b64decode(tpm("aik-export")["aik_pubkey_b64"]))
    pem = subprocess.run(
        ["tpm2_print", "-t", "TPM2B_PUBLIC", "-f", "pem", str(public)],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(pem)
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


def test_pinned_aik_accepts_the_tpm_and_refuses_another_key(
    router: RouterThread, tpm: SwtpmAttestation, tmp_path: Path
) -> None:
    pin = _aik_fingerprint_by_tpm2_tools(tpm, tmp_path)

    async def chat(trusted: str) -> Any:
        async with nomyo.SecureChatCompletion(
            router.url, allow_http=True, attestation="require", trusted_aik=trusted
        ) as c:  # random payload ids: a fresh quote per request
            return await c.create("m", [{"role": "user", "content": "pinned tpm"}])

    reply = asyncio.run(chat(pin))
    result = reply["_metadata"]["attestation_verification"]
    assert result["aik_fingerprint"] == pin
    assert result["valid"] and result["aik_trusted"] and result["genuine_tpm_proven"]
    with pytest.raises(nomyo.SecurityError, match="aik_untrusted"):
        asyncio.run(chat("sha256:" + "00" * 32))
    with nomyo.SyncSecureChatCompletion(
        router.url, allow_http=True, attestation="require", trusted_aik=[pin]
    ) as sync:
        sync_reply = sync.create("m", [{"role": "user", "content": "pinned tpm"}])
    assert sync_reply["_metadata"]["attestation_verification"]["genuine_tpm_proven"]
