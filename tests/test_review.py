"""Regression tests for the security review: URLs, TLS settings, compression, files, relays."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

import nomyo
from nomyo import _core
from nomyo._keys import save_key_pair
from nomyo._known_hosts import KnownHosts, normalise_url
from nomyo.testing import DevRouter


def test_credentials_in_base_url_are_refused() -> None:
    with pytest.raises(nomyo.ConfigurationError, match="credentials") as info:
        nomyo.SecureChatCompletion(base_url="https://user:hunter2@router.example")
    assert "hunter2" not in str(info.value)


def test_ssl_context_must_verify() -> None:
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    with pytest.raises(nomyo.ConfigurationError, match="CERT_REQUIRED"):
        nomyo.SecureChatCompletion(verify=unverified)
    no_hostname = ssl.create_default_context()
    no_hostname.check_hostname = False
    with pytest.raises(nomyo.ConfigurationError):
        nomyo.SyncSecureChatCompletion(verify=no_hostname)


def test_replies_are_requested_uncompressed() -> None:
    key = _core.PrivateKey.generate(2048)
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        client = nomyo.SecureChatCompletion(base_url=handle.url, allow_http=True)
        client.client._set_key(key)
        asyncio.run(client.create("m", [{"role": "user", "content": "x"}]))
        assert handle.router.requests[-1].headers["accept-encoding"] == "identity"


def test_group_writable_key_dir_is_refused(tmp_path: Path) -> None:
    key_dir = tmp_path / "shared"
    key_dir.mkdir()
    key_dir.chmod(0o777)
    with pytest.raises(nomyo.KeyFormatError, match="chmod 700"):
        save_key_pair(_core.PrivateKey.generate(2048), key_dir)
    assert list(key_dir.iterdir()) == []


def test_public_key_file_is_not_replaced_through_a_symlink(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    key_dir.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (key_dir / "public_key.pem").symlink_to(victim)
    with pytest.raises(FileExistsError):
        save_key_pair(_core.PrivateKey.generate(2048), key_dir)
    assert victim.read_text() == "precious"


def test_known_hosts_normalises_urls_and_checks_its_mode(tmp_path: Path) -> None:
    assert normalise_url("HTTPS://Router.Example:443/") == "https://router.example"
    assert normalise_url("http://[::1]:8080/api/") == "http://[::1]:8080/api"
    hosts = KnownHosts(tmp_path / "known_hosts")
    hosts.check("https://router.example", "sha256:" + "a" * 64)
    hosts.check("HTTPS://ROUTER.EXAMPLE:443", "sha256:" + "a" * 64)
    with pytest.raises(nomyo.SecurityError, match="changed"):
        hosts.check("https://router.example:443/", "sha256:" + "b" * 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["known_hosts", "known_hosts.lock"]
    (tmp_path / "known_hosts").chmod(0o666)
    with pytest.raises(nomyo.SecurityError, match="chmod 600"):
        hosts.entries()


def test_serve_dev_refuses_non_loopback_without_flag() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nomyo", "serve-dev", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "--allow-remote" in proc.stderr


def test_relays_refuse_client_settings_in_the_body() -> None:

    with DevRouter(key_bits=2048).run_in_thread() as handle:
        http = nomyo.openai_http_client(handle.url, allow_http=True)
        for field in ("timeout", "extra_body", "api_key", "base_url"):
            body = {"model": "m", "messages": [{"role": "user", "content": "x"}], field: None}
            response = http.post("https://nomyo.invalid/v1/chat/completions", json=body)
            assert response.status_code == 400, field
            assert response.json()["error"]["param"] == field
        http.close()
        from nomyo._openai import sdk_http

        assert isinstance(http, sdk_http().Client)
