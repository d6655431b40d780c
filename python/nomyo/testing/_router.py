"""The development router: a real HTTP(S) server speaking the server side of PROTOCOL.md."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import ssl
import threading
import time
import urllib.parse
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from nomyo._constants import REPLY_BINDING_KEY
from nomyo._exceptions import EnvelopeError, KeyFormatError, SecurityError
from nomyo._http_server import Connections, HTTPRequest, HTTPResponse, Limits
from nomyo._lifecycle import Closeable

from .._core import PrivateKey, PublicKey, memory_protection_info, open_json, seal_json
from ._backend import Backend, BackendError, EchoBackend, UpstreamBackend, check_chat_request
from ._faults import Fault, FaultQueue

__all__ = ["AttestationProvider", "DevRouter", "RecordedRequest", "RouterThread"]

logger = logging.getLogger("nomyo.testing")

KEY_PATH = "/pki/public_key"
SECURE_PATH = "/v1/chat/secure_completion"
TIERS = ("standard", "high", "maximum")
DEFAULT_MAX_BODY = 64 * 1024 * 1024
_MAX_PAYLOAD_ID = 128
_MAX_REPLY_BINDING = 256
#: Client keys whose latest reply is kept for the ``replay_reply`` fault.
_MAX_REMEMBERED_REPLIES = 64
_SECRET_HEADERS = frozenset({"authorization", "x-public-key", "cookie", "proxy-authorization"})

_R = TypeVar("_R", bound="DevRouter")

#: Called with the request's payload id; returns the ``_metadata.tpm_attestation`` block.
AttestationProvider = Callable[[str], dict[str, Any]]


class _Reject(Exception):
    """An error reply for the request being handled (``body``: a JSON error object to send
    instead of ``{"detail": ...}``)."""

    def __init__(self, status: int, detail: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.body = body

    def response(self) -> HTTPResponse:
        if self.body is None:
            return HTTPResponse.error(self.status, self.detail)
        return HTTPResponse(self.status, json.dumps(self.body).encode(), "application/json")


@dataclass
class RecordedRequest:
    """One secure-completion request as the router saw it.

    Attributes:
        payload_id: the ``X-Payload-ID`` header (None when missing).
        headers: every request header, names lower case.
        body: the decrypted request JSON (None when it was not decrypted).
        status: the status answered (None when the connection was dropped).
        security_tier: the ``X-Security-Tier`` header, if any.
        fault: the fault applied to this request, if any.
        envelope_sha256: SHA-256 (hex) of the request body as received (ciphertext).
        query: the request URL's query string (without ``?``; empty when none).
    """

    payload_id: str | None
    headers: dict[str, str]
    body: Any = None
    status: int | None = None
    security_tier: str | None = None
    fault: Fault | None = None
    envelope_sha256: str | None = None
    query: str = ""

    def __repr__(self) -> str:
        shown = sorted(k for k in self.headers if k not in _SECRET_HEADERS)
        return (
            f"RecordedRequest(payload_id={self.payload_id!r}, status={self.status!r}, "
            f"security_tier={self.security_tier!r}, headers={shown}, "
            f"body={'<decrypted>' if self.body is not None else None})"
        )


@dataclass
class _Outcome:
    """What handling a secure request produced, before faults alter the reply."""

    response: HTTPResponse
    record: RecordedRequest
    client_key: PublicKey | None = None
    reply: dict[str, Any] | None = field(default=None, repr=False)


class DevRouter:
    """A development NOMYO router on asyncio + h11 (plain HTTP, or HTTPS with a cert and key).

    Args:
        host: address to bind.
        port: port to bind; 0 picks a free one (see ``url`` after ``start()``).
        api_keys: accepted bearer API keys; when set, requests without one get 401.
        key: the server's private key; a new ``key_bits`` key is generated when None.
        key_bits: size of generated keys (2048 keeps tests fast).
        tls_cert: path of the PEM certificate chain; with ``tls_key`` the router speaks HTTPS.
        tls_key: path of the PEM private key of ``tls_cert``.
        upstream: base URL of an OpenAI-compatible server (``http://host:port/v1``) to
            forward requests to; the deterministic echo backend is used when None.
        attestation_provider: returns the TPM attestation block for a payload id; without it
            the router reports no TPM and refuses the ``maximum`` tier with 503.
        reply_binding: support the reply-binding extension (docs/security.md): remove
            ``_nomyo_reply_binding`` from the decrypted request before inference and return
            it as ``_metadata.reply_binding`` in the sealed reply. False acts like a router
            without the extension (the key is left in the request).
        max_body: largest accepted request body (larger -> 413).
        request_timeout: seconds allowed to receive one request.
        idle_timeout: seconds an idle keep-alive connection is kept.
        max_recorded: how many requests ``requests`` keeps.

    Attributes:
        faults: faults applied to the next secure-completion requests.
        key_faults: faults applied to the next public-key requests.
        requests: the latest secure-completion requests (``RecordedRequest``).
        key_fetches: number of ``GET /pki/public_key`` requests.
        secure_requests: number of ``POST /v1/chat/secure_completion`` requests.
        connections: number of TCP connections accepted.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_keys: Iterable[str] | None = None,
        key: PrivateKey | None = None,
        key_bits: int = 4096,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        upstream: str | None = None,
        attestation_provider: AttestationProvider | None = None,
        reply_binding: bool = True,
        max_body: int = DEFAULT_MAX_BODY,
        request_timeout: float = 30.0,
        idle_timeout: float = 60.0,
        max_recorded: int = 1000,
    ) -> None:
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if isinstance(api_keys, str):
            raise TypeError("api_keys must be a collection of keys, not one string")
        self.host = host
        self.port = port
        self._api_keys = tuple(api_keys) if api_keys is not None else None
        self._key_bits = key.key_size if key is not None else key_bits
        self._key = key if key is not None else PrivateKey.generate(key_bits)
        self._tls_cert = tls_cert
        self._tls_key = tls_key
        self.upstream = upstream
        self.attestation_provider = attestation_provider
        self.reply_binding = reply_binding
        self.limits = Limits(
            max_body=max_body,
            request_timeout=request_timeout,
            idle_timeout=idle_timeout,
            max_buffered_bytes=max(256 * 1024 * 1024, 2 * max_body),
        )
        self.faults = FaultQueue()
        self.key_faults = FaultQueue()
        self.requests: deque[RecordedRequest] = deque(maxlen=max_recorded)
        self.key_fetches = 0
        self.secure_requests = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._backend: Backend | None = None
        self._connections = Connections(
            "dev router", self.limits, server_name="nomyo-dev-router", logger=logger
        )
        self._stopped: asyncio.Event | None = None
        self._memory_protection: dict[str, Any] | None = None
        self._earlier_replies: OrderedDict[str, bytes] = OrderedDict()
        self._strangers: dict[int, PrivateKey] = {}

    # -- keys ---------------------------------------------------------------------------

    @property
    def public_key(self) -> PublicKey:
        """The server's current public key."""
        return self._key.public_key()

    @property
    def public_key_pem(self) -> str:
        """The server's current public key as SPKI PEM."""
        return self.public_key.to_pem()

    def rotate_key(self) -> PublicKey:
        """Replace the server key with a new one (same size); returns the new public key."""
        self._key = PrivateKey.generate(self._key_bits)
        logger.info("server key rotated: %s", self._key.public_key().fingerprint())
        return self._key.public_key()

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL of the running router, e.g. ``http://127.0.0.1:41234``."""
        if self._server is None:
            raise RuntimeError("the router is not running; call start() first")
        scheme = "https" if self._tls_cert is not None else "http"
        host = _client_host(self.host)
        return f"{scheme}://{host}:{self.port}"

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._server is not None

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self._tls_cert is None or self._tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._tls_cert, self._tls_key)
        return context

    async def start(self: _R) -> _R:
        """Bind and start serving; returns self."""
        if self._server is not None:
            raise RuntimeError("the router is already running")
        context = self._ssl_context()
        self._memory_protection = dict(memory_protection_info())
        self._backend = UpstreamBackend(self.upstream) if self.upstream else EchoBackend()
        self._stopped = asyncio.Event()
        try:
            self._server = await asyncio.start_server(
                self._on_connection,
                self.host,
                self.port,
                ssl=context,
                ssl_handshake_timeout=10.0 if context is not None else None,
                limit=self.limits.max_header_bytes,
            )
        except BaseException:
            await self._backend.aclose()
            self._backend = None
            raise
        sockets = self._server.sockets
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        logger.info(
            "dev router listening on %s (key %s, backend %r)",
            self.url,
            self.public_key.fingerprint(),
            self._backend,
        )
        return self

    async def stop(self) -> None:
        """Stop listening, close every connection and release the backend."""
        server, self._server = self._server, None
        if server is None:
            return
        await self._connections.close(server)
        if self._backend is not None:
            await self._backend.aclose()
            self._backend = None
        if self._stopped is not None:
            self._stopped.set()
        logger.info("dev router stopped")

    async def serve_forever(self) -> None:
        """Start (if needed) and serve until ``stop()`` is called or the task is cancelled."""
        if self._server is None:
            await self.start()
        assert self._stopped is not None
        try:
            await self._stopped.wait()
        finally:
            await self.stop()

    async def __aenter__(self: _R) -> _R:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def run_in_thread(self, timeout: float = 30.0) -> RouterThread:
        """Run the router on an event loop in a daemon thread; returns once it listens."""
        return RouterThread(self, timeout=timeout)

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "stopped"
        return f"DevRouter({where}, key={self.public_key.fingerprint()[:23]}...)"

    # -- connections --------------------------------------------------------------------

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        await self._connections.serve(reader, writer, self._handle)

    async def _handle(self, request: HTTPRequest) -> HTTPResponse:
        path = request.path
        if path == KEY_PATH:
            if request.method not in ("GET", "HEAD"):
                return _method_not_allowed("GET")
            response = await self._public_key(request)
        elif path == SECURE_PATH:
            if request.method != "POST":
                return _method_not_allowed("POST")
            response = await self._secure_completion(request)
        else:
            response = HTTPResponse.error(404, "Not Found")
        logger.info(
            "%s %s -> %s", request.method, path, "dropped" if response.drop else response.status
        )
        return response

    # -- GET /pki/public_key ------------------------------------------------------------

    async def _public_key(self, request: HTTPRequest) -> HTTPResponse:
        self.key_fetches += 1
        fault = self.key_faults.pop()
        if fault is not None:
            early = await self._early_fault(fault)
            if early is not None:
                return early
            if fault.rotate_key:
                await asyncio.to_thread(self.rotate_key)
        pem = self.public_key_pem.encode("ascii")
        response = HTTPResponse(200, pem, "text/plain; charset=utf-8")
        if fault is not None:
            if fault.garbage_reply is not None:
                response.body = fault.garbage_reply
            response.trickle = fault.slow_body
        return response

    # -- POST /v1/chat/secure_completion -------------------------------------------------

    async def _secure_completion(self, request: HTTPRequest) -> HTTPResponse:
        self.secure_requests += 1
        fault = self.faults.pop()
        headers: dict[str, str] = {}
        for name, value in request.headers:
            headers.setdefault(name, value)
        record = RecordedRequest(
            payload_id=headers.get("x-payload-id"),
            headers=headers,
            security_tier=headers.get("x-security-tier"),
            fault=fault,
            envelope_sha256=hashlib.sha256(request.body or b"").hexdigest(),
            query=request.target.partition("?")[2],
        )
        self.requests.append(record)
        if fault is not None:
            early = await self._early_fault(fault)
            if early is not None:
                record.status = None if early.drop else early.status
                return early
            if fault.rotate_key:
                await asyncio.to_thread(self.rotate_key)
        try:
            outcome = await self._process(request, record)
        except _Reject as exc:
            record.status = exc.status
            return exc.response()
        response = outcome.response
        genuine = bytes(response.body)  # a sealed envelope: ciphertext (no copy for bytes)
        if fault is not None and outcome.client_key is not None and outcome.reply is not None:
            if fault.garbage_reply is not None:
                response.body = fault.garbage_reply
            elif fault.wrong_key_reply:
                stranger = await self._stranger(outcome.client_key.key_size)
                response.body = seal_json(outcome.reply, stranger, processed_at=int(time.time()))
            elif fault.tamper_reply:
                response.body = _tamper(genuine)
            elif fault.replay_reply:
                response.body = self._replayed(record, genuine)
        if response.status == 200 and response.body is genuine:
            self._remember_reply(record, genuine)
        if fault is not None:
            response.trickle = fault.slow_body
        record.status = response.status
        return response

    async def _stranger(self, bits: int) -> PublicKey:
        """A key that is not the client's, of its size (so only the decryption can fail);
        made once per size."""
        key = self._strangers.get(bits)
        if key is None:
            key = await asyncio.to_thread(PrivateKey.generate, bits)
            self._strangers[bits] = key
        return key.public_key()

    def _remember_reply(self, record: RecordedRequest, sealed: bytes) -> None:
        """Keep the latest genuine sealed reply per client key (for ``replay_reply``)."""
        client = record.headers.get("x-public-key")
        if client is None:
            return
        self._earlier_replies.pop(client, None)
        self._earlier_replies[client] = sealed
        while len(self._earlier_replies) > _MAX_REMEMBERED_REPLIES:
            self._earlier_replies.popitem(last=False)

    def _replayed(self, record: RecordedRequest, sealed: bytes) -> bytes:
        """The earlier reply to the same client key (``sealed`` itself when none)."""
        client = record.headers.get("x-public-key")
        earlier = self._earlier_replies.get(client) if client is not None else None
        return sealed if earlier is None else earlier

    def has_earlier_reply(self, quoted_public_key: str) -> bool:
        """True when a ``replay_reply`` fault would send this client key an earlier reply
        (``quoted_public_key``: the request's ``X-Public-Key`` header as sent)."""
        return quoted_public_key in self._earlier_replies

    async def _early_fault(self, fault: Fault) -> HTTPResponse | None:
        """Apply the faults that act before the request is processed."""
        if fault.delay > 0:
            await asyncio.sleep(fault.delay)
        if fault.drop_connection:
            return HTTPResponse(0, drop=True)
        if fault.status is not None:
            if fault.body is not None:
                response = HTTPResponse(fault.status, fault.body, "application/json")
            else:
                detail = fault.detail if fault.detail is not None else "injected fault"
                response = HTTPResponse.error(fault.status, detail)
            if fault.retry_after is not None:
                response.headers.append(("Retry-After", fault.retry_after))
            response.trickle = fault.slow_body
            return response
        return None

    async def _process(self, request: HTTPRequest, record: RecordedRequest) -> _Outcome:
        headers = record.headers
        self._check_api_key(headers.get("authorization"))
        payload_id = record.payload_id
        if not payload_id:
            raise _Reject(400, "Missing X-Payload-ID header")
        if len(payload_id) > _MAX_PAYLOAD_ID or not payload_id.isprintable():
            raise _Reject(400, "Invalid X-Payload-ID header")
        client_key = _client_key(headers.get("x-public-key"))
        content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type != "application/octet-stream":
            raise _Reject(400, "Content-Type must be application/octet-stream")
        tier = record.security_tier
        if tier is not None and tier not in TIERS:
            raise _Reject(400, f"Invalid X-Security-Tier: must be one of {', '.join(TIERS)}")
        if tier == "maximum" and self.attestation_provider is None:
            raise _Reject(503, "Security tier 'maximum' requires TPM attestation, not available")
        if not request.body:
            raise _Reject(400, "Empty request body")
        try:
            payload, _, _ = open_json(request.body, self._key)
        except SecurityError:
            raise _Reject(
                400, "Decryption failed: the payload was not encrypted to this server key"
            ) from None
        except ValueError as exc:  # EnvelopeError, or a plaintext that is not JSON
            kind = "invalid envelope" if isinstance(exc, EnvelopeError) else "invalid payload"
            raise _Reject(400, str(exc) or kind) from None
        binding = self._take_reply_binding(payload)
        record.body = payload
        _check_payload(payload)
        attestation = await self._attestation(payload_id, tier)
        assert self._backend is not None
        try:
            reply = await self._backend.complete(payload, payload_id)
        except BackendError as exc:
            raise _Reject(exc.status, exc.detail) from None
        reply["_metadata"] = {
            "payload_id": payload_id,
            "security_tier": tier or "standard",
            "response_status": "success",
            "memory_protection": dict(self._memory_protection or {}),
            "cuda_device": {"available": False},
            "tpm_attestation": attestation,
        }
        if binding is not None:
            reply["_metadata"]["reply_binding"] = binding
        try:
            sealed = seal_json(reply, client_key, processed_at=int(time.time()))
        except (TypeError, ValueError):
            raise _Reject(502, "backend reply cannot be encoded as JSON") from None
        response = HTTPResponse(200, sealed, "application/octet-stream")
        return _Outcome(response=response, record=record, client_key=client_key, reply=reply)

    def _take_reply_binding(self, payload: Any) -> str | None:
        """Remove the reply-binding secret from the request (it never reaches inference)."""
        if not self.reply_binding or not isinstance(payload, dict):
            return None
        value = payload.pop(REPLY_BINDING_KEY, None)
        if value is None:
            return None
        if not isinstance(value, str) or not 0 < len(value) <= _MAX_REPLY_BINDING:
            raise _Reject(400, f"Invalid {REPLY_BINDING_KEY}: must be a string of 1-256 chars")
        return value

    def _check_api_key(self, authorization: str | None) -> None:
        if self._api_keys is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _Reject(401, "Missing API key")
        matched = False
        for candidate in self._api_keys:
            matched |= hmac.compare_digest(candidate.encode("utf-8"), token.encode("utf-8"))
        if not matched:
            raise _Reject(401, "Invalid API key")

    async def _attestation(self, payload_id: str, tier: str | None) -> dict[str, Any]:
        provider = self.attestation_provider
        if provider is None:
            return {"is_available": False}
        try:
            block = await asyncio.to_thread(provider, payload_id)
        except Exception:
            logger.exception("attestation provider failed")
            block = {"is_available": False}
        if tier == "maximum" and not block.get("is_available"):
            raise _Reject(503, "Security tier 'maximum' requires TPM attestation, not available")
        return block


