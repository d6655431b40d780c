"""Client key files: generate, save, load, permissions, refusal, and interop with cryptography."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from oracle_server import OracleServer

import nomyo
from nomyo import KeyFormatError, SecureChatCompletion, SecureCompletionClient, _core
from nomyo._keys import save_key_pair

PASSWORD = "pässwörd ✓ 123"
PRIVATE = "private_key.pem"
PUBLIC = "public_key.pem"

Password = str | bytes | Callable[[], str | bytes] | None

PASSWORD_FORMS: dict[str, Password] = {
    "str": PASSWORD,
    "bytes": PASSWORD.encode("utf-8"),
    "callable-str": lambda: PASSWORD,
    "callable-bytes": lambda: PASSWORD.encode("utf-8"),
}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file in directory: content and mode."""
    return {p.name: (p.read_bytes(), mode(p)) for p in sorted(directory.iterdir())}


def small_client() -> SecureCompletionClient:
    client = SecureCompletionClient()
    client.key_size = 2048
    return client


def crypto_public(pem: str | bytes) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    assert isinstance(key, rsa.RSAPublicKey)
    return key


@pytest.fixture(autouse=True)
def _no_password_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """SecureChatCompletion reads NOMYO_KEY_PASSWORD when no key_password is given."""
    monkeypatch.delenv("NOMYO_KEY_PASSWORD", raising=False)


@pytest.fixture(scope="module")
def saved_plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A key dir written by us without a password (read-only use)."""
    directory = tmp_path_factory.mktemp("plain")
    small_client().generate_keys(save_to_file=True, key_dir=str(directory))
    return directory


@pytest.fixture(scope="module")
def saved_encrypted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A key dir written by us with PASSWORD (read-only use)."""
    directory = tmp_path_factory.mktemp("encrypted")
    small_client().generate_keys(save_to_file=True, key_dir=str(directory), password=PASSWORD)
    return directory


@pytest.fixture(scope="module")
def crypto_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# --- generate / save / load -----------------------------------------------------------------


def test_generate_without_saving_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    client = small_client()
    client.generate_keys()
    assert client.private_key is not None
    assert client.private_key.key_size == 2048
    assert client.public_key_pem == client.private_key.public_key().to_pem()
    assert list(tmp_path.iterdir()) == []


def test_default_key_size_is_4096() -> None:
    assert SecureCompletionClient().key_size == 4096


def test_raced_key_generation_gives_distinct_valid_keys() -> None:
    """PrivateKey.generate races aws-lc generations on several threads (crypto_info tells
    how many) and keeps the first: each key is a valid RSA key to pyca/cryptography."""
    info = _core.crypto_info()
    assert info["library"] == "aws-lc"
    assert 1 <= info["key_generation_racers"] <= 4
    moduli = set()
    for bits in (2048, 2048, 3072):
        pem = _core.PrivateKey.generate(bits).to_pem()
        key = serialization.load_pem_private_key(pem, password=None)  # checks the key
        assert isinstance(key, rsa.RSAPrivateKey)
        numbers = key.private_numbers()
        assert key.key_size == bits
        assert numbers.public_numbers.e == 65537
        assert numbers.p * numbers.q == numbers.public_numbers.n
        assert abs(numbers.p - numbers.q).bit_length() > bits // 2 - 100  # FIPS 186-4 B.3.3
        moduli.add(numbers.public_numbers.n)
    assert len(moduli) == 3


def test_aws_lc_seeds_its_generator_from_the_os() -> None:
    """The build setting in .cargo/config.toml reached this extension: no CPU-jitter
    sampling (35-70 ms on each process's first random number)."""
    assert _core.crypto_info()["rng_seed"] == "os"


def test_save_and_load_without_password(saved_plain: Path) -> None:
    assert sorted(p.name for p in saved_plain.iterdir()) == [PRIVATE, PUBLIC]
    pem = (saved_plain / PRIVATE).read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    client = SecureCompletionClient()
    client.load_keys(saved_plain / PRIVATE, saved_plain / PUBLIC)
    assert client.public_key_pem is not None
    assert client.public_key_pem.strip() == (saved_plain / PUBLIC).read_text().strip()
    derived = SecureCompletionClient()
    derived.load_keys(str(saved_plain / PRIVATE))
    assert derived.private_key is not None
    assert derived.private_key.public_key() == client.private_key.public_key()  # type: ignore[union-attr]


