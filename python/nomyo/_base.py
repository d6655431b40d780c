"""``BaseSecureClient``: everything the async and the blocking client share that is not I/O.

URL and option checks, key handling, request headers, validation of a fetched server key
(pins, known hosts), the retry decision, mapping an error status to its exception, and
completing a decrypted reply (``_metadata``, attestation policy, :class:`ChatCompletion`).
:class:`~nomyo.SecureCompletionClient` (``httpx.AsyncClient``, coroutines) and
:class:`~nomyo.SyncSecureCompletionClient` (``httpx.Client``, blocking, thread-safe) add the
I/O on top, as httpx and openai-python do with their client pairs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from . import _core
from ._attestation import AttestationMode, PcrPolicy, apply_attestation_policy, check_mode
from ._config import resolve_base_url
from ._constants import KEY_SIZE, MAX_DETAIL_CHARS, MAX_RETRY_AFTER, SECURITY_TIERS
from ._exceptions import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    ConfigurationError,
    EnvelopeError,
    KeyFormatError,
    NomyoError,
    SecurityError,
    error_for_status,
)
from ._keys import Password, load_private_key, save_key_pair
from ._known_hosts import KnownHosts
from ._ratelimit import RateLimiter, make_rate_limiter
from ._response import ChatCompletion, to_response
from ._retry import parse_retry_after, should_retry
from ._transport import check_base_url

if TYPE_CHECKING:
    import httpx

__all__ = ["BaseSecureClient", "KeyRotated", "error_details"]

logger = logging.getLogger("nomyo")


class KeyRotated(Exception):
    """The server could not decrypt a request because its key changed (re-fetch, resend)."""


def normalise_fingerprints(pins: str | Iterable[str] | None) -> frozenset[str]:
    """``sha256:<hex>`` fingerprints from one or several pins (colons and case ignored).

    Raises:
        ConfigurationError: a pin is not a SHA-256 fingerprint.
    """
    if pins is None:
        return frozenset()
    items = [pins] if isinstance(pins, str) else list(pins)
    out = set()
    for pin in items:
        value = pin.strip().lower()
        if not value.startswith("sha256:"):
            value = "sha256:" + value
        hexpart = value.removeprefix("sha256:").replace(":", "")
        if len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
            raise ConfigurationError(f"not a SHA-256 key fingerprint: {pin!r}")
        out.add("sha256:" + hexpart)
    return frozenset(out)


def error_details(body: bytes) -> dict[str, Any] | None:
    """The server's JSON error object, or None when the body is empty or not a JSON object."""
    if not body:
        return None
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(parsed, dict):
        return None
    detail = parsed.get("detail")
    if isinstance(detail, str) and len(detail) > MAX_DETAIL_CHARS:
        parsed["detail"] = detail[:MAX_DETAIL_CHARS] + "…"
    return parsed


def complete_metadata(
    value: Any, payload_id: str, processed_at: Any, algorithm: str
) -> dict[str, Any]:
    """Check the decrypted reply's shape and binding, then fill in ``_metadata``.

    Raises:
        EnvelopeError: the reply is not a JSON object, or its ``_metadata`` is not one.
        SecurityError: the reply names another request's payload id.
    """
    if not isinstance(value, dict):
        raise EnvelopeError(f"decrypted reply is a JSON {type(value).__name__}, not an object")
    metadata = value.setdefault("_metadata", {})
    if not isinstance(metadata, dict):
        raise EnvelopeError("decrypted reply has a '_metadata' that is not an object")
    claimed = metadata.get("payload_id")
    if claimed is not None and claimed != payload_id:
        raise SecurityError("the reply belongs to another request (payload id mismatch)")
    metadata.update(
        {
            "payload_id": payload_id,
            "processed_at": processed_at,
            "is_encrypted": True,
            "encryption_algorithm": algorithm,
        }
    )
    return value


