"""The native transport under trio (imported only there, see ``NativePool._run``).

As under asyncio, finished requests reach the run through a ``_core.Completions`` queue: the
native workers queue them and write a wake byte, never waiting for the GIL. Each trio run
has one queue (a ``RunVar``) and one system task that waits for the descriptor
(``trio.lowlevel.wait_readable``), drains it and wakes the waiting tasks. The task ends with
the run, and the queue with it. A forked child, whose queue descriptor is shared with its
parent, gets a callback per request instead (``run_sync_soon`` from the worker).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any

import trio

from .._core import Reply as NativeReply
from .._core import Transport
from ._completions import TOKENS, Completions, LoopCompletions, settle

if TYPE_CHECKING:
    from .._core import _Request  # the stub's type of one request

__all__ = ["run"]

logger = logging.getLogger("nomyo")

_QUEUE: trio.lowlevel.RunVar[LoopCompletions | None] = trio.lowlevel.RunVar("nomyo_completions")


class _Waiter:
    """One request's outcome, settled like an ``asyncio.Future`` (see ``_completions.settle``)."""

    __slots__ = ("__weakref__", "event", "ok", "value")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.ok = False
        self.value: Any = None

    def done(self) -> bool:
        return self.event.is_set()

    def set_result(self, result: Any, /) -> None:
        self.ok, self.value = True, result
        self.event.set()

    def set_exception(self, exception: BaseException, /) -> None:
        self.ok, self.value = False, exception
        self.event.set()


async def _deliver(found: LoopCompletions) -> None:
    """The run's system task: wake the waiting tasks whenever requests have finished."""
    fd = found.queue.fileno()
    while True:
        await trio.lowlevel.wait_readable(fd)
        try:
            found.drain()
        except Exception as exc:  # as asyncio's loop would report it; then drain again
            # Nothing is lost: what could not be handed over stays queued, the descriptor
            # readable. A system task must not raise (it would crash the run).
            logger.warning("could not hand over finished requests: %s", type(exc).__name__)
            await trio.lowlevel.checkpoint()


def _completions() -> LoopCompletions | None:
    """This run's queue (made, with its system task, on first use); None: use callbacks."""
    try:
        found = _QUEUE.get()
    except LookupError:
        found = LoopCompletions() if Completions is not None else None
        _QUEUE.set(found)
        if found is not None:
            trio.lowlevel.spawn_system_task(_deliver, found, name="nomyo completions")
    if found is not None and found.pid != os.getpid():
        return None  # a forked child: the descriptor is shared with the parent
    return found


async def run(transport: Transport, request: _Request) -> NativeReply:
    """Start ``request`` on ``transport`` and wait for its exchange; cancelling the wait
    (a cancel scope, a timeout) stops the request."""
    waiter = _Waiter()
    completions = _completions()
    token = 0
    if completions is not None:
        token = next(TOKENS)
        pending = transport.start(completions.queue, request, token=token)
        completions.futures[token] = waiter
    else:
        trio_token = trio.lowlevel.current_trio_token()

        def done(ok: bool, value: Any) -> None:  # runs on a native worker thread
            with contextlib.suppress(trio.RunFinishedError):
                trio_token.run_sync_soon(settle, waiter, ok, value)

        pending = transport.start(done, request)
    try:
        await waiter.event.wait()
    except BaseException:  # trio.Cancelled, KeyboardInterrupt
        pending.cancel()
        if completions is not None:
            completions.futures.pop(token, None)
        raise
    if not waiter.ok:
        raise waiter.value
    reply: NativeReply = waiter.value
    return reply
