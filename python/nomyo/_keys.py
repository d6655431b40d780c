"""Client key pairs: generation, key files, and key directories."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

from . import _core
from ._constants import KEY_SIZE, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE
from ._exceptions import KeyFormatError

__all__ = [
    "Password",
    "load_private_key",
    "password_from_env",
    "resolve_password",
    "save_key_pair",
]

logger = logging.getLogger("nomyo")

#: A password: literal text, or a callable returning it (so it need not be kept around).
Password = str | bytes | Callable[[], str | bytes] | None


def password_from_env(name: str = "NOMYO_KEY_PASSWORD") -> Callable[[], str] | None:
    """A password callable reading ``name`` from the environment when the key is loaded.

    Returns None when the variable is not set, so that no password is used.
    """
    if name not in os.environ:
        return None

    def read() -> str:
        value = os.environ.get(name)
        if value is None:
            raise KeyFormatError(
                f"the environment variable {name} holding the key password is gone"
            )
        return value

    return read


def resolve_password(password: Password) -> str | bytes | None:
    """Return the password, calling it first if it is a callable; empty means none.

    As in the reference client, ``""`` (or ``b""``) is the same as no password.
    """
    value = password() if callable(password) else password
    return value if value else None


def _check_private_file_mode(path: Path, allow_readable: bool) -> None:
    if os.name != "posix" or allow_readable:
        return
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFormatError(
            f"private key file {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); fix it with: chmod 600 {path}"
        )


def load_private_key(
    path: str | os.PathLike[str], password: Password = None, *, allow_readable: bool = False
) -> _core.PrivateKey:
    """Load a PKCS#8 PEM private key file.

    Args:
        path: the file.
        password: its password, if it is encrypted.
        allow_readable: accept a file that group or others can read.

    Raises:
        FileNotFoundError: no such file.
        KeyFormatError: permissions too open, corrupt file, wrong or missing password,
            not RSA, or under 2048 bits.
    """
    p = Path(path)
    _check_private_file_mode(p, allow_readable)
    return _core.PrivateKey.from_pem(p.read_bytes(), resolve_password(password))


def save_key_pair(
    key: _core.PrivateKey,
    key_dir: str | os.PathLike[str],
    password: Password = None,
    *,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write ``private_key.pem`` (0600, atomically) and ``public_key.pem`` (0644).

    Raises:
        FileExistsError: a key file exists and ``overwrite`` is false; nothing is changed.
    """
    directory = Path(key_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_path = directory / PRIVATE_KEY_FILE
    public_path = directory / PUBLIC_KEY_FILE
    if not overwrite:
        for existing in (private_path, public_path):
            if existing.exists():
                raise FileExistsError(f"{existing} already exists; refusing to overwrite a key")
    key.save(str(private_path), resolve_password(password), overwrite)
    tmp = public_path.with_name(f".{PUBLIC_KEY_FILE}.{os.getpid()}.tmp")
    tmp.write_text(key.public_key().to_pem())
    tmp.chmod(0o644)
    os.replace(tmp, public_path)
    if password is None:
        logger.warning("private key saved without a password in %s", directory)
    return private_path, public_path


def generate_key(bits: int = KEY_SIZE) -> _core.PrivateKey:
    """Generate an RSA key pair (e = 65537)."""
    return _core.PrivateKey.generate(bits)
