"""Fault injection for the development router: a FIFO of faults applied to the next requests."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

__all__ = ["Fault", "FaultQueue"]


@dataclass(frozen=True)
class Fault:
    """One misbehaviour of the router, applied to the next ``times`` matching requests.

    The steps run in this order: ``delay``, then ``drop_connection`` (close the socket without
    answering), then ``status`` (answer that status without processing the request), then
    ``rotate_key`` (a new server key before decrypting, so the request fails with 400
    "decryption failed"), then normal processing whose 200 reply is replaced by
    ``garbage_reply``, sealed to a random key (``wrong_key_reply``), corrupted
    (``tamper_reply``) or replaced by an earlier reply (``replay_reply``); ``slow_body``
    finally trickles the reply body over that many seconds.

    Attributes:
        status: answer this HTTP status instead of processing the request.
        detail: the ``detail`` of the JSON error body sent with ``status``.
        body: a raw body sent with ``status`` instead of the JSON error (may be empty).
        retry_after: a ``Retry-After`` header value sent with ``status``.
        delay: seconds to wait before answering.
        drop_connection: close the connection without answering.
        tamper_reply: flip one byte of the ciphertext in the sealed 200 reply.
        wrong_key_reply: seal the 200 reply to a random key of the client key's size (made
            once per size) instead of the client's.
        garbage_reply: send these bytes as the 200 reply body.
        replay_reply: send instead the sealed 200 reply this router last sent to the same
            client key (another request's reply, valid and sealed for this client); the
            request's own reply when there is no earlier one.
        rotate_key: generate a new server key before handling the request.
        slow_body: seconds over which the reply body is sent in small pieces.
        times: how many requests the fault applies to.
    """

    status: int | None = None
    detail: str | None = None
    body: bytes | None = None
    retry_after: str | None = None
    delay: float = 0.0
    drop_connection: bool = False
    tamper_reply: bool = False
    wrong_key_reply: bool = False
    garbage_reply: bytes | None = None
    replay_reply: bool = False
    rotate_key: bool = False
    slow_body: float = 0.0
    times: int = 1

    def __post_init__(self) -> None:
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"status must be an HTTP status code, got {self.status}")
        if self.delay < 0 or self.slow_body < 0:
            raise ValueError("delay and slow_body must not be negative")
        if self.times < 1:
            raise ValueError("times must be at least 1")


@dataclass
class _Entry:
    fault: Fault
    remaining: int


class FaultQueue:
    """Thread-safe FIFO of faults; each request takes the head and uses up one of its ``times``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[_Entry] = deque()
        self._applied: list[Fault] = []

    def push(self, *faults: Fault) -> None:
        """Append faults; they apply after the ones already queued."""
        with self._lock:
            for fault in faults:
                if not isinstance(fault, Fault):
                    raise TypeError("FaultQueue.push() takes Fault objects")
                self._queue.append(_Entry(fault, fault.times))

    def pop(self) -> Fault | None:
        """Take the fault for the next request (None when the queue is empty)."""
        with self._lock:
            if not self._queue:
                return None
            entry = self._queue[0]
            entry.remaining -= 1
            if entry.remaining <= 0:
                self._queue.popleft()
            self._applied.append(entry.fault)
            return entry.fault

    def clear(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._queue.clear()

    @property
    def pending(self) -> int:
        """How many requests the queued faults still apply to."""
        with self._lock:
            return sum(entry.remaining for entry in self._queue)

    @property
    def applied(self) -> list[Fault]:
        """Every fault applied so far, in order (one entry per affected request)."""
        with self._lock:
            return list(self._applied)

    def __len__(self) -> int:
        return self.pending

    def __bool__(self) -> bool:
        return self.pending > 0

    def __repr__(self) -> str:
        return f"FaultQueue(pending={self.pending})"
