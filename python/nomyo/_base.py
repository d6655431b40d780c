"""``BaseSecureClient``: everything the async and the blocking client share that is not I/O.

URL and option checks, key handling, request headers, validation of a fetched server key
(pins, known hosts), the retry decision, mapping an error status to its exception, and
completing a decrypted reply (``_metadata``, attestation policy, :class:`ChatCompletion`).
:class:`~nomyo.SecureCompletionClient` (``httpx.AsyncClient``, coroutines) and
:class:`~nomyo.SyncSecureCompletionClient` (``httpx.Client``, blocking, thread-safe) add the
I/O on top through one pipeline (``_pipeline``), as openai-python does with its client pair.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

from ._attestation import (
    apply_attestation_policy,
    check_remembered,
)
from ._config import ClientOptions
from ._constants import (
    COMPLETION_PATH,
    KEY_SIZE,
    MAX_DETAIL_CHARS,
    MAX_RETRY_AFTER,
    PUBLIC_KEY_PATH,
    REPLY_BINDING_KEY,
    SECURITY_TIERS,
)
from ._core import PrivateKey, PublicKey
from ._ephemeral import ProcessKey, process_key
from ._exceptions import (
    APIConnectionError,
    APIError,
    ClientClosedError,
    ConfigurationError,
    EnvelopeError,
    KeyFormatError,
    NomyoError,
    RequestTooLargeError,
    SecurityError,
    error_for_status,
)
from ._keys import Password, load_private_key, read_public_key_pem, save_key_pair
from ._known_hosts import KnownHosts, normalise_fingerprints
from ._memory import SecureMemoryMode
from ._params import NotGiven, is_given
from ._receipts import ReceiptContext
from ._response import ChatCompletion, to_response
from ._retry import is_permanent_network_failure, parse_retry_after, should_retry

__all__ = ["BaseSecureClient", "KeyRotated", "error_details", "normalise_fingerprints"]

logger = logging.getLogger("nomyo")


class KeyRotated(Exception):
    """The server could not decrypt a request because its key changed (re-fetch, resend)."""


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


#: Request headers the envelope protocol sets itself; ``extra_headers`` may not replace them.
PROTOCOL_HEADERS = frozenset(
    {"x-payload-id", "x-public-key", "content-type", "content-length", "accept-encoding", "host"}
)


def _query_value(value: object) -> object:
    """A query value as the openai SDK writes it: booleans as ``true``/``false``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return [_query_value(v) for v in value]
    return value


def payload_text_size(value: object, stop_above: int | None = None) -> int:
    """The number of characters in the strings (keys and values) of a JSON-like payload.

    A lower bound of its JSON size in bytes, computed without serialising (or copying) it;
    counting stops once it exceeds ``stop_above``.
    """
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, (str, bytes, bytearray)):
            total += len(item)
        elif isinstance(item, Mapping):
            for key, child in item.items():
                if isinstance(key, str):
                    total += len(key)
                stack.append(child)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        if stop_above is not None and total > stop_above:
            break
    return total


