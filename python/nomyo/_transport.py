"""HTTP plumbing: one pooled ``httpx`` client per nomyo client, and bounded body reads."""

from __future__ import annotations

import importlib.util
import ssl
from typing import Any
from urllib.parse import urlsplit

import httpx

from ._constants import (
    CONNECT_TIMEOUT,
    POOL_TIMEOUT,
    READ_TIMEOUT,
    WRITE_TIMEOUT,
)
from ._exceptions import ConfigurationError, EnvelopeError, SecurityError

__all__ = [
    "TimeoutTypes",
    "VerifyTypes",
    "check_base_url",
    "default_timeout",
    "http2_available",
    "make_async_client",
    "read_limited",
]

TimeoutTypes = float | httpx.Timeout | None
VerifyTypes = bool | str | ssl.SSLContext


def default_timeout() -> httpx.Timeout:
    """Connect fast, allow long inference."""
    return httpx.Timeout(
        connect=CONNECT_TIMEOUT, read=READ_TIMEOUT, write=WRITE_TIMEOUT, pool=POOL_TIMEOUT
    )


def http2_available() -> bool:
    """True when the optional ``h2`` package is installed (``pip install nomyo-rs[http2]``)."""
    return importlib.util.find_spec("h2") is not None


def check_base_url(base_url: str, allow_http: bool) -> str:
    """Validate and normalise a router URL; refuse plain HTTP unless explicitly allowed.

    Raises:
        SecurityError: an ``http://`` URL without ``allow_http=True``.
        ConfigurationError: not an http(s) URL.
    """
    url = base_url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"base_url must be an http(s) URL, got {base_url!r}")
    if parts.scheme == "http" and not allow_http:
        raise SecurityError(
            "refusing plain HTTP: the server key would be fetched unauthenticated. "
            "Use https://, or allow_http=True for local development only."
        )
    return url


def _verify(verify: VerifyTypes) -> bool | ssl.SSLContext:
    if verify is False:
        raise ConfigurationError("certificate verification cannot be turned off")
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return verify


def make_async_client(
    *,
    timeout: TimeoutTypes = None,
    verify: VerifyTypes = True,
    transport: httpx.AsyncBaseTransport | None = None,
    **kwargs: Any,
) -> httpx.AsyncClient:
    """One keep-alive pool; proxies and ``SSL_CERT_FILE``/``SSL_CERT_DIR`` from the environment."""
    return httpx.AsyncClient(
        timeout=default_timeout() if timeout is None else timeout,
        verify=_verify(verify),
        http2=http2_available() and transport is None,
        trust_env=True,
        transport=transport,
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=32),
        follow_redirects=False,
        **kwargs,
    )


async def read_limited(response: httpx.Response, limit: int) -> bytes:
    """Read a streamed body, refusing one longer than ``limit`` bytes before reading it all.

    Raises:
        EnvelopeError: the body is (or announces itself) larger than ``limit``.
    """
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise EnvelopeError(f"reply of {declared} bytes exceeds the limit of {limit} bytes")
    chunks = bytearray()
    async for chunk in response.aiter_bytes():
        if len(chunks) + len(chunk) > limit:
            raise EnvelopeError(f"reply exceeds the limit of {limit} bytes")
        chunks += chunk
    return bytes(chunks)
