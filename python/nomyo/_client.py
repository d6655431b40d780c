"""``SecureCompletionClient``: keys, envelopes and the secure-completion request."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from . import _core
from ._attestation import AttestationMode, PcrPolicy, apply_attestation_policy, check_mode
from ._constants import (
    COMPLETION_PATH,
    DEFAULT_BASE_URL,
    DEFAULT_MAX_RETRIES,
    KEY_SIZE,
    MAX_DETAIL_CHARS,
    MAX_ERROR_BODY_BYTES,
    MAX_RESPONSE_BYTES,
    MAX_RETRY_AFTER,
    PUBLIC_KEY_PATH,
    SECURITY_TIERS,
)
from ._exceptions import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    ConfigurationError,
    EnvelopeError,
    KeyFormatError,
    SecurityError,
    error_for_status,
)
from ._keys import Password, load_private_key, save_key_pair
from ._known_hosts import KnownHosts
from ._retry import parse_retry_after, retry_delay, should_retry
from ._transport import (
    TimeoutTypes,
    VerifyTypes,
    check_base_url,
    make_async_client,
    read_limited,
)

__all__ = ["SecureCompletionClient"]

logger = logging.getLogger("nomyo")
T = TypeVar("T")


def _normalise_fingerprints(pins: str | Iterable[str] | None) -> frozenset[str]:
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


class SecureCompletionClient:
    """Client of ``/v1/chat/secure_completion``: key management, envelopes, transport.

    Args:
        router_url: base URL of the NOMYO Router (HTTPS).
        allow_http: allow plain HTTP (local development only).
        secure_memory: accepted for compatibility; plaintext is always handled in locked,
            zeroed native memory.
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
        transport: an ``httpx`` transport (tests); http_client: a ready ``httpx.AsyncClient``.
        max_response_size: the largest reply accepted, in bytes.

    Raises:
        SecurityError: an ``http://`` URL without ``allow_http=True``.
    """

    def __init__(
        self,
        router_url: str = DEFAULT_BASE_URL,
        allow_http: bool = False,
        secure_memory: bool = True,
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
    ) -> None:
        if max_retries < 0:
            raise ConfigurationError("max_retries must be >= 0")
        self.router_url = check_base_url(router_url, allow_http)
        self.allow_http = allow_http
        self.max_retries = max_retries
        self.key_size = KEY_SIZE
        self.private_key: _core.PrivateKey | None = None
        self.public_key_pem: str | None = None
        self._secure_memory = secure_memory
        self._pins = _normalise_fingerprints(server_key_fingerprint)
        self._known_hosts = (
            None
            if known_hosts is None or known_hosts is False
            else KnownHosts(None if known_hosts is True else known_hosts)
        )
        self.attestation = check_mode(attestation)
        self.expected_pcrs = expected_pcrs
        self._max_response = max_response_size
        self._owns_http = http_client is None
        self._http_options: dict[str, Any] = {
            "timeout": timeout,
            "verify": verify,
            "transport": transport,
        }
        self._http = http_client or make_async_client(**self._http_options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server_key: _core.PublicKey | None = None
        self._server_key_pem: str | None = None
        self._server_key_lock = asyncio.Lock()
        self.server_key_fetches = 0

    def __repr__(self) -> str:
        return f"<SecureCompletionClient {self.router_url}>"

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

    def _require_keys(self) -> _core.PrivateKey:
        if self.private_key is None:
            raise SecurityError("no client key: call generate_keys() or load_keys() first")
        return self.private_key

    def _bind_loop(self) -> None:
        """Keep the pool and locks on the running event loop.

        Connections belong to the loop that opened them; when the client is used from a new
        loop (e.g. a second ``asyncio.run``), a fresh pool replaces the orphaned one.
        """
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._loop is not None and self._owns_http:
            self._http = make_async_client(**self._http_options)
        self._server_key_lock = asyncio.Lock()
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
        try:
            response = await self._http.get(url)
        except httpx.TimeoutException as exc:
            raise APITimeoutError(f"timed out fetching the server key: {exc}") from exc
        except httpx.TransportError as exc:
            raise APIConnectionError(f"failed to fetch the server key: {exc}") from exc
        if response.status_code != 200:
            raise error_for_status(response.status_code, _error_details(response.content))
        text = response.text
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

    async def _server_public_key(self) -> _core.PublicKey:
        if self._server_key is None:
            async with self._server_key_lock:
                if self._server_key is None:
                    await self.fetch_server_public_key()
        assert self._server_key is not None
        return self._server_key

    @property
    def server_public_key(self) -> _core.PublicKey | None:
        """The cached server key, once fetched."""
        return self._server_key

    # -- envelopes ------------------------------------------------------------------------

    @staticmethod
    async def _off_loop(fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(fn, *args))

    async def encrypt_payload(self, payload: dict[str, Any]) -> bytes:
        """Encrypt a request for the server: JSON and AES-GCM in native memory, RSA-OAEP wrap.

        Raises:
            ConfigurationError: the payload is not a non-empty dict.
            TypeError / ValueError: the payload holds something JSON cannot represent.
        """
        if not isinstance(payload, dict) or not payload:
            raise ConfigurationError("payload must be a non-empty dict")
        server_key = await self._server_public_key()
        return await self._off_loop(_core.seal_json, payload, server_key)

    async def decrypt_response(self, encrypted_response: bytes, payload_id: str) -> dict[str, Any]:
        """Open a reply sealed to our key and complete its ``_metadata``.

        Raises:
            EnvelopeError: structural problems (not JSON, missing field, bad base64, ...).
            SecurityError: decryption or authentication failed, or the reply names another
                request's payload id.
        """
        key = self._require_keys()
        if not isinstance(encrypted_response, (bytes, bytearray, memoryview)):
            raise EnvelopeError("encrypted response must be bytes")
        value, processed_at, algorithm = await self._off_loop(
            _core.open_json, bytes(encrypted_response), key, self._max_response
        )
        reply = _complete_metadata(value, payload_id, processed_at, algorithm)
        apply_attestation_policy(
            reply["_metadata"], payload_id, self.attestation, self.expected_pcrs
        )
        return reply

    # -- requests -------------------------------------------------------------------------

    async def send_secure_request(
        self,
        payload: dict[str, Any],
        payload_id: str,
        api_key: str | None = None,
        security_tier: str | None = None,
    ) -> dict[str, Any]:
        """Encrypt, send (with retries), and decrypt one chat completion.

        Raises:
            ConfigurationError: an invalid security tier (nothing is sent).
            APIError subclasses: the server's error status, after retries where retryable.
            APIConnectionError: network failure after retries.
            SecurityError / EnvelopeError: the reply cannot be trusted or read.
        """
        if security_tier is not None and security_tier not in SECURITY_TIERS:
            raise ConfigurationError(
                f"invalid security_tier {security_tier!r}: must be one of "
                + ", ".join(SECURITY_TIERS)
            )
        if not payload_id or not (payload_id.isascii() and payload_id.isprintable()):
            raise ConfigurationError("payload_id must be non-empty printable ASCII (a header)")
        private_key = self._require_keys()
        self._bind_loop()
        headers = {
            "X-Payload-ID": payload_id,
            "X-Public-Key": quote(self.public_key_pem or private_key.public_key().to_pem()),
            "Content-Type": "application/octet-stream",
        }
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        if security_tier:
            headers["X-Security-Tier"] = security_tier
        refetched = False
        attempt = 0
        while True:
            try:
                return await self._attempt(payload, payload_id, headers)
            except _KeyRotated:
                if refetched:
                    raise SecurityError(
                        "the server could not decrypt the request after a key re-fetch"
                    ) from None
                refetched = True
                continue
            except (APIConnectionError, APIError) as exc:
                retry_after = getattr(exc, "retry_after", None)
                retryable = isinstance(exc, APIConnectionError) or (
                    isinstance(exc, APIError)
                    and exc.status_code is not None
                    and should_retry(exc.status_code)
                )
                if not retryable or attempt >= self.max_retries:
                    raise
                if retry_after is not None and retry_after > MAX_RETRY_AFTER:
                    raise
                delay = retry_delay(attempt, retry_after)
                attempt += 1
                logger.warning(
                    "request %s failed (%s); retry %d/%d in %.2fs",
                    payload_id,
                    type(exc).__name__,
                    attempt,
                    self.max_retries,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _attempt(
        self, payload: dict[str, Any], payload_id: str, headers: dict[str, str]
    ) -> dict[str, Any]:
        body = await self.encrypt_payload(payload)
        used_key = self._server_key
        url = self.router_url + COMPLETION_PATH
        try:
            async with self._http.stream("POST", url, content=body, headers=headers) as response:
                if response.status_code == 200:
                    data = await read_limited(response, self._max_response)
                else:
                    data = await _read_error_body(response)
        except httpx.TimeoutException as exc:
            raise APITimeoutError(f"request timed out: {exc}", payload_id=payload_id) from exc
        except httpx.TransportError as exc:
            raise APIConnectionError(
                f"connection failed: {type(exc).__name__}: {exc}", payload_id=payload_id
            ) from exc
        if response.status_code == 200:
            return await self.decrypt_response(data, payload_id)
        details = _error_details(data)
        if await self._server_key_changed(response.status_code, details, used_key):
            raise _KeyRotated
        raise error_for_status(
            response.status_code,
            details,
            payload_id=payload_id,
            retry_after=parse_retry_after(response.headers),
        )

    async def _server_key_changed(
        self, status: int, details: dict[str, Any] | None, used: _core.PublicKey | None
    ) -> bool:
        """After a 'cannot decrypt' reply, re-fetch the key once and report if it changed."""
        detail = str(details.get("detail", "")) if details else ""
        if status not in (400, 422, 500) or "decrypt" not in detail.lower():
            return False
        async with self._server_key_lock:
            if self._server_key is used:
                await self.fetch_server_public_key()
        return self._server_key != used

    # -- lifecycle ------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connection pool (if this client created it)."""
        if self._owns_http:
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


class _KeyRotated(Exception):
    """The server could not decrypt a request because its key changed."""


async def _read_error_body(response: httpx.Response) -> bytes:
    try:
        return await read_limited(response, MAX_ERROR_BODY_BYTES)
    except EnvelopeError:
        return b""


def _error_details(body: bytes) -> dict[str, Any] | None:
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


def _complete_metadata(
    value: Any, payload_id: str, processed_at: Any, algorithm: str
) -> dict[str, Any]:
    """Check the decrypted reply's shape and binding, then fill in ``_metadata``."""
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
