"""The async backends the async client runs under: asyncio (any loop, uvloop too) and trio.

Under asyncio the client keeps asyncio's own primitives (the loop's default executor,
``asyncio.sleep``, ``asyncio.Lock``), exactly as before; under any other backend anyio
supports (trio) it uses anyio's. Each helper looks for a running asyncio loop first, so the
asyncio path pays one ``get_running_loop()`` call and nothing else.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

__all__ = ["AsyncLock", "current_loop", "new_lock", "run_sync", "running_asyncio_loop", "sleep"]

T = TypeVar("T")

#: A lock of the running backend (``async with lock:``).
AsyncLock = asyncio.Lock | anyio.Lock


def running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop (uvloop's too), or None under another backend."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def current_loop() -> object:
    """What identifies the running event loop: the asyncio loop, or trio's run token.

    Raises:
        RuntimeError: no event loop of a supported backend runs in this thread.
    """
    loop = running_asyncio_loop()
    if loop is not None:
        return loop
    try:
        return anyio.lowlevel.current_token().native_token
    except Exception as exc:  # anyio's NoEventLoopError, sniffio's AsyncLibraryNotFoundError
        raise RuntimeError(
            "no running event loop: the async client runs under asyncio, uvloop or trio"
        ) from exc


def new_lock() -> AsyncLock:
    """A lock for the running backend (asyncio's own under asyncio)."""
    if running_asyncio_loop() is not None:
        return asyncio.Lock()
    return anyio.Lock()


async def sleep(delay: float) -> None:
    """Sleep without blocking the loop, under any backend."""
    if running_asyncio_loop() is not None:
        await asyncio.sleep(delay)
    else:
        await anyio.sleep(delay)


async def run_sync(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` on a worker thread: the loop's default executor under asyncio,
    anyio's worker threads otherwise."""
    call = functools.partial(fn, *args)
    loop = running_asyncio_loop()
    if loop is not None:
        return await loop.run_in_executor(None, call)
    return await anyio.to_thread.run_sync(call)
