"""What the pipeline asks of a transport (:class:`Transport`), and what it hands one and
gets back (:class:`SealedRequest`, :class:`Reply`).

A transport owns its connection pool and its lifecycle (``close``/``aclose``, and the
event loop its pool belongs to) and maps its own network failures to nomyo's
(:meth:`Transport.connection_error`); the clients hold one and never ask which it is.
Its two requests are flows, as the rest of the pipeline (``nomyo._effects``): they yield
effects, which the drivers run with this transport.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .._aio import current_loop
from .._config import Timeouts
from .._core import PrivateKey, PublicKey
from .._effects import Flow
from .._exceptions import APIConnectionError, APITimeoutError
from .._params import NotGiven, TimeoutTypes
from .._ratelimit import RateLimiter

__all__ = ["Reply", "SealedRequest", "Timeouts", "Timings", "Transport"]


@dataclass
class SealedRequest:
    """One sealed completion request, as the pipeline hands it to a transport."""

    url: str
    headers: dict[str, str]
    payload: dict[str, Any]
    server_key: PublicKey
    client_key: PrivateKey
    max_response: int
    secure_memory: str
    timeout: TimeoutTypes | NotGiven
    payload_id: str
    rate_limiter: RateLimiter | None = None


class Timings(NamedTuple):
    """What one attempt sent and received, and how long each step took (seconds)."""

    sent_bytes: int
    received_bytes: int
    seal_seconds: float
    waited: float
    exchange_seconds: float
    open_seconds: float


@dataclass
class Reply:
    """One reply of either transport: status, headers, the body (a key, an error, or the
    sealed reply), and the timings of the attempt."""

    status: int
    headers: Mapping[str, str]
    body: bytes = b""
    encoding: str = "utf-8"
    timings: Timings = field(default_factory=lambda: Timings(0, 0, 0.0, 0.0, 0.0, 0.0))
    #: Opens a 200 reply: ``(value, processed_at, algorithm)``.
    opener: Callable[[], Flow[tuple[Any, Any, str]]] | None = field(default=None, repr=False)
    #: SHA-256 of the sealed request as sent and of the sealed reply as received (for a
    #: receipt; computed only when asked).
    digests: Callable[[], tuple[bytes, bytes]] | None = field(default=None, repr=False)

    @property
    def opened(self) -> bool:
        """A 200 reply, ready to open."""
        return self.opener is not None

    def text(self) -> str:
        return self.body.decode(self.encoding, errors="replace")


class Transport(ABC):
    """One client's way to the router: a pool it owns, two requests, and its lifecycle.

    Made by :func:`nomyo._transports.make_transport`; the client calls nothing else.
    """

    #: Set by :meth:`close`/:meth:`aclose`; the client refuses new requests after it.
    closed = False

    @abstractmethod
    def get_key(self, url: str) -> Flow[Reply]:
        """``GET`` the server key (body limited to ``MAX_KEY_BYTES``).

        Raises:
            APIConnectionError / APITimeoutError: the network failed.
        """

    @abstractmethod
    def post_sealed(self, request: SealedRequest) -> Flow[Reply]:
        """Seal ``request.payload``, ``POST`` it, and read the reply (a 200 one to open).

        Raises:
            APIConnectionError / APITimeoutError: the network failed.
        """

    #: The event loop of the last awaited call (an asyncio loop, or a trio run's token).
    _loop: object | None = None

    def bind_loop(self) -> bool:
        """Keep the pool on the running event loop (awaited calls); True when the loop
        changed since the last call, so the client replaces its locks of the old loop."""
        try:  # asyncio's loop without a call more: this runs for every request
            loop: object = asyncio.get_running_loop()
        except RuntimeError:
            loop = current_loop()  # trio's run, or no loop (RuntimeError)
        if self._loop is loop:
            return False
        previous, self._loop = self._loop, loop
        self._on_new_loop(previous)
        return True

    def _on_new_loop(self, previous: object | None) -> None:
        """The pool moves to a new loop (``previous`` None: the first awaited call)."""
        del previous  # the native pool serves every loop

    @abstractmethod
    def close(self) -> None:
        """Close the pool (if this transport made it); requests in flight finish."""

    async def aclose(self) -> None:
        """The awaited :meth:`close` (an async pool closes on its loop)."""
        self.close()

    @staticmethod
    def connection_error(
        timed_out: bool, exc: BaseException, payload_id: str | None, what: str
    ) -> APIConnectionError:
        """nomyo's exception for a network failure of ``what`` (each transport decides
        ``timed_out`` from its own exception types)."""
        if timed_out:
            return APITimeoutError(f"{what} timed out: {exc}", payload_id=payload_id)
        return APIConnectionError(
            f"{what} failed: {type(exc).__name__}: {exc}", payload_id=payload_id
        )
