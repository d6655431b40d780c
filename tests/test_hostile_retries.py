"""The client's retries and deadlines against the hostile router: status storms end after
``max_retries`` with bounded delays, and a trickled reply is cut off by the overall deadline."""

from __future__ import annotations

import asyncio

import pytest
from hostile_client import A, expect_typed, make_client, then_good
from hostile_client import kind as kind
from hostile_client import server as server
from hostile_server import TIMEOUT, HostileServer

import nomyo


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the delays the client asks for between retries, and keep them short."""
    from nomyo import _pipeline

    asked: list[float] = []

    def quick(attempt: int, retry_after: float | None = None) -> float:
        from nomyo._retry import retry_delay

        delay = retry_delay(attempt, retry_after)
        asked.append(delay)
        return min(delay, 0.05)

    monkeypatch.setattr(_pipeline, "retry_delay", quick)
    return asked


@pytest.mark.parametrize(
    ("mode", "error", "tries", "max_delay"),
    [
        ("5xx_storm_garbage_retry_after", A, 3, 8.0),
        ("429_storm", nomyo.RateLimitError, 3, 8.0),
        ("503_retry_after_infinite", nomyo.ServiceUnavailableError, 1, 0.0),
        ("429_retry_after_one_hour", nomyo.RateLimitError, 1, 0.0),
    ],
)
def test_status_storms_end_after_max_retries(
    server: HostileServer,
    kind: str,
    fast_retries: list[float],
    mode: str,
    error: type[BaseException],
    tries: int,
    max_delay: float,
) -> None:
    client = make_client(kind, server.url, max_retries=2)
    try:
        server.reset(mode)
        exc = expect_typed(client, (error,), 3.0)
        assert isinstance(exc, nomyo.APIError) and exc.status_code in (429, 500, 502, 503, 504)
        assert server.secure_hits == tries
        assert len(fast_retries) == tries - 1
        assert all(0.0 <= d <= max_delay for d in fast_retries), fast_retries
        then_good(server, client)
    finally:
        server.reset("good")
        client.close()


def test_storm_total_time_is_bounded_with_real_delays(server: HostileServer) -> None:
    """Garbage Retry-After values fall back to the capped backoff: 2 retries < 2 s."""
    client = make_client("async", server.url, max_retries=2)
    try:
        server.reset("5xx_storm_garbage_retry_after")
        expect_typed(client, (A,), 2.0 + 1.0)
        assert server.secure_hits == 3
        then_good(server, client)
    finally:
        server.reset("good")
        client.close()


@pytest.mark.parametrize("mode", ["slow_loris_1_byte_per_0.5s", "chunked_trickle_forever"])
def test_trickled_reply_is_cut_off_by_an_overall_deadline(server: HostileServer, mode: str) -> None:
    client = make_client("async", server.url)
    payload = {"model": "m", "messages": [{"role": "user", "content": "x"}]}

    async def go() -> None:
        try:
            await asyncio.wait_for(client.inner.send_secure_request(payload, "slow"), 3 * TIMEOUT)
        except TimeoutError:
            pytest.fail(f"still reading after {3 * TIMEOUT}s (received {server.sent} bytes)")
        finally:
            await client.inner.aclose()

    try:
        server.reset(mode)
        with pytest.raises(nomyo.APITimeoutError):
            asyncio.run(go())
    finally:
        server.reset("good")
