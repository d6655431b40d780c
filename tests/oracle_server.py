"""Independent oracle for the NOMYO secure-completion protocol (PROTOCOL.md sections 1-3).

Standard library plus ``cryptography`` only; never imports ``nomyo``. Provides
``open_envelope``/``seal_envelope`` and ``OracleServer``, an echoing test router.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import ssl
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socket import socket
from types import TracebackType
from typing import Any, final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = "1.0"
ALGORITHM = "hybrid-aes256-rsa4096"
KEY_ALGORITHM = "RSA-OAEP-SHA256"
PAYLOAD_ALGORITHM = "AES-256-GCM"
ENVELOPE_FIELDS = (
    "version",
    "algorithm",
    "encrypted_payload",
    "encrypted_aes_key",
    "key_algorithm",
    "payload_algorithm",
)
OPTIONAL_FIELDS = ("processed_at",)
PAYLOAD_FIELDS = ("ciphertext", "nonce", "tag")
SECURE_PATH = "/v1/chat/secure_completion"
KEY_PATH = "/pki/public_key"
TIERS = ("standard", "high", "maximum")


class EnvelopeError(ValueError):
    """Structural problem with an envelope (not JSON, missing field, bad base64...)."""


class EnvelopeAuthError(Exception):
    """Key unwrap or AES-GCM authentication failed."""


def _oaep() -> padding.OAEP:
    return padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise EnvelopeError(f"{name} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EnvelopeError(f"{name} is not valid base64") from exc


def _parse_envelope(envelope_bytes: bytes) -> dict[str, Any]:
    try:
        envelope = json.loads(envelope_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EnvelopeError("envelope is not UTF-8 JSON") from exc
    if not isinstance(envelope, dict):
        raise EnvelopeError("envelope is not a JSON object")
    missing = [f for f in ENVELOPE_FIELDS if f not in envelope]
    if missing:
        raise EnvelopeError(f"envelope misses fields: {', '.join(missing)}")
    unknown = sorted(set(envelope) - set(ENVELOPE_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise EnvelopeError(f"envelope has unknown fields: {', '.join(unknown)}")
    return envelope


def _check_constants(envelope: dict[str, Any]) -> None:
    expected = {
        "version": VERSION,
        "algorithm": ALGORITHM,
        "key_algorithm": KEY_ALGORITHM,
        "payload_algorithm": PAYLOAD_ALGORITHM,
    }
    for name, value in expected.items():
        if envelope[name] != value:
            raise EnvelopeError(f"unsupported {name}: {envelope[name]!r}")


def _payload_parts(envelope: dict[str, Any]) -> tuple[bytes, bytes, bytes]:
    payload = envelope["encrypted_payload"]
    if not isinstance(payload, dict):
        raise EnvelopeError("encrypted_payload must be an object")
    missing = [f for f in PAYLOAD_FIELDS if f not in payload]
    if missing:
        raise EnvelopeError(f"encrypted_payload misses fields: {', '.join(missing)}")
    if set(payload) - set(PAYLOAD_FIELDS):
        raise EnvelopeError("encrypted_payload has unknown fields")
    ciphertext = _unb64(payload["ciphertext"], "ciphertext")
    nonce = _unb64(payload["nonce"], "nonce")
    tag = _unb64(payload["tag"], "tag")
    if len(nonce) != 12:
        raise EnvelopeError(f"nonce must be 12 bytes, got {len(nonce)}")
    if len(tag) != 16:
        raise EnvelopeError(f"tag must be 16 bytes, got {len(tag)}")
    return ciphertext, nonce, tag


def open_envelope(envelope_bytes: bytes, private_key: rsa.RSAPrivateKey) -> bytes:
    """Open an envelope sealed to ``private_key``; return the plaintext bytes.

    Raises EnvelopeError on structural problems, EnvelopeAuthError on crypto failure.
    """
    envelope = _parse_envelope(envelope_bytes)
    _check_constants(envelope)
    ciphertext, nonce, tag = _payload_parts(envelope)
    wrapped = _unb64(envelope["encrypted_aes_key"], "encrypted_aes_key")
    modulus_bytes = (private_key.key_size + 7) // 8
    if len(wrapped) != modulus_bytes:
        raise EnvelopeError(f"encrypted_aes_key must be {modulus_bytes} bytes, got {len(wrapped)}")
    try:
        aes_key = private_key.decrypt(wrapped, _oaep())
        if len(aes_key) != 32:
            raise EnvelopeAuthError("decryption failed")
        return AESGCM(aes_key).decrypt(nonce, ciphertext + tag, None)
    except (ValueError, InvalidTag) as exc:
        raise EnvelopeAuthError("decryption failed") from exc


def seal_envelope(
    plaintext_bytes: bytes, public_key: rsa.RSAPublicKey, processed_at: int | None = None
) -> bytes:
    """Seal plaintext to ``public_key`` with a fresh AES key and nonce (PROTOCOL.md 3)."""
    aes_key = secrets.token_bytes(32)
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(aes_key).encrypt(nonce, plaintext_bytes, None)
    envelope: dict[str, Any] = {
        "version": VERSION,
        "algorithm": ALGORITHM,
        "encrypted_payload": {
            "ciphertext": _b64(sealed[:-16]),
            "nonce": _b64(nonce),
            "tag": _b64(sealed[-16:]),
        },
        "encrypted_aes_key": _b64(public_key.encrypt(aes_key, _oaep())),
        "key_algorithm": KEY_ALGORITHM,
        "payload_algorithm": PAYLOAD_ALGORITHM,
    }
    if processed_at is not None:
        envelope["processed_at"] = processed_at
    return json.dumps(envelope).encode("utf-8")


def public_key_pem(key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> str:
    """SPKI PEM text of a key's public half."""
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


