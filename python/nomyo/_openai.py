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
a malformed body, invalid ``security_tier``   400, ``invalid_request_error`` (->
                                               ``BadRequestError``)
``KeyFormatError`` (the local key)             raised unchanged through the SDK
=============================================  ===============================================

``stream=True`` is answered with OpenAI's event stream of the opened reply (the router is
asked without streaming; see ``nomyo._stream``): the SDK's ``Stream`` of chunks, whose last
chunk carries ``_metadata``. The Responses API (``client.responses.create``/``stream``/
``parse``) is answered the same way, by one chat completion (see ``nomyo._responses``);
the SDK's other routes (embeddings, files, ...) get a 501 and nothing is sent. The body
checks and error replies are ``nomyo._relay``'s, shared with ``nomyo proxy``.

Retries are left to the SDK (``max_retries`` of ``openai.OpenAI``), which re-sends through
the transport, so every try is encrypted afresh; the inner client does not retry unless
``max_retries=`` is passed here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar, cast

import httpx

from ._chat import SecureChatCompletion, SyncSecureChatCompletion
from ._exceptions import APIConnectionError, APITimeoutError, KeyFormatError, NomyoError
from ._receipts import streamed
from ._relay import (
    CHAT,
    Api,
    ChatCall,
    ErrorReply,
    error_reply,
    failure_reply,
    refusal,
    reply_body,
    reply_headers,
)
from ._response import ChatCompletion
from ._responses import RESPONSES
from ._signature import same_arguments_as
from ._transports.httpx import default_timeout

if TYPE_CHECKING:
    # The clients are of the httpx the installed SDK builds on: httpx2 for openai 3.
    try:
        import httpx2 as _sdk_httpx
    except ImportError:  # pragma: no cover - an SDK before openai 3
        import httpx as _sdk_httpx  # type: ignore[no-redef]

_T = TypeVar("_T")

__all__ = [
    "AsyncOpenAITransport",
    "OpenAITransport",
    "openai_async_http_client",
    "openai_http_client",
    "sdk_http",
]


def sdk_http() -> ModuleType:
    """The httpx the installed ``openai`` SDK is built on.

    openai 3 builds on ``httpx2`` (its ``DefaultHttpxClient`` subclasses ``httpx2.Client``);
    earlier versions, and no SDK at all, on ``httpx``. The clients and transports made here
    are of that module, so the SDK's types, isinstance checks and exception mapping apply.
    """
    try:
        import openai
    except ImportError:
        return httpx
    default = getattr(openai, "DefaultHttpxClient", None)
    for base in getattr(default, "__mro__", ()):
        if base.__module__.split(".")[0] == "httpx2":
            return importlib.import_module("httpx2")
    return httpx


def _one_copy(body: bytearray) -> bytes:
    """``body`` as the ``bytes`` httpx needs (the one copy the SDK reads), ``body`` wiped."""
    try:
        return bytes(body)
    finally:
        body[:] = bytes(len(body))


class _OpenAIRouting:
    """The non-I/O half of both transports: routing, request checks, reply and error mapping.

    ``_http`` is the httpx module whose ``Response`` and exceptions the SDK expects (httpx,
    or httpx2 for openai >= 3; see :func:`sdk_http`).
    """

    _http: ModuleType = httpx
    #: The nomyo client that answers (the blocking or the async one).
    _chat_class: Callable[..., Any]

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        models: Sequence[str] | None = None,
        forward_sdk_api_key: bool = False,
        **client_options: Any,
    ) -> None:
        self.models = list(models) if models is not None else None
        self.forward_sdk_api_key = forward_sdk_api_key
        client_options.setdefault("max_retries", 0)
        self.chat = self._chat_class(base_url, api_key=api_key, **client_options)

    def _response(self, status: int, **options: Any) -> httpx.Response:
        # An httpx2.Response for an httpx2 client: typed as httpx's, whose API it has.
        return cast("httpx.Response", self._http.Response(status, **options))

    def _error(self, request: Any, reply: ErrorReply) -> httpx.Response:
        headers = {"content-type": "application/json", **reply.headers}
        return self._response(reply.status, headers=headers, content=reply.body, request=request)

    def _json_response(self, request: Any, value: Any) -> httpx.Response:
        return self._response(
            200,
            headers={"content-type": "application/json"},
            # Serialised in native memory: no intermediate str copy of a decrypted reply.
            content=_one_copy(reply_body(value)),
            request=request,
        )

    def _route(
        self, request: httpx.Request, api_key: str | None
    ) -> tuple[Api, ChatCall] | httpx.Response:
        """A call to forward (and its API), or the ready answer (models, errors)."""
        path = request.url.path.rstrip("/")
        for suffix, api in (("/chat/completions", CHAT), ("/responses", RESPONSES)):
            if path.endswith(suffix):
                if request.method != "POST":
                    return self._not_allowed(request, "POST")
                call = self._call(request, api, api_key)
                return (api, call) if isinstance(call, ChatCall) else call
        head, _, last = path.rpartition("/")
        if last == "models" or head.endswith("/models"):
            if request.method != "GET":
                return self._not_allowed(request, "GET")
            return self._models(request, None if last == "models" else last)
        return self._error(request, refusal(request.method, path))

    def _not_allowed(self, request: httpx.Request, allowed: str) -> httpx.Response:
        reply = error_reply(405, "method not allowed", headers={"allow": allowed})
        return self._error(request, reply)

    def _models(self, request: httpx.Request, model_id: str | None) -> httpx.Response:
        if self.models is None:
            return self._error(
                request, error_reply(404, "no model list is configured", code="unknown_url")
            )
        entries = [
            {"id": m, "object": "model", "created": 0, "owned_by": "nomyo"} for m in self.models
        ]
        if model_id is None:
            return self._json_response(request, {"object": "list", "data": entries})
        for entry in entries:
            if entry["id"] == model_id:
                return self._json_response(request, entry)
        return self._error(
            request,
            error_reply(404, f"The model '{model_id}' does not exist", code="model_not_found"),
        )

    def _call(
        self, request: httpx.Request, api: Api, api_key: str | None
    ) -> ChatCall | httpx.Response:
        call = api.parse(request.content, security_tier=request.headers.get("x-security-tier"))
        if isinstance(call, ErrorReply):
            return self._error(request, call)
        if api_key is None and self.forward_sdk_api_key:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                call.options["api_key"] = token.strip()
        timeout = request.extensions.get("timeout")
        if isinstance(timeout, dict):
            call.options["timeout"] = httpx.Timeout(**timeout)
        return call

    def _reply(
        self, request: httpx.Request, api: Api, call: ChatCall, reply: ChatCompletion
    ) -> httpx.Response:
        headers = reply_headers(reply)
        body, headers["content-type"] = api.answer(call, reply)
        if call.stream:
            headers["cache-control"] = "no-cache"
        content = _one_copy(body)
        return self._response(200, headers=headers, content=content, request=request)

    def _failure(self, request: httpx.Request, exc: NomyoError) -> httpx.Response:
        """The SDK's view of a nomyo exception (raises for network failures and key errors)."""
        if isinstance(exc, APITimeoutError):
            raise self._http.ReadTimeout(str(exc), request=request) from exc
        if isinstance(exc, APIConnectionError):
            raise self._http.ConnectError(str(exc), request=request) from exc
        if isinstance(exc, KeyFormatError):
            raise exc
        return self._error(request, failure_reply(exc))


