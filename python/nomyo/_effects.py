"""Effects, the only I/O a flow of the pipeline asks for, and the two drivers.

A *flow* is a plain generator: it yields an :class:`Effect` and is sent back its outcome.
Each effect knows how to run blocking (``run``) and awaited (``arun``), given the client's
transport (``nomyo._transports.Transport``); :func:`drive` runs a flow blocking and
:func:`adrive` awaiting each effect on the running loop (asyncio, uvloop or trio). The
transports add their own effects (an httpx send, a native call).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from ._aio import run_sync, sleep
from ._ratelimit import RateLimiter

__all__ = [
    "BindLoop",
    "Effect",
    "Flow",
    "KeyLock",
    "OffLoop",
    "RateWait",
    "Sleep",
    "T",
    "TransportLike",
    "adrive",
    "drive",
]

T = TypeVar("T")

#: A flow: yields effects, is sent their outcomes, returns its value.
Flow = Generator["Effect", Any, T]


class TransportLike(Protocol):
    """What effects are run with: the client's transport (``nomyo._transports.Transport``,
    whose own effects reach its pool)."""

    def bind_loop(self) -> bool: ...


class Effect:
    """Something a flow needs done: blocking (:meth:`run`) or awaited (:meth:`arun`)."""

    def run(self, transport: TransportLike) -> Any:
        raise NotImplementedError

    async def arun(self, transport: TransportLike) -> Any:
        raise NotImplementedError


class BindLoop(Effect):
    """Before the first I/O of an awaited call: the transport's pool on the running loop.
    The outcome: True when the loop changed (locks of the old loop must be replaced)."""

    def run(self, transport: TransportLike) -> bool:
        return False

    async def arun(self, transport: TransportLike) -> bool:
        return transport.bind_loop()


@dataclass
class Sleep(Effect):
    """Back off for ``seconds`` before a retry."""

    seconds: float

    def run(self, transport: TransportLike) -> None:
        time.sleep(self.seconds)

    async def arun(self, transport: TransportLike) -> None:
        await sleep(self.seconds)


class OffLoop(Effect):
    """CPU work (sealing, opening): on a worker thread when awaited, inline when blocking."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.fn, self.args = fn, args

    def run(self, transport: TransportLike) -> Any:
        return self.fn(*self.args)

    async def arun(self, transport: TransportLike) -> Any:
        return await run_sync(self.fn, *self.args)


@dataclass
class RateWait(Effect):
    """Wait for the rate limiter; the outcome is the seconds waited."""

    limiter: RateLimiter

    def run(self, transport: TransportLike) -> float:
        return self.limiter.wait()

    async def arun(self, transport: TransportLike) -> float:
        return await self.limiter.wait_async()


@dataclass
class KeyLock(Effect):
    """Run ``flow`` holding ``lock``, the client's server-key lock (one fetch at a time):
    a thread lock (blocking) or the loop's lock (awaited)."""

    lock: Any
    flow: Flow[Any]

    def run(self, transport: TransportLike) -> Any:
        with self.lock:
            return drive(self.flow, transport)

    async def arun(self, transport: TransportLike) -> Any:
        async with self.lock:
            return await adrive(self.flow, transport)


class _Stepper(Generic[T]):
    """Steps one flow: sends it each effect's outcome (or throws its failure)."""

    def __init__(self, flow: Flow[T]) -> None:
        self.flow = flow
        self.outcome: Any = None
        self.failure: BaseException | None = None
        self.result: T

    def next(self) -> Effect | None:
        """The flow's next effect; None once it returned (its value is ``result``)."""
        failure, self.failure = self.failure, None
        try:
            return self.flow.send(self.outcome) if failure is None else self.flow.throw(failure)
        except StopIteration as stop:
            self.result = stop.value
            return None


def drive(flow: Flow[T], transport: TransportLike) -> T:
    """Run ``flow`` to its end, doing each effect blocking; returns what the flow returns."""
    stepper = _Stepper(flow)
    while (effect := stepper.next()) is not None:
        try:
            stepper.outcome = effect.run(transport)
        except BaseException as exc:  # the flow handles it or lets it through
            stepper.outcome, stepper.failure = None, exc
    return stepper.result


async def adrive(flow: Flow[T], transport: TransportLike) -> T:
    """:func:`drive`, awaiting each effect on the running loop."""
    stepper = _Stepper(flow)
    while (effect := stepper.next()) is not None:
        try:
            stepper.outcome = await effect.arun(transport)
        except BaseException as exc:  # a cancellation too: the flow's finally blocks run
            stepper.outcome, stepper.failure = None, exc
    return stepper.result
