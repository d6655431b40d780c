"""Client key pairs: generation, key files, and key directories."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

from ._constants import KEY_SIZE, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE
from ._core import PrivateKey, write_file
from ._exceptions import KeyFormatError
from ._files import UnsafeFileError, check_directory, read_text

__all__ = [
    "Password",
    "load_private_key",
    "password_from_env",
    "read_public_key_pem",
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


def _check_key_dir(directory: Path) -> None:
    """Refuse a key directory another user owns or could write to (they could plant or swap
    the key files); see :func:`nomyo._files.check_directory`.

    Raises:
        KeyFormatError: the directory breaks a rule (the message says how to fix it).
    """
    try:
        check_directory(directory, what="key directory")
    except UnsafeFileError as exc:
        raise KeyFormatError(str(exc)) from None


def read_public_key_pem(path: str | os.PathLike[str]) -> str:
    """A public key file's text, opened as :mod:`nomyo._files` opens files.

    Raises:
        FileNotFoundError: no such file.
        KeyFormatError: a symlink, another user's file, writable by group or others,
            unreadable or not UTF-8.
    """
    try:
        return read_text(path, what="public key file").strip()
    except FileNotFoundError:
        raise
    except (UnsafeFileError, UnicodeDecodeError) as exc:
        raise KeyFormatError(str(exc)) from None
    except OSError as exc:
        raise KeyFormatError(f"cannot read {path}: {exc.strerror or exc}") from None


def load_private_key(
    path: str | os.PathLike[str], password: Password = None, *, allow_readable: bool = False
) -> PrivateKey:
    """Load a PKCS#8 PEM private key file.

    Args:
        path: the file.
        password: its password, if it is encrypted.
        allow_readable: accept a file that group or others can read.

    Raises:
        FileNotFoundError: no such file.
        KeyFormatError: the file or its directory belongs to another user or can be
            written by group or others, the file is readable by them (unless
            ``allow_readable``) or is a symlink; corrupt file, wrong or missing password,
            not RSA, or under 2048 bits.
    """
    # The directory first (another user's, or one others can write to, is refused), then
    # the file in native memory (no-follow; owner and mode checked on the open file): the
    # PEM of an unencrypted key never becomes a Python bytes object.
    _check_key_dir(Path(os.path.abspath(path)).parent)
    try:
        return PrivateKey.load(os.fspath(path), resolve_password(password), allow_readable)
    except OSError as exc:
        if exc.errno == errno.ELOOP or Path(path).is_symlink():  # O_NOFOLLOW met a link
            raise KeyFormatError(
                f"the private key file {path} is a symbolic link; nomyo never opens one "
                "(name the file itself)"
            ) from None
        raise


def save_key_pair(
    key: PrivateKey,
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
    _check_key_dir(directory)
    private_path = directory / PRIVATE_KEY_FILE
    public_path = directory / PUBLIC_KEY_FILE
    if not overwrite:
        for existing in (private_path, public_path):
            if existing.exists():
                raise FileExistsError(f"{existing} already exists; refusing to overwrite a key")
    secret = resolve_password(password)
    key.save(str(private_path), secret, overwrite)
    write_file(str(public_path), key.public_key().to_pem(), overwrite, 0o644)
    if not secret:
        logger.warning("private key saved without a password in %s", directory)
    return private_path, public_path


def generate_key(bits: int = KEY_SIZE) -> PrivateKey:
    """Generate an RSA key pair (e = 65537)."""
    return PrivateKey.generate(bits)
