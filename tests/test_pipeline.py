"""The request pipeline without I/O: its flows stepped by hand, and both drivers."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any

import pytest

import nomyo
from nomyo import _core, _pipeline
from nomyo._pipeline import Effect, Flow, Reply, SealedRequest, Sleep


class FakeTransport:
    """Answers each ``post_sealed`` with the next reply, without yielding any effect."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests: list[SealedRequest] = []

    def get_key(self, url: str) -> Flow[Reply]:
        raise AssertionError("the key is cached")
        yield

    def post_sealed(self, request: SealedRequest) -> Flow[Reply]:
        self.requests.append(request)
        yield from ()
        return self.replies.pop(0)


def opened(value: dict[str, Any]) -> Reply:
    def opener() -> Generator[Effect, Any, tuple[Any, Any, str]]:
        yield from ()
        return value, 1700000000, "AES-256-GCM"

    return Reply(200, {}, opener=opener)


def client_with(transport: FakeTransport) -> nomyo.SyncSecureCompletionClient:
    client = nomyo.SyncSecureCompletionClient("http://127.0.0.1:9", allow_http=True)
    key = _core.PrivateKey.generate(2048)
    client._set_key(key)
    client._server_key = _core.PrivateKey.generate(2048).public_key()
    client._transport = transport
    return client


def run_by_hand(flow: Flow[Any]) -> tuple[list[Effect], Any]:
    """Step ``flow``, answering every effect with None; returns the effects and the value."""
    effects: list[Effect] = []
    try:
        effect = next(flow)
        while True:
            effects.append(effect)
            effect = flow.send(None)
    except StopIteration as stop:
        return effects, stop.value


REPLY = {"id": "c1", "object": "chat.completion", "choices": []}


def test_a_429_with_retry_after_backs_off_that_long_then_resends() -> None:
    limited = Reply(429, {"retry-after": "3"}, b'{"detail": "slow"}')
    transport = FakeTransport(limited, opened(REPLY))
    client = client_with(transport)
    effects, reply = run_by_hand(client._request_flow({"model": "m"}, "pid-1"))
    sleeps = [e for e in effects if isinstance(e, Sleep)]
    assert [s.seconds for s in sleeps] == [3.0]
    assert reply["_metadata"]["payload_id"] == "pid-1"
    assert len(transport.requests) == 2
    assert transport.requests[0].headers["X-Payload-ID"] == "pid-1"


def test_an_error_status_maps_to_its_exception_without_retrying() -> None:
    client = client_with(FakeTransport(Reply(401, {}, b'{"detail": "no key"}')))
    with pytest.raises(nomyo.AuthenticationError) as caught:
        run_by_hand(client._request_flow({"model": "m"}, "pid-2", max_retries=3))
    assert caught.value.payload_id == "pid-2"


def toy_flow() -> Flow[str]:
    try:
        yield _pipeline.OffLoop(int, "x")  # raises ValueError in either driver
    except ValueError:
        caught = True
    assert caught
    seconds = yield _pipeline.OffLoop(float, "0")
    yield Sleep(seconds)
    return "done"


def test_both_drivers_send_outcomes_and_throw_failures_into_the_flow() -> None:
    assert _pipeline.drive(toy_flow(), None) == "done"
    assert asyncio.run(_pipeline.adrive(toy_flow(), None)) == "done"
