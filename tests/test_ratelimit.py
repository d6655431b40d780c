"""The client-side rate limiter: pure scheduling with an injected clock (no wall-clock waits)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import nomyo
from nomyo import _core
from nomyo._ratelimit import RateLimitPolicy, RateLimitSchedule
from nomyo.testing import DevRouter, RouterThread

EXACT = RateLimitPolicy(margin=0.0)


def schedule_all(times: list[float], policy: RateLimitPolicy = EXACT) -> list[float]:
    schedule = RateLimitSchedule(policy)
    return [schedule.reserve(t) for t in times]


def check_policy(starts: list[float], policy: RateLimitPolicy) -> None:
    """At most ``burst`` per window; more than ``requests`` only inside one burst per
    ``burst_interval``."""
    window = policy.period + policy.margin
    over = []
    for i, s in enumerate(starts):
        in_window = sum(1 for t in starts[: i + 1] if t + window > s)
        assert in_window <= policy.burst, (i, starts)
        if in_window > policy.requests:
            over.append(s)
    for a in over:
        for b in over:
            if a < b < a + policy.burst_interval:
                assert b - a < policy.period, (over, starts)


def test_public_limits_are_the_default() -> None:
    policy = RateLimitPolicy()
    assert (policy.requests, policy.burst, policy.period, policy.burst_interval) == (2, 4, 1, 10)


def test_a_burst_of_four_then_two_per_second() -> None:
    starts = schedule_all([0.0] * 10)
    assert starts == [0, 0, 0, 0, 1, 1, 2, 2, 3, 3]


def test_the_next_burst_waits_ten_seconds() -> None:
    times = [0.0] * 4 + [10.0] * 4 + [15.0] * 4 + [20.0] * 4
    starts = schedule_all(times)
    assert starts[:4] == [0, 0, 0, 0]
    assert starts[4:8] == [10, 10, 10, 10], "a new burst 10 s after the first"
    assert starts[8:12] == [15, 15, 16, 16], "no burst 5 s later"
    assert starts[12:] == [20, 20, 20, 20]


def test_bursts_are_ten_seconds_apart_end_to_start() -> None:
    times = [0.0, 0.0, 0.0, 0.5, 10.0, 10.0, 10.0, 10.0]
    starts = schedule_all(times)
    assert starts[:4] == [0, 0, 0, 0.5], "the burst's last request at 0.5"
    assert starts[4:] == [10, 10, 10.5, 10.5], "the next burst 10 s after it"


def test_spaced_requests_never_wait() -> None:
    times = [i * 0.6 for i in range(50)]
    assert schedule_all(times, RateLimitPolicy()) == times


def test_margin_keeps_clear_of_window_edges() -> None:
    starts = schedule_all([0.0] * 6, RateLimitPolicy(margin=0.05))
    assert starts == [0, 0, 0, 0, 1.05, 1.05]


def test_bursts_can_be_turned_off() -> None:
    starts = schedule_all([0.0] * 6, RateLimitPolicy(burst=2, margin=0.0))
    assert starts == [0, 0, 1, 1, 2, 2]


def test_reservations_are_in_order() -> None:
    schedule = RateLimitSchedule(EXACT)
    first = [schedule.reserve(0.0) for _ in range(6)]
    late = schedule.reserve(0.5)  # arrives later, queues after the earlier bookings
    assert late >= first[-1]
    assert schedule.burst_start == 0.0


def test_invalid_policies() -> None:
    with pytest.raises(nomyo.ConfigurationError):
        RateLimitPolicy(requests=0)
    with pytest.raises(nomyo.ConfigurationError):
        RateLimitPolicy(burst=1)
    with pytest.raises(nomyo.ConfigurationError):
        RateLimitPolicy(period=0)


@given(
    st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), min_size=1, max_size=40),
    st.sampled_from([EXACT, RateLimitPolicy(), RateLimitPolicy(burst=2), RateLimitPolicy(3, 5)]),
)
def test_property_schedule_keeps_to_the_policy(gaps: list[float], policy: RateLimitPolicy) -> None:
    times = []
    now = 0.0
    for gap in gaps:
        now += gap
        times.append(now)
    starts = schedule_all(times, policy)
    assert all(s >= t for s, t in zip(starts, times, strict=True))
    assert starts == sorted(starts)
    check_policy(starts, policy)
    # the first request after an idle window goes at once
    assert starts[0] == times[0]


class FakeClock:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []
        self.lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.slept.append(seconds)

    async def async_sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def limiter(clock: FakeClock, policy: RateLimitPolicy = EXACT) -> nomyo.RateLimiter:
    return nomyo.RateLimiter(policy, clock=clock, sleep=clock.sleep, async_sleep=clock.async_sleep)


def test_limiter_waits_what_the_schedule_says() -> None:
    clock = FakeClock()
    lim = limiter(clock)
    waits = [lim.wait() for _ in range(6)]
    assert waits == [0, 0, 0, 0, 1, 1]
    assert clock.slept == [1, 1]


def test_limiter_is_thread_safe() -> None:
    clock = FakeClock()
    lim = limiter(clock)
    results: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(20)

    def worker() -> None:
        barrier.wait()
        delay = lim.reserve()
        with lock:
            results.append(delay)

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [float(s) for s in schedule_all([0.0] * 20)]


def test_limiter_async() -> None:
    clock = FakeClock()
    lim = limiter(clock)

    async def go() -> list[float]:
        return list(await asyncio.gather(*(lim.wait_async() for _ in range(8))))

    assert sorted(asyncio.run(go())) == [0, 0, 0, 0, 1, 1, 2, 2]


# -- in the clients ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def router() -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        yield handle


def test_off_by_default_on_with_one_argument(router: RouterThread) -> None:
    assert nomyo.SyncSecureChatCompletion(router.url, allow_http=True).rate_limiter is None
    on = nomyo.SecureChatCompletion(router.url, allow_http=True, rate_limit=True)
    assert isinstance(on.rate_limiter, nomyo.RateLimiter)
    assert on.rate_limiter.policy == RateLimitPolicy()
    low = nomyo.SyncSecureCompletionClient(router.url, allow_http=True, rate_limit=True)
    assert isinstance(low.rate_limiter, nomyo.RateLimiter)
    with pytest.raises(nomyo.ConfigurationError):
        nomyo.SyncSecureCompletionClient(router.url, allow_http=True, rate_limit="yes")  # type: ignore[arg-type]


def test_sync_client_requests_are_paced(router: RouterThread, client_key: _core.PrivateKey) -> None:
    clock = FakeClock()
    with nomyo.SyncSecureChatCompletion(
        router.url, allow_http=True, rate_limit=limiter(clock)
    ) as client:
        client.client._set_key(client_key)
        other = client._client_for("http://localhost:9")  # a per-call base_url
        assert other is not client.client
        assert other.rate_limiter is client.rate_limiter, "one limiter for the whole client"
        for i in range(6):
            assert client.create("m", [{"role": "user", "content": str(i)}]).choices[0]
    assert clock.slept == [1, 1]


def test_async_client_requests_are_paced(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    clock = FakeClock()

    async def go() -> list[Any]:
        async with nomyo.SecureChatCompletion(
            router.url, allow_http=True, rate_limit=limiter(clock)
        ) as client:
            client.client._set_key(client_key)
            return list(
                await asyncio.gather(
                    *(client.create("m", [{"role": "user", "content": str(i)}]) for i in range(8))
                )
            )

    replies = asyncio.run(go())
    assert [r.choices[0].message.content for r in replies] == [str(i) for i in range(8)]
    assert sorted(clock.slept) == [1, 1, 2, 2]
