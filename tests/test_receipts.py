"""Receipts and remembered measurements against the DevRouter with real swtpm quotes.

Every receipt's quote is also checked by an independent verifier written with
pyca/cryptography (``tests/tpm_oracle.py``); the request digests are compared with the
router's own record of the ciphertext it received.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tpm_oracle import oracle_verify

import nomyo
from nomyo import _core
from nomyo._keys import save_key_pair
from nomyo._known_pcrs import KnownPcrs
from nomyo._proxy import ChatProxy
from nomyo._receipts import receipt_digest, verify_receipt
from nomyo._transports import HttpxTransport
from nomyo.testing import DevRouter, Fault, RouterThread, SwtpmAttestation

pytestmark = pytest.mark.swtpm

CANARY = "canary-7f1d2b-plaintext-must-not-be-in-receipts"


def _require_swtpm() -> None:
    if SwtpmAttestation.available():
        return
    if not sys.platform.startswith("linux"):
        pytest.skip("swtpm and tpm2-tools are not installed")
    pytest.fail("swtpm is not installed; run: sudo bash scripts/install-system-deps.sh")


@pytest.fixture(scope="module")
def tpm() -> Iterator[SwtpmAttestation]:
    _require_swtpm()
    with SwtpmAttestation() as provider:
        yield provider


@pytest.fixture(scope="module")
def changed_tpm() -> Iterator[SwtpmAttestation]:
    """The same software with one more measurement in PCR 10 ("an update")."""
    _require_swtpm()
    with SwtpmAttestation(measure=["nomyo-dev app v2"]) as provider:
        yield provider


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved 2048-bit client key pair (generating a 4096-bit key per client is slow)."""
    path = tmp_path_factory.mktemp("keys")
    save_key_pair(_core.PrivateKey.generate(2048), path, None)
    return path


@pytest.fixture
def router(tpm: SwtpmAttestation) -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048, attestation_provider=tpm).run_in_thread() as handle:
        yield handle


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def ask(c: nomyo.SyncSecureChatCompletion, text: str = CANARY, **kw: Any) -> Any:
    return c.chat.completions.create(model="m", messages=[{"role": "user", "content": text}], **kw)


