"""``nomyo proxy``: a local OpenAI- and Anthropic-compatible endpoint that forwards end-to-end
encrypted.

Local tools send plaintext requests to ``POST /v1/chat/completions``, ``POST /v1/responses``
(OpenAI's Responses API, ``nomyo._responses``) or ``POST /v1/messages`` (Anthropic's Messages
API, ``nomyo._anthropic``); each one becomes one chat completion encrypted to the NOMYO router
through one shared :class:`SecureChatCompletion`, and the decrypted reply is given back in the
caller's API, or, for ``"stream": true``, as that API's event stream. Every other route of
those APIs (embeddings, files, images, ...) gets a 501 that says it is not end-to-end
encrypted and nothing was sent. Errors take the caller's shape (OpenAI's
``{"error": {...}}``, Anthropic's ``{"type": "error", "error": {...}}``). An error reply
after the client's own retries carries ``x-should-retry: false``, so an SDK does not multiply
them.

Access: with an ``auth_token`` every request except ``GET /healthz`` must carry
``Authorization: Bearer <token>`` or ``x-api-key: <token>`` (compared in constant time; never
forwarded, never logged). Without one, any local user who can reach the port uses the proxy
and with it the configured API key. The caller's own token is forwarded to the router only
when ``forward_api_key`` is set. Requests from web pages (an ``Origin`` header) are refused
unless their origin is in ``allowed_origins``, with or without ``allow_remote``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from ._anthropic import MESSAGES, anthropic_error_body
from ._chat import SecureChatCompletion
from ._config import is_loopback_host
from ._exceptions import ConfigurationError, NomyoError, SecureMemoryError
from ._http_server import Connections, HTTPRequest, HTTPResponse, Limits
from ._receipts import streamed
from ._relay import (
    CHAT,
    EVENT_STREAM,
    NO_RETRY,
    Api,
    ErrorReply,
    error_reply,
    failure_reply,
    openai_error_body,
    refusal,
    reply_body,
    reply_headers,
)
from ._responses import RESPONSES

__all__ = ["ChatProxy", "normalise_origin"]

logger = logging.getLogger("nomyo.proxy")

COMPLETIONS_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
#: The APIs served, by path (OpenAI's also without ``/v1``, as base URLs are written both ways).
ROUTES: dict[str, Api] = {
    **dict.fromkeys(COMPLETIONS_PATHS, CHAT),
    "/v1/responses": RESPONSES,
    "/responses": RESPONSES,
    "/v1/messages": MESSAGES,
}
#: First path segments (after ``/v1``) of OpenAI's other routes: refused with 501, not 404.
OPENAI_ROUTES = frozenset(
    {
        "assistants", "audio", "batches", "chat", "completions", "containers",
        "conversations", "embeddings", "evals", "files", "fine_tuning", "images",
        "moderations", "organization", "realtime", "responses", "threads", "uploads",
        "vector_stores", "videos",
    }
)  # fmt: skip
MODELS_PATHS = frozenset({"/v1/models", "/models"})
HEALTH_PATH = "/healthz"
MAX_REQUEST_BYTES = 16 * 1024 * 1024
#: Request bodies held at once over all connections (a few maximal requests).
MAX_BUFFERED_BYTES = 4 * MAX_REQUEST_BYTES


def _error(
    reply: ErrorReply, shape: Callable[[ErrorReply], bytes] = openai_error_body
) -> HTTPResponse:
    return HTTPResponse(reply.status, shape(reply), headers=list(reply.headers.items()))


def _json(
    status: int, value: Mapping[str, Any], headers: dict[str, str] | None = None
) -> HTTPResponse:
    # Serialised in native memory into a bytearray the server zeroes once it is sent.
    return HTTPResponse(status, reply_body(value), headers=list((headers or {}).items()))


def _overloaded() -> HTTPResponse:
    response = _error(
        error_reply(503, "the nomyo proxy is overloaded: try again later", code="overloaded")
    )
    response.close = True
    return response


class ChatProxy:
    """The HTTP server of ``nomyo proxy``.

    Args:
        chat: the one client every request goes through (its API key, if any, wins).
        host: address to bind; port: port to bind (0 picks a free one).
        model: the model listed by ``/v1/models`` and used when a request names none.
        security_tier: tier for requests without an ``X-Security-Tier`` header.
        allow_remote: accept any ``Host`` header. When false, only loopback host names are
            accepted (against DNS rebinding).
        allowed_origins: web origins (``scheme://host[:port]``) whose pages may call the
            proxy; a request with any other ``Origin`` is refused (against cross-site use of
            the API key), and so is every browser request when there are none.
        auth_token: require ``Authorization: Bearer <auth_token>`` on every request.
        forward_api_key: without an API key of the client's own, forward the caller's bearer
            token to the router as its API key (off: a tool's ``OPENAI_API_KEY`` stays
            local). Cannot be combined with ``auth_token``.
        limits: connection limits (body size, timeouts, open connections, buffered bytes).
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
        auth_token: str | None = None,
        forward_api_key: bool = False,
        limits: Limits | None = None,
        allowed_origins: Iterable[str] = (),
    ) -> None:
        if auth_token is not None and not auth_token:
            raise ConfigurationError("the proxy's auth token must not be empty")
        if auth_token is not None and forward_api_key:
            raise ConfigurationError(
                "forward_api_key cannot be combined with auth_token: the caller's bearer "
                "token is the proxy's token"
            )
        self.chat = chat
        self.host = host
        self.port = port
        self.model = model
        self.security_tier = security_tier
        self.allow_remote = allow_remote
        self.allowed_origins = frozenset(normalise_origin(o) for o in allowed_origins)
        self.forward_api_key = forward_api_key
        self._auth_token = auth_token.encode("utf-8") if auth_token is not None else None
        self.limits = limits or Limits(
            max_body=MAX_REQUEST_BYTES,
            request_timeout=60.0,
            idle_timeout=60.0,
            max_buffered_bytes=MAX_BUFFERED_BYTES,
        )
        self.requests = 0
        self._server: asyncio.Server | None = None
        self.connections = Connections(
            "proxy", self.limits, server_name="nomyo-proxy", logger=logger, overloaded=_overloaded
        )

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
        await self.connections.close(server)

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await self.connections.serve(reader, writer, self.handle)

    async def handle(self, request: HTTPRequest) -> HTTPResponse:
        """Answer one request (never raises)."""
        started = time.monotonic()
        try:
            response = await self._dispatch(request)
        except Exception:
            logger.exception("proxy request failed")
            response = _error(error_reply(500, "internal error in the nomyo proxy"))
        _allow_origin(request, response, self.allowed_origins)
        logger.debug(
            "%s %s -> %d (%.0f ms)",
            request.method,
            request.path,
            response.status,
            (time.monotonic() - started) * 1000.0,
        )
        return response

    async def _dispatch(self, request: HTTPRequest) -> HTTPResponse:
        path = request.path.rstrip("/") or "/"
        api = ROUTES.get(path)
        shape = api.error_body if api is not None else _error_shape(path)
        refused = self._refuse_foreign(request)
        if refused is None and request.method == "OPTIONS" and request.header("origin"):
            return _preflight()  # from an allowed origin (browsers send no token here)
        if refused is None and path != HEALTH_PATH:  # liveness needs no token: it tells nothing
            refused = self._refuse_unauthorized(request)
        if refused is not None:
            return _error(refused, shape)
        if api is not None:
            if request.method != "POST":
                return _not_allowed("POST", shape)
            return await self._forward(request, api)
        head, _, model_id = path.rpartition("/")
        if path in MODELS_PATHS or head in MODELS_PATHS:
            if request.method not in ("GET", "HEAD"):
                return _not_allowed("GET", shape)
            return self._models(unquote(model_id) if head in MODELS_PATHS else None)
        if path == HEALTH_PATH:
            if request.method not in ("GET", "HEAD"):
                return _not_allowed("GET", shape)
            return _json(200, {"status": "ok"})
        segments = path.split("/")
        first = segments[2] if segments[1] == "v1" and len(segments) > 2 else segments[1]
        if segments[1] == "v1" or first in OPENAI_ROUTES:
            return _error(refusal(request.method, path), shape)
        return _error(error_reply(404, f"unknown path {request.path!r}", code="unknown_url"))

    def _models(self, model_id: str | None) -> HTTPResponse:
        entry = {"id": self.model, "object": "model", "created": 0, "owned_by": "nomyo"}
        if model_id is None:
            return _json(200, {"object": "list", "data": [entry]})
        if model_id == self.model:
            return _json(200, entry)
        return _error(
            error_reply(404, f"The model '{model_id}' does not exist", code="model_not_found")
        )

    def _refuse_foreign(self, request: HTTPRequest) -> ErrorReply | None:
        if not self.allow_remote:
            host = request.header("host")
            try:
                name = urlsplit("//" + host).hostname if host else None
            except ValueError:
                name = None
            if host is not None and (name is None or not is_loopback_host(name)):
                return error_reply(403, "the proxy only answers loopback host names")
        origin = request.header("origin")
        if origin is not None and not _origin_allowed(origin, self.allowed_origins):
            return error_reply(
                403,
                "requests from web pages are refused by the nomyo proxy (allow an origin with "
                "--allow-origin)",
            )
        return None

    def _refuse_unauthorized(self, request: HTTPRequest) -> ErrorReply | None:
        if self._auth_token is None:
            return None
        expected = self._auth_token
        for given in _caller_tokens(request):  # either header may hold it
            if hmac.compare_digest(given.encode("utf-8"), expected):
                return None
        return error_reply(
            401,
            "this nomyo proxy requires its token as 'Authorization: Bearer <token>' or "
            "'x-api-key: <token>'",
            code="invalid_api_key",
            headers={"www-authenticate": 'Bearer realm="nomyo-proxy"'},
        )

    async def _forward(self, request: HTTPRequest, api: Api) -> HTTPResponse:
        call = api.parse(
            request.body,
            default_model=self.model,
            security_tier=request.header("x-security-tier") or self.security_tier,
        )
        if isinstance(call, ErrorReply):
            return _error(call, api.error_body)
        api_key = self._forwarded_api_key(request)
        if api_key is not None:
            call.options["api_key"] = api_key
        self.requests += 1
        try:
            with streamed(call.stream):
                reply = await self.chat.create(call.model, call.messages, **call.options)
        except SecureMemoryError as exc:
            logger.error("request refused: %s", exc)  # sizes and the fix; never content
            return _error(self._failure(exc), api.error_body)
        except NomyoError as exc:
            logger.warning("request failed: %s", type(exc).__name__)
            return _error(self._failure(exc), api.error_body)
        body, content_type = api.answer(call, reply)
        headers = reply_headers(reply)
        if content_type == EVENT_STREAM:
            headers["cache-control"] = "no-cache"
        return HTTPResponse(200, body, content_type, headers=list(headers.items()))

    def _failure(self, exc: NomyoError) -> ErrorReply:
        """The error reply; once the client has retried, the caller's SDK must not retry
        again (its tries would multiply the client's)."""
        reply = failure_reply(exc)
        if self.chat.client.max_retries > 0:
            reply.headers.update(NO_RETRY)
        return reply

    def _forwarded_api_key(self, request: HTTPRequest) -> str | None:
        if not self.forward_api_key or self.chat.api_key:
            return None
        tokens = _caller_tokens(request)
        return tokens[0] if tokens else None

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "stopped"
        return f"ChatProxy({where} -> {self.chat.client.router_url})"