class RequestRejectedError(Exception):
    """An HTTP error reply: status and detail."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                parts = [p.get("text", "") for p in content if isinstance(p, dict)]
                return "".join(str(p) for p in parts)
            return "" if content is None else str(content)
    return ""


def echo_completion(request: dict[str, Any], payload_id: str, tier: str | None) -> dict[str, Any]:
    """The OpenAI chat.completion that echoes the last user message."""
    text = _last_user_text(request["messages"])
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in request["messages"])
    completion_tokens = len(text.split())
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "_metadata": {
            "payload_id": payload_id,
            "security_tier": tier or "standard",
            "response_status": "success",
            "tpm_attestation": {"is_available": False},
        },
    }


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler; every reply carries Content-Length."""

    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 30

    def log_message(self, fmt: str, *args: Any) -> None:
        """Stay quiet."""

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _reply_json(self, status: int, obj: Any) -> None:
        self._reply(status, json.dumps(obj).encode("utf-8"), "application/json")

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True  # the body cannot be skipped: drop the connection
            raise RequestRejectedError(400, "Content-Length required")
        return self.rfile.read(int(length))

    def do_GET(self) -> None:
        """Serve the server public key."""
        if self.path != KEY_PATH:
            self._reply_json(404, {"detail": "Not Found"})
            return
        pem = public_key_pem(self.server.oracle.private_key).encode("ascii")
        self._reply(200, pem, "text/plain; charset=utf-8")

    def do_POST(self) -> None:
        """Serve a secure completion."""
        try:
            body = self._read_body()
            if self.path != SECURE_PATH:
                raise RequestRejectedError(404, "Not Found")
            sealed = self.server.oracle.handle_secure(self._lower_headers(), body)
        except RequestRejectedError as exc:
            self.server.oracle.record_rejection(self._lower_headers(), exc)
            self._reply_json(exc.status, {"detail": exc.detail})
            return
        self._reply(200, sealed, "application/octet-stream")

    def _lower_headers(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers.items()}


