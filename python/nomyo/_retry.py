"""Retry policy: which failures are retried, and how long to wait before the next try."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping

from ._constants import INITIAL_RETRY_DELAY, MAX_RETRY_DELAY, RETRYABLE_STATUS

__all__ = ["parse_retry_after", "retry_delay", "should_retry"]


def should_retry(status_code: int) -> bool:
    """True for statuses worth another try (429, 500, 502, 503, 504)."""
    return status_code in RETRYABLE_STATUS


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
