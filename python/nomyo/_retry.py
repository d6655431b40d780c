"""Retry policy: which failures are retried, and how long to wait before the next try.

Only what can change is retried: a refused or reset connection, a timeout, 429 and 5xx.
A certificate that is not trusted, a failed TLS handshake, a host name that does not
resolve, or a forward proxy that refuses the tunnel with a 4xx (407, 403) fail the same way
on every try, so they raise at once; a proxy that answers the ``CONNECT`` with a 5xx (it
could not reach the router) is retried. The decision reads exception types and attributes
(the native ``TransportError``'s ``cause`` and ``status``, decided in Rust), never a message.
"""

from __future__ import annotations

import email.utils
import random
import socket
import ssl
import time
from collections.abc import Mapping

import nomyo._core as _core  # the native module itself, not the package above it

from ._constants import INITIAL_RETRY_DELAY, MAX_RETRY_DELAY, RETRYABLE_STATUS

__all__ = [
    "is_certificate_failure",
    "is_permanent_network_failure",
    "parse_retry_after",
    "retry_delay",
    "should_retry",
]

#: Causes of a failed native connection that no retry can change (``TransportError.cause``).
_PERMANENT_CAUSES = frozenset({"dns", "tls", "certificate"})


def should_retry(status_code: int) -> bool:
    """True for statuses worth another try (429, 500, 502, 503, 504)."""
    return status_code in RETRYABLE_STATUS


def is_permanent_network_failure(exc: BaseException) -> bool:
    """True when a network failure cannot succeed on another try.

    ``exc`` is the transport's exception (``httpx.TransportError`` or the native
    ``TransportError``) or an exception caused by one: an untrusted certificate or another
    TLS handshake failure, or a host name that does not resolve. A reset, refused or timed
    out connection, and a temporary resolver failure (``EAI_AGAIN``), are not permanent.
    """
    return any(_permanent_here(item) for item in _causes(exc))


def is_certificate_failure(exc: BaseException) -> bool:
    """True when the server's TLS certificate was refused (either transport), e.g. one not
    signed by a trusted CA, expired, or for another host name; ``exc`` or its causes."""
    return any(
        isinstance(item, ssl.SSLCertVerificationError)
        or (isinstance(item, _core.TransportError) and item.cause == "certificate")
        for item in _causes(exc)
    )


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and the chain of its causes (``__cause__``, else ``__context__``)."""
    out: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def _permanent_here(exc: BaseException) -> bool:
    if isinstance(exc, socket.gaierror):
        return exc.errno != socket.EAI_AGAIN
    if isinstance(exc, ssl.SSLError):
        # An EOF or reset in the middle of the handshake is a broken connection.
        return not isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError))
    if isinstance(exc, _core.TransportError):
        if exc.kind == "proxy":  # a refusal below 500 stands; no usable answer may change
            return exc.status is not None and exc.status < 500
        return exc.cause in _PERMANENT_CAUSES
    return False


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = parsed.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, float(seconds))


def retry_delay(attempt: int, retry_after: float | None = None) -> float:
    """Delay before retry number ``attempt`` (0-based): Retry-After, else backoff with jitter.

    The backoff doubles from ``INITIAL_RETRY_DELAY`` up to ``MAX_RETRY_DELAY``, and a random
    quarter of it is taken off so that many clients do not retry in lockstep.
    """
    if retry_after is not None:
        return retry_after
    base: float = min(INITIAL_RETRY_DELAY * (2.0**attempt), MAX_RETRY_DELAY)
    return base * (1 - 0.25 * random.random())  # noqa: S311 - jitter, not a secret
