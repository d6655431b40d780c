"""Finished native requests handed to an event loop: the native workers queue them and wake
the loop through a descriptor it watches, so no worker waits for the GIL. Shared by the
asyncio path (``native``) and the trio path (``_trio``).
"""

from __future__ import annotations

import itertools
import os
import weakref
from typing import Any, Protocol

try:
    from .._core import Completions
except ImportError:  # a build without descriptor queues (Windows): callbacks instead
    Completions = None  # type: ignore[assignment,misc]

__all__ = ["TOKENS", "Completions", "LoopCompletions", "Settleable", "settle"]

#: The token of each started request (its key in ``LoopCompletions.futures``).
TOKENS = itertools.count(1)


class Settleable(Protocol):
    """What a finished request settles: an ``asyncio.Future``, or a trio waiter."""

    def done(self) -> bool: ...
    def set_result(self, result: Any, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


def settle(future: Settleable, ok: bool, value: Any) -> None:
    if future.done():  # cancelled meanwhile
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class LoopCompletions:
    """The finished requests of one event loop: the native workers queue them and wake the
    loop through a descriptor it watches, so no worker waits for the GIL and no other
    thread is woken. Used by selector loops (the default on POSIX, uvloop) and by trio runs
    (see ``_trio``); loops that cannot watch a descriptor get a callback per request instead."""

    def __init__(self) -> None:
        assert Completions is not None
        self.queue = Completions()
        # Weak: a future holds its loop, and this (the loop's entry in _COMPLETIONS) must not;
        # the task awaiting a future keeps it alive for as long as anyone waits.
        self.futures: weakref.WeakValueDictionary[int, Settleable]
        self.futures = weakref.WeakValueDictionary()
        self.pid = os.getpid()

    def drain(self) -> None:
        batch = self.queue.drain()
        failed: BaseException | None = None
        while batch:
            token, ok, value = batch.pop(0)  # no iterator to allocate
            try:
                future = self.futures.pop(token, None)
                if future is not None:  # None: cancelled meanwhile
                    settle(future, ok, value)
            except BaseException as exc:  # settle the rest first; the loop reports the first
                failed = failed or exc
        if failed is not None:
            raise failed
