"""The client side of the hostile-router tests: the server fixture (``server``), the client
kinds (``kind``: async and sync), a client on the hostile server, and the checks that it
raises a typed error within a bound and then recovers.

A test module takes ``server`` and ``kind`` by importing them under their own names
(``from hostile_client import server as server``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hostile_server import CLIENT_KEY, LIMIT, MARKER, TIMEOUT, HostileServer, gzip_bomb_body

import nomyo

__all__ = [
    "A",
    "C",
    "Client",
    "E",
    "S",
    "T",
    "expect_typed",
    "kind",
    "make_client",
    "server",
    "then_good",
]


@pytest.fixture(scope="module")
def server() -> Iterator[HostileServer]:
    gzip_bomb_body()  # outside the timed part of the test that uses it
    srv = HostileServer().start()
    yield srv
    srv.stop()


@dataclass
class Client:
    """The async client (on one event loop for its whole life) or the sync client."""

    kind: str
    inner: Any
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)

    def send(self, text: str, payload_id: str) -> Any:
        payload = {"model": "m", "messages": [{"role": "user", "content": text}]}
        if self.kind == "sync":
            return self.inner.send_secure_request(payload, payload_id)
        return self.loop.run_until_complete(self.inner.send_secure_request(payload, payload_id))

    def close(self) -> None:
        try:
            if self.kind == "sync":
                self.inner.close()
            else:
                self.loop.run_until_complete(self.inner.aclose())
        finally:
            self.loop.close()


def make_client(kind: str, url: str, max_retries: int = 0) -> Client:
    cls = nomyo.SyncSecureCompletionClient if kind == "sync" else nomyo.SecureCompletionClient
    inner = cls(
        url,
        allow_http=True,
        max_retries=max_retries,
        timeout=httpx.Timeout(TIMEOUT),
        max_response_size=LIMIT,
    )
    inner._set_key(CLIENT_KEY)
    return Client(kind, inner)


@pytest.fixture(params=["async", "sync"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def expect_typed(client: Client, expected: tuple[type[BaseException], ...], bound: float) -> Any:
    started = time.monotonic()
    with pytest.raises(nomyo.NomyoError) as info:
        client.send(f"hello {MARKER}", "hostile-1")
    elapsed = time.monotonic() - started
    exc = info.value
    assert isinstance(exc, expected), f"{type(exc).__name__}: {exc}"
    assert elapsed < bound, f"took {elapsed:.1f}s (bound {bound}s)"
    assert MARKER not in str(exc) and MARKER not in repr(exc)
    return exc


def then_good(server: HostileServer, client: Client) -> None:
    server.reset("good")
    reply = client.send("all good now", "good-1")
    assert reply["choices"][0]["message"]["content"] == "all good now"
    assert reply["_metadata"]["payload_id"] == "good-1"


E = nomyo.EnvelopeError
S = nomyo.SecurityError
C = nomyo.APIConnectionError
T = nomyo.APITimeoutError
A = nomyo.APIError
