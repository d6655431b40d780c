"""``SecureCompletionClient``: the async secure-completion client (``httpx.AsyncClient``)."""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from . import _aio, _core
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
    make_async_client,
    native_timeouts,
    read_limited,
    request_timeout,
    timeout_seconds,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["SecureCompletionClient"]

T = TypeVar("T")


class SecureCompletionClient(BaseSecureClient):
    """Async client of ``/v1/chat/secure_completion``: key management, envelopes, transport.

    :class:`~nomyo.SyncSecureCompletionClient` is its blocking twin (same arguments).

    Args:
        router_url: base URL of the NOMYO Router (HTTPS); default ``$NOMYO_BASE_URL``, else
            ``https://api.nomyo.ai``.
        allow_http: allow plain HTTP (local development only).
        secure_memory: True (default): plaintext and keys are held in locked, dump-excluded,
            zeroed native memory where the OS allows, and in unlocked memory otherwise
            (counted in ``get_memory_protection_info()``); ``"require"``: a request whose
            buffers cannot be locked fails with ``SecureMemoryError`` before anything is
            sent; False: not locked (still zeroed). ``NOMYO_SECURE_MEMORY=require`` forces
            ``"require"``.
        max_retries: retries after the first try on 429/500/502/503/504 and network errors.
        timeout: an ``httpx.Timeout`` or seconds; default: 10 s connect, 300 s read.
        verify: ``True`` (system/certifi trust store, ``SSL_CERT_FILE`` honoured), a CA
            bundle path, or an ``ssl.SSLContext``. Verification cannot be turned off.
        server_key_fingerprint: one or more accepted ``sha256:<hex>`` fingerprints of the
            server's key; a fetched key that matches none is refused before anything is
            encrypted to it.
        known_hosts: trust on first use: True (``~/.config/nomyo/known_hosts``) or a path.
            The first key seen for this URL is remembered; a different key later is refused
            until accepted with ``nomyo keys trust``.
        attestation: ``"off"`` (pass the TPM block through), ``"verify"`` (attach
            ``_metadata.attestation_verification``) or ``"require"`` (also refuse a reply
            whose attestation is absent or fails, before the caller sees it).
        expected_pcrs: PCR values the quote must contain, ``{"sha256": {0: "<hex>"}}``.
        trusted_aik: one or more ``sha256:<hex>`` fingerprints of attestation keys (over the
            AIK's SubjectPublicKeyInfo DER, as ``attestation_verification["aik_fingerprint"]``
            reports it); a quote signed by any other key fails (needs ``attestation=``
            ``"require"`` to refuse the reply, or ``"verify"`` to report it).
        reply_binding: ``"require"`` seals a random secret into each request and refuses a
            reply that does not return it; the router must support this extension
            (docs/security.md). Default ``"off"``.
        transport: an ``httpx`` transport (tests); http_client: a ready ``httpx.AsyncClient``.
            Either must verify certificates: an httpx transport or client built with
            ``verify=False`` (or a non-verifying ``SSLContext``) is refused; a transport of
            another kind cannot be inspected and is logged once as unchecked.
        max_response_size: the largest reply accepted, in bytes (at most 1 GiB).
        max_request_size: the most text a request may hold, in bytes (characters of its
            strings; default 32 MiB); a larger request raises ``RequestTooLargeError``
            before anything is encrypted or sent. Sealing adds about a third, so keep it
            at most three quarters of the router's request body limit.
        rate_limit: True keeps every request of this client to the router's public limits
            (2/s, bursts of 4 once per 10 s); a :class:`~nomyo.RateLimiter` can be shared.

    Raises:
        SecurityError: an ``http://`` URL without ``allow_http=True``.
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
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
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
        self._http_options: dict[str, Any] = {
            "timeout": timeout,
            "verify": verify,
            "transport": transport,
        }
        self._http: httpx.AsyncClient | None = None
        if self._native is None:
            self._http = http_client or make_async_client(**self._http_options)
        #: The event loop the pool and lock belong to (an asyncio loop, or a trio run's token).
        self._loop: object | None = None
        self._server_key_lock: _aio.AsyncLock = _aio.new_lock()

    def _bind_loop(self) -> None:
        """Keep the pool and locks on the running event loop (asyncio, uvloop or trio).

        Connections belong to the loop that opened them; when the client is used from a new
        loop (e.g. a second ``asyncio.run`` or ``trio.run``), a fresh pool replaces the
        orphaned one.
        """
        self._check_open()
        try:  # asyncio's loop without a call more: this runs for every request
            loop: object = asyncio.get_running_loop()
        except RuntimeError:
            loop = _aio.current_loop()  # trio's run, or no loop (RuntimeError)
        if self._loop is loop:
            return
        if self._loop is not None and self._owns_http and self._http is not None:
            self._http = make_async_client(**self._http_options)
        self._server_key_lock = _aio.new_lock()
        self._loop = loop

    # -- server key ---------------------------------------------------------------------

    async def fetch_server_public_key(self) -> str:
        """Fetch, validate and cache the server's public key; returns its PEM.

        Raises:
            SecurityError: the key does not match a pinned fingerprint.
            KeyFormatError: the server sent no valid RSA public key.
            APIError / APIConnectionError: the fetch failed.
        """
        self._bind_loop()
        url = self.router_url + PUBLIC_KEY_PATH
        if self._native is not None:
            try:
                exchange = await self._native.get_key(url)
            except _core.TransportError as exc:
                raise self._transport_error(exc, None, "fetching the server key") from exc
            key_body = exchange.body()
            key_text = key_body.decode("utf-8", errors="replace")
            return self._accept_server_key(exchange.status, key_body, key_text)
        assert self._http is not None
        import httpx  # the httpx transport only (see _native)

        try:
            async with self._http.stream(
                "GET", url, headers=IDENTITY, follow_redirects=False
            ) as response:
                body = await read_limited(response, MAX_KEY_BYTES, body_deadline(self._http))
        except httpx.TransportError as exc:
            raise self._transport_error(exc, None, "fetching the server key") from exc
        text = body.decode(response.encoding or "utf-8", errors="replace")
        return self._accept_server_key(response.status_code, body, text)

    async def _server_public_key(self) -> _core.PublicKey:
        if self._server_key is None:
            async with self._server_key_lock:
                if self._server_key is None:
                    await self.fetch_server_public_key()
        assert self._server_key is not None
        return self._server_key

    # -- envelopes ------------------------------------------------------------------------

    @staticmethod
    async def _off_loop(fn: Callable[..., T], *args: Any) -> T:
        return await _aio.run_sync(fn, *args)

    async def encrypt_payload(self, payload: dict[str, Any]) -> bytes:
        """Encrypt a request for the server: JSON and AES-GCM in native memory, RSA-OAEP wrap.

        Raises:
            ConfigurationError: the payload is not a non-empty dict.
            TypeError / ValueError: the payload holds something JSON cannot represent.
        """
        return (await self._seal(payload))[0]

    async def _seal(self, payload: dict[str, Any]) -> tuple[bytes, _core.PublicKey]:
        """The envelope and the server key it was sealed to (for rotation detection)."""
        self._check_payload(payload)
        server_key = await self._server_public_key()
        seal = functools.partial(_core.seal_json, secure_memory=self.secure_memory_mode)
        return await self._off_loop(seal, payload, server_key), server_key

    async def decrypt_response(
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
        value, processed_at, algorithm = await self._off_loop(
            functools.partial(_core.open_json, secure_memory=self.secure_memory_mode),
            bytes(encrypted_response),
            key,
            self._max_response,
        )
        return self._finish_reply(value, payload_id, processed_at, algorithm, reply_binding)

    # -- requests -------------------------------------------------------------------------

    async def send_secure_request(
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
        """Encrypt, send (with retries), and decrypt one chat completion.

        Args:
            payload: the OpenAI chat-completions request.
            payload_id: the request's ``X-Payload-ID``.
            api_key: bearer API key (never inside the payload).
            security_tier: ``standard``, ``high`` or ``maximum``.
            timeout: this request's timeout (default: the client's).
            max_retries: this request's retries (default: the client's).
            extra_headers: more HTTP headers for the router (``Authorization`` and
                ``X-Security-Tier`` may be replaced; None removes one).
            extra_query: query parameters added to the request URL.

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
        self._bind_loop()
        refetched = False
        attempt = 0
        while True:
            try:
                return await self._attempt(
                    payload, payload_id, headers, attempt, timeout, binding, url
                )
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
                await _aio.sleep(delay)

    async def _attempt(
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
            return await self._attempt_native(
                payload, payload_id, headers, attempt, timeout, binding, url
            )
        assert self._http is not None
        import httpx  # the httpx transport only (see _native)

        started = time.perf_counter()
        body, used_key = await self._seal(payload)
        sealed = time.perf_counter()
        waited = await self.rate_limiter.wait_async() if self.rate_limiter is not None else 0.0
        sending = time.perf_counter()
        url = url or self.router_url + COMPLETION_PATH
        try:
            async with self._http.stream(
                "POST",
                url,
                content=body,
                headers=headers,
                timeout=request_timeout(timeout),
                follow_redirects=False,
            ) as response:
                if response.status_code == 200:
                    data = await read_limited(
                        response, self._max_response, body_deadline(self._http)
                    )
                else:
                    data = await _read_error_body(response, body_deadline(self._http))
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
            reply = await self.decrypt_response(data, payload_id, reply_binding=binding)
            self._log_opened(payload_id, time.perf_counter() - opening)
            return reply
        details = error_details(data)
        if self._is_decrypt_failure(status, details) and await self._server_key_changed(used_key):
            raise KeyRotated
        raise self._status_error(status, details, response.headers, payload_id, len(body))

    async def _attempt_native(
        self,
        payload: dict[str, Any],
        payload_id: str,
        headers: dict[str, str],
        attempt: int,
        timeout: TimeoutTypes | NotGiven,
        binding: str | None = None,
        url: str | None = None,
    ) -> ChatCompletion:
        """One attempt on the native transport: sealed, sent, read and opened off the loop."""
        assert self._native is not None
        self._check_payload(payload)
        used_key = await self._server_public_key()
        waited = await self.rate_limiter.wait_async() if self.rate_limiter is not None else 0.0
        try:
            exchange = await self._native.post_sealed(
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
        if self._is_decrypt_failure(exchange.status, details) and await self._server_key_changed(
            used_key
        ):
            raise KeyRotated
        raise self._status_error(
            exchange.status, details, exchange.headers(), payload_id, exchange.sent_bytes
        )

    async def _server_key_changed(self, used: _core.PublicKey | None) -> bool:
        """After a 'cannot decrypt' reply, re-fetch the key once and report if it changed."""
        async with self._server_key_lock:
            if self._server_key is used:
                await self.fetch_server_public_key()
        return self._server_key != used

    # -- lifecycle ------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connection pool (if this client created it); later requests raise
        ``RuntimeError``."""
        self._closed = True
        if self._native is not None:
            self._native.close()
            return
        if not self._owns_http or self._http is None:
            return
        if self._loop is not None and self._loop is not _aio.current_loop():
            # The pool belongs to an event loop that has ended; its connections went with it.
            self._http = make_async_client(**self._http_options)
            self._loop = None
            return
        await self._http.aclose()

    async def __aenter__(self) -> SecureCompletionClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def _read_error_body(response: httpx.Response, deadline: float) -> bytes:
    try:
        return await read_limited(response, MAX_ERROR_BODY_BYTES, deadline)
    except EnvelopeError:
        return b""