class OpenAITransport(_OpenAIRouting, httpx.BaseTransport):
    """An ``httpx.BaseTransport`` that answers the official SDK through
    :class:`~nomyo.SyncSecureChatCompletion` (see :func:`openai_http_client`)."""

    chat: SyncSecureChatCompletion
    _chat_class = SyncSecureChatCompletion

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        routed = self._route(request, self.chat.api_key)
        if not isinstance(routed, tuple):
            return routed
        api, call = routed
        try:
            with streamed(call.stream):
                reply = self.chat.create(call.model, call.messages, **call.options)
        except NomyoError as exc:
            return self._failure(request, exc)
        return self._reply(request, api, call, reply)

    def close(self) -> None:
        self.chat.close()


class AsyncOpenAITransport(_OpenAIRouting, httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` that answers the official SDK through
    :class:`~nomyo.SecureChatCompletion` (see :func:`openai_async_http_client`)."""

    chat: SecureChatCompletion
    _chat_class = SecureChatCompletion

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        routed = self._route(request, self.chat.api_key)
        if not isinstance(routed, tuple):
            return routed
        api, call = routed
        try:
            with streamed(call.stream):
                reply = await self.chat.create(call.model, call.messages, **call.options)
        except NomyoError as exc:
            return self._failure(request, exc)
        return self._reply(request, api, call, reply)

    async def aclose(self) -> None:
        await self.chat.aclose()


_FLAVOURED: dict[tuple[type, ModuleType], type] = {}


def _flavoured(cls: type[_T], base: str, http: ModuleType) -> type[_T]:
    """``cls`` as a transport of ``http`` (httpx2 for openai >= 3): same code, its base class,
    its ``Response`` and exceptions."""
    if http is httpx:
        return cls
    made = _FLAVOURED.get((cls, http))
    if made is None:
        namespace = {"_http": http, "__module__": cls.__module__, "__doc__": cls.__doc__}
        made = type(cls.__name__, (cls, getattr(http, base)), namespace)
        _FLAVOURED[(cls, http)] = made
    return made


def _timeout(http: ModuleType) -> Any:
    default = default_timeout()
    return http.Timeout(
        connect=default.connect, read=default.read, write=default.write, pool=default.pool
    )


def openai_http_client(
    base_url: str | None = None,
    api_key: str | None = None,
    *,
    models: Sequence[str] | None = None,
    forward_sdk_api_key: bool = False,
    **client_options: Any,
) -> _sdk_httpx.Client:
    """An httpx ``Client`` for ``openai.OpenAI(http_client=...)`` that encrypts end to end.

    It is a client of the httpx the installed SDK builds on (``httpx2.Client`` for openai 3,
    ``httpx.Client`` before), so the SDK's type checks and exception mapping apply.

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
    client: _sdk_httpx.Client = _sdk_client(
        OpenAITransport,
        "Client",
        base_url,
        api_key,
        models=models,
        forward_sdk_api_key=forward_sdk_api_key,
        **client_options,
    )
    return client


@same_arguments_as(openai_http_client)
def openai_async_http_client(*args: Any, **kwargs: Any) -> _sdk_httpx.AsyncClient:
    """An httpx ``AsyncClient`` for ``openai.AsyncOpenAI(http_client=...)``; see
    :func:`openai_http_client` (options of :class:`~nomyo.SecureChatCompletion`)."""
    client: _sdk_httpx.AsyncClient = _sdk_client(
        AsyncOpenAITransport, "AsyncClient", *args, **kwargs
    )
    return client


def _sdk_client(transport_class: type[Any], client_name: str, *args: Any, **kwargs: Any) -> Any:
    """A ``Client``/``AsyncClient`` of the SDK's httpx over a transport of ours."""
    http = sdk_http()
    base = "BaseTransport" if client_name == "Client" else "AsyncBaseTransport"
    transport = cast("Any", _flavoured(transport_class, base, http))(*args, **kwargs)
    return getattr(http, client_name)(transport=transport, timeout=_timeout(http), trust_env=False)