def test_one_receipt_per_request_native_httpx_streamed(
    router: RouterThread, key_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "receipts.jsonl"

    async def native() -> None:
        async with nomyo.SecureChatCompletion(
            router.url, allow_http=True, key_dir=key_dir, attestation="require", receipts=path
        ) as c:
            await c.create("m", [{"role": "user", "content": CANARY}], security_tier="maximum")
            stream = await c.chat.completions.create(
                model="m", messages=[{"role": "user", "content": CANARY}], stream=True
            )
            assert [chunk async for chunk in stream]

    asyncio.run(native())
    with nomyo.SyncSecureChatCompletion(
        router.url,
        allow_http=True,
        key_dir=key_dir,
        receipts=str(path),
        transport=httpx.HTTPTransport(),
    ) as sync:
        assert isinstance(sync.client._transport, HttpxTransport)
        ask(sync)
        assert list(ask(sync, stream=True))
    text = path.read_text()
    assert CANARY not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    records = lines(path)
    assert len(records) == 4 == len(text.splitlines())
    assert [r["streamed"] for r in records] == [False, True, False, True]
    assert [r["attestation_mode"] for r in records] == ["require", "require", "off", "off"]
    assert records[0]["security_tier"] == "maximum"
    seen = {r.payload_id: r.envelope_sha256 for r in router.router.requests}
    for record in records:
        assert record["outcome"] == "accepted"
        assert record["request_sha256"] == seen[record["payload_id"]]  # the router's view
        assert record["server_key"] == router.router.public_key.fingerprint()
        assert record["model"] == "m" and record["nomyo_version"] == nomyo.__version__
        assert record["verification"]["valid"] and record["verification"]["bound_to_request"]
        assert record["reply_binding"] == "off"
        assert verify_receipt(record)["ok"], verify_receipt(record)
        assert oracle_verify(record["tpm_attestation"], record["payload_id"])
    assert len({r["client_key"] for r in records}) == 1


def test_proxy_marks_streamed_receipts(router: RouterThread, key_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "proxy.jsonl"
    body = {"model": "m", "messages": [{"role": "user", "content": CANARY}]}

    async def go() -> list[int]:
        async with nomyo.SecureChatCompletion(
            router.url, allow_http=True, key_dir=key_dir, receipts=path
        ) as chat:
            proxy = ChatProxy(chat, "127.0.0.1", 0, model="m")
            await proxy.start()
            try:
                async with httpx.AsyncClient() as http:
                    url = f"{proxy.url}/v1/chat/completions"
                    streamed = await http.post(url, json=body | {"stream": True})
                    plain = await http.post(url, json=body)
            finally:
                await proxy.stop()
        assert CANARY in streamed.text and streamed.text.endswith("data: [DONE]\n\n")
        return [streamed.status_code, plain.status_code]

    assert asyncio.run(go()) == [200, 200]
    records = lines(path)
    assert [r["streamed"] for r in records] == [True, False]
    assert CANARY not in path.read_text()
    assert all(
        verify_receipt(r)["ok"] and oracle_verify(r["tpm_attestation"], r["payload_id"])
        for r in records
    )


def test_refused_replies_get_receipts(router: RouterThread, key_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "receipts.jsonl"
    wrong = {"sha256": {7: "00" * 32}}
    with (
        nomyo.SyncSecureChatCompletion(
            router.url,
            allow_http=True,
            key_dir=key_dir,
            attestation="require",
            expected_pcrs=wrong,
            receipts=path,
        ) as c,
        pytest.raises(nomyo.SecurityError, match="pcr_policy_mismatch"),
    ):
        ask(c, stream=True)
    garbage = b"not an envelope " * 8
    router.router.faults.push(Fault(garbage_reply=garbage))
    with (
        nomyo.SyncSecureChatCompletion(
            router.url, allow_http=True, key_dir=key_dir, receipts=path
        ) as c,
        pytest.raises((nomyo.SecurityError, nomyo.EnvelopeError)),
    ):
        ask(c)
    with nomyo.SyncSecureChatCompletion(
        router.url, allow_http=True, key_dir=key_dir, receipts=path, reply_binding="require"
    ) as c:
        ask(c)
        router.router.reply_binding = False  # a router without the extension
        try:
            with pytest.raises(nomyo.SecurityError, match="reply binding"):
                ask(c)
        finally:
            router.router.reply_binding = True
    first, second, bound, unbound = lines(path)
    assert (bound["outcome"], bound["reply_binding"]) == ("accepted", "ok")
    assert (unbound["outcome"], unbound["reply_binding"]) == ("refused", "failed")
    assert CANARY not in path.read_text()
    assert (first["outcome"], first["refused_by"], first["streamed"]) == (
        "refused",
        "SecurityError",
        True,
    )
    assert first["verification"]["pcr_policy_matched"] is False
    assert first["pcr_policy"] == "fixed"
    assert verify_receipt(first)["ok"]  # the quote itself is genuine; the policy refused it
    assert oracle_verify(first["tpm_attestation"], first["payload_id"])
    assert second["outcome"] == "refused" and second["tpm_attestation"] is None
    assert second["reply_sha256"] == hashlib.sha256(garbage).hexdigest()
    assert verify_receipt(second)["reason"] == "not_available"


def _resealed(record: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """An altered copy whose receipt_sha256 is recomputed: only the quote can tell."""
    out = copy.deepcopy(record)
    out.update(changes)
    out["receipt_sha256"] = receipt_digest(out)
    return out


def test_altered_receipts_fail(router: RouterThread, key_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    with nomyo.SyncSecureChatCompletion(
        router.url, allow_http=True, key_dir=key_dir, receipts=path
    ) as c:
        ask(c)
    (genuine,) = lines(path)
    assert verify_receipt(genuine)["ok"]
    block = genuine["tpm_attestation"]

    pcr = copy.deepcopy(block)
    value = pcr["pcr_values"]["sha256"]["10"]
    pcr["pcr_values"]["sha256"]["10"] = value[:-1] + ("0" if value[-1] != "0" else "1")
    sig = copy.deepcopy(block)
    raw = bytearray(__import__("base64").b64decode(sig["signature_b64"]))
    raw[40] ^= 0x01
    sig["signature_b64"] = __import__("base64").b64encode(bytes(raw)).decode()
    cases = {
        "pcr_digest_mismatch": _resealed(genuine, tpm_attestation=pcr),
        "extra_data_mismatch": _resealed(genuine, payload_id=genuine["payload_id"] + "x"),
        "signature_invalid": _resealed(genuine, tpm_attestation=sig),
    }
    for reason, altered in cases.items():
        result = verify_receipt(altered)
        assert (result["ok"], result["reason"]) == (False, reason)
        assert not oracle_verify(altered["tpm_attestation"], altered["payload_id"])
    edited = dict(genuine, model="another-model")  # any field, digest not recomputed
    assert verify_receipt(edited)["reason"] == "altered"
    assert verify_receipt({"nomyo_receipt": 1})["reason"] == "malformed"
    fake_check = _resealed(genuine, verification=dict(genuine["verification"], aik_type="ecc"))
    assert verify_receipt(fake_check)["reason"] == "result_mismatch"
    policy = {"sha256": {10: "00" * 32}}
    assert verify_receipt(genuine, expected_pcrs=policy)["reason"] == "pcr_policy_mismatch"


def test_receipts_file_rules(router: RouterThread, key_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    with (
        nomyo.SyncSecureChatCompletion(
            router.url, allow_http=True, key_dir=key_dir, receipts=link
        ) as c,
        pytest.raises(nomyo.SecurityError, match="symbolic link"),
    ):
        ask(c)
    assert not target.exists()
    shared = tmp_path / "shared.jsonl"
    shared.touch(mode=0o666)
    os.chmod(shared, 0o664)
    with (
        nomyo.SyncSecureChatCompletion(
            router.url, allow_http=True, key_dir=key_dir, receipts=shared
        ) as c,
        pytest.raises(nomyo.SecurityError, match="writable by group or others"),
    ):
        ask(c)
    assert shared.read_text() == ""
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo, 0o600)
    with (
        nomyo.SyncSecureChatCompletion(
            router.url, allow_http=True, key_dir=key_dir, receipts=fifo
        ) as c,
        pytest.raises(nomyo.ConfigurationError),  # never blocks on a FIFO nobody reads
    ):
        ask(c)


def test_env_receipts(
    router: RouterThread, key_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "env.jsonl"
    monkeypatch.setenv("NOMYO_RECEIPTS", str(path))
    with nomyo.SyncSecureChatCompletion(router.url, allow_http=True, key_dir=key_dir) as c:
        ask(c)
    with nomyo.SyncSecureChatCompletion(
        router.url, allow_http=True, key_dir=key_dir, receipts=False
    ) as c:
        ask(c)
    assert len(lines(path)) == 1


def test_tofu_refuses_a_changed_measurement_until_trusted(
    router: RouterThread,
    key_dir: Path,
    tpm: SwtpmAttestation,
    changed_tpm: SwtpmAttestation,
    tmp_path: Path,
) -> None:
    known = tmp_path / "known_pcrs"
    receipts = tmp_path / "r.jsonl"

    def client(mode: str = "require") -> nomyo.SyncSecureChatCompletion:
        return nomyo.SyncSecureChatCompletion(
            router.url,
            allow_http=True,
            key_dir=key_dir,
            attestation=mode,  # type: ignore[arg-type]
            expected_pcrs="tofu",
            known_pcrs=known,
            receipts=receipts,
        )

    with client() as c:
        ask(c)
        ask(c)
    assert stat.S_IMODE(known.stat().st_mode) == 0o600
    store = KnownPcrs(known)
    first = store.load()["routers"]
    (url,) = first
    router.router.attestation_provider = changed_tpm
    with client() as c, pytest.raises(nomyo.SecurityError) as info:
        ask(c)
    message = str(info.value)
    assert "sha256:10" in message and str(known) in message and "sha256:0," not in message
    assert CANARY not in message
    with client("verify") as c:
        result = ask(c)["_metadata"]["attestation_verification"]
    assert (result["valid"], result["reason"]) == (False, "pcr_policy_mismatch")
    assert store.load()["routers"][url]["pcrs"] == first[url]["pcrs"]  # unchanged
    new = store.trust(url)
    assert new == changed_tpm.pcr_values()
    with client() as c:
        assert ask(c)["_metadata"]["attestation_verification"]["pcr_policy_matched"] is True
    history = store.load()["history"]
    assert [h["event"] for h in history] == ["first_use", "trust"]
    assert history[1]["old"] == first[url]["pcrs"] and history[1]["new"] == new
    remembered = [r["verification"]["pcr_remembered"] for r in lines(receipts)]
    assert remembered == ["first_use", "matched", "changed", "changed", "matched"]
    outcomes = [(r["outcome"], r["pcr_policy"]) for r in lines(receipts)]
    assert (
        outcomes == [("accepted", "tofu")] * 2 + [("refused", "tofu")] + [("accepted", "tofu")] * 2
    )
    assert store.forget(url) and not store.forget(url)
    with pytest.raises(nomyo.ConfigurationError, match="attestation"):
        nomyo.SyncSecureChatCompletion(
            router.url, allow_http=True, key_dir=key_dir, expected_pcrs="tofu"
        )


def test_known_pcrs_file_is_never_reset(tmp_path: Path) -> None:
    path = tmp_path / "known_pcrs"
    path.write_text("{broken")
    path.chmod(0o600)
    with pytest.raises(nomyo.SecurityError, match="does not parse"):
        KnownPcrs(path).check("http://127.0.0.1:1", {"sha256": {"0": "00" * 32}})
    assert path.read_text() == "{broken"
    path.chmod(0o620)
    with pytest.raises(nomyo.SecurityError, match="writable by group"):
        KnownPcrs(path).load()


def test_known_pcrs_lock_and_fifo_follow_the_file_rules(tmp_path: Path) -> None:
    """The known-PCRs lock file is checked like the file (``nomyo._files.locked``), and a
    FIFO in the file's place is refused at once instead of blocking the read."""
    path = tmp_path / "known_pcrs"
    values = {"sha256": {"0": "00" * 32}}
    lock = tmp_path / "known_pcrs.lock"
    lock.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(nomyo.SecurityError, match="symbolic link"):
        KnownPcrs(path).check("http://127.0.0.1:1", values)
    assert not (tmp_path / "elsewhere").exists() and not path.exists()
    lock.unlink()
    lock.touch(mode=0o600)
    lock.chmod(0o660)
    with pytest.raises(nomyo.SecurityError, match=r"known-PCRs lock file .*chmod 600"):
        KnownPcrs(path).check("http://127.0.0.1:1", values)
    lock.chmod(0o600)
    assert KnownPcrs(path).check("http://127.0.0.1:1", values) == ("first_use", "")
    path.unlink()
    os.mkfifo(path, 0o600)
    with pytest.raises(nomyo.SecurityError, match="not a regular file"):
        KnownPcrs(path).load()
