"""Opening files that sit beside user data without following symlinks, checked on the fd.

Every file nomyo reads, writes or locks in a directory another user might share (known_hosts
and its lock, key files, a token file, the receipts file, the known-PCRs file and its lock) is
opened here: the final path component is never
followed if it is a symlink (``O_NOFOLLOW``), a FIFO cannot block the open (``O_NONBLOCK``,
cleared afterwards), and the checks run on the open descriptor (``fstat``), so no one can
swap the file between the check and the read. The rules, as ``ssh`` applies them:

- a regular file;
- owned by the current user (effective uid);
- not writable by group or others (nor readable by them with ``private=True``).

A refusal names the fix (``chmod 600 PATH``, ``chown``). Directories are checked with
:func:`check_directory`: owned by the current user or root, and not writable by group or
others unless the sticky bit is set (then only the owner of a file can replace it, and the
file's own owner check decides).

Writing: :func:`replace_file` (a new 0600 file under a random name beside the target,
``O_EXCL | O_NOFOLLOW``, fsync'ed, renamed over it: a symlink at the target is replaced, never
followed), with read-modify-write serialised by :func:`locked` (threads and processes);
appending: :func:`append_line` (created 0600, one record in one ``O_APPEND`` write, so
concurrent writers never interleave within a line).

Callers turn :class:`UnsafeFileError` (and other ``OSError``) into their own exception types.

Example::

    from nomyo._files import UnsafeFileError, read_text
    try:
        text = read_text(path, what="known-hosts file")
    except UnsafeFileError as exc:
        raise SecurityError(str(exc)) from None
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
from typing import IO

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "UnsafeFileError",
    "append_line",
    "check_directory",
    "check_fd",
    "locked",
    "open_checked",
    "open_lock",
    "read_bytes",
    "read_text",
    "replace_file",
]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: One lock per lock file, for the threads of this process (``flock`` is per open file).
_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()
#: Largest file :func:`read_bytes` reads (these are small configuration and key files).
MAX_SIZE = 16 * 1024 * 1024


class UnsafeFileError(PermissionError):
    """A file or directory that must not be trusted (the message says why and the fix)."""


def _quoted(path: str | os.PathLike[str]) -> str:
    return shlex.quote(os.fspath(path))


def _is_symlink(path: str | os.PathLike[str]) -> bool:
    with contextlib.suppress(OSError):
        return stat.S_ISLNK(os.lstat(path).st_mode)
    return False


def _euid() -> int | None:
    return os.geteuid() if hasattr(os, "geteuid") else None


def check_fd(
    fd: int, path: str | os.PathLike[str], *, what: str = "file", private: bool = False
) -> os.stat_result:
    """Check an open descriptor against the rules of this module; return its ``fstat``.

    Raises:
        UnsafeFileError: not a regular file, owned by another user, writable by group or
            others, or (``private``) readable by them.
    """
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeFileError(f"the {what} {path} is not a regular file")
    if os.name != "posix":  # pragma: no cover - POSIX rules only
        return info
    uid = _euid()
    if uid is not None and info.st_uid != uid:
        raise UnsafeFileError(
            f"the {what} {path} belongs to another user (uid {info.st_uid}, you are {uid}); "
            f"use a file of your own (or, if it is yours: chown {uid} {_quoted(path)})"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeFileError(
            f"the {what} {path} is writable by group or others (mode {mode:04o}); fix it "
            f"with: chmod 600 {_quoted(path)}"
        )
    if private and mode & (stat.S_IRGRP | stat.S_IROTH):
        raise UnsafeFileError(
            f"the {what} {path} is readable by group or others (mode {mode:04o}); fix it "
            f"with: chmod 600 {_quoted(path)}"
        )
    return info


def open_checked(
    path: str | os.PathLike[str],
    flags: int = os.O_RDONLY,
    *,
    what: str = "file",
    private: bool = False,
    create_mode: int = 0o600,
) -> int:
    """Open ``path`` without following a final symlink and check it (see :func:`check_fd`).

    With ``os.O_CREAT`` in ``flags`` a missing file is created with ``create_mode``. The
    caller owns the returned descriptor (blocking mode, close-on-exec).

    Raises:
        FileNotFoundError: no such file (and no ``O_CREAT``).
        UnsafeFileError: ``path`` is a symlink, or the file breaks a rule of :func:`check_fd`.
        OSError: any other failure to open.
    """
    try:
        fd = os.open(path, flags | _NOFOLLOW | _NONBLOCK | _CLOEXEC, create_mode)
    except OSError as exc:
        # ELOOP (Linux) / EMLINK (FreeBSD) / EFTYPE: O_NOFOLLOW met a symlink.
        if not isinstance(exc, FileNotFoundError) and _is_symlink(path):
            raise UnsafeFileError(
                f"the {what} {path} is a symbolic link; nomyo never opens one there "
                f"(replace it with the file itself: rm {_quoted(path)})"
            ) from None
        raise
    try:
        check_fd(fd, path, what=what, private=private)
        if _NONBLOCK and hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bytes(path: str | os.PathLike[str], *, what: str = "file", private: bool = False) -> bytes:
    """The contents of a checked file (at most 16 MiB).

    Raises:
        FileNotFoundError, UnsafeFileError, OSError: as :func:`open_checked`; a larger file
            is an :class:`UnsafeFileError` too.
    """
    fd = open_checked(path, what=what, private=private)
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_SIZE + 1)
    if len(data) > MAX_SIZE:
        raise UnsafeFileError(f"the {what} {path} is larger than {MAX_SIZE} bytes")
    return data


def read_text(path: str | os.PathLike[str], *, what: str = "file", private: bool = False) -> str:
    """The UTF-8 text of a checked file (see :func:`read_bytes`).

    Raises:
        UnicodeDecodeError: not UTF-8; otherwise as :func:`read_bytes`.
    """
    return read_bytes(path, what=what, private=private).decode("utf-8")


@contextlib.contextmanager
def open_lock(path: str | os.PathLike[str], *, what: str = "lock file") -> Iterator[IO[bytes]]:
    """A lock file, created 0600 if missing, never through a symlink, checked as above.

    Yields the open file (the caller ``flock``s it); it is closed afterwards.
    """
    fd = open_checked(path, os.O_RDWR | os.O_CREAT, what=what)
    with os.fdopen(fd, "r+b") as f:
        yield f


def _thread_lock(path: str) -> threading.Lock:
    with _thread_locks_guard:
        return _thread_locks.setdefault(os.path.abspath(path), threading.Lock())


@contextlib.contextmanager
def locked(path: str | os.PathLike[str], *, what: str = "lock file") -> Iterator[None]:
    """Serialise read-modify-write of ``path`` across threads and processes.

    Creates ``path``'s directory (0700) if missing, then holds an exclusive ``flock`` on
    ``PATH.lock`` (opened as :func:`open_lock` opens it) and a lock shared by this process's
    threads. Exceptions raised inside the block pass through unchanged.

    Raises:
        UnsafeFileError: the lock file is a symlink or breaks a rule of :func:`check_fd`.
        OSError: the directory or the lock file cannot be created.
    """
    target = os.fspath(path)
    directory, name = os.path.split(target)
    if directory:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    lock_path = os.path.join(directory, name + ".lock")
    with _thread_lock(lock_path), open_lock(lock_path, what=what) as lock_file:
        if fcntl is not None:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        yield


def append_line(path: str | os.PathLike[str], line: bytes, *, what: str = "file") -> None:
    """Append ``line`` (one whole record, ending in a newline) in a single ``write``.

    The file is created 0600 if missing and opened as :func:`open_checked` opens it.

    Raises:
        UnsafeFileError: as :func:`open_checked`.
        OSError: the file cannot be created or written, or the write was short.
    """
    fd = open_checked(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, what=what)
    try:
        written = os.write(fd, line)
    finally:
        os.close(fd)
    if written != len(line):
        raise OSError(errno.EIO, f"short write ({written} of {len(line)} bytes)")


def replace_file(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically (readers see the old file or the new one).

    Raises:
        OSError: the file cannot be written; ``path`` is left as it was.
    """
    target = os.fspath(path)
    directory, name = os.path.split(target)
    tmp = os.path.join(directory, f".{name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def check_directory(path: str | os.PathLike[str], *, what: str = "directory") -> None:
    """Refuse a directory owned by another user (root excepted) or writable by group or
    others without the sticky bit. A symlink to a directory is followed (the target is
    checked).

    Raises:
        FileNotFoundError: no such directory.
        UnsafeFileError: it breaks one of those rules, or is not a directory.
    """
    info = os.stat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeFileError(f"the {what} {path} is not a directory")
    if os.name != "posix":  # pragma: no cover - POSIX rules only
        return
    uid = _euid()
    if uid is not None and info.st_uid not in (uid, 0):
        raise UnsafeFileError(
            f"the {what} {path} belongs to another user (uid {info.st_uid}, you are {uid}); "
            "use a directory of your own"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
        raise UnsafeFileError(
            f"the {what} {path} is writable by group or others (mode {mode:04o}); fix it "
            f"with: chmod 700 {_quoted(path)}"
        )