@pytest.mark.parametrize("save_form", list(PASSWORD_FORMS))
def test_save_with_password_forms(tmp_path: Path, save_form: str) -> None:
    writer = small_client()
    writer.generate_keys(
        save_to_file=True, key_dir=str(tmp_path), password=PASSWORD_FORMS[save_form]
    )
    pem = (tmp_path / PRIVATE).read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    for load_form, password in PASSWORD_FORMS.items():
        reader = SecureCompletionClient()
        reader.load_keys(tmp_path / PRIVATE, tmp_path / PUBLIC, password=password)
        assert reader.public_key_pem == writer.public_key_pem.strip(), load_form  # type: ignore[union-attr]


def test_password_callable_is_called_each_time(saved_encrypted: Path) -> None:
    calls = []

    def password() -> str:
        calls.append(1)
        return PASSWORD

    for _ in range(2):
        SecureCompletionClient().load_keys(saved_encrypted / PRIVATE, password=password)
    assert len(calls) == 2


def test_file_modes(saved_plain: Path, saved_encrypted: Path) -> None:
    for directory in (saved_plain, saved_encrypted):
        assert mode(directory / PRIVATE) == 0o600
        assert mode(directory / PUBLIC) == 0o644


def test_new_key_dir_is_private(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b"
    small_client().generate_keys(save_to_file=True, key_dir=str(directory))
    assert mode(directory) == 0o700
    assert sorted(p.name for p in directory.iterdir()) == [PRIVATE, PUBLIC]


@pytest.mark.parametrize("password", [None, PASSWORD])
def test_umask_zero_still_gives_0600(tmp_path: Path, password: str | None) -> None:
    old = os.umask(0)
    try:
        small_client().generate_keys(save_to_file=True, key_dir=str(tmp_path), password=password)
    finally:
        os.umask(old)
    assert mode(tmp_path / PRIVATE) == 0o600
    assert mode(tmp_path / PUBLIC) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == [PRIVATE, PUBLIC]  # no temp files


def test_existing_files_are_never_overwritten(tmp_path: Path) -> None:
    first = small_client()
    first.generate_keys(save_to_file=True, key_dir=str(tmp_path))
    before = snapshot(tmp_path)
    second = small_client()
    with pytest.raises(FileExistsError):
        second.generate_keys(save_to_file=True, key_dir=str(tmp_path))
    with pytest.raises(FileExistsError):
        second.generate_keys(save_to_file=True, key_dir=str(tmp_path), password=PASSWORD)
    assert snapshot(tmp_path) == before  # content, modes, and no temp files


@pytest.mark.parametrize("existing", [PRIVATE, PUBLIC])
def test_one_existing_file_blocks_both(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("precious\n")
    before = snapshot(tmp_path)
    with pytest.raises(FileExistsError, match=existing):
        small_client().generate_keys(save_to_file=True, key_dir=str(tmp_path))
    assert snapshot(tmp_path) == before


def test_overwrite_true_replaces_both_atomically(tmp_path: Path) -> None:
    small_client().generate_keys(save_to_file=True, key_dir=str(tmp_path))
    (tmp_path / PRIVATE).chmod(0o644)
    (tmp_path / PUBLIC).chmod(0o600)
    old_inode = (tmp_path / PRIVATE).stat().st_ino
    before = snapshot(tmp_path)
    client = small_client()
    client.generate_keys(save_to_file=True, key_dir=str(tmp_path), overwrite=True)
    after = snapshot(tmp_path)
    assert sorted(after) == [PRIVATE, PUBLIC]
    assert after[PRIVATE][0] != before[PRIVATE][0]
    assert after[PUBLIC][0].decode().strip() == client.public_key_pem.strip()  # type: ignore[union-attr]
    assert (mode(tmp_path / PRIVATE), mode(tmp_path / PUBLIC)) == (0o600, 0o644)
    assert (tmp_path / PRIVATE).stat().st_ino != old_inode  # a new file renamed into place


def test_private_key_save_directly(tmp_path: Path) -> None:
    key = _core.PrivateKey.generate(2048)
    path = tmp_path / "k.pem"
    key.save(str(path))
    assert mode(path) == 0o600
    content = path.read_bytes()
    other = _core.PrivateKey.generate(2048)
    with pytest.raises(FileExistsError):
        other.save(str(path))
    assert path.read_bytes() == content
    other.save(str(path), overwrite=True)
    assert _core.PrivateKey.from_pem(path.read_bytes()).public_key() == other.public_key()
    assert [p.name for p in tmp_path.iterdir()] == ["k.pem"]


# --- refusing bad key files ----------------------------------------------------------------


def _write(tmp_path: Path, data: bytes, file_mode: int = 0o600) -> Path:
    path = tmp_path / PRIVATE
    path.write_bytes(data)
    path.chmod(file_mode)
    return path


def _refused(path: Path, password: Password = None, *words: str) -> str:
    """load_keys must raise KeyFormatError, leave the file alone and the client unchanged."""
    before = (path.read_bytes(), mode(path))
    client = small_client()
    client.generate_keys()
    old_key, old_pem = client.private_key, client.public_key_pem
    with pytest.raises(KeyFormatError) as raised:
        client.load_keys(path, password=password)
    assert isinstance(raised.value, ValueError)
    assert (path.read_bytes(), mode(path)) == before
    assert (client.private_key, client.public_key_pem) == (old_key, old_pem)
    message = str(raised.value)
    for word in words:
        assert word.lower() in message.lower(), message
    assert "BEGIN" not in message
    assert "MII" not in message  # no base64 key material
    if isinstance(password, str) and password:
        assert password not in message
    return message


def test_wrong_password(saved_encrypted: Path) -> None:
    _refused(saved_encrypted / PRIVATE, "wrong password!", "password")
    _refused(saved_encrypted / PRIVATE, b"wrong", "password")
    _refused(saved_encrypted / PRIVATE, lambda: PASSWORD.upper(), "password")


def test_missing_password(saved_encrypted: Path) -> None:
    _refused(saved_encrypted / PRIVATE, None, "password")


def test_password_for_an_unencrypted_key(saved_plain: Path) -> None:
    _refused(saved_plain / PRIVATE, "surplus", "not encrypted")


def test_corrupt_file(tmp_path: Path, saved_plain: Path) -> None:
    pem = (saved_plain / PRIVATE).read_bytes()
    lines = pem.splitlines(keepends=True)
    lines[5] = b"A" * (len(lines[5]) - 1) + b"\n"
    _refused(_write(tmp_path, b"".join(lines)))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, not a key\n",
        b"-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
        b"\x00\xff" * 100,
    ],
    ids=["empty", "text", "empty-pem", "bad-base64", "binary"],
)
def test_not_a_key(tmp_path: Path, data: bytes) -> None:
    _refused(_write(tmp_path, data))


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.9, 0.99])
def test_truncated_pem(tmp_path: Path, saved_plain: Path, fraction: float) -> None:
    pem = (saved_plain / PRIVATE).read_bytes()
    _refused(_write(tmp_path, pem[: int(len(pem) * fraction)]))