class _Server(ThreadingHTTPServer):
    """Threading server that does the TLS handshake in the worker thread."""

    daemon_threads = True
    oracle: OracleServer
    ssl_context: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Wrap the connection in TLS when configured, then handle it."""
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        assert isinstance(request, socket)
        request.settimeout(_Handler.timeout)
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        with tls:
            super().finish_request(tls, client_address)


def _client_key(headers: dict[str, str]) -> rsa.RSAPublicKey:
    quoted = headers.get("x-public-key")
    if not quoted:
        raise RequestRejectedError(400, "X-Public-Key header required")
    try:
        key = serialization.load_pem_public_key(urllib.parse.unquote(quoted).encode("utf-8"))
    except ValueError as exc:
        raise RequestRejectedError(400, "X-Public-Key is not a PEM public key") from exc
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
        raise RequestRejectedError(400, "X-Public-Key must be an RSA key of at least 2048 bits")
    return key


def _check_headers(headers: dict[str, str], api_key: str | None) -> str:
    """Validate request headers; return the payload id."""
    if api_key is not None and headers.get("authorization") != f"Bearer {api_key}":
        raise RequestRejectedError(401, "Invalid API key")
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/octet-stream":
        raise RequestRejectedError(400, "Content-Type must be application/octet-stream")
    payload_id = headers.get("x-payload-id", "")
    try:
        uuid.UUID(payload_id)
    except ValueError as exc:
        raise RequestRejectedError(400, "X-Payload-ID must be a UUID") from exc
    tier = headers.get("x-security-tier")
    if tier is not None and tier not in TIERS:
        raise RequestRejectedError(400, f"invalid X-Security-Tier: {tier}")
    return payload_id


def _decode_request(plaintext: bytes) -> dict[str, Any]:
    try:
        request = json.loads(plaintext.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestRejectedError(400, "decrypted payload is not UTF-8 JSON") from exc
    if not isinstance(request, dict):
        raise RequestRejectedError(400, "decrypted payload is not a JSON object")
    if not isinstance(request.get("model"), str) or not isinstance(request.get("messages"), list):
        raise RequestRejectedError(400, "payload needs 'model' (string) and 'messages' (list)")
    if request.get("stream"):
        raise RequestRejectedError(400, "Streaming is not supported for encrypted inference")
    return request


@final
class OracleServer:
    """Echoing secure-completion router on an ephemeral 127.0.0.1 port (optionally TLS).

    ``requests`` lists every accepted request as {"headers", "body", "envelope"}
    (header names lower-cased); ``rejections`` lists refused ones.
    """

    def __init__(
        self,
        key_bits: int = 4096,
        ssl_context: ssl.SSLContext | None = None,
        api_key: str | None = None,
    ) -> None:
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=key_bits)
        self.ssl_context = ssl_context
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self.rejections: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:PORT."""
        if self._httpd is None:
            raise RuntimeError("server not started")
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def public_key_pem(self) -> str:
        """The server's SPKI PEM."""
        return public_key_pem(self.private_key)

    def start(self) -> OracleServer:
        """Bind and serve in a daemon thread."""
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.oracle = self
        httpd.ssl_context = self.ssl_context
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> OracleServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def handle_secure(self, headers: dict[str, str], body: bytes) -> bytes:
        """Open, record and answer one secure-completion request; return the sealed reply."""
        payload_id = _check_headers(headers, self.api_key)
        client_key = _client_key(headers)
        try:
            plaintext = open_envelope(body, self.private_key)
        except EnvelopeError as exc:
            raise RequestRejectedError(400, f"Invalid encrypted payload: {exc}") from exc
        except EnvelopeAuthError as exc:
            raise RequestRejectedError(400, "Decryption failed") from exc
        request = _decode_request(plaintext)
        with self._lock:
            self.requests.append(
                {"headers": headers, "body": request, "envelope": json.loads(body)}
            )
        reply = echo_completion(request, payload_id, headers.get("x-security-tier"))
        return seal_envelope(json.dumps(reply).encode("utf-8"), client_key, int(time.time()))

    def record_rejection(self, headers: dict[str, str], exc: RequestRejectedError) -> None:
        """Remember a refused request."""
        with self._lock:
            self.rejections.append({"headers": headers, "status": exc.status, "detail": exc.detail})
