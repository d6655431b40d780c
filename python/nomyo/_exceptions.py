"""Every exception nomyo raises, in one tree.

::

    NomyoError                      base of everything below
    ├── SecurityError               a crypto or trust failure; deliberately opaque
    ├── ClientClosedError (RuntimeError) a request on a client that was closed
    ├── APIConnectionError          network failure or timeout (retried)
    │   └── APITimeoutError
    ├── APIError                    the server answered with an error status
    │   ├── InvalidRequestError     400
    │   │   └── RequestTooLargeError 413, or refused before sealing (``max_request_size``)
    │   ├── AuthenticationError     401
    │   ├── ForbiddenError          403 (model not allowed for the tier)
    │   ├── RateLimitError          429 (retried)
    │   ├── ServerError             500 (retried)
    │   └── ServiceUnavailableError 503 (retried)
    ├── EnvelopeError (ValueError)  a reply or envelope that is structurally wrong
    ├── KeyFormatError (ValueError) a key that cannot be loaded (corrupt, wrong password, too small)
    └── ConfigurationError (ValueError) the caller asked for something invalid (tier, URL, option)

The subclass relations of the reference client ``nomyo`` 0.2.9 hold: ``except APIError``
catches exactly the HTTP status errors, and ``SecurityError``/``APIConnectionError`` are not
``APIError``. Messages never contain plaintext, keys or API keys. ``SecurityError``,
``EnvelopeError``, ``APIError`` and ``APIConnectionError`` carry the failed request's
``payload_id`` (None when the failure belongs to no request, e.g. a key fetch).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "ClientClosedError",
    "ConfigurationError",
    "EnvelopeError",
    "ForbiddenError",
    "InvalidRequestError",
    "KeyFormatError",
    "NomyoError",
    "RateLimitError",
    "RequestTooLargeError",
    "SecureMemoryError",
    "SecurityError",
    "ServerError",
    "ServiceUnavailableError",
    "error_for_status",
]


class NomyoError(Exception):
    """Base class of every exception raised by nomyo."""


class SecurityError(NomyoError):
    """A security check failed (decryption, authentication, key pinning, attestation, HTTPS).

    Attributes:
        payload_id: the ``X-Payload-ID`` of the request whose reply failed, when known.
        plain_http: the refusal of an ``http://`` URL without ``allow_http=True`` (so a
            caller can say how to allow it without reading the message).
    """

    def __init__(
        self, *args: object, payload_id: str | None = None, plain_http: bool = False
    ) -> None:
        super().__init__(*args)
        self.payload_id = payload_id
        self.plain_http = plain_http


class SecureMemoryError(SecurityError):
    """``secure_memory="require"``: a secret could not be held in locked, dump-excluded memory.

    Raised where the secret buffer is made, before any plaintext or key is written to it, so
    for a request before anything is sent. The message says how to raise the limit.

    Attributes:
        needed: bytes of the buffer that could not be locked (whole pages).
        limit: the soft ``RLIMIT_MEMLOCK`` in bytes, None when unlimited.
        locked: bytes this process had locked at that moment.
    """

    needed: int | None = None
    limit: int | None = None
    locked: int | None = None


class EnvelopeError(NomyoError, ValueError):
    """An encrypted envelope or a decrypted reply is structurally invalid.

    Attributes:
        payload_id: the ``X-Payload-ID`` of the request whose reply failed, when known.
        plain_http: the refusal of an ``http://`` URL without ``allow_http=True`` (so a
            caller can say how to allow it without reading the message).
    """

    def __init__(
        self, *args: object, payload_id: str | None = None, plain_http: bool = False
    ) -> None:
        super().__init__(*args)
        self.payload_id = payload_id
        self.plain_http = plain_http


class ClientClosedError(NomyoError, RuntimeError):
    """A request on a client that was closed (also a ``RuntimeError``, as httpx raises)."""


class KeyFormatError(NomyoError, ValueError):
    """A key could not be loaded: corrupt data, wrong password, unsupported type or size."""


class ConfigurationError(NomyoError, ValueError):
    """An argument or setting is invalid; raised before anything is sent."""


class APIConnectionError(NomyoError):
    """The server could not be reached, or the connection failed mid-request."""

    def __init__(self, message: str = "Connection error", *, payload_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.payload_id = payload_id


class APITimeoutError(APIConnectionError):
    """The request timed out."""


class APIError(NomyoError):
    """The server answered with an error status.

    Attributes:
        message: a human-readable description.
        status_code: the HTTP status, or None.
        error_details: the server's JSON error body (usually ``{"detail": ...}``), or None.
        payload_id: the ``X-Payload-ID`` of the failed request, when known.
    """

    default_status: int | None = None

    def __init__(
        self,
        message: str,
        status_code: int | None = None,
        error_details: dict[str, Any] | None = None,
        *,
        payload_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code if status_code is not None else self.default_status
        self.error_details = error_details
        self.payload_id = payload_id
        self.retry_after = retry_after

    @property
    def detail(self) -> Any:
        """The server's ``detail`` field, if it sent one."""
        if isinstance(self.error_details, dict):
            return self.error_details.get("detail")
        return None

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status_code={self.status_code!r})"


