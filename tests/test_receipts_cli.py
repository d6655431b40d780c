"""``nomyo serve-dev --tpm``, ``--receipts``, ``nomyo verify`` and ``nomyo attest``, end to end.

The README's walkthrough runs as written: a real ``nomyo serve-dev --tpm`` (swtpm quotes)
answers ``nomyo chat``; it is restarted on the same port with ``--tpm-measure`` to change
PCR 10, which ``--expected-pcrs tofu`` refuses until ``nomyo attest trust``. Every receipt's
quote is also checked by the pyca/cryptography verifier of ``tests/tpm_oracle.py``.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import socket
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from cli_support import Server, nomyo
from tpm_oracle import oracle_verify

from nomyo import _core
from nomyo._keys import save_key_pair
from nomyo.testing import SwtpmAttestation

pytestmark = pytest.mark.swtpm

CANARY = "canary-41c9e0-plaintext-must-not-be-in-receipts"


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _readme_lines() -> list[str]:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```sh\n(.*?)```", readme, flags=re.S) if "--tpm" in b]
    return [line.removeprefix("$ ").split("  #")[0].strip() for line in block.splitlines()]


def test_readme_walkthrough_then_verify_run_and_altered_receipts(tmp_path: Path) -> None:
    """The README's ``sh`` block under "Try it locally", line by line (on a free port), then
    more of the same against the changed router: ``attest trust`` lets ``chat`` through,
    ``nomyo run --receipts``, ``nomyo verify`` on genuine and altered receipts."""
    if not SwtpmAttestation.available():
        pytest.fail("swtpm is not installed; run: sudo bash scripts/install-system-deps.sh")
    port = str(_free_port())
    keys = tmp_path / "nomyo-keys"
    save_key_pair(_core.PrivateKey.generate(2048), keys, None)  # fast; the README's key dir
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / ".config")}
    receipts, known = tmp_path / "nomyo-receipts.jsonl", tmp_path / ".config/nomyo/known_pcrs"
    server: Server | None = None
    outputs: list[tuple[str, Any]] = []
    try:
        for line in (line.replace("12435", port) for line in _readme_lines()):
            words = shlex.split(re.sub(r"\$(\w+)", lambda m: env[m.group(1)], line))
            if words[0] == "export":
                name, _, value = words[1].partition("=")
                env[name] = value
            elif words[1] == "serve-dev":
                if server is not None:
                    assert server.stop() == 0
                server = Server(*words[1:], log=tmp_path / f"serve{len(outputs)}.log")
            else:
                outputs.append((" ".join(words[1:3]), nomyo(*words[1:], env=env)))
        assert [(name, r.returncode) for name, r in outputs] == [
            ("chat --allow-http", 0),
            (f"verify {receipts}", 0),
            ("chat --allow-http", 4),
            ("attest show", 0),
            ("attest trust", 0),
        ], [r.stderr for _, r in outputs]
        first, _, refused, shown, _ = (r for _, r in outputs)
        assert first.stdout.strip() == "measured?"
        line = first.stderr.splitlines()[-1]
        assert line.startswith("nomyo: attestation verified: ")
        assert "not proven: that a genuine TPM made it" in line
        assert "values remembered now: first use" in line
        assert "sha256:10" in refused.stderr and str(known) in refused.stderr
        assert "nomyo attest trust" in refused.stderr and CANARY not in refused.stderr
        assert "pending" in shown.stdout and "PCR sha256:10 changed" in shown.stdout

        url = env["NOMYO_BASE_URL"]
        trust = ["--allow-http", "--key-dir", str(keys), "--expected-pcrs", "tofu"]
        again = nomyo("chat", *trust, CANARY, env=env)
        assert again.returncode == 0, again.stderr
        assert "with the remembered values" in again.stderr
        message = {"model": "m", "messages": [{"role": "user", "content": CANARY}]}
        child = (
            "import httpx, os; e = os.environ; r = httpx.post(e['OPENAI_BASE_URL'] + "
            "'/chat/completions', headers={'Authorization': 'Bearer ' + e['OPENAI_API_KEY']}, "
            f"json={message!r}); print(r.status_code)"
        )
        other = tmp_path / "run.jsonl"
        ran = nomyo(
            "run", "--allow-http", "--expected-pcrs", "tofu", "--receipts", str(other),
            "--", sys.executable, "-c", child, env=env,
        )  # fmt: skip
        assert (ran.returncode, ran.stdout.strip()) == (0, "200"), ran.stderr
    finally:
        if server is not None:
            assert server.stop() == 0

    assert not (tmp_path / "nomyo-receipts.jsonl").read_text().count(CANARY)
    run_record = _records(other)
    assert len(run_record) == 1 and run_record[0]["outcome"] == "accepted"
    text = receipts.read_text()
    assert CANARY not in text and CANARY not in other.read_text()
    assert stat.S_IMODE(receipts.stat().st_mode) == 0o600
    records = _records(receipts)
    assert [(r["outcome"], r["streamed"]) for r in records] == [
        ("accepted", False),
        ("refused", False),  # after the change (streamed ones: tests/test_receipts.py)
        ("accepted", False),  # after attest trust
    ]
    assert all(oracle_verify(r["tpm_attestation"], r["payload_id"]) for r in records)
    pcr10 = [r["tpm_attestation"]["pcr_values"]["sha256"]["10"] for r in records]
    assert pcr10[0] != pcr10[1] == pcr10[2]
    history = json.loads(nomyo("attest", "show", "--json", env=env).stdout)["history"]
    assert [h["event"] for h in history] == ["first_use", "trust"]
    assert history[1]["old"]["sha256"]["10"] == pcr10[0] == history[0]["new"]["sha256"]["10"]

    verified = nomyo("verify", str(receipts), str(other))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert [line[:3] for line in verified.stdout.splitlines()[:4]] == ["OK "] * 4
    assert "4 receipt(s): 4 verified, 0 failed" in verified.stdout
    as_json = json.loads(nomyo("verify", "--json", str(receipts)).stdout)
    assert as_json["ok"] == 3 and as_json["failed"] == 0

    lines = text.splitlines()
    record = json.loads(lines[0])
    value = record["tpm_attestation"]["pcr_values"]["sha256"]["0"]
    record["tpm_attestation"]["pcr_values"]["sha256"]["0"] = "0" if value[0] != "0" else "1"
    record["tpm_attestation"]["pcr_values"]["sha256"]["0"] += value[1:]
    lines[0] = json.dumps(record)
    record = json.loads(lines[1])
    sig = bytearray(base64.b64decode(record["tpm_attestation"]["signature_b64"]))
    sig[-1] ^= 0x80
    record["tpm_attestation"]["signature_b64"] = base64.b64encode(bytes(sig)).decode()
    lines[1] = json.dumps(record)
    record = json.loads(lines[2])
    record["payload_id"] = "another-request"
    lines.append(json.dumps(record))
    altered = tmp_path / "altered.jsonl"
    altered.write_text("\n".join(lines) + "\n")
    failed = nomyo("verify", str(altered))
    assert failed.returncode == 1
    shown_lines = [line[:4] for line in failed.stdout.splitlines()[:4]]
    assert shown_lines == ["FAIL", "FAIL", "OK  ", "FAIL"]
    assert "4 receipt(s): 1 verified, 3 failed" in failed.stdout
    checked = json.loads(nomyo("verify", "--json", str(altered)).stdout)["receipts"]
    # the digest catches each edit; with the digest recomputed the quote itself fails
    # (tests/test_receipts.py::test_altered_receipts_fail)
    assert [r["reason"] for r in checked] == ["altered", "altered", "ok", "altered"]
    assert [r["checks"]["reason"] for r in checked] == [
        "pcr_digest_mismatch",
        "signature_invalid",
        "ok",
        "extra_data_mismatch",
    ]
    assert nomyo("attest", "forget", url, env=env).returncode == 0
    assert nomyo("attest", "forget", url, env=env).returncode == 1


def test_usage_errors_and_a_missing_swtpm(tmp_path: Path) -> None:
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
    missing = nomyo("serve-dev", "--tpm", "--port", "0", env={"PATH": str(tmp_path)})
    assert missing.returncode == 1
    assert "--tpm needs swtpm and tpm2-tools" in missing.stderr
    assert "install-system-deps.sh" in missing.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