def _error_shape(path: str) -> Callable[[ErrorReply], bytes]:
    """The error shape of a path no API serves: Anthropic's under its routes, else OpenAI's."""
    anthropic = path.startswith("/v1/messages/") or path == "/v1/complete"
    return anthropic_error_body if anthropic else openai_error_body


def _caller_tokens(request: HTTPRequest) -> list[str]:
    """The caller's tokens: ``Authorization: Bearer`` (OpenAI's SDKs), then ``x-api-key``
    (Anthropic's)."""
    scheme, _, bearer = (request.header("authorization") or "").partition(" ")
    tokens = [bearer.strip()] if scheme.lower() == "bearer" else []
    tokens.append((request.header("x-api-key") or "").strip())
    return [token for token in tokens if token]


def normalise_origin(origin: str) -> str:
    """``scheme://host[:port]`` in lower case without a default port.

    Raises:
        ConfigurationError: not an http(s) origin (a path, a query, ``null``, ...).
    """
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        raise ConfigurationError(f"not a web origin: {origin!r}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigurationError(f"not a web origin (scheme://host[:port]): {origin!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigurationError(f"not a web origin (scheme://host[:port]): {origin!r}")
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    default = {"https": 443, "http": 80}[scheme]
    return f"{scheme}://{host}" + ("" if port in (None, default) else f":{port}")


def _origin_allowed(origin: str, allowed: frozenset[str]) -> bool:
    if not allowed:
        return False
    try:
        return normalise_origin(origin) in allowed
    except ConfigurationError:
        return False


def _allow_origin(request: HTTPRequest, response: HTTPResponse, allowed: frozenset[str]) -> None:
    """CORS headers on a reply to an allowed origin's page (it could not read it otherwise)."""
    origin = request.header("origin")
    if origin is None or not _origin_allowed(origin, allowed):
        return
    response.headers.append(("Access-Control-Allow-Origin", origin))
    response.headers.append(("Vary", "Origin"))


def _preflight() -> HTTPResponse:
    return HTTPResponse(
        204,
        content_type=None,
        headers=[
            ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
            (
                "Access-Control-Allow-Headers",
                "authorization, x-api-key, anthropic-version, content-type, x-security-tier",
            ),
            ("Access-Control-Max-Age", "600"),
        ],
    )


def _not_allowed(
    allowed: str, shape: Callable[[ErrorReply], bytes] = openai_error_body
) -> HTTPResponse:
    response = _error(error_reply(405, "method not allowed"), shape)
    response.headers.append(("Allow", allowed))
    return response
