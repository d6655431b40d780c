"""``SyncSecureCompletionClient``: the blocking twin of ``SecureCompletionClient``.

One pooled ``httpx.Client`` per client, safe to share by many threads: the one-time server
key fetch is guarded by a lock, everything else is per call. The native crypto calls release
the GIL, so threads encrypt and decrypt in parallel.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import _core
from ._attestation import AttestationMode, PcrPolicy, ReplyBindingMode
from ._base import BaseSecureClient, KeyRotated, error_details
from ._constants import (
    COMPLETION_PATH,
    DEFAULT_MAX_RETRIES,
    MAX_ERROR_BODY_BYTES,
    MAX_KEY_BYTES,
    MAX_REQUEST_BYTES,
    MAX_RESPONSE_BYTES,
    PUBLIC_KEY_PATH,
)
from ._exceptions import APIConnectionError, APIError, EnvelopeError, SecurityError
from ._memory import SecureMemoryOption
from ._native import NativeTransport, native_trust
from ._params import NOT_GIVEN, NotGiven
from ._ratelimit import RateLimiter
from ._response import ChatCompletion
from ._retry import retry_delay
from ._transport import (
    IDENTITY,
    TimeoutTypes,
    VerifyTypes,
    body_deadline,
    check_caller_http,
    make_sync_client,
    native_timeouts,
    read_limited_sync,
    request_timeout,
    timeout_seconds,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["SyncSecureCompletionClient"]


class SyncSecureCompletionClient(BaseSecureClient):
    """Blocking client of ``/v1/chat/secure_completion``; thread-safe.

    Takes the arguments of :class:`~nomyo.SecureCompletionClient`, with ``transport`` an
    ``httpx.BaseTransport`` and ``http_client`` an ``httpx.Client``. Close it with
    :meth:`close` or use it as a context manager.
    """

    def __init__(
        self,
        router_url: str | None = None,
        allow_http: bool = False,
        secure_memory: SecureMemoryOption = True,
        max_retries: int = DEFAULT_MAX_RETRIES,
        *,
        timeout: TimeoutTypes = None,
        verify: VerifyTypes = True,
        server_key_fingerprint: str | Iterable[str] | None = None,
        known_hosts: bool | str | os.PathLike[str] | None = None,
        attestation: AttestationMode = "off",
        expected_pcrs: PcrPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        http_client: httpx.Client | None = None,
        max_response_size: int = MAX_RESPONSE_BYTES,
        max_request_size: int = MAX_REQUEST_BYTES,
        rate_limit: bool | RateLimiter | None = None,
        trusted_aik: str | Iterable[str] | None = None,
        reply_binding: ReplyBindingMode = "off",
    ) -> None:
        super().__init__(
            router_url,
            allow_http,
            secure_memory,
            max_retries,
            server_key_fingerprint=server_key_fingerprint,
            known_hosts=known_hosts,
            attestation=attestation,
            expected_pcrs=expected_pcrs,
            max_response_size=max_response_size,
            rate_limit=rate_limit,
            trusted_aik=trusted_aik,
            reply_binding=reply_binding,
            max_request_size=max_request_size,
        )
        check_caller_http(transport, http_client)
        trust = native_trust(verify, transport is not None or http_client is not None)
        self._native = (
            None
            if trust is None
            else NativeTransport(
                trust, timeout_seconds(timeout), secure_memory=self.secure_memory_mode
            )
        )
        self._owns_http = http_client is None
        self._http: httpx.Client | None = None
        if self._native is None:
            self._http = http_client or make_sync_client(
                timeout=timeout, verify=verify, transport=transport
            )
        self._server_key_lock = threading.Lock()

    # -- server key ---------------------------------------------------------------------

    def fetch_server_public_key(self) -> str:
        """Fetch, validate and cache the server's public key; returns its PEM.

        Raises:
            SecurityError: the key does not match a pinned fingerprint.
            KeyFormatError: the server sent no valid RSA public key.
            APIError / APIConnectionError: the fetch failed.
        """
        self._check_open()
        url = self.router_url + PUBLIC_KEY_PATH
        if self._native is not None:
            try:
                exchange = self._native.get_key_sync(url)
            except _core.TransportError as exc:
                raise self._transport_error(exc, None, "fetching the server key") from exc
            key_body = exchange.body()
            key_text = key_body.decode("utf-8", errors="replace")
            return self._accept_server_key(exchange.status, key_body, key_text)
        assert self._http is not None
        import httpx  # the httpx transport only (see _native)

        try:
            with self._http.stream(
                "GET", url, headers=IDENTITY, follow_redirects=False
            ) as response:
                body = read_limited_sync(response, MAX_KEY_BYTES, body_deadline(self._http))
        except httpx.TransportError as exc:
            raise self._transport_error(exc, None, "fetching the server key") from exc
        text = body.decode(response.encoding or "utf-8", errors="replace")
        return self._accept_server_key(response.status_code, body, text)

    def _server_public_key(self) -> _core.PublicKey:
        key = self._server_key
        if key is None:
            with self._server_key_lock:
                if self._server_key is None:
                    self.fetch_server_public_key()
                key = self._server_key
        assert key is not None
        return key

    # -- envelopes ------------------------------------------------------------------------

    def encrypt_payload(self, payload: dict[str, Any]) -> bytes:
        """Encrypt a request for the server: JSON and AES-GCM in native memory, RSA-OAEP wrap.

        Raises:
            ConfigurationError: the payload is not a non-empty dict.
            TypeError / ValueError: the payload holds something JSON cannot represent.
        """
        return self._seal(payload)[0]

    def _seal(self, payload: dict[str, Any]) -> tuple[bytes, _core.PublicKey]:
        """The envelope and the server key it was sealed to (for rotation detection)."""
        self._check_payload(payload)
        server_key = self._server_public_key()
        return (
            _core.seal_json(payload, server_key, secure_memory=self.secure_memory_mode),
            server_key,
        )

    def decrypt_response(
        self, encrypted_response: bytes, payload_id: str, *, reply_binding: str | None = None
    ) -> ChatCompletion:
        """Open a reply sealed to our key and complete its ``_metadata``.

        Args:
            reply_binding: the secret sealed into the request (``reply_binding="require"``).

        Raises:
            EnvelopeError: structural problems (not JSON, missing field, bad base64, ...).
            SecurityError: decryption or authentication failed, the reply names another
                request's payload id, or lacks the request's reply binding.
        """
        key = self._require_keys()
        if not isinstance(encrypted_response, (bytes, bytearray, memoryview)):
            raise EnvelopeError("encrypted response must be bytes")
        value, processed_at, algorithm = _core.open_json(
            bytes(encrypted_response),
            key,
            self._max_response,
            secure_memory=self.secure_memory_mode,
        )
        return self._finish_reply(value, payload_id, processed_at, algorithm, reply_binding)

    # -- requests -------------------------------------------------------------------------

    def send_secure_request(
        self,
        payload: dict[str, Any],
        payload_id: str,
        api_key: str | None = None,
        security_tier: str | None = None,
        *,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        max_retries: int | NotGiven = NOT_GIVEN,
        extra_headers: Mapping[str, str | None] | None = None,
        extra_query: Mapping[str, object] | None = None,
    ) -> ChatCompletion:
        """Encrypt, send (with retries), and decrypt one chat completion (blocking).

        Raises:
            ConfigurationError: an invalid security tier or option (nothing is sent).
            RequestTooLargeError: the payload exceeds ``max_request_size`` (nothing is
                sent), or the router answered 413.
            APIError subclasses: the server's error status, after retries where retryable.
            APIConnectionError: network failure after retries.
            SecurityError / EnvelopeError: the reply cannot be trusted or read.
        """
        retries = self._retries(max_retries)
        self._check_request_size(payload)
        headers = self._request_headers(payload_id, api_key, security_tier, extra_headers)
        url = self._completion_url(extra_query)
        payload, binding = self._bind_request(payload)
        self._check_open()
        refetched = False
        attempt = 0
        while True:
            try:
                return self._attempt(payload, payload_id, headers, attempt, timeout, binding, url)
            except KeyRotated:
                if refetched:
                    raise SecurityError(
                        "the server could not decrypt the request after a key re-fetch",
                        payload_id=payload_id,
                    ) from None
                refetched = True
            except (SecurityError, EnvelopeError) as exc:
                if exc.payload_id is None:
                    exc.payload_id = payload_id
                raise
            except (APIConnectionError, APIError) as exc:
                if not self._should_retry(exc, attempt, retries):
                    raise
                delay = retry_delay(attempt, getattr(exc, "retry_after", None))
                attempt += 1
                self._log_retry(payload_id, exc, attempt, delay, retries)
                time.sleep(delay)

    def _attempt(
        self,
        payload: dict[str, Any],
        payload_id: str,
        headers: dict[str, str],
        attempt: int,
        timeout: TimeoutTypes | NotGiven,
        binding: str | None = None,
        url: str | None = None,
    ) -> ChatCompletion:
        if self._native is not None:
            return self._attempt_native(
                payload, payload_id, headers, attempt, timeout, binding, url
            )
        assert self._http is not None
        import httpx  # the httpx transport only (see _native)

        started = time.perf_counter()
        body, used_key = self._seal(payload)
        sealed = time.perf_counter()
        waited = self.rate_limiter.wait() if self.rate_limiter is not None else 0.0
        sending = time.perf_counter()
        url = url or self.router_url + COMPLETION_PATH
        try:
            with self._http.stream(
                "POST",
                url,
                content=body,
                headers=headers,
                timeout=request_timeout(timeout),
                follow_redirects=False,
            ) as response:
                if response.status_code == 200:
                    data = read_limited_sync(
                        response, self._max_response, body_deadline(self._http)
                    )
                else:
                    data = _read_error_body(response, body_deadline(self._http))
        except httpx.TransportError as exc:
            raise self._transport_error(exc, payload_id) from exc
        status = response.status_code
        self._log_exchange(
            payload_id,
            attempt,
            len(body),
            status,
            len(data),
            sealed - started,
            waited,
            time.perf_counter() - sending,
        )
        if status == 200:
            opening = time.perf_counter()
            reply = self.decrypt_response(data, payload_id, reply_binding=binding)
            self._log_opened(payload_id, time.perf_counter() - opening)
            return reply
        details = error_details(data)
        if self._is_decrypt_failure(status, details) and self._server_key_changed(used_key):
            raise KeyRotated
        raise self._status_error(status, details, response.headers, payload_id, len(body))

    def _attempt_native(
        self,
        payload: dict[str, Any],
        payload_id: str,
        headers: dict[str, str],
        attempt: int,
        timeout: TimeoutTypes | NotGiven,
        binding: str | None = None,
        url: str | None = None,
    ) -> ChatCompletion:
        """One attempt on the native transport (the GIL is released while it runs)."""
        assert self._native is not None
        self._check_payload(payload)
        used_key = self._server_public_key()
        waited = self.rate_limiter.wait() if self.rate_limiter is not None else 0.0
        try:
            exchange = self._native.post_sealed_sync(
                url or self.router_url + COMPLETION_PATH,
                headers,
                payload,
                used_key,
                self._require_keys(),
                self._max_response,
                native_timeouts(timeout),
            )
        except _core.TransportError as exc:
            raise self._transport_error(exc, payload_id) from exc
        self._log_native(payload_id, attempt, exchange, waited)
        if exchange.opened:
            return self._finish_native(exchange, payload_id, binding)
        details = error_details(exchange.body())
        if self._is_decrypt_failure(exchange.status, details) and self._server_key_changed(
            used_key
        ):
            raise KeyRotated
        raise self._status_error(
            exchange.status, details, exchange.headers(), payload_id, exchange.sent_bytes
        )

    def _server_key_changed(self, used: _core.PublicKey | None) -> bool:
        """After a 'cannot decrypt' reply, re-fetch the key once and report if it changed."""
        with self._server_key_lock:
            if self._server_key is used:
                self.fetch_server_public_key()
        return self._server_key != used

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool (if this client created it); later requests raise
        ``RuntimeError``."""
        self._closed = True
        if self._native is not None:
            self._native.close()
        elif self._owns_http and self._http is not None:
            self._http.close()

    def __enter__(self) -> SyncSecureCompletionClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _read_error_body(response: httpx.Response, deadline: float) -> bytes:
    try:
        return read_limited_sync(response, MAX_ERROR_BODY_BYTES, deadline)
    except EnvelopeError:
        return b""