def _client_host(host: str) -> str:
    """The address a client uses to reach a server bound to ``host`` (URL form)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host or "127.0.0.1"
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    return f"[{address}]" if address.version == 6 else str(address)


def _method_not_allowed(allowed: str) -> HTTPResponse:
    response = HTTPResponse.error(405, "Method Not Allowed")
    response.headers.append(("Allow", allowed))
    return response


def _client_key(quoted: str | None) -> PublicKey:
    if not quoted:
        raise _Reject(400, "Missing X-Public-Key header")
    try:
        return PublicKey.from_pem(urllib.parse.unquote(quoted))
    except KeyFormatError:
        raise _Reject(400, "Invalid X-Public-Key: not an RSA public key of 2048+ bits") from None


def _check_payload(payload: Any) -> None:
    """Refuse a malformed request as OpenAI does (400 in OpenAI's error shape)."""
    try:
        check_chat_request(payload)
    except BackendError as exc:
        raise _Reject(exc.status, exc.detail, exc.openai_body()) from None


def _tamper(envelope: bytes) -> bytes:
    """Flip one bit of the ciphertext of a sealed envelope (keeping it well-formed)."""
    try:
        document = json.loads(envelope)
        encrypted = document["encrypted_payload"]
        ciphertext = bytearray(base64.b64decode(encrypted["ciphertext"]))
        if ciphertext:
            ciphertext[0] ^= 0x01
        else:  # empty plaintext: corrupt the tag instead
            tag = bytearray(base64.b64decode(encrypted["tag"]))
            tag[0] ^= 0x01
            encrypted["tag"] = base64.b64encode(bytes(tag)).decode("ascii")
        encrypted["ciphertext"] = base64.b64encode(bytes(ciphertext)).decode("ascii")
        return json.dumps(document).encode("utf-8")
    except (ValueError, KeyError, TypeError, binascii.Error):
        return envelope[:-1] + bytes([envelope[-1] ^ 0x01]) if envelope else envelope


class RouterThread(Closeable):
    """A DevRouter running on its own event loop in a daemon thread (for synchronous code).

    Use as a context manager, or call ``stop()``. ``url``, ``router`` (its ``faults``,
    ``requests`` and counters) are usable from the calling thread.
    """

    def __init__(self, router: DevRouter, *, timeout: float = 30.0) -> None:
        self.router = router
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="nomyo-dev-router", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the dev router did not start in time")
        if self._error is not None:
            self._thread.join(timeout)
            raise self._error

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            try:
                loop.run_until_complete(self.router.start())
            except BaseException as exc:  # re-raised in the starting thread
                self._error = exc
                return
            finally:
                self._ready.set()
            loop.run_until_complete(self.router.serve_forever())
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    @property
    def url(self) -> str:
        """Base URL of the router."""
        return self.router.url

    def is_alive(self) -> bool:
        """True while the router's thread runs."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the router and wait for the thread to end."""
        loop = self._loop
        if loop is not None and self._thread.is_alive() and not loop.is_closed():
            future = asyncio.run_coroutine_threadsafe(self.router.stop(), loop)
            with contextlib.suppress(Exception):
                future.result(timeout)
        self._thread.join(timeout)

    def close(self) -> None:
        """:meth:`stop` (``with`` calls it)."""
        self.stop()

    def __repr__(self) -> str:
        return f"RouterThread({self.router!r})"