def complete_metadata(
    value: Any, payload_id: str, processed_at: Any, algorithm: str
) -> dict[str, Any]:
    """Check the decrypted reply's shape and binding, then fill in ``_metadata``.

    A server-supplied ``attestation_verification`` is dropped: only the client's own check
    (``attestation="verify"``/``"require"``) may put one there.

    Raises:
        EnvelopeError: the reply is not a JSON object, or its ``_metadata`` is not one.
        SecurityError: the reply names another request's payload id.
    """
    if not isinstance(value, dict):
        raise EnvelopeError(f"decrypted reply is a JSON {type(value).__name__}, not an object")
    metadata = value.setdefault("_metadata", {})
    if not isinstance(metadata, dict):
        raise EnvelopeError("decrypted reply has a '_metadata' that is not an object")
    metadata.pop("attestation_verification", None)
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

    def __init__(self, options: ClientOptions) -> None:
        self.options = options
        self.router_url = options.url
        self._closed = False
        self.allow_http = options.allow_http
        self.max_retries = options.max_retries
        self.key_size = KEY_SIZE
        self.private_key: PrivateKey | None = None
        self.public_key_pem: str | None = None
        self._quoted_public_key: tuple[str, str] | None = None
        #: Seconds between rotations of the process-wide key (None: never); a client given
        #: a key of its own (``generate_keys``, ``load_keys``, ``key_dir``) keeps that one.
        self.key_rotation_interval = options.rotation_interval
        #: The policy of its secret buffers (see :func:`~nomyo._memory.secure_memory_mode`).
        self.secure_memory_mode: SecureMemoryMode = options.secure_memory_mode
        self._pins = options.pins
        known_hosts = options.known_hosts
        self._known_hosts = (
            None
            if known_hosts is None or known_hosts is False
            else KnownHosts(None if known_hosts is True else known_hosts)
        )
        self.attestation = options.attestation
        self._known_pcrs = options.remembered_pcrs
        self.expected_pcrs = options.pcr_policy
        self._receipts = options.receipt_writer
        self.trusted_aiks = options.trusted_aiks
        self.reply_binding = options.reply_binding
        self.rate_limiter = options.rate_limiter
        self._max_response = options.max_response_size
        self.max_request_size = options.max_request_size
        self._server_key: PublicKey | None = None
        self._server_key_pem: str | None = None
        self.server_key_fetches = 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.router_url}>"

    # -- keys ---------------------------------------------------------------------------

    def _set_key(self, key: PrivateKey, public_key_pem: str | None = None) -> None:
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
        key = PrivateKey.generate(self.key_size)
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
            pem = read_public_key_pem(public_key_path)
            if PublicKey.from_pem(pem) != key.public_key():
                raise KeyFormatError(
                    f"{public_key_path} does not hold the public key of {private_key_path}"
                )
        self._set_key(key, pem)

    def _public_key_header(self, private_key: PrivateKey) -> str:
        """The URL-quoted public key PEM, quoted once per key."""
        pem = self.public_key_pem or private_key.public_key().to_pem()
        cached = self._quoted_public_key
        if cached is None or cached[0] is not pem:
            cached = self._quoted_public_key = (pem, quote(pem))
        return cached[1]

    def _check_open(self) -> None:
        """Refuse to send once the client was closed (the message httpx uses).

        Raises:
            ClientClosedError: the client was closed (a ``RuntimeError`` too).
        """
        if self._closed:
            raise ClientClosedError("Cannot send a request, as the client has been closed.")

    def _require_keys(self) -> PrivateKey:
        """This client's own key, else the process-wide one (made now if needed: blocks)."""
        if self.private_key is not None:
            return self.private_key
        return self.process_key.wait().private_key

    @property
    def process_key(self) -> ProcessKey:
        """The process-wide key pair this client seals under while it has none of its own."""
        return process_key(self.key_rotation_interval, self.key_size)

    def _sealing_key(self) -> tuple[PrivateKey, str] | None:
        """The key to seal the next request under and its ``X-Public-Key`` header value.

        This client's own key, else the process-wide pair; None while that is still being
        made. A request keeps what this returns until its reply is opened, so a rotation in
        between never fails it.
        """
        if self.private_key is not None:
            return self.private_key, self._public_key_header(self.private_key)
        pair = self.process_key.current()
        return None if pair is None else (pair.private_key, pair.quoted_public_key)

    @property
    def server_public_key(self) -> PublicKey | None:
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
            raise self._not_found_hint(
                error_for_status(status, error_details(body)), PUBLIC_KEY_PATH
            )
        try:
            key = PublicKey.from_pem(text)
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

    def _bind_request(self, payload: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """With ``reply_binding="require"``: a copy of ``payload`` carrying a fresh random
        secret under :data:`REPLY_BINDING_KEY` (sealed with it), and the secret.

        Raises:
            ConfigurationError: the payload is not a non-empty dict, or already uses the key.
        """
        if self.reply_binding == "off":
            return payload, None
        self._check_payload(payload)
        if REPLY_BINDING_KEY in payload:
            raise ConfigurationError(f"{REPLY_BINDING_KEY!r} is reserved for reply binding")
        secret = secrets.token_urlsafe(32)
        return {**payload, REPLY_BINDING_KEY: secret}, secret

    def _check_request_size(self, payload: Mapping[str, Any]) -> None:
        """Refuse a payload whose text exceeds ``max_request_size`` (nothing is sealed).

        Raises:
            RequestTooLargeError: the strings of the payload hold more than
                ``max_request_size`` characters.
        """
        limit = self.max_request_size
        size = payload_text_size(payload, stop_above=limit)
        if size > limit:
            raise RequestTooLargeError(
                f"Request too large: the request's text exceeds max_request_size={limit} bytes "
                "(refused before encrypting; raise max_request_size or send less)",
                limit=limit,
                size=size,
            )

    def _completion_url(self, extra_query: Mapping[str, object] | None) -> str:
        """The secure-completion URL, with ``extra_query`` as its query string."""
        url = self.router_url + COMPLETION_PATH
        if extra_query:
            query = {
                k: _query_value(v) for k, v in extra_query.items() if v is not None and is_given(v)
            }
            if query:
                url += "?" + urlencode(query, doseq=True)
        return url

    def _request_headers(
        self,
        payload_id: str,
        api_key: str | None,
        security_tier: str | None,
        extra_headers: Mapping[str, object] | None = None,
        public_key: str | None = None,
    ) -> dict[str, str]:
        """The headers of one request; checks everything that can be checked before sending.

        ``extra_headers`` are added (or replace ``Authorization``/``X-Security-Tier``), as
        the openai SDK's are; a None or ``NOT_GIVEN`` value removes the header.
        ``public_key`` is the ``X-Public-Key`` value (default: this client's key's).

        Raises:
            ConfigurationError: an invalid security tier or payload id, or an extra header
                that the envelope protocol sets itself or whose value is not a string.
        """
        extra: dict[str, str | None] = {}
        for name, value in (extra_headers or {}).items():
            if not isinstance(name, str) or name.lower() in PROTOCOL_HEADERS:
                raise ConfigurationError(
                    f"extra_headers may not set {name!r}: the encrypted request sets it"
                )
            if value is not None and not is_given(value):
                value = None
            if value is not None and not isinstance(value, str):
                raise ConfigurationError(f"extra header {name!r} must be a string")
            extra[name.lower()] = value
        if "x-security-tier" in extra:
            security_tier = extra.pop("x-security-tier")
        if security_tier is not None and security_tier not in SECURITY_TIERS:
            raise ConfigurationError(
                f"invalid security_tier {security_tier!r}: must be one of "
                + ", ".join(SECURITY_TIERS)
            )
        if not payload_id or not (payload_id.isascii() and payload_id.isprintable()):
            raise ConfigurationError("payload_id must be non-empty printable ASCII (a header)")
        if public_key is None:
            public_key = self._public_key_header(self._require_keys())
        headers = {
            "X-Payload-ID": payload_id,
            "X-Public-Key": public_key,
            "Content-Type": "application/octet-stream",
            "Accept-Encoding": "identity",
        }
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        if security_tier:
            headers["X-Security-Tier"] = security_tier
        for name, value in extra.items():
            for existing in [k for k in headers if k.lower() == name]:
                del headers[existing]
            if value is not None:
                headers[name] = value
        return headers

    @staticmethod
    def _is_decrypt_failure(status: int, details: Mapping[str, Any] | None) -> bool:
        """A 'cannot decrypt' reply: the server key may have rotated."""
        detail = str(details.get("detail", "")) if details else ""
        return status in (400, 422, 500) and "decrypt" in detail.lower()

    def _status_error(
        self,
        status: int,
        details: dict[str, Any] | None,
        headers: Mapping[str, str],
        payload_id: str,
        sent_bytes: int | None = None,
    ) -> APIError:
        error = error_for_status(
            status, details, payload_id=payload_id, retry_after=parse_retry_after(headers)
        )
        self._not_found_hint(error, COMPLETION_PATH)
        if isinstance(error, RequestTooLargeError):
            limit = self.max_request_size
            said = f" ({error.detail})" if error.detail else ""
            sent = f" of {sent_bytes} bytes" if sent_bytes is not None else ""
            error.message = (
                f"Request too large: the router refused the encrypted request{sent} with "
                f"HTTP 413{said}. This client's limit is max_request_size={limit} bytes of "
                "text, checked before encrypting; encryption adds about a third, so set it "
                "to at most 3/4 of the router's limit, or send less."
            )
            error.args = (error.message,)
            error.limit, error.size = limit, sent_bytes
        return error

    def _not_found_hint(self, error: APIError, path: str) -> APIError:
        """A 404 names the URL asked for and what ``base_url`` should be."""
        if error.status_code == 404:
            error.message = (
                f"{error.message} ({self.router_url}{path}): base_url must be the router's "
                "root URL, e.g. https://api.nomyo.ai"
            )
            error.args = (error.message,)
        return error

    def _retries(self, max_retries: int | NotGiven) -> int:
        """This request's retry budget: ``max_retries`` when given, else the client's.

        Raises:
            ConfigurationError: a negative or non-integer ``max_retries``.
        """
        if not is_given(max_retries):
            return self.max_retries
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigurationError("max_retries must be an integer >= 0")
        return max_retries

    def _should_retry(self, exc: NomyoError, attempt: int, max_retries: int | None = None) -> bool:
        """Whether failed attempt number ``attempt`` (0-based) is worth another try.

        Network failures that can change (refused or reset connections, timeouts) and
        429/500/502/503/504 are retried up to ``max_retries`` times (default: the
        client's), except when the server asks for a wait longer than ``MAX_RETRY_AFTER``
        (e.g. the 30-minute cool-down), which raises at once. An untrusted certificate, a
        failed TLS handshake or a host name that does not resolve raise at once.
        """
        if attempt >= (self.max_retries if max_retries is None else max_retries):
            return False
        if isinstance(exc, APIConnectionError):
            return not is_permanent_network_failure(exc)
        if not isinstance(exc, APIError) or exc.status_code is None:
            return False
        if not should_retry(exc.status_code):
            return False
        return exc.retry_after is None or exc.retry_after <= MAX_RETRY_AFTER

    def _log_retry(
        self,
        payload_id: str,
        exc: NomyoError,
        attempt: int,
        delay: float,
        max_retries: int | None = None,
    ) -> None:
        logger.info(
            "request %s failed (%s); retry %d/%d in %.2fs",
            payload_id,
            type(exc).__name__,
            attempt,
            self.max_retries if max_retries is None else max_retries,
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

    def _finish_reply(
        self,
        value: Any,
        payload_id: str,
        processed_at: Any,
        algorithm: str,
        binding: str | None = None,
        receipt: ReceiptContext | None = None,
    ) -> ChatCompletion:
        """Complete ``_metadata``, check the reply binding, apply the attestation policy
        (and remembered PCR values), write the receipt, convert to ``ChatCompletion``.

        Raises:
            EnvelopeError / SecurityError: see :func:`complete_metadata`; SecurityError also
                when ``reply_binding="require"`` or ``attestation="require"`` fails.
        """
        try:
            reply = complete_metadata(value, payload_id, processed_at, algorithm)
        except (SecurityError, EnvelopeError) as exc:
            if receipt is not None:
                receipt.write(None, "off" if binding is None else "not_checked", exc)
            raise
        metadata = reply["_metadata"]
        bound = "off"
        try:
            returned = metadata.pop("reply_binding", None)
            if self.reply_binding == "require":
                bound = "failed"
                expected = (binding or "").encode("ascii")
                got = returned.encode("utf-8", "replace") if isinstance(returned, str) else b""
                # Constant time; an empty expected secret (no binding was sent) never matches.
                if not hmac.compare_digest(got, expected) or not expected:
                    raise SecurityError("the reply does not carry this request's reply binding")
                bound = "ok"
            apply_attestation_policy(
                metadata, payload_id, self.attestation, self.expected_pcrs, self.trusted_aiks
            )
            if self._known_pcrs is not None:
                check_remembered(metadata, self._known_pcrs, self.router_url, self.attestation)
        except SecurityError as exc:
            if receipt is not None:
                receipt.write(metadata, bound, exc)
            raise
        if receipt is not None:
            receipt.write(metadata, bound)
        return to_response(reply, ChatCompletion)
