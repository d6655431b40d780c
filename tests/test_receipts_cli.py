"""``nomyo serve-dev --tpm``, ``--receipts``, ``nomyo verify`` and ``nomyo attest``, end to end.

A real ``nomyo serve-dev --tpm`` (swtpm quotes) answers ``nomyo chat`` and ``nomyo proxy``
subprocesses; it is restarted on the same port with ``--tpm-measure`` to change PCR 10, which
``--expected-pcrs tofu`` refuses until ``nomyo attest trust``. Every receipt's quote is also
checked by the pyca/cryptography verifier of ``tests/tpm_oracle.py``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import socket
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_cli import Server, nomyo
from tpm_oracle import oracle_verify

from nomyo import _core
from nomyo._keys import save_key_pair
from nomyo.testing import SwtpmAttestation

pytestmark = pytest.mark.swtpm

CANARY = "canary-41c9e0-plaintext-must-not-be-in-receipts"


def _serve(log: Path, *extra: str) -> Server:
    return Server("serve-dev", "--tpm", "--key-bits", "2048", *extra, log=log)


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_serve_dev_tpm_receipts_verify_and_a_trusted_change(tmp_path: Path) -> None:
    if not SwtpmAttestation.available():
        pytest.fail("swtpm is not installed; run: sudo bash scripts/install-system-deps.sh")
    keys = tmp_path / "keys"
    save_key_pair(_core.PrivateKey.generate(2048), keys, None)
    receipts, known = tmp_path / "receipts.jsonl", tmp_path / "known_pcrs"
    trust = ["--expected-pcrs", "tofu", "--known-pcrs", str(known), "--receipts", str(receipts)]

    def chat(url: str) -> Any:
        return nomyo(
            "chat", "--base-url", url, "--allow-http", "--key-dir", str(keys), *trust, CANARY
        )

    server = _serve(tmp_path / "serve1.log", "--port", "0")
    url = server.url
    port = url.rsplit(":", 1)[1]
    try:
        first = chat(url)
        assert first.returncode == 0, first.stderr
        assert first.stdout.strip() == CANARY
        line = first.stderr.splitlines()[-1]
        assert line.startswith("nomyo: attestation verified: ")
        assert "not proven: that a genuine TPM made it" in line
        assert "values remembered now: first use" in line
        proxy = Server(
            "proxy", "--listen", "127.0.0.1:0", "--base-url", url, "--allow-http", *trust,
            log=tmp_path / "proxy.log",
        )  # fmt: skip
        try:
            body = {"model": "m", "messages": [{"role": "user", "content": CANARY}]}
            streamed = httpx.post(f"{proxy.url}/v1/chat/completions", json=body | {"stream": True})
            assert streamed.status_code == 200 and CANARY in streamed.text
        finally:
            assert proxy.stop() == 0
    finally:
        assert server.stop() == 0
    changed = _serve(tmp_path / "serve2.log", "--port", port, "--tpm-measure", "app v2")
    try:
        assert changed.url == url
        refused = chat(url)
        assert refused.returncode == 4, refused.stderr
        assert "sha256:10" in refused.stderr and str(known) in refused.stderr
        assert "nomyo attest trust" in refused.stderr and CANARY not in refused.stderr
        shown = nomyo("attest", "show", "--known-pcrs", str(known))
        assert "pending" in shown.stdout and "PCR sha256:10 changed" in shown.stdout
        accepted = nomyo("attest", "trust", url, "--known-pcrs", str(known))
        assert accepted.returncode == 0, accepted.stderr
        again = chat(url)
        assert again.returncode == 0, again.stderr
    finally:
        assert changed.stop() == 0

    text = receipts.read_text()
    assert CANARY not in text
    assert stat.S_IMODE(receipts.stat().st_mode) == 0o600
    records = _records(receipts)
    assert [(r["outcome"], r["streamed"]) for r in records] == [
        ("accepted", False),
        ("accepted", True),
        ("refused", False),
        ("accepted", False),
    ]
    assert all(oracle_verify(r["tpm_attestation"], r["payload_id"]) for r in records)
    pcr10 = [r["tpm_attestation"]["pcr_values"]["sha256"]["10"] for r in records]
    assert pcr10[0] == pcr10[1] != pcr10[2] == pcr10[3]
    history = json.loads(nomyo("attest", "show", "--json", "--known-pcrs", str(known)).stdout)
    assert [h["event"] for h in history["history"]] == ["first_use", "trust"]

    verified = nomyo("verify", str(receipts))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.count("\nOK ") + verified.stdout.startswith("OK ") == 4
    assert "4 receipt(s): 4 verified, 0 failed" in verified.stdout
    as_json = json.loads(nomyo("verify", "--json", str(receipts)).stdout)
    assert as_json["ok"] == 4 and as_json["failed"] == 0

    altered = tmp_path / "altered.jsonl"
    lines = text.splitlines()
    record = json.loads(lines[0])
    value = record["tpm_attestation"]["pcr_values"]["sha256"]["0"]
    record["tpm_attestation"]["pcr_values"]["sha256"]["0"] = ("0" if value[0] != "0" else "1") + (
        value[1:]
    )
    lines[0] = json.dumps(record)
    record = json.loads(lines[1])
    record["payload_id"] = "another-request"
    lines[1] = json.dumps(record)
    record = json.loads(lines[3])
    sig = bytearray(base64.b64decode(record["tpm_attestation"]["signature_b64"]))
    sig[-1] ^= 0x80
    record["tpm_attestation"]["signature_b64"] = base64.b64encode(bytes(sig)).decode()
    lines[3] = json.dumps(record)
    altered.write_text("\n".join(lines) + "\n")
    failed = nomyo("verify", str(altered))
    assert failed.returncode == 1
    assert [line[:4] for line in failed.stdout.splitlines()[:4]] == ["FAIL", "FAIL", "OK  ", "FAIL"]
    assert "3 failed" in failed.stdout
    checked = json.loads(nomyo("verify", "--json", str(altered)).stdout)["receipts"]
    # the digest catches each edit; with the digest recomputed the quote itself fails
    # (tests/test_receipts.py::test_altered_receipts_fail)
    assert [r["reason"] for r in checked] == ["altered", "altered", "ok", "altered"]
    assert [r["checks"]["valid"] for r in checked] == [False, False, True, False]
    assert [r["checks"]["reason"] for r in checked] == [
        "pcr_digest_mismatch",
        "extra_data_mismatch",
        "ok",
        "signature_invalid",
    ]
    assert nomyo("attest", "forget", url, "--known-pcrs", str(known)).returncode == 0
    assert nomyo("attest", "forget", url, "--known-pcrs", str(known)).returncode == 1


def test_serve_dev_tpm_measure_and_verify_usage(tmp_path: Path) -> None:
    assert nomyo("verify").returncode == 2
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = nomyo("verify", str(empty))
    assert result.returncode == 1 and "0 receipt(s)" in result.stdout
    junk = tmp_path / "junk.jsonl"
    junk.write_text("not json\n")
    result = nomyo("verify", str(junk))
    assert result.returncode == 1 and "not a receipt" in result.stdout
    assert nomyo("chat", "--expected-pcrs", "{bad", "x").returncode == 2


def test_readme_receipts_walkthrough_runs_as_written(tmp_path: Path) -> None:
    """The README's ``sh`` block under "Try it locally", line by line (on a free port)."""
    if not SwtpmAttestation.available():
        pytest.fail("swtpm is not installed; run: sudo bash scripts/install-system-deps.sh")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (block,) = re.findall(r"```sh\n(.*?)```", readme, flags=re.S)
    lines = [line.removeprefix("$ ").split("  #")[0].strip() for line in block.splitlines()]
    port = str(_free_port())
    save_key_pair(_core.PrivateKey.generate(2048), tmp_path / "nomyo-keys", None)  # fast
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / ".config")}
    server: Server | None = None
    codes = []
    try:
        for line in (line.replace("12435", port) for line in lines):
            words = shlex.split(os.path.expandvars(line.replace("$HOME", env["HOME"])))
            if words[0] == "export":
                name, _, value = words[1].partition("=")
                env[name] = os.environ[name] = value
            elif words[1] == "serve-dev":
                if server is not None:
                    assert server.stop() == 0
                server = Server(*words[1:], log=tmp_path / f"serve{len(codes)}.log")
            else:
                result = nomyo(*words[1:], env=env)
                codes.append((words[1], result.returncode))
                if words[1] == "attest" and words[2] == "show":
                    assert "pending" in result.stdout
    finally:
        os.environ.pop("NOMYO_RECEIPTS", None)
        if server is not None:
            server.stop()
    assert codes == [("chat", 0), ("verify", 0), ("chat", 4), ("attest", 0), ("attest", 0)]
    assert len(_records(tmp_path / "nomyo-receipts.jsonl")) == 2
    assert (tmp_path / ".config" / "nomyo" / "known_pcrs").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
