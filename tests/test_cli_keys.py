"""``nomyo keys`` (``nomyo.cli.keys``): generate, show and server-fingerprint."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import httpx
from cli_support import PASSWORD, Server, nomyo
from cli_support import certs as certs
from cli_support import router as router
from cli_support import tls_router as tls_router
from cryptography.hazmat.primitives import serialization

from nomyo import _core
from nomyo._keys import load_private_key
from nomyo.testing import DevCertificates


def test_keys_round_trip_with_password_from_stdin(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    made = nomyo(
        "keys", "generate", "--dir", str(key_dir), "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert made.returncode == 0, made.stderr
    private, public = key_dir / "private_key.pem", key_dir / "public_key.pem"
    assert private.stat().st_mode & 0o777 == 0o600
    assert public.stat().st_mode & 0o777 == 0o644
    assert b"ENCRYPTED PRIVATE KEY" in private.read_bytes()
    fingerprint = load_private_key(private, PASSWORD).public_key().fingerprint()
    assert f"fingerprint:  {fingerprint}" in made.stdout
    assert "4096 bits" in made.stdout

    shown = nomyo("keys", "show", "--dir", str(key_dir))
    assert shown.returncode == 0, shown.stderr
    assert fingerprint in shown.stdout
    assert "mode 0600" in shown.stdout and "mode 0644" in shown.stdout
    assert "password:     yes" in shown.stdout

    checked = nomyo("keys", "show", "--dir", str(key_dir), "--password-stdin", stdin=PASSWORD)
    assert checked.returncode == 0, checked.stderr
    assert "password checked" in checked.stdout

    wrong = nomyo("keys", "show", "--dir", str(key_dir), "--password-stdin", stdin="nope\n")
    assert wrong.returncode == 5
    assert "nope" not in wrong.stderr

    again = nomyo("keys", "generate", "--dir", str(key_dir), "--bits", "2048")
    assert again.returncode == 1
    assert "--force" in again.stderr
    forced = nomyo("keys", "generate", "--dir", str(key_dir), "--bits", "2048", "--force")
    assert forced.returncode == 0, forced.stderr
    assert fingerprint not in forced.stdout
    assert "NOT password-protected" in forced.stdout
    plain = nomyo("keys", "show", "--dir", str(key_dir))
    assert "password:     no" in plain.stdout
    assert "2048 bits" in plain.stdout

    for result in (made, shown, checked, wrong):
        assert PASSWORD not in result.stdout + result.stderr


def test_keys_show_missing_dir_exits_5(tmp_path: Path) -> None:
    assert nomyo("keys", "show", "--dir", str(tmp_path / "none")).returncode == 5


def test_server_fingerprint_matches_spki_sha256(router: Server) -> None:
    result = nomyo("keys", "server-fingerprint", "--base-url", router.url, "--allow-http")
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip()
    pem = httpx.get(router.url + "/pki/public_key", timeout=10).text
    assert printed == _core.PublicKey.from_pem(pem).fingerprint()
    der = serialization.load_pem_public_key(pem.encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert printed == "sha256:" + hashlib.sha256(der).hexdigest()
    assert printed == router.read_until(r"server key (sha256:[0-9a-f]{64})")
    refused = nomyo("keys", "server-fingerprint", "--base-url", router.url)
    assert refused.returncode == 4


def test_server_fingerprint_over_https(tls_router: Server, certs: DevCertificates) -> None:
    result = nomyo(
        "keys", "server-fingerprint", "--base-url", tls_router.url, "--ca-file", certs.ca_cert
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", result.stdout)