class InvalidRequestError(APIError):
    """The request was invalid (HTTP 400), or cannot be sent as asked (e.g. ``stream=True``)."""

    default_status = 400


class RequestTooLargeError(InvalidRequestError):
    """The request is too large: refused before sealing because its text exceeds the
    client's ``max_request_size``, or refused by the router with HTTP 413.

    Attributes:
        limit: the client's ``max_request_size`` in bytes.
        size: the size that was over: the payload's text (refused before sealing) or the
            sealed request the router refused, in bytes; None when unknown.
    """

    default_status = 413

    def __init__(
        self, *args: Any, limit: int | None = None, size: int | None = None, **kwargs: Any
    ) -> None:
        """Takes :class:`APIError`'s arguments, then ``limit`` and ``size``."""
        super().__init__(*args, **kwargs)
        self.limit = limit
        self.size = size


class AuthenticationError(APIError):
    """Authentication failed (HTTP 401): missing or invalid API key."""

    default_status = 401


class ForbiddenError(APIError):
    """Access forbidden (HTTP 403), e.g. the model is not allowed for the requested tier."""

    default_status = 403


class RateLimitError(APIError):
    """Rate limit exceeded (HTTP 429)."""

    default_status = 429


class ServerError(APIError):
    """The server failed (HTTP 500)."""

    default_status = 500


class ServiceUnavailableError(APIError):
    """The inference backend is unavailable (HTTP 503), or a tier cannot be served."""

    default_status = 503


_STATUS_ERRORS: dict[int, tuple[type[APIError], str]] = {
    400: (InvalidRequestError, "Bad request"),
    401: (AuthenticationError, "Authentication failed"),
    403: (ForbiddenError, "Forbidden"),
    404: (APIError, "Endpoint not found"),
    413: (RequestTooLargeError, "Request too large"),
    429: (RateLimitError, "Rate limit exceeded"),
    500: (ServerError, "Server error"),
    503: (ServiceUnavailableError, "Service unavailable"),
}


def error_for_status(
    status_code: int,
    error_details: dict[str, Any] | None,
    *,
    payload_id: str | None = None,
    retry_after: float | None = None,
) -> APIError:
    """Build the exception for an HTTP error status (the one place statuses map to classes).

    Args:
        status_code: the HTTP status of the reply.
        error_details: the parsed JSON error body, or None when it was empty or not JSON.
        payload_id: the request's payload id.
        retry_after: the server's ``Retry-After`` in seconds, if any.

    Returns:
        An ``APIError`` subclass instance; the caller raises it.
    """
    cls, label = _STATUS_ERRORS.get(
        status_code, (APIError, f"Unexpected status code {status_code}")
    )
    detail = error_details.get("detail") if isinstance(error_details, dict) else None
    message = f"{label}: {detail}" if detail not in (None, "") else label
    if cls is APIError or status_code not in _STATUS_ERRORS:
        message = f"HTTP {status_code}: {message}" if not message.startswith("HTTP") else message
    return cls(
        message,
        status_code=status_code,
        error_details=error_details,
        payload_id=payload_id,
        retry_after=retry_after,
    )
