"""Key-file interop with the REFERENCE client (PyPI nomyo 0.2.9), both directions.

The reference runs in a subprocess through tests/reference_driver.py (see conftest.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from nomyo import KeyFormatError, SecureCompletionClient, _core

pytestmark = pytest.mark.reference

#: The ``run_reference`` fixture of conftest.py: (exit code, JSON output) of the driver.
RunReference = Callable[..., tuple[int, dict[str, Any]]]

PASSWORD = "ref interop ✓ pässwörd"
ENV = {"KEY_PW": PASSWORD, "WRONG_PW": "not it", "EMPTY_PW": ""}
PRIVATE = "private_key.pem"
PUBLIC = "public_key.pem"


def _numbers(pem: str) -> rsa.RSAPublicNumbers:
    key = serialization.load_pem_public_key(pem.encode())
    assert isinstance(key, rsa.RSAPublicKey)
    return key.public_numbers()


def _ref_gen(run_reference: RunReference, path: Path, *extra: str) -> dict[str, Any]:
    code, out = run_reference("gen-keys", str(path), *extra, env=ENV)
    assert code == 0, out
    assert out["key_size"] == 4096
    return out


@pytest.fixture(scope="module")
def ref_plain(
    run_reference: RunReference, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """A key dir written by the reference without a password, and its public PEM."""
    path = tmp_path_factory.mktemp("ref-plain")
    return path, _ref_gen(run_reference, path)["public_key_pem"]


@pytest.fixture(scope="module")
def ref_encrypted(
    run_reference: RunReference, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """A key dir written by the reference with PASSWORD, and its public PEM."""
    path = tmp_path_factory.mktemp("ref-encrypted")
    return path, _ref_gen(run_reference, path, "--password-env", "KEY_PW")["public_key_pem"]


# --- the reference writes, we load ----------------------------------------------------------


def test_reference_plain_key_loads_in_ours(ref_plain: tuple[Path, str]) -> None:
    path, public_pem = ref_plain
    assert (path / PRIVATE).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    for public_path in (None, path / PUBLIC):
        client = SecureCompletionClient()
        client.load_keys(path / PRIVATE, public_path)
        assert client.private_key is not None
        assert client.private_key.key_size == 4096
        assert client.public_key_pem is not None
        assert client.public_key_pem.strip() == public_pem.strip()
        assert client.private_key.public_key() == _core.PublicKey.from_pem(public_pem)


@pytest.mark.parametrize("form", ["str", "bytes", "callable"])
def test_reference_encrypted_key_loads_in_ours(ref_encrypted: tuple[Path, str], form: str) -> None:
    path, public_pem = ref_encrypted
    assert (path / PRIVATE).read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    password: Any = {
        "str": PASSWORD,
        "bytes": PASSWORD.encode("utf-8"),
        "callable": lambda: PASSWORD,
    }[form]
    client = SecureCompletionClient()
    client.load_keys(path / PRIVATE, path / PUBLIC, password=password)
    assert client.public_key_pem is not None
    assert _numbers(client.public_key_pem) == _numbers(public_pem)
    assert client.private_key is not None
    assert client.private_key.public_key() == _core.PublicKey.from_pem(public_pem)


def test_reference_encrypted_key_needs_the_password_in_ours(
    ref_encrypted: tuple[Path, str],
) -> None:
    path, _ = ref_encrypted
    for password in (None, "not it"):
        with pytest.raises(KeyFormatError, match="password"):
            SecureCompletionClient().load_keys(path / PRIVATE, password=password)


def test_reference_empty_password_key_loads_in_ours_with_empty_password(
    run_reference: RunReference, tmp_path: Path
) -> None:
    # The reference's generate_keys(password="") writes an UNENCRYPTED key, and its
    # load_keys(password="") loads it: "" means "no password" there.
    public_pem = _ref_gen(run_reference, tmp_path, "--password-env", "EMPTY_PW")["public_key_pem"]
    assert (tmp_path / PRIVATE).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    code, out = run_reference("load-keys", str(tmp_path), "--password-env", "EMPTY_PW", env=ENV)
    assert code == 0, out
    client = SecureCompletionClient()
    client.load_keys(tmp_path / PRIVATE, password="")
    assert (client.public_key_pem or "").strip() == public_pem.strip()


# --- we write, the reference loads ------------------------------------------------------------


def _our_key_dir(path: Path, password: str | None) -> str:
    client = SecureCompletionClient()
    client.key_size = 2048
    client.generate_keys(save_to_file=True, key_dir=str(path), password=password)
    assert client.public_key_pem is not None
    return client.public_key_pem


@pytest.mark.parametrize("with_password", [False, True], ids=["plain", "password"])
def test_our_keys_load_in_the_reference(
    run_reference: RunReference, tmp_path: Path, with_password: bool
) -> None:
    public_pem = _our_key_dir(tmp_path, PASSWORD if with_password else None)
    extra = ["--password-env", "KEY_PW"] if with_password else []
    code, out = run_reference("load-keys", str(tmp_path), *extra, env=ENV)
    assert code == 0, out
    assert out["key_size"] == 2048
    assert out["public_key_pem"].strip() == public_pem.strip()
    assert _numbers(out["public_key_pem"]) == _numbers(public_pem)
    code, out = run_reference("roundtrip-with-keys", str(tmp_path), *extra, env=ENV)
    assert (code, out) == (0, {"ok": True, "key_size": 2048})


def test_our_public_key_file_is_what_the_reference_derives(
    run_reference: RunReference, tmp_path: Path
) -> None:
    public_pem = _our_key_dir(tmp_path, None)
    (tmp_path / PUBLIC).unlink()  # the driver then derives the PEM from the private key
    code, out = run_reference("load-keys", str(tmp_path), env=ENV)
    assert code == 0, out
    assert out["public_key_pem"] == public_pem  # byte for byte, trailing newline included


def test_our_encrypted_key_needs_the_password_in_the_reference(
    run_reference: RunReference, tmp_path: Path
) -> None:
    _our_key_dir(tmp_path, PASSWORD)
    for extra in ([], ["--password-env", "WRONG_PW"]):
        code, out = run_reference("load-keys", str(tmp_path), *extra, env=ENV)
        assert code == 3, out
        assert out["error"] == "ValueError"