def test_truncated_encrypted_pem(tmp_path: Path, saved_encrypted: Path) -> None:
    pem = (saved_encrypted / PRIVATE).read_bytes()
    _refused(_write(tmp_path, pem[: len(pem) // 2]), PASSWORD)


@pytest.mark.parametrize("kind", ["ec", "ed25519"])
def test_non_rsa_key(tmp_path: Path, kind: str) -> None:
    key: Any = (
        ec.generate_private_key(ec.SECP256R1())
        if kind == "ec"
        else ed25519.Ed25519PrivateKey.generate()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _refused(_write(tmp_path, pem), None, "RSA")


def test_1024_bit_rsa_key(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _refused(_write(tmp_path, pem), None, "1024", "2048")
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(KeyFormatError, match="2048"):
        _core.PublicKey.from_pem(public)


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        SecureCompletionClient().load_keys(tmp_path / "nope.pem")


def test_public_key_file_of_another_key_is_refused(
    saved_plain: Path, saved_encrypted: Path
) -> None:
    client = SecureCompletionClient()
    with pytest.raises(KeyFormatError, match="public key"):
        client.load_keys(saved_plain / PRIVATE, saved_encrypted / PUBLIC)
    assert client.private_key is None


@pytest.mark.parametrize("file_mode", [0o644, 0o640, 0o604, 0o660, 0o666])
def test_readable_private_key_is_refused(tmp_path: Path, saved_plain: Path, file_mode: int) -> None:
    path = _write(tmp_path, (saved_plain / PRIVATE).read_bytes(), file_mode)
    message = _refused(path, None, "chmod 600")
    assert str(path) in message
    client = SecureCompletionClient()
    if file_mode & 0o022:  # writable by group or others: refused even with allow_readable
        with pytest.raises(KeyFormatError, match="writable by group or others"):
            client.load_keys(path, allow_readable=True)
        assert client.private_key is None
    else:
        client.load_keys(path, allow_readable=True)
        assert client.private_key is not None
    assert mode(path) == file_mode  # not "fixed" behind the user's back


@pytest.mark.parametrize("file_mode", [0o600, 0o400])
def test_owner_only_modes_are_accepted(tmp_path: Path, saved_plain: Path, file_mode: int) -> None:
    path = _write(tmp_path, (saved_plain / PRIVATE).read_bytes(), file_mode)
    client = SecureCompletionClient()
    client.load_keys(path)
    assert client.private_key is not None


def test_empty_password_means_no_password_like_the_reference(tmp_path: Path) -> None:
    # The reference client treats password="" as no password: generate_keys(password="")
    # writes an unencrypted key and load_keys(path, password="") loads an unencrypted key.
    client = small_client()
    client.generate_keys(save_to_file=True, key_dir=str(tmp_path), password="")
    assert (tmp_path / PRIVATE).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    SecureCompletionClient().load_keys(tmp_path / PRIVATE, password="")


# --- interop with cryptography -------------------------------------------------------------


CRYPTO_FORMS: dict[str, tuple[Any, Any, bytes | None]] = {
    "pkcs8": (
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
        None,
    ),
    "pkcs8-encrypted": (
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSWORD.encode()),
        PASSWORD.encode(),
    ),
    "traditional": (
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
        None,
    ),
}
HEADERS = {
    "pkcs8": b"-----BEGIN PRIVATE KEY-----",
    "pkcs8-encrypted": b"-----BEGIN ENCRYPTED PRIVATE KEY-----",
    "traditional": b"-----BEGIN RSA PRIVATE KEY-----",
}


@pytest.mark.parametrize("form", list(CRYPTO_FORMS))
def test_keys_written_by_cryptography_load_in_ours(
    tmp_path: Path, crypto_key: rsa.RSAPrivateKey, form: str
) -> None:
    fmt, encryption, password = CRYPTO_FORMS[form]
    pem = crypto_key.private_bytes(serialization.Encoding.PEM, fmt, encryption)
    assert pem.startswith(HEADERS[form])
    path = _write(tmp_path, pem)
    client = SecureCompletionClient()
    client.load_keys(path, password=password)
    assert client.private_key is not None
    assert client.private_key.key_size == 2048
    assert crypto_public(client.public_key_pem or "").public_numbers() == (
        crypto_key.public_key().public_numbers()
    )
    assert _core.PrivateKey.from_pem(pem, password).public_key() == client.private_key.public_key()


def test_encrypted_traditional_openssl_key_is_refused_cleanly(
    tmp_path: Path, crypto_key: rsa.RSAPrivateKey
) -> None:
    # Legacy "Proc-Type: 4,ENCRYPTED" PEM is not PKCS#8; not supported, but a clean error.
    pem = crypto_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"pw"),
    )
    assert b"Proc-Type: 4,ENCRYPTED" in pem
    _refused(_write(tmp_path, pem), b"pw")


@pytest.mark.parametrize("directory", ["saved_plain", "saved_encrypted"])
def test_keys_we_write_load_in_cryptography(directory: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(directory)
    password = PASSWORD.encode() if directory == "saved_encrypted" else None
    private = serialization.load_pem_private_key((path / PRIVATE).read_bytes(), password)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert private.key_size == 2048
    assert private.private_numbers().public_numbers.e == 65537
    public = crypto_public((path / PUBLIC).read_bytes())
    assert public.public_numbers() == private.public_key().public_numbers()
    ours = SecureCompletionClient()
    ours.load_keys(path / PRIVATE, password=password)
    assert crypto_public(ours.public_key_pem or "").public_numbers() == public.public_numbers()


def test_our_exports_match_cryptography_byte_for_byte(crypto_key: rsa.RSAPrivateKey) -> None:
    pem = crypto_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    ours = _core.PrivateKey.from_pem(pem)
    public = crypto_key.public_key()
    spki_der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    spki_pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert ours.public_key().to_der() == spki_der
    assert ours.public_key().to_pem() == spki_pem.decode()
    assert ours.to_pem() == pem
    assert _core.PublicKey.from_der(spki_der) == ours.public_key()
    assert _core.PublicKey.from_pem(spki_pem.decode()) == ours.public_key()
    reloaded = serialization.load_pem_private_key(ours.to_pem(PASSWORD.encode()), PASSWORD.encode())
    assert isinstance(reloaded, rsa.RSAPrivateKey)
    assert reloaded.private_numbers() == crypto_key.private_numbers()


def test_fingerprint_is_sha256_of_spki_der(crypto_key: rsa.RSAPrivateKey) -> None:
    public = crypto_key.public_key()
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ours = _core.PublicKey.from_pem(pem)
    assert ours.fingerprint() == "sha256:" + hashlib.sha256(der).hexdigest()
    assert ours.key_size == 2048
    other = _core.PrivateKey.generate(2048).public_key()
    assert other.fingerprint() != ours.fingerprint()
    assert other != ours
    assert hash(_core.PublicKey.from_der(der)) == hash(ours)


# --- SecureChatCompletion(key_dir=...) --------------------------------------------------------


@pytest.fixture(scope="module")
def oracle() -> Iterator[OracleServer]:
    with OracleServer(key_bits=2048) as server:
        yield server


def _chat_once(oracle: OracleServer, key_dir: Path, **kwargs: Any) -> dict[str, Any]:
    chat = SecureChatCompletion(base_url=oracle.url, allow_http=True, key_dir=key_dir, **kwargs)
    chat.client.key_size = 2048

    async def run() -> dict[str, Any]:
        try:
            return await chat.create(
                model="m", messages=[{"role": "user", "content": "key dir test"}]
            )
        finally:
            await chat.aclose()

    return asyncio.run(run())


def _last_public_key(oracle: OracleServer) -> str:
    return urllib.parse.unquote(oracle.requests[-1]["headers"]["x-public-key"]).strip()


@pytest.mark.parametrize("form", ["str", "bytes", "callable-str"])
def test_chat_with_password_protected_key_dir(
    oracle: OracleServer, saved_encrypted: Path, form: str
) -> None:
    before = snapshot(saved_encrypted)
    reply = _chat_once(oracle, saved_encrypted, key_password=PASSWORD_FORMS[form])
    assert reply["choices"][0]["message"]["content"] == "key dir test"
    assert _last_public_key(oracle) == (saved_encrypted / PUBLIC).read_text().strip()
    assert snapshot(saved_encrypted) == before


def test_chat_generates_a_password_protected_key_dir(oracle: OracleServer, tmp_path: Path) -> None:
    key_dir = tmp_path / "new"
    _chat_once(oracle, key_dir, key_password=PASSWORD)
    assert (key_dir / PRIVATE).read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert (mode(key_dir / PRIVATE), mode(key_dir / PUBLIC)) == (0o600, 0o644)
    first_key = _last_public_key(oracle)
    assert first_key == (key_dir / PUBLIC).read_text().strip()
    _chat_once(oracle, key_dir, key_password=PASSWORD)  # second run loads, does not regenerate
    assert _last_public_key(oracle) == first_key


@pytest.mark.parametrize("password", ["wrong", None], ids=["wrong-password", "no-password"])
def test_chat_key_that_fails_to_load_raises_and_is_kept(
    oracle: OracleServer, saved_encrypted: Path, password: str | None
) -> None:
    before = snapshot(saved_encrypted)
    sent = len(oracle.requests)
    with pytest.raises(KeyFormatError):
        _chat_once(oracle, saved_encrypted, key_password=password)
    assert snapshot(saved_encrypted) == before
    assert len(oracle.requests) == sent


def test_chat_corrupt_key_raises_and_is_kept(oracle: OracleServer, tmp_path: Path) -> None:
    (tmp_path / PRIVATE).write_bytes(
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    )
    (tmp_path / PRIVATE).chmod(0o600)
    before = snapshot(tmp_path)
    with pytest.raises(KeyFormatError):
        _chat_once(oracle, tmp_path)
    assert snapshot(tmp_path) == before


@pytest.fixture(scope="module")
def key() -> _core.PrivateKey:
    return _core.PrivateKey.generate(2048)


def test_load_round_trip(tmp_path: Path, key: _core.PrivateKey) -> None:
    path = tmp_path / "k.pem"
    key.save(str(path), password="pw")
    loaded = _core.PrivateKey.load(path, "pw")
    assert loaded.public_key() == key.public_key()
    plain = tmp_path / "plain.pem"
    key.save(str(plain))
    assert _core.PrivateKey.load(str(plain)).public_key() == key.public_key()


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        _core.PrivateKey.load(tmp_path / "nope.pem")


@pytest.mark.skipif(os.name != "posix", reason="Unix permissions")
def test_load_refuses_group_readable(tmp_path: Path, key: _core.PrivateKey) -> None:
    path = tmp_path / "k.pem"
    key.save(str(path))
    os.chmod(path, 0o640)
    with pytest.raises(KeyFormatError, match=r"mode 0640.*chmod 600"):
        _core.PrivateKey.load(path)
    assert _core.PrivateKey.load(path, allow_readable=True).public_key() == key.public_key()


@pytest.mark.skipif(os.name != "posix", reason="symlinks and FIFOs")
def test_load_refuses_symlinks_and_special_files(tmp_path: Path, key: _core.PrivateKey) -> None:
    path = tmp_path / "k.pem"
    key.save(str(path))
    link = tmp_path / "link.pem"
    link.symlink_to(path)
    with pytest.raises(OSError):
        _core.PrivateKey.load(link)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(KeyFormatError, match="not a regular file"):
        _core.PrivateKey.load(fifo)
    with pytest.raises(KeyFormatError, match="not a regular file"):
        _core.PrivateKey.load(tmp_path)


def test_load_refuses_huge_files(tmp_path: Path) -> None:
    path = tmp_path / "big.pem"
    path.write_bytes(b"A" * ((1 << 20) + 1))
    os.chmod(path, 0o600)
    with pytest.raises(KeyFormatError, match="too large"):
        _core.PrivateKey.load(path)


def test_write_file(tmp_path: Path) -> None:
    path = tmp_path / "public_key.pem"
    _core.write_file(path, "text ✓\n")
    assert path.read_bytes() == "text ✓\n".encode()
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o644 & ~current_umask()
    with pytest.raises(FileExistsError):
        _core.write_file(path, b"other")
    assert path.read_bytes() == "text ✓\n".encode()
    _core.write_file(str(path), b"other", overwrite=True, mode=0o600)
    assert path.read_bytes() == b"other"
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["public_key.pem"]
    with pytest.raises(ValueError):
        _core.write_file(tmp_path / "x", b"", mode=0o10000)
    with pytest.raises(TypeError):
        _core.write_file(tmp_path / "x", bytearray(b"x"))  # type: ignore[arg-type]


@pytest.mark.skipif(os.name != "posix", reason="symlinks")
def test_write_file_does_not_follow_symlinks(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    link = tmp_path / "link"
    link.symlink_to(victim)
    with pytest.raises(FileExistsError):
        _core.write_file(link, b"evil")
    assert victim.read_bytes() == b"keep"
    with pytest.raises(FileNotFoundError):
        _core.write_file(tmp_path / "missing-dir" / "f", b"x")


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
