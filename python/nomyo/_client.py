"""``SecureCompletionClient``: the async secure-completion client.

A thin shell over the pipeline (``_pipeline``): it drives the flows awaiting each effect
on the running loop (asyncio, uvloop or trio); its transport keeps its pool on that loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._aio import AsyncLock, new_lock
from ._effects import Flow, T, adrive
from ._lifecycle import AsyncCloseable
from ._pipeline import PipelineClient
from ._response import ChatCompletion
from ._signature import takes_arguments_of

if TYPE_CHECKING:
    import httpx  # noqa: F401  (the generic arguments name it)

__all__ = ["SecureCompletionClient"]


class SecureCompletionClient(
    PipelineClient["httpx.AsyncBaseTransport", "httpx.AsyncClient"], AsyncCloseable
):
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
        expected_pcrs: PCR values the quote must contain, ``{"sha256": {0: "<hex>"}}``, or
            ``"tofu"``: remember each router's first verified values in the known-PCRs file
            and refuse (``require``) or report (``verify``) a later quote with other values,
            naming the changed PCRs; ``nomyo attest trust URL`` accepts a change.
        known_pcrs: the known-PCRs file of ``"tofu"`` (implies it; default
            ``$NOMYO_KNOWN_PCRS``, else ``known_pcrs`` beside the known-hosts file).
        receipts: append one JSON line per answered request to this file (0600; never
            plaintext, a key or a token): key fingerprints, payload id, model, tier, SHA-256
            of the sealed request and reply, the TPM block and nomyo's checks, streamed and
            refused replies marked. None: ``$NOMYO_RECEIPTS`` if set; False: none. Check
            them later with ``nomyo verify`` (docs/security.md, "Receipts"). A receipt that
            cannot be written (a symbolic link, another user's or a group-writable file)
            fails the request with ``SecurityError``/``ConfigurationError``.
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
        key_rotation_interval: until ``generate_keys``/``load_keys`` gives the client a key
            of its own, it seals under the process-wide pair, made once per process and
            rotated every this many seconds (default ``$NOMYO_KEY_ROTATION``, else 24 hours;
            None: never).

    Raises:
        SecurityError: an ``http://`` URL without ``allow_http=True``.
    """

    _asynchronous = True
    _server_key_lock: AsyncLock

    @staticmethod
    def _new_lock() -> AsyncLock:
        return new_lock()

    async def _drive(self, flow: Flow[T]) -> T:
        return await adrive(flow, self._transport)

    async def fetch_server_public_key(self) -> str:
        """Fetch, validate and cache the server's public key; returns its PEM.

        Raises:
            SecurityError: the key does not match a pinned fingerprint.
            KeyFormatError: the server sent no valid RSA public key.
            APIError / APIConnectionError: the fetch failed.
        """
        return await self._drive(self._fetch_key_flow())

    async def encrypt_payload(self, payload: dict[str, Any]) -> bytes:
        """Encrypt a request for the server: JSON and AES-GCM in native memory, RSA-OAEP wrap.

        Raises:
            ConfigurationError: the payload is not a non-empty dict.
            TypeError / ValueError: the payload holds something JSON cannot represent.
        """
        return await self._drive(self._seal_flow(payload))

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
        return await self._drive(self._open_flow(encrypted_response, payload_id, reply_binding))

    @takes_arguments_of(PipelineClient._request_flow)
    async def send_secure_request(self, *args: Any, **kwargs: Any) -> ChatCompletion:
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
        return await self._drive(self._request_flow(*args, **kwargs))

    async def aclose(self) -> None:
        """Close the connection pool (if this client created it); later requests raise
        ``RuntimeError``."""
        self._closed = True
        await self._transport.aclose()
