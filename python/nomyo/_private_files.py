"""The user's own small record files (receipts, known PCR values): the known_hosts rules.

Every file is opened without following a symbolic link (``O_NOFOLLOW``), refused when another
user owns it or group or others may write it, and created 0600. An appended record is one
``write`` of one whole line (``O_APPEND``), so concurrent writers never interleave within a
line; a rewritten file is replaced atomically (temporary file, ``fsync``, ``rename``) under
an exclusive lock shared by threads and processes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shlex
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from ._exceptions import ConfigurationError, SecurityError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["append_line", "check_owned", "locked", "read_text", "replace_text"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: A FIFO would block the open; it is refused (not a regular file) right after.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_lock = threading.Lock()


def check_owned(fd: int, path: Path, what: str) -> None:
    """Refuse a file another user owns, one that group or others may write, or a non-file.

    Raises:
        SecurityError: the file is not the user's own private regular file.
    """
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise SecurityError(f"the {what} {path} is not a regular file")
    if os.name == "posix" and info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise SecurityError(
            f"the {what} {path} is writable by group or others (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); fix it with: chmod 600 {shlex.quote(str(path))}"
        )
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        raise SecurityError(
            f"the {what} {path} belongs to another user (uid {info.st_uid}); it must be your own"
        )


def _open(path: Path, flags: int, what: str) -> int:
    try:
        return os.open(path, flags | _NOFOLLOW | _CLOEXEC | _NONBLOCK, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SecurityError(f"the {what} {path} is a symbolic link; refusing it") from None
        raise


def append_line(path: Path, line: bytes, what: str) -> None:
    """Append ``line`` (one record, ending in a newline) in a single write.

    Raises:
        SecurityError: the file is a link, not the user's own, or writable by others.
        ConfigurationError: it cannot be created or written.
    """
    try:
        fd = _open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, what)
    except OSError as exc:
        raise ConfigurationError(f"cannot open the {what} {path}: {exc.strerror}") from None
    try:
        check_owned(fd, path, what)
        written = os.write(fd, line)
        if written != len(line):
            raise ConfigurationError(f"short write to the {what} {path}")
    except OSError as exc:
        raise ConfigurationError(f"cannot write the {what} {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def read_text(path: Path, what: str) -> str | None:
    """The file's text, or None when it does not exist.

    Raises:
        SecurityError: the file is a link, not the user's own, writable by others, or
            unreadable.
    """
    try:
        fd = _open(path, os.O_RDONLY, what)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SecurityError(f"cannot read the {what} {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        check_owned(f.fileno(), path, what)
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecurityError(f"the {what} {path} is not UTF-8 text") from None


def replace_text(path: Path, text: str) -> None:
    """Replace the file's contents atomically with a new 0600 file (hold :func:`locked`)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of ``path`` across threads and processes.

    Raises:
        ConfigurationError: the folder or the lock file cannot be created.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = _open(path.with_name(path.name + ".lock"), os.O_WRONLY | os.O_CREAT, "lock file")
    except OSError as exc:
        raise ConfigurationError(f"cannot update {path}: {exc.strerror}") from None
    try:
        with _lock:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
    finally:
        os.close(fd)
