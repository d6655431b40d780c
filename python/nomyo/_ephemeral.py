"""One ephemeral RSA key pair per process for every client given no key of its own.

A client without ``key_dir`` and without an explicit key (``generate_keys``/``load_keys``)
seals its requests under the pair of :func:`process_key`: made once per process (in a
background thread when the first such client is built, or on first use), shared by every
client, thread and event loop of the process, and rotated every ``key_rotation_interval``
seconds (default 24 hours, ``None``: never). A successor is made ahead of time and swapped in
without a pause; a request keeps the :class:`KeyPair` it was sealed under until its reply is
opened, so a swap never fails a request in flight, and the old private key is freed (aws-lc
zeroes it) once the last such request lets go of it. A forked child drops the parent's pairs
and makes its own (``os.register_at_fork``).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from concurrent.futures import Future
from typing import Final
from urllib.parse import quote

from ._constants import KEY_SIZE
from ._core import PrivateKey
from ._exceptions import ConfigurationError
from ._params import NotGiven

__all__ = [
    "DEFAULT_ROTATION_SECONDS",
    "ENV_KEY_ROTATION",
    "KeyPair",
    "ProcessKey",
    "RotationInterval",
    "process_key",
    "resolve_rotation_interval",
]

logger = logging.getLogger("nomyo")

#: The default ``key_rotation_interval``: 24 hours, as the reference's JS client.
DEFAULT_ROTATION_SECONDS: Final = 24 * 3600.0
#: Seconds between rotations (``none``/``never``/``off``: never), when no interval is given.
ENV_KEY_ROTATION: Final = "NOMYO_KEY_ROTATION"
#: The successor is made at most this many seconds before it is due.
MAX_LEAD_SECONDS: Final = 60.0

#: Seconds between rotations, or None (never).
RotationInterval = float | None


def resolve_rotation_interval(value: float | NotGiven | None) -> RotationInterval:
    """``key_rotation_interval`` checked: not given means ``$NOMYO_KEY_ROTATION``, else 24 h.

    Raises:
        ConfigurationError: not a positive, finite number of seconds (or None), or a
            ``$NOMYO_KEY_ROTATION`` that is not one (or ``none``/``never``/``off``).
    """
    if isinstance(value, NotGiven):
        text = os.environ.get(ENV_KEY_ROTATION, "").strip()
        if not text:
            return DEFAULT_ROTATION_SECONDS
        if text.lower() in ("none", "never", "off"):
            return None
        try:
            value = float(text)
        except ValueError:
            raise ConfigurationError(
                f"${ENV_KEY_ROTATION} must be a number of seconds or 'never'"
            ) from None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError("key_rotation_interval must be a number of seconds or None")
    if not (math.isfinite(value) and value > 0):
        raise ConfigurationError("key_rotation_interval must be a positive number of seconds")
    return float(value)


class KeyPair:
    """A private key, its public PEM and the URL-quoted PEM of the ``X-Public-Key`` header."""

    __slots__ = ("__weakref__", "generation", "private_key", "public_key_pem", "quoted_public_key")

    def __init__(self, private_key: PrivateKey, generation: int) -> None:
        self.private_key = private_key
        self.public_key_pem = private_key.public_key().to_pem()
        self.quoted_public_key = quote(self.public_key_pem)
        #: 1 for the first pair of its :class:`ProcessKey`, then one more per rotation.
        self.generation = generation

    def __repr__(self) -> str:
        return f"<KeyPair generation={self.generation} {self.private_key.key_size} bits>"


def _make_pair(bits: int, generation: int) -> KeyPair:
    return KeyPair(PrivateKey.generate(bits), generation)


class ProcessKey:
    """The rotating pair of one rotation interval, shared by every client in the process.

    ``current()`` never blocks (None until the first pair exists); ``wait()`` blocks until
    there is one. Rotation is checked on use (no timer thread): once the current pair is
    ``interval - lead`` old, a successor is made in a background thread; once it is
    ``interval`` old and the successor is ready, the successor is swapped in. Until then the
    current pair keeps serving, so no request ever waits for a rotation.
    """

    def __init__(self, interval: RotationInterval, bits: int = KEY_SIZE) -> None:
        self.interval = interval
        self.bits = bits
        self._lock = threading.Lock()
        self._pair: KeyPair | None = None
        self._pending: Future[KeyPair] | None = None
        self._generation = 0
        #: Monotonic time of the next bookkeeping step (start a successor, or swap it in).
        self._next_check = math.inf
        self._due = math.inf
        #: Pairs swapped out (a count; the pairs themselves are not kept).
        self.rotations = 0

    def __repr__(self) -> str:
        pair = self._pair
        state = "no pair yet" if pair is None else f"generation {pair.generation}"
        return f"<ProcessKey every {self.interval} s, {state}>"

    def prepare(self) -> None:
        """Start making the first pair in the background (no-op once started)."""
        if self._pair is None and self._pending is None:
            with self._lock:
                if self._pair is None and self._pending is None:
                    self._start_successor()

    def current(self) -> KeyPair | None:
        """The pair to seal the next request under, or None when none is ready (never blocks)."""
        pair = self._pair
        if pair is None or time.monotonic() < self._next_check:
            return pair
        with self._lock:
            self._step(time.monotonic())
            return self._pair

    def wait(self) -> KeyPair:
        """The pair to seal the next request under, made now if there is none (blocks).

        Raises:
            KeyFormatError: the key could not be generated (the next call tries again).
        """
        pair = self.current()
        if pair is not None:
            return pair
        with self._lock:
            if self._pair is None and self._pending is None:
                self._start_successor()
            pending = self._pending
        if pending is not None:
            made = self._result(pending)
            with self._lock:
                if self._pair is None:
                    self._install(made, time.monotonic())
        pair = self._pair
        if pair is None:  # pragma: no cover - a fork reset it in between
            return self.wait()
        return pair

    def rotate(self) -> KeyPair:
        """Make a successor now and swap it in (blocks while it is made); returns it.

        Requests in flight keep the pair they were sealed under.
        """
        with self._lock:
            if self._pending is None:
                self._start_successor()
            pending = self._pending
        assert pending is not None
        made = self._result(pending)
        with self._lock:
            if self._pending is pending:
                self._install(made, time.monotonic())
        return self.wait()

    def _result(self, pending: Future[KeyPair]) -> KeyPair:
        """The pair ``pending`` makes; if making it failed, the next call starts afresh."""
        try:
            return pending.result()
        except BaseException:
            with self._lock:
                if self._pending is pending:
                    self._pending = None
            raise

    def _start_successor(self) -> None:
        """Make the next pair in a daemon thread (under the lock)."""
        future: Future[KeyPair] = Future()
        self._generation += 1
        generation = self._generation

        def make() -> None:
            try:
                pair = _make_pair(self.bits, generation)
            except BaseException as exc:  # handed to the waiter, re-raised there
                future.set_exception(exc)
            else:
                future.set_result(pair)

        self._pending = future
        threading.Thread(target=make, name="nomyo-keygen", daemon=True).start()

    def _install(self, pair: KeyPair, now: float) -> None:
        """Make ``pair`` the current one and schedule its successor (under the lock)."""
        if self._pair is not None:
            self.rotations += 1
            logger.debug("client key rotated to generation %d", pair.generation)
        self._pair, self._pending = pair, None
        if self.interval is None:
            self._due = self._next_check = math.inf
        else:
            lead = min(self.interval / 2, MAX_LEAD_SECONDS)
            self._due = now + self.interval
            self._next_check = self._due - lead

    def _step(self, now: float) -> None:
        """Start the successor once it is time, swap it in once it is due and ready."""
        if now < self._next_check:
            return
        pending = self._pending
        if pending is None:
            self._start_successor()
            self._next_check = self._due
            return
        if now < self._due or not pending.done():
            return
        if pending.exception() is not None:
            logger.warning("cannot make the next client key; keeping the current one")
            self._pending = None
            return
        self._install(pending.result(), now)

    def _reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._pair = self._pending = None
        self._next_check = self._due = math.inf


_registry: dict[tuple[RotationInterval, int], ProcessKey] = {}
_registry_lock = threading.Lock()


def process_key(interval: RotationInterval, bits: int = KEY_SIZE) -> ProcessKey:
    """The process-wide key of this rotation interval (and key size)."""
    found = _registry.get((interval, bits))
    if found is None:
        with _registry_lock:
            found = _registry.setdefault((interval, bits), ProcessKey(interval, bits))
    return found


def _after_fork_in_child() -> None:
    """A child never seals under its parent's pairs: drop them, make its own on first use."""
    global _registry_lock
    _registry_lock = threading.Lock()
    for key in _registry.values():
        key._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
