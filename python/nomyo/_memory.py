"""Secure-memory helpers of the reference client, backed by the native core.

Plaintext requests and replies, AES keys and private keys never pass through these
helpers: they live in native buffers (``nomyo._core.SecretBuffer``) that are always
locked when the OS allows, excluded from core dumps and zeroed on release. These helpers
exist for callers who hold secrets of their own in a ``bytearray``: they lock its pages and
wipe it with writes the compiler cannot remove (in Rust, not through CPython internals).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from . import _core

__all__ = [
    "SecureBuffer",
    "disable_core_dumps",
    "disable_secure_memory",
    "enable_secure_memory",
    "get_memory_protection_info",
    "secure_bytearray",
    "secure_bytes",
]

logger = logging.getLogger("nomyo")
_lock = threading.Lock()
_enabled = True


def get_memory_protection_info() -> dict[str, Any]:
    """Report what this platform actually grants, probed with a real native buffer.

    Returns:
        A dict with the reference client's keys (``enabled``, ``platform``,
        ``protection_level``, ``has_memory_locking``, ``has_secure_zeroing``,
        ``supports_full_protection``, ``page_size``) plus ``has_dump_exclusion``,
        ``memlock_limit`` and ``backend``.
    """
    info = dict(_core.memory_protection_info())
    info["enabled"] = _enabled
    if not _enabled:
        info["protection_level"] = "zeroing_only"
        info["supports_full_protection"] = False
    return info


def disable_core_dumps() -> bool:
    """Stop this process from ever writing a core dump (opt-in; never done on import).

    Sets the soft and hard ``RLIMIT_CORE`` to 0 and, on Linux, marks the process not
    dumpable (``PR_SET_DUMPABLE`` 0). Consequences: a crash leaves no core file, and the
    process can no longer be attached to by a debugger or ``ptrace`` of the same user
    (``gdb -p``, ``py-spy``, ``/proc/PID/mem`` readers) without root; it cannot be undone
    for the hard limit. Secret pages are already excluded from dumps where the OS allows.

    Returns:
        True if every step succeeded.
    """
    return _core.disable_core_dumps()


def disable_secure_memory() -> None:
    """Stop locking the pages of ``secure_bytearray`` buffers (they are still wiped).

    The native buffers that hold plaintext and keys are not affected.
    """
    global _enabled
    with _lock:
        _enabled = False


def enable_secure_memory() -> None:
    """Lock the pages of ``secure_bytearray`` buffers again (the default)."""
    global _enabled
    with _lock:
        _enabled = True


class SecureBuffer:
    """A ``bytearray`` whose pages are locked while in use and which is wiped on exit.

    The data is copied into a new bytearray; a ``bytearray`` source is wiped after the copy.
    """

    def __init__(self, data: bytes | bytearray | memoryview, secure_memory: object = None) -> None:
        self._data = bytearray(data)
        self._locked = False
        if isinstance(data, bytearray):
            _core.wipe_bytearray(data)

    @property
    def data(self) -> bytearray:
        """The protected bytes."""
        return self._data

    @property
    def size(self) -> int:
        """Length in bytes."""
        return len(self._data)

    @property
    def locked(self) -> bool:
        """True while the pages are locked in RAM."""
        return self._locked

    def lock(self) -> bool:
        """Lock the pages in RAM (best effort); returns whether they are locked."""
        if not self._locked and _enabled:
            self._locked = _core.lock_bytearray(self._data)
        return self._locked

    def unlock(self) -> bool:
        """Unlock the pages; returns True when they are no longer locked."""
        if self._locked and _core.unlock_bytearray(self._data):
            self._locked = False
        return not self._locked

    def zero(self) -> None:
        """Overwrite the contents with zeros."""
        _core.wipe_bytearray(self._data)

    def __enter__(self) -> SecureBuffer:
        self.lock()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.zero()
        self.unlock()

    def __len__(self) -> int:
        return len(self._data)

    def __bytes__(self) -> bytes:
        """An immutable copy, which cannot be wiped: avoid for secrets."""
        return bytes(self._data)

    def __repr__(self) -> str:
        return f"<SecureBuffer {len(self._data)} bytes, locked={self._locked}>"


@contextmanager
def secure_bytearray(
    data: bytes | bytearray | memoryview, lock: bool = True
) -> Iterator[SecureBuffer]:
    """Hold ``data`` in a locked bytearray for the ``with`` block, then wipe it.

    Args:
        data: the secret; a ``bytearray`` source is wiped after it is copied.
        lock: whether to try to lock the pages in RAM.

    Yields:
        The ``SecureBuffer``; use ``.data`` inside the block only.
    """
    buf = SecureBuffer(data)
    if lock:
        buf.lock()
    try:
        yield buf
    finally:
        buf.zero()
        buf.unlock()


@contextmanager
def secure_bytes(data: bytes, lock: bool = True) -> Iterator[SecureBuffer]:
    """Deprecated alias of :func:`secure_bytearray` (a ``bytes`` source cannot be wiped)."""
    logger.warning("secure_bytes() is deprecated; use secure_bytearray()")
    with secure_bytearray(data, lock) as buf:
        yield buf
