"""Giving freed large buffers back to the operating system (glibc).

glibc raises its mmap threshold after the first large buffer is freed (up to 32 MiB), so
later large buffers come from the heaps of its arenas, and a thread's arena keeps the free
space at its top (``malloc_trim(0)`` does not give that back): ``nomyo proxy`` kept ~70 MiB
after clients of 16 MB replies had left, with or without ``malloc_trim``.
:func:`keep_large_buffers_mapped` fixes the threshold at 1 MiB, so every large buffer is its
own mapping, returned to the OS when it is freed (``benches/reply_flood.py``: +15 MiB left
instead of +72, and a lower peak). A no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["keep_large_buffers_mapped"]

_M_MMAP_THRESHOLD = -3
#: Allocations from this size on get their own mapping (glibc's default starts at 128 KiB
#: and grows; 1 MiB keeps ordinary requests on the heap).
LARGE_BUFFER = 1024 * 1024


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:  # pragma: no cover - no libc symbols
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None


def keep_large_buffers_mapped() -> bool:
    """Fix glibc's mmap threshold at :data:`LARGE_BUFFER` for this process (True if done).

    For servers (``nomyo proxy``, ``nomyo run``) that hold large buffers for a while: each is
    then unmapped when freed instead of staying in an arena.
    """
    libc = _glibc()
    if libc is None:
        return False
    try:
        mallopt = libc.mallopt
    except AttributeError:  # pragma: no cover
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, LARGE_BUFFER))
