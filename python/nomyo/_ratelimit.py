"""A client-side rate limiter that keeps to the router's public limits.

The router allows 2 requests per second per API key, and a burst of up to 4 in one second
once every 10 seconds (PROTOCOL.md section 4). :class:`RateLimitSchedule` is the pure
scheduling logic (a sliding-window log, no clock of its own); :class:`RateLimiter` wraps it
with a lock and a clock so that every request of a client, from any thread or task, waits
for its turn. Both are off unless asked for (``rate_limit=True``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ._aio import sleep as _async_sleep
from ._constants import (
    RATE_LIMIT_BURST,
    RATE_LIMIT_BURST_INTERVAL,
    RATE_LIMIT_PERIOD,
    RATE_LIMIT_REQUESTS,
)
from ._exceptions import ConfigurationError

__all__ = ["RateLimitPolicy", "RateLimitSchedule", "RateLimiter", "make_rate_limiter"]


@dataclass(frozen=True)
class RateLimitPolicy:
    """How many requests may start, and when.

    Attributes:
        requests: requests allowed in any window of ``period`` seconds.
        burst: requests allowed in one window during a burst (``requests`` turns it off).
        period: the window, in seconds.
        burst_interval: seconds from the start of one burst before the next may start.
        margin: seconds added to every window, to stay clear of the server's edges (a
            request's start and its arrival differ by network jitter).
    """

    requests: int = RATE_LIMIT_REQUESTS
    burst: int = RATE_LIMIT_BURST
    period: float = RATE_LIMIT_PERIOD
    burst_interval: float = RATE_LIMIT_BURST_INTERVAL
    margin: float = 0.05

    def __post_init__(self) -> None:
        if self.requests < 1 or self.burst < self.requests:
            raise ConfigurationError("rate limit: need 1 <= requests <= burst")
        if self.period <= 0 or self.burst_interval < self.period or self.margin < 0:
            raise ConfigurationError("rate limit: need 0 < period <= burst_interval, margin >= 0")


class RateLimitSchedule:
    """Pure scheduling: ``reserve(now)`` returns the earliest start time keeping to the policy.

    Starts are handed out in order (never before an earlier reservation), so concurrent
    callers queue fairly. A start stays in the window for ``period + margin`` seconds; while
    fewer than ``requests`` starts are in it, a request goes at once; with ``requests`` to
    ``burst - 1`` in it, it goes only inside a burst: the current one (begun less than
    ``period`` ago) or a new one, ``burst_interval + margin`` seconds after the last request
    of the previous burst (so bursts are that far apart however they are measured).
    """

    def __init__(self, policy: RateLimitPolicy | None = None) -> None:
        self.policy = policy or RateLimitPolicy()
        self._starts: deque[float] = deque()
        self._last = float("-inf")
        self._burst_start: float | None = None
        self._burst_last: float | None = None

    @property
    def burst_start(self) -> float | None:
        """When the latest burst began (None before the first)."""
        return self._burst_start

    def reserve(self, now: float) -> float:
        """Book the earliest admissible start at or after ``now`` (and after earlier bookings)."""
        p = self.policy
        window = p.period + p.margin
        t = max(now, self._last)
        while True:
            while self._starts and self._starts[0] + window <= t:
                self._starts.popleft()
            in_window = len(self._starts)
            admitted = in_window < p.requests
            if not admitted and in_window < p.burst:
                start, last = self._burst_start, self._burst_last
                if start is not None and t < start + p.period:
                    admitted = True
                elif last is None or t >= last + p.burst_interval + p.margin:
                    self._burst_start = t
                    admitted = True
                if admitted:
                    self._burst_last = t
            if admitted:
                self._starts.append(t)
                self._last = t
                return t
            later = [self._starts[0] + window]
            if in_window < p.burst and self._burst_last is not None:
                later.append(self._burst_last + p.burst_interval + p.margin)
            t = min(c for c in later if c > t)


class RateLimiter:
    """A thread- and task-safe limiter shared by all requests of a client (or of several).

    Args:
        policy: the limits; default: the router's public limits.
        clock: monotonic seconds (injectable for tests).
        sleep: blocking sleep used by :meth:`wait`.
        async_sleep: sleep used by :meth:`wait_async` (default: the running backend's,
            asyncio or trio).
    """

    def __init__(
        self,
        policy: RateLimitPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        async_sleep: Callable[[float], Awaitable[None]] = _async_sleep,
    ) -> None:
        self.schedule = RateLimitSchedule(policy)
        self._clock = clock
        self._sleep = sleep
        self._async_sleep = async_sleep
        self._lock = threading.Lock()

    @property
    def policy(self) -> RateLimitPolicy:
        """The limits kept."""
        return self.schedule.policy

    def reserve(self) -> float:
        """Book the next start; returns how many seconds to wait for it (0 when at once)."""
        with self._lock:
            now = self._clock()
            return max(0.0, self.schedule.reserve(now) - now)

    def wait(self) -> float:
        """Block until this request may start; returns the seconds waited."""
        delay = self.reserve()
        if delay > 0:
            self._sleep(delay)
        return delay

    async def wait_async(self) -> float:
        """Wait (without blocking the loop) until this request may start."""
        delay = self.reserve()
        if delay > 0:
            await self._async_sleep(delay)
        return delay

    def __repr__(self) -> str:
        p = self.policy
        return f"<RateLimiter {p.requests}/{p.period:g}s, bursts of {p.burst}>"


def make_rate_limiter(rate_limit: bool | RateLimiter | None) -> RateLimiter | None:
    """``rate_limit=`` of the clients: True for the public limits, or a shared limiter."""
    if rate_limit is None or rate_limit is False:
        return None
    if rate_limit is True:
        return RateLimiter()
    if isinstance(rate_limit, RateLimiter):
        return rate_limit
    raise ConfigurationError("rate_limit must be a bool or a nomyo.RateLimiter")
