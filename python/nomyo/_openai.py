"""Encrypting transports for the official ``openai`` SDK.

::

    import openai, nomyo

    client = openai.OpenAI(api_key="unused", http_client=nomyo.openai_http_client())
    client.chat.completions.create(model="Qwen/Qwen3-0.6B", messages=[...])

The SDK builds its usual ``POST .../chat/completions`` request; the transport never sends
it anywhere. It hands the body to a :class:`~nomyo.SyncSecureChatCompletion` (or the async
one), which encrypts it to the NOMYO router, and answers the SDK with the decrypted
completion as JSON. The SDK's base URL and its ``Authorization`` header are ignored: the
router and the API key are the transport's own (``base_url``/``api_key`` or
``$NOMYO_BASE_URL``/``$NOMYO_API_KEY``), so an ``OPENAI_API_KEY`` is never sent to the router.

Errors reach the SDK as its own exception types:

=============================================  ===============================================
nomyo outcome                                  answer to the SDK (-> SDK exception)
=============================================  ===============================================
router error status (``APIError``)             same status, OpenAI error JSON (-> the SDK's
                                               status error, e.g. ``RateLimitError``);
                                               ``Retry-After`` passed on
``APIConnectionError`` / ``APITimeoutError``   ``httpx.ConnectError`` / ``httpx.ReadTimeout``
                                               raised (-> ``APIConnectionError`` /
                                               ``APITimeoutError``)
``SecurityError`` / ``EnvelopeError``          502, type ``security_error``, never retried
                                               (``x-should-retry: false``) (->
                                               ``InternalServerError``)
``stream=True``, invalid ``security_tier``     400, ``invalid_request_error`` (->
                                               ``BadRequestError``)
``KeyFormatError`` (the local key)             raised unchanged through the SDK
=============================================  ===============================================

Retries are left to the SDK (``max_retries`` of ``openai.OpenAI``), which re-sends through
the transport, so every try is encrypted afresh; the inner client does not retry unless
``max_retries=`` is passed here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from . import _core
from ._chat import RELAY_REFUSED_FIELDS, SecureChatCompletion, SyncSecureChatCompletion
from ._exceptions import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    ConfigurationError,
    EnvelopeError,
    NomyoError,
    SecurityError,
)
from ._response import ChatCompletion
from ._transport import default_timeout

__all__ = [
    "AsyncOpenAITransport",
    "OpenAITransport",
    "openai_async_http_client",
    "openai_http_client",
]

#: Fields of a request body that would reconfigure the client (redirect it, swap its key).
REFUSED_FIELDS = RELAY_REFUSED_FIELDS

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    429: "rate_limit_error",
}


@dataclass
class _Call:
    """A chat-completions request to forward: the arguments of ``create``."""

    model: str
    messages: list[Any]
    options: dict[str, Any] = field(default_factory=dict)


def _json_response(
    request: httpx.Request,
    status: int,
    value: Any,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return httpx.Response(
        status,
        headers={"content-type": "application/json", **(headers or {})},
        # Serialised in native memory: no intermediate str copy of a decrypted reply.
        content=bytes(_core.dumps(value)),
        request=request,
    )


def _error(
    request: httpx.Request,
    status: int,
    message: str,
    error_type: str | None = None,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """An OpenAI-style error reply: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = error_type or _ERROR_TYPES.get(status, "api_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return _json_response(request, status, body, headers)


class _OpenAIRouting:
    """The non-I/O half of both transports: routing, request checks, reply and error mapping."""

    def __init__(self, models: Sequence[str] | None, forward_sdk_api_key: bool) -> None:
        self.models = list(models) if models is not None else None
        self.forward_sdk_api_key = forward_sdk_api_key

    def _route(self, request: httpx.Request, api_key: str | None) -> _Call | httpx.Response:
        """A call to forward, or the ready answer (models, errors)."""
        path = request.url.path.rstrip("/")
        if path.endswith("/chat/completions") or path == "/chat/completions":
            if request.method != "POST":
                return _error(request, 405, "method not allowed", headers={"allow": "POST"})
            return self._completion_call(request, api_key)
        head, _, last = path.rpartition("/")
        if last == "models" or head.endswith("/models"):
            if request.method != "GET":
                return _error(request, 405, "method not allowed", headers={"allow": "GET"})
            return self._models(request, None if last == "models" else last)
        return _error(
            request,
            404,
            f"{request.method} {path} is not available through the NOMYO encrypting "
            "transport (only chat completions are)",
            code="unknown_url",
        )

    def _models(self, request: httpx.Request, model_id: str | None) -> httpx.Response:
        if self.models is None:
            return _error(request, 404, "no model list is configured", code="unknown_url")
        entries = [
            {"id": m, "object": "model", "created": 0, "owned_by": "nomyo"} for m in self.models
        ]
        if model_id is None:
            return _json_response(request, 200, {"object": "list", "data": entries})
        for entry in entries:
            if entry["id"] == model_id:
                return _json_response(request, 200, entry)
        return _error(
            request, 404, f"the model {model_id!r} does not exist", code="model_not_found"
        )

    def _completion_call(
        self, request: httpx.Request, api_key: str | None
    ) -> _Call | httpx.Response:
        try:
            body = json.loads(request.content)
        except (ValueError, UnicodeDecodeError):
            return _error(request, 400, "the request body is not valid JSON")
        if not isinstance(body, dict):
            return _error(request, 400, "the request body must be a JSON object")
        if body.get("stream"):
            return _error(
                request,
                400,
                "stream=true is not supported: encrypted inference returns one sealed reply",
                param="stream",
                code="stream_not_supported",
            )
        for name in REFUSED_FIELDS:
            if name in body:
                return _error(request, 400, f"'{name}' is not accepted in the body", param=name)
        model = body.pop("model", None)
        messages = body.pop("messages", None)
        if not isinstance(model, str) or not model:
            return _error(request, 400, "'model' must be a non-empty string", param="model")
        if not isinstance(messages, list):
            return _error(request, 400, "'messages' must be a list", param="messages")
        tier = body.pop("security_tier", None) or request.headers.get("x-security-tier")
        if tier:
            body["security_tier"] = tier
        if api_key is None and self.forward_sdk_api_key:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                body["api_key"] = token.strip()
        timeout = request.extensions.get("timeout")
        if isinstance(timeout, dict):
            body["timeout"] = httpx.Timeout(**timeout)
        return _Call(model, messages, body)

    @staticmethod
    def _reply(request: httpx.Request, reply: ChatCompletion) -> httpx.Response:
        payload_id = reply.get("_metadata", {}).get("payload_id")
        headers = {"x-request-id": payload_id} if isinstance(payload_id, str) else {}
        return _json_response(request, 200, reply, headers)

    @staticmethod
    def _failure(request: httpx.Request, exc: NomyoError) -> httpx.Response:
        """The SDK's view of a nomyo exception (raises for network failures and key errors)."""
        if isinstance(exc, APITimeoutError):
            raise httpx.ReadTimeout(str(exc), request=request) from exc
        if isinstance(exc, APIConnectionError):
            raise httpx.ConnectError(str(exc), request=request) from exc
        no_retry = {"x-should-retry": "false"}
        if isinstance(exc, APIError):
            headers = {}
            if exc.payload_id:
                headers["x-request-id"] = exc.payload_id
            if exc.retry_after is not None:
                headers["retry-after"] = f"{exc.retry_after:g}"
            status = exc.status_code if exc.status_code is not None else 400
            return _error(request, status, exc.message, headers=headers)
        if isinstance(exc, SecurityError):
            return _error(
                request,
                502,
                f"security check failed: {exc}",
                "security_error",
                code="security_error",
                headers=no_retry,
            )
        if isinstance(exc, EnvelopeError):
            return _error(
                request,
                502,
                f"the router's reply was refused: {exc}",
                "security_error",
                code="invalid_envelope",
                headers=no_retry,
            )
        if isinstance(exc, ConfigurationError):
            return _error(request, 400, str(exc), code="configuration_error", headers=no_retry)
        raise exc


class OpenAITransport(_OpenAIRouting, httpx.BaseTransport):
    """An ``httpx.BaseTransport`` that answers the official SDK through
    :class:`~nomyo.SyncSecureChatCompletion` (see :func:`openai_http_client`)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        models: Sequence[str] | None = None,
        forward_sdk_api_key: bool = False,
        **client_options: Any,
    ) -> None:
        super().__init__(models, forward_sdk_api_key)
        client_options.setdefault("max_retries", 0)
        self.chat = SyncSecureChatCompletion(base_url, api_key=api_key, **client_options)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        call = self._route(request, self.chat.api_key)
        if isinstance(call, httpx.Response):
            return call
        try:
            reply = self.chat.create(call.model, call.messages, **call.options)
        except NomyoError as exc:
            return self._failure(request, exc)
        return self._reply(request, reply)

    def close(self) -> None:
        self.chat.close()


class AsyncOpenAITransport(_OpenAIRouting, httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` that answers the official SDK through
    :class:`~nomyo.SecureChatCompletion` (see :func:`openai_async_http_client`)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        models: Sequence[str] | None = None,
        forward_sdk_api_key: bool = False,
        **client_options: Any,
    ) -> None:
        super().__init__(models, forward_sdk_api_key)
        client_options.setdefault("max_retries", 0)
        self.chat = SecureChatCompletion(base_url, api_key=api_key, **client_options)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        call = self._route(request, self.chat.api_key)
        if isinstance(call, httpx.Response):
            return call
        try:
            reply = await self.chat.create(call.model, call.messages, **call.options)
        except NomyoError as exc:
            return self._failure(request, exc)
        return self._reply(request, reply)

    async def aclose(self) -> None:
        await self.chat.aclose()


def openai_http_client(
    base_url: str | None = None,
    api_key: str | None = None,
    *,
    models: Sequence[str] | None = None,
    forward_sdk_api_key: bool = False,
    **client_options: Any,
) -> httpx.Client:
    """An ``httpx.Client`` for ``openai.OpenAI(http_client=...)`` that encrypts end to end.

    Args:
        base_url: the NOMYO router; default ``$NOMYO_BASE_URL``, else ``https://api.nomyo.ai``.
        api_key: the router's API key; default ``$NOMYO_API_KEY``.
        models: what ``client.models.list()`` returns (None: 404).
        forward_sdk_api_key: without ``api_key``, authenticate with the SDK's own api_key
            (off by default, so that an OpenAI key is never sent to the router).
        **client_options: any argument of :class:`~nomyo.SyncSecureChatCompletion`
            (``key_dir``, ``security_tier`` is per request, ``attestation``, ``verify``,
            ``rate_limit``, ``max_retries`` (default 0: the SDK retries), ...).

    Returns:
        A client whose requests never leave the process unencrypted; close it (or the SDK
        client) to close the connection pool.
    """
    transport = OpenAITransport(
        base_url,
        api_key,
        models=models,
        forward_sdk_api_key=forward_sdk_api_key,
        **client_options,
    )
    return httpx.Client(transport=transport, timeout=default_timeout(), trust_env=False)


def openai_async_http_client(
    base_url: str | None = None,
    api_key: str | None = None,
    *,
    models: Sequence[str] | None = None,
    forward_sdk_api_key: bool = False,
    **client_options: Any,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for ``openai.AsyncOpenAI(http_client=...)``; see
    :func:`openai_http_client` (options of :class:`~nomyo.SecureChatCompletion`)."""
    transport = AsyncOpenAITransport(
        base_url,
        api_key,
        models=models,
        forward_sdk_api_key=forward_sdk_api_key,
        **client_options,
    )
    return httpx.AsyncClient(transport=transport, timeout=default_timeout(), trust_env=False)
