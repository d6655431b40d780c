"""``nomyo proxy``: a local OpenAI-compatible endpoint that forwards end-to-end encrypted.

Local tools send plaintext OpenAI requests to ``POST /v1/chat/completions``; each one is
encrypted to the NOMYO router through one shared :class:`SecureChatCompletion` and the
decrypted ``chat.completion`` (with its ``_metadata``) is returned. Errors use OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any
from urllib.parse import urlsplit

from . import _core
from ._chat import RELAY_REFUSED_FIELDS, SecureChatCompletion
from ._cli_support import is_loopback_host
from ._exceptions import (
    APIConnectionError,
    APIError,
    ConfigurationError,
    EnvelopeError,
    KeyFormatError,
    NomyoError,
    SecurityError,
)
from .testing._http import Connections, HTTPRequest, HTTPResponse, Limits

__all__ = ["ChatProxy", "error_response", "exception_response"]

logger = logging.getLogger("nomyo.proxy")

COMPLETIONS_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
MODELS_PATHS = frozenset({"/v1/models", "/models"})
HEALTH_PATH = "/healthz"
MAX_REQUEST_BYTES = 16 * 1024 * 1024
#: Fields ``create()`` would take as client settings: a caller must not redirect the proxy
#: (``base_url``) or swap its API key through the request body.
REFUSED_FIELDS = RELAY_REFUSED_FIELDS

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_response(
    status: int,
    message: str,
    error_type: str | None = None,
    *,
    param: str | None = None,
    code: str | None = None,
) -> HTTPResponse:
    """An OpenAI-style error reply."""
    kind = error_type or _ERROR_TYPES.get(status, "api_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return HTTPResponse(status, json.dumps(body).encode("utf-8"))


def exception_response(exc: NomyoError) -> HTTPResponse:
    """The reply for an exception raised by the client (the router's status when it has one)."""
    if isinstance(exc, APIError):
        status = exc.status_code if exc.status_code is not None else 502
        return error_response(status, exc.message)
    if isinstance(exc, APIConnectionError):
        return error_response(502, f"cannot reach the NOMYO router: {exc}", "api_connection_error")
    if isinstance(exc, (SecurityError, EnvelopeError, KeyFormatError)):
        return error_response(502, f"security check failed: {exc}", "security_error")
    if isinstance(exc, ConfigurationError):
        return error_response(400, str(exc))
    return error_response(502, str(exc))


def _json(status: int, value: Any) -> HTTPResponse:
    # Serialised in native memory: no intermediate str copy of a decrypted reply.
    return HTTPResponse(status, bytes(_core.dumps(value)))


class ChatProxy:
    """The HTTP server of ``nomyo proxy``.

    Args:
        chat: the one client every request goes through (its API key, if any, wins).
        host: address to bind; port: port to bind (0 picks a free one).
        model: the model listed by ``/v1/models`` and used when a request names none.
        security_tier: tier for requests without an ``X-Security-Tier`` header.
        allow_remote: accept any ``Host`` header and browser (``Origin``) requests. When
            false, only loopback host names are accepted (against DNS rebinding) and requests
            from web pages are refused (against cross-site use of the API key).
        use_bearer: without a configured API key, forward the caller's bearer token.
    """

    def __init__(
        self,
        chat: SecureChatCompletion,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        model: str,
        security_tier: str | None = None,
        allow_remote: bool = False,
        use_bearer: bool = True,
        limits: Limits | None = None,
    ) -> None:
        self.chat = chat
        self.host = host
        self.port = port
        self.model = model
        self.security_tier = security_tier
        self.allow_remote = allow_remote
        self.use_bearer = use_bearer
        self.limits = limits or Limits(
            max_body=MAX_REQUEST_BYTES, request_timeout=60.0, idle_timeout=60.0
        )
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._connections = Connections("proxy")

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8080`` (OpenAI clients use ``url + "/v1"``)."""
        if self._server is None:
            raise RuntimeError("the proxy is not running")
        host = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    async def start(self) -> ChatProxy:
        """Bind and start serving."""
        self._server = await asyncio.start_server(
            self._on_connection, self.host, self.port, limit=self.limits.max_header_bytes
        )
        if self._server.sockets:
            self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        server, self._server = self._server, None
        if server is None:
            return
        await self._connections.close(server)

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await self._connections.serve(reader, writer, self.handle, self.limits)

    async def handle(self, request: HTTPRequest) -> HTTPResponse:
        """Answer one request (never raises)."""
        started = time.monotonic()
        try:
            response = await self._dispatch(request)
        except Exception:
            logger.exception("proxy request failed")
            response = error_response(500, "internal error in the nomyo proxy")
        logger.info(
            "%s %s -> %d (%.0f ms)",
            request.method,
            request.path,
            response.status,
            (time.monotonic() - started) * 1000.0,
        )
        return response

    async def _dispatch(self, request: HTTPRequest) -> HTTPResponse:
        refused = self._refuse_foreign(request)
        if refused is not None:
            return refused
        path = request.path.rstrip("/") or "/"
        if path in COMPLETIONS_PATHS:
            if request.method != "POST":
                return _not_allowed("POST")
            return await self._completions(request)
        if path in MODELS_PATHS:
            if request.method not in ("GET", "HEAD"):
                return _not_allowed("GET")
            entry = {"id": self.model, "object": "model", "created": 0, "owned_by": "nomyo"}
            return _json(200, {"object": "list", "data": [entry]})
        if path == HEALTH_PATH:
            if request.method not in ("GET", "HEAD"):
                return _not_allowed("GET")
            return _json(200, {"status": "ok"})
        return error_response(404, f"unknown path {request.path!r}", code="unknown_url")

    def _refuse_foreign(self, request: HTTPRequest) -> HTTPResponse | None:
        if self.allow_remote:
            return None
        host = request.header("host")
        name = urlsplit("//" + host).hostname if host else None
        if host is not None and (name is None or not is_loopback_host(name)):
            return error_response(403, "the proxy only answers loopback host names")
        if request.header("origin") is not None:
            return error_response(403, "requests from web pages are refused by the nomyo proxy")
        return None

    async def _completions(self, request: HTTPRequest) -> HTTPResponse:
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            return error_response(400, "the request body is not valid JSON")
        if not isinstance(body, dict):
            return error_response(400, "the request body must be a JSON object")
        if body.get("stream"):
            return error_response(
                400,
                "stream=true is not supported: encrypted inference returns one sealed reply",
                param="stream",
                code="stream_not_supported",
            )
        for name in REFUSED_FIELDS:
            if name in body:
                return error_response(400, f"'{name}' is not accepted by the proxy", param=name)
        model = body.pop("model", None) or self.model
        messages = body.pop("messages", None)
        if not isinstance(model, str):
            return error_response(400, "'model' must be a string", param="model")
        if not isinstance(messages, list) or not messages:
            return error_response(400, "'messages' must be a non-empty list", param="messages")
        tier = body.pop("security_tier", None) or request.header("x-security-tier")
        tier = tier or self.security_tier
        if tier:
            body["security_tier"] = tier
        bearer = self._bearer(request)
        if bearer is not None:
            body["api_key"] = bearer
        self.requests += 1
        try:
            reply = await self.chat.create(model, messages, **body)
        except NomyoError as exc:
            logger.warning("request failed: %s: %s", type(exc).__name__, exc)
            return exception_response(exc)
        return _json(200, reply)

    def _bearer(self, request: HTTPRequest) -> str | None:
        if not self.use_bearer or self.chat.api_key:
            return None
        scheme, _, token = (request.header("authorization") or "").partition(" ")
        token = token.strip()
        return token if scheme.lower() == "bearer" and token else None

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "stopped"
        return f"ChatProxy({where} -> {self.chat.client.router_url})"


def _not_allowed(allowed: str) -> HTTPResponse:
    response = error_response(405, "method not allowed")
    response.headers.append(("Allow", allowed))
    return response
