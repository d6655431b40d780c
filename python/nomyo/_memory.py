"""Secure-memory helpers of the reference client, backed by the native core.

Plaintext requests and replies and AES keys never pass through these helpers: they live in
native buffers (``nomyo._core.SecretBuffer``) that are locked when the OS allows, excluded
from core dumps and zeroed on release. How hard a client insists on the lock is its
``secure_memory=`` (see :func:`secure_memory_mode`): ``"require"`` refuses a request whose
buffers cannot be locked (:class:`~nomyo.SecureMemoryError`) instead of running unlocked.
:func:`get_memory_protection_info` reports what this process actually got.

The other helpers exist for callers who hold secrets of their own in a ``bytearray``: they
lock its pages and wipe it with writes the compiler cannot remove (in Rust, not through
CPython internals).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Literal

from ._core import disable_core_dumps as _disable_core_dumps
from ._core import lock_bytearray, memory_protection_info, unlock_bytearray, wipe_bytearray
from ._exceptions import ConfigurationError

__all__ = [
    "ENV_SECURE_MEMORY",
    "SecureBuffer",
    "SecureMemoryMode",
    "SecureMemoryOption",
    "disable_core_dumps",
    "disable_secure_memory",
    "enable_secure_memory",
    "get_memory_protection_info",
    "secure_bytearray",
    "secure_bytes",
    "secure_memory_mode",
]

#: Set to ``require`` to make every client of the process fail closed (whatever its
#: ``secure_memory=`` argument), so that an operator can insist without changing code.
ENV_SECURE_MEMORY = "NOMYO_SECURE_MEMORY"

#: What a client's ``secure_memory=`` takes: True (best effort, the default), False (no
#: locking, zeroing only) or ``"require"`` (fail closed); the names below are accepted too.
SecureMemoryOption = bool | Literal["require", "best_effort", "off"]

#: The native policy a client's secret buffers are made under.
SecureMemoryMode = Literal["off", "best_effort", "require"]

_MODES: dict[object, SecureMemoryMode] = {
    True: "best_effort",
    False: "off",
    "best_effort": "best_effort",
    "off": "off",
    "require": "require",
}

logger = logging.getLogger("nomyo")
_lock = threading.Lock()
_enabled = True


def secure_memory_mode(value: object) -> SecureMemoryMode:
    """The native policy of a client's ``secure_memory=`` argument (and the environment).

    True is best effort (lock when the OS allows, carry on otherwise: the reference
    client's meaning), False locks nothing (buffers are still zeroed), ``"require"`` fails
    closed. ``NOMYO_SECURE_MEMORY=require`` turns every client into ``"require"``;
    ``best_effort`` or an empty value there changes nothing.

    Raises:
        ConfigurationError: an unknown value, in the argument or the environment.
    """
    mode = _MODES.get(value) if isinstance(value, (bool, str)) else None
    if mode is None:
        raise ConfigurationError(f"secure_memory must be True, False or 'require', not {value!r}")
    env = os.environ.get(ENV_SECURE_MEMORY, "").strip().lower()
    if env == "require":
        return "require"
    if env not in ("", "best_effort"):
        raise ConfigurationError(
            f"{ENV_SECURE_MEMORY} must be 'require' (or 'best_effort' or empty), not {env!r}"
        )
    return mode


def get_memory_protection_info() -> dict[str, Any]:
    """Report what this process has actually achieved for secret memory.

    ``protection_level`` is ``"full"`` while every secret buffer that was to be locked was
    locked and excluded from core dumps, ``"partial"`` as soon as one was not (best effort
    carried on without), and ``"zeroing_only"`` when nothing can be locked at all.

    Returns:
        A dict with the reference client's keys (``enabled``, ``platform``,
        ``protection_level``, ``has_memory_locking``, ``has_secure_zeroing``,
        ``supports_full_protection``, ``page_size``), plus: ``backend``,
        ``has_dump_exclusion``, ``has_wipe_on_fork``; the limits: ``memlock_limit`` and
        ``memlock_hard_limit`` (bytes, None = unlimited), ``has_ipc_lock`` (then the limit
        does not apply), ``locked_bytes`` (locked by this process now), ``lockable_bytes``
        (more that can be locked now, None = unbounded), ``largest_lockable_request`` (JSON
        bytes of the largest request whose buffers can all be locked now, None = unbounded);
        and counters since the process started: ``secret_buffers_locked``,
        ``secret_buffers_not_locked``, ``secret_buffers_unlocked_by_choice``
        (``secure_memory=False``), ``secret_buffers_not_dump_excluded``,
        ``secret_bytes_locked``, ``secret_bytes_not_locked``, ``lock_failures``,
        ``dump_exclusion_failures``, ``require_refusals``.
    """
    info = dict(memory_protection_info())
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
    return _disable_core_dumps()


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
            wipe_bytearray(data)

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
            self._locked = lock_bytearray(self._data)
        return self._locked

    def unlock(self) -> bool:
        """Unlock the pages; returns True when they are no longer locked."""
        if self._locked and unlock_bytearray(self._data):
            self._locked = False
        return not self._locked

    def zero(self) -> None:
        """Overwrite the contents with zeros."""
        wipe_bytearray(self._data)

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