class BaseSecureClient:
    """Shared state and logic of the secure-completion clients (see their docstrings)."""

    def __init__(
        self,
        router_url: str | None,
        allow_http: bool,
        secure_memory: bool,
        max_retries: int,
        *,
        server_key_fingerprint: str | Iterable[str] | None,
        known_hosts: bool | str | os.PathLike[str] | None,
        attestation: AttestationMode,
        expected_pcrs: PcrPolicy | None,
        max_response_size: int,
        rate_limit: bool | RateLimiter | None,
    ) -> None:
        if max_retries < 0:
            raise ConfigurationError("max_retries must be >= 0")
        self.router_url = check_base_url(resolve_base_url(router_url), allow_http)
        self._closed = False
        self.allow_http = allow_http
        self.max_retries = max_retries
        self.key_size = KEY_SIZE
        self.private_key: _core.PrivateKey | None = None
        self.public_key_pem: str | None = None
        self._quoted_public_key: tuple[str, str] | None = None
        self._secure_memory = secure_memory
        self._pins = normalise_fingerprints(server_key_fingerprint)
        self._known_hosts = (
            None
            if known_hosts is None or known_hosts is False
            else KnownHosts(None if known_hosts is True else known_hosts)
        )
        self.attestation = check_mode(attestation)
        self.expected_pcrs = expected_pcrs
        self.rate_limiter = make_rate_limiter(rate_limit)
        self._max_response = max_response_size
        self._server_key: _core.PublicKey | None = None
        self._server_key_pem: str | None = None
        self.server_key_fetches = 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.router_url}>"

    # -- keys ---------------------------------------------------------------------------

    def _set_key(self, key: _core.PrivateKey, public_key_pem: str | None = None) -> None:
        self.private_key = key
        self.public_key_pem = public_key_pem or key.public_key().to_pem()

    def generate_keys(
        self,
        save_to_file: bool = False,
        key_dir: str = "client_keys",
        password: Password = None,
        *,
        overwrite: bool = False,
    ) -> None:
        """Generate an RSA-4096 key pair, optionally saving it to ``key_dir``.

        Raises:
            FileExistsError: a key file exists in ``key_dir`` and ``overwrite`` is false.
        """
        key = _core.PrivateKey.generate(self.key_size)
        if save_to_file:
            save_key_pair(key, key_dir, password, overwrite=overwrite)
        self._set_key(key)

    def load_keys(
        self,
        private_key_path: str | os.PathLike[str],
        public_key_path: str | os.PathLike[str] | None = None,
        password: Password = None,
        *,
        allow_readable: bool = False,
    ) -> None:
        """Load the key pair; the public key is derived from the private key if not given.

        Raises:
            KeyFormatError: corrupt file, wrong password, open permissions, too small, or a
                public key file that does not belong to the private key.
        """
        key = load_private_key(private_key_path, password, allow_readable=allow_readable)
        pem = None
        if public_key_path is not None:
            pem = Path(public_key_path).read_text().strip()
            if _core.PublicKey.from_pem(pem) != key.public_key():
                raise KeyFormatError(
                    f"{public_key_path} does not hold the public key of {private_key_path}"
                )
        self._set_key(key, pem)

    def _public_key_header(self, private_key: _core.PrivateKey) -> str:
        """The URL-quoted public key PEM, quoted once per key."""
        pem = self.public_key_pem or private_key.public_key().to_pem()
        cached = self._quoted_public_key
        if cached is None or cached[0] is not pem:
            cached = self._quoted_public_key = (pem, quote(pem))
        return cached[1]

    def _check_open(self) -> None:
        """Refuse to send once the client was closed (the message httpx uses).

        Raises:
            RuntimeError: the client was closed.
        """
        if self._closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")

    def _require_keys(self) -> _core.PrivateKey:
        if self.private_key is None:
            raise SecurityError("no client key: call generate_keys() or load_keys() first")
        return self.private_key

    @property
    def server_public_key(self) -> _core.PublicKey | None:
        """The cached server key, once fetched."""
        return self._server_key

    # -- the server key -------------------------------------------------------------------

    def _accept_server_key(self, status: int, body: bytes, text: str) -> str:
        """Validate a fetched server key (status, format, pins, known hosts) and cache it.

        Raises:
            APIError: the fetch answered an error status.
            KeyFormatError: the server sent no valid RSA public key.
            SecurityError: the key matches no pinned fingerprint, or differs from the one
                remembered for this URL.
        """
        if status != 200:
            raise error_for_status(status, error_details(body))
        try:
            key = _core.PublicKey.from_pem(text)
        except KeyFormatError as exc:
            raise KeyFormatError(f"the server returned an invalid public key: {exc}") from None
        if self._pins and key.fingerprint() not in self._pins:
            raise SecurityError(
                f"server key {key.fingerprint()} does not match the pinned fingerprint(s)"
            )
        if self._known_hosts is not None:
            self._known_hosts.check(self.router_url, key.fingerprint())
        self.server_key_fetches += 1
        self._server_key, self._server_key_pem = key, text
        logger.debug("server key %s fetched from %s", key.fingerprint(), self.router_url)
        return text

    # -- requests -------------------------------------------------------------------------

    @staticmethod
    def _check_payload(payload: object) -> None:
        if not isinstance(payload, dict) or not payload:
            raise ConfigurationError("payload must be a non-empty dict")

    def _request_headers(
        self, payload_id: str, api_key: str | None, security_tier: str | None
    ) -> dict[str, str]:
        """The headers of one request; checks everything that can be checked before sending.

        Raises:
            ConfigurationError: an invalid security tier or payload id.
            SecurityError: no client key yet.
        """
        if security_tier is not None and security_tier not in SECURITY_TIERS:
            raise ConfigurationError(
                f"invalid security_tier {security_tier!r}: must be one of "
                + ", ".join(SECURITY_TIERS)
            )
        if not payload_id or not (payload_id.isascii() and payload_id.isprintable()):
            raise ConfigurationError("payload_id must be non-empty printable ASCII (a header)")
        private_key = self._require_keys()
        headers = {
            "X-Payload-ID": payload_id,
            "X-Public-Key": self._public_key_header(private_key),
            "Content-Type": "application/octet-stream",
            "Accept-Encoding": "identity",
        }
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        if security_tier:
            headers["X-Security-Tier"] = security_tier
        return headers

    @staticmethod
    def _transport_error(
        exc: httpx.TransportError | _core.TransportError,
        payload_id: str | None,
        what: str = "request",
    ) -> APIConnectionError:
        """The nomyo exception for a network failure (a timeout or anything else) of either
        transport."""
        if isinstance(exc, _core.TransportError):
            timed_out = exc.kind == "timeout"
        else:
            import httpx

            timed_out = isinstance(exc, httpx.TimeoutException)
        if timed_out:
            return APITimeoutError(f"{what} timed out: {exc}", payload_id=payload_id)
        return APIConnectionError(
            f"{what} failed: {type(exc).__name__}: {exc}", payload_id=payload_id
        )

    @staticmethod
    def _is_decrypt_failure(status: int, details: Mapping[str, Any] | None) -> bool:
        """A 'cannot decrypt' reply: the server key may have rotated."""
        detail = str(details.get("detail", "")) if details else ""
        return status in (400, 422, 500) and "decrypt" in detail.lower()

    @staticmethod
    def _status_error(
        status: int,
        details: dict[str, Any] | None,
        headers: Mapping[str, str],
        payload_id: str,
    ) -> APIError:
        return error_for_status(
            status, details, payload_id=payload_id, retry_after=parse_retry_after(headers)
        )

    def _should_retry(self, exc: NomyoError, attempt: int) -> bool:
        """Whether failed attempt number ``attempt`` (0-based) is worth another try.

        Network failures and 429/500/502/503/504 are retried up to ``max_retries`` times,
        except when the server asks for a wait longer than ``MAX_RETRY_AFTER`` (e.g. the
        30-minute cool-down), which raises at once.
        """
        if attempt >= self.max_retries:
            return False
        if isinstance(exc, APIConnectionError):
            return True
        if not isinstance(exc, APIError) or exc.status_code is None:
            return False
        if not should_retry(exc.status_code):
            return False
        return exc.retry_after is None or exc.retry_after <= MAX_RETRY_AFTER

    def _log_retry(self, payload_id: str, exc: NomyoError, attempt: int, delay: float) -> None:
        logger.warning(
            "request %s failed (%s); retry %d/%d in %.2fs",
            payload_id,
            type(exc).__name__,
            attempt,
            self.max_retries,
            delay,
        )

    @staticmethod
    def _log_exchange(
        payload_id: str,
        attempt: int,
        sent: int,
        status: int,
        received: int,
        seal_seconds: float,
        waited: float,
        round_trip: float,
    ) -> None:
        logger.debug(
            "request %s attempt %d: sealed %d bytes in %.1f ms, rate-limit wait %.1f ms, "
            "HTTP %d with %d bytes in %.1f ms",
            payload_id,
            attempt,
            sent,
            seal_seconds * 1000.0,
            waited * 1000.0,
            status,
            received,
            round_trip * 1000.0,
        )

    @staticmethod
    def _log_opened(payload_id: str, seconds: float) -> None:
        logger.debug("request %s: reply opened in %.1f ms", payload_id, seconds * 1000.0)

    def _log_native(
        self, payload_id: str, attempt: int, exchange: _core.Exchange, waited: float
    ) -> None:
        if not logger.isEnabledFor(logging.DEBUG):
            return
        self._log_exchange(
            payload_id,
            attempt,
            exchange.sent_bytes,
            exchange.status,
            exchange.received_bytes,
            exchange.seal_seconds,
            waited,
            exchange.exchange_seconds,
        )
        if exchange.opened:
            self._log_opened(payload_id, exchange.open_seconds)

    def _finish_native(self, exchange: _core.Exchange, payload_id: str) -> ChatCompletion:
        """Parse a reply the native transport opened, then :meth:`_finish_reply`."""
        value, processed_at, algorithm = exchange.reply()
        return self._finish_reply(value, payload_id, processed_at, algorithm)

    def _finish_reply(
        self, value: Any, payload_id: str, processed_at: Any, algorithm: str
    ) -> ChatCompletion:
        """Complete ``_metadata``, apply the attestation policy, convert to ``ChatCompletion``.

        Raises:
            EnvelopeError / SecurityError: see :func:`complete_metadata`; SecurityError also
                when ``attestation="require"`` fails.
        """
        reply = complete_metadata(value, payload_id, processed_at, algorithm)
        apply_attestation_policy(
            reply["_metadata"], payload_id, self.attestation, self.expected_pcrs
        )
        return to_response(reply, ChatCompletion)
