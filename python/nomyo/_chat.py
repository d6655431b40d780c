"""``SecureChatCompletion`` (async) and ``SyncSecureChatCompletion`` (blocking).

The OpenAI-style entry points: ``create(model, messages, ...)`` as in the reference client,
and ``client.chat.completions.create(...)`` as in the official SDK. Both twins share
:class:`BaseSecureChat` for everything but I/O: the arguments ``create`` consumes itself,
the ``stream=True`` refusal, the request body, and loading or generating the key pair.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    Literal,
    NamedTuple,
    Protocol,
    TypeVar,
    cast,
    overload,
)

from ._aio import run_sync
from ._attestation import AttestationMode, PcrPolicy, ReplyBindingMode
from ._client import SecureCompletionClient
from ._config import ClientOptions, VerifyTypes, normalise_base_url, resolve_api_key
from ._constants import (
    DEFAULT_MAX_RETRIES,
    MAX_REQUEST_BYTES,
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
)
from ._core import PrivateKey
from ._exceptions import InvalidRequestError
from ._keys import Password, password_from_env, save_key_pair
from ._lifecycle import AsyncCloseable, Closeable
from ._memory import SecureMemoryOption
from ._params import (
    NOT_GIVEN,
    CreateArguments,
    NotGiven,
    RequestOptions,
    TimeoutTypes,
    create_signature,
    split_arguments,
)
from ._pipeline import ClientT, HttpClientT, TransportT
from ._ratelimit import RateLimiter
from ._receipts import streamed
from ._response import ChatCompletion
from ._stream import AsyncStream, Stream
from ._sync_client import SyncSecureCompletionClient

if TYPE_CHECKING:
    import httpx  # noqa: F401  (the twins' generic arguments name it)
    from typing_extensions import Unpack

__all__ = [
    "AsyncChat",
    "AsyncCompletions",
    "BaseSecureChat",
    "SecureChatCompletion",
    "SyncChat",
    "SyncCompletions",
    "SyncSecureChatCompletion",
    "checked_messages",
]


class PreparedRequest(NamedTuple):
    """A checked ``create`` call: its plaintext body, payload id and options (``api_key``
    resolved to the client's when not given)."""

    payload: dict[str, Any]
    payload_id: str
    options: RequestOptions


Messages = Iterable[Mapping[str, Any]]


def checked_messages(messages: object) -> list[Any]:
    """``messages`` as a list of message objects, checked before anything is encrypted.

    Raises:
        TypeError: ``messages`` is a string, a mapping or not iterable, or holds an item
            that is not a mapping (a message such as ``{"role": "user", "content": "hi"}``).
    """
    shape = "a list of messages such as [{'role': 'user', 'content': 'hello'}]"
    if isinstance(messages, (str, bytes, bytearray, Mapping)):
        raise TypeError(f"messages must be {shape}, not a {type(messages).__name__}")
    if isinstance(messages, list):
        items: list[Any] = messages
    else:
        try:
            items = list(cast("Iterable[Any]", messages))
        except TypeError:
            raise TypeError(f"messages must be {shape}, not a {type(messages).__name__}") from None
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise TypeError(
                f"messages[{index}] must be a message mapping such as "
                f"{{'role': 'user', 'content': 'hello'}}, not a {type(item).__name__}"
            )
    if any(not isinstance(item, dict) for item in items):
        items = [item if isinstance(item, dict) else dict(item) for item in items]
    return items


class BaseSecureChat(Generic[ClientT, TransportT, HttpClientT]):
    """What the async and the blocking chat client share (everything but I/O)."""

    client: ClientT

    def __init__(
        self,
        base_url: str | None = None,
        allow_http: bool = False,
        api_key: str | None = None,
        secure_memory: SecureMemoryOption = True,
        key_dir: str | os.PathLike[str] | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        *,
        key_password: Password = None,
        timeout: TimeoutTypes = None,
        verify: VerifyTypes = True,
        server_key_fingerprint: str | Iterable[str] | None = None,
        known_hosts: bool | str | os.PathLike[str] | None = None,
        attestation: AttestationMode = "off",
        expected_pcrs: PcrPolicy | Literal["tofu"] | None = None,
        transport: TransportT | None = None,
        http_client: HttpClientT | None = None,
        rate_limit: bool | RateLimiter | None = None,
        trusted_aik: str | Iterable[str] | None = None,
        reply_binding: ReplyBindingMode = "off",
        max_request_size: int = MAX_REQUEST_BYTES,
        receipts: bool | str | os.PathLike[str] | None = None,
        known_pcrs: str | os.PathLike[str] | None = None,
        key_rotation_interval: float | NotGiven | None = NOT_GIVEN,
    ) -> None:
        options = ClientOptions(
            base_url,
            allow_http,
            secure_memory,
            max_retries,
            timeout=timeout,
            verify=verify,
            server_key_fingerprint=server_key_fingerprint,
            known_hosts=known_hosts,
            attestation=attestation,
            expected_pcrs=expected_pcrs,
            transport=transport,
            http_client=http_client,
            rate_limit=rate_limit,
            trusted_aik=trusted_aik,
            reply_binding=reply_binding,
            max_request_size=max_request_size,
            receipts=receipts,
            known_pcrs=known_pcrs,
            key_rotation_interval=key_rotation_interval,
        )
        self.client = self._client_class.from_options(options)
        self.api_key = resolve_api_key(api_key)
        self._key_dir = None if key_dir is None else Path(key_dir)
        if self._key_dir is None:
            self.client.process_key.prepare()  # made in the background, ready for the first call
        self._key_password = key_password if key_password is not None else password_from_env()
        self._other_clients: dict[str, ClientT] = {}
        self._clients_lock = threading.Lock()
        # A thread lock (taken on a worker thread by the async twin): unlike an async lock it
        # is not tied to one event loop (or backend).
        self._keys_lock = threading.Lock()
        self.chat = self._chat_class(self)

    #: The class of ``client`` (and of the per-call ``base_url`` clients).
    _client_class: type[ClientT]
    #: The class of ``chat`` (``client.chat.completions.create(...)``).
    _chat_class: Callable[[Any], Any]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.client.router_url}>"

    @property
    def rate_limiter(self) -> RateLimiter | None:
        """The limiter shared by every request of this client (None: no client-side limit)."""
        return self.client.rate_limiter

    # -- keys -----------------------------------------------------------------------------

    def _load_or_generate(self) -> None:
        """Load the key dir's key (a failure is an error, never a silent regeneration).

        Without a key dir, nothing: the client seals under the process-wide pair.
        """
        if self._key_dir is None:
            return
        private_path = self._key_dir / PRIVATE_KEY_FILE
        if private_path.exists():
            public_path = self._key_dir / PUBLIC_KEY_FILE
            self.client.load_keys(
                private_path,
                public_path if public_path.exists() else None,
                password=self._key_password,
            )
            return
        key = PrivateKey.generate(self.client.key_size)
        # FileExistsError: another process created the pair first; use that one.
        with contextlib.suppress(FileExistsError):
            save_key_pair(key, self._key_dir, self._key_password)
        self.client.load_keys(private_path, password=self._key_password)

    def _client_for(self, base_url: str | None) -> ClientT:
        """The client of ``base_url`` (a per-call override); it shares this client's key.

        Raises:
            RuntimeError: this client was closed (no new per-call client is made).
        """
        self.client._check_open()
        if base_url is None or normalise_base_url(base_url) == self.client.router_url:
            return self.client
        url = normalise_base_url(base_url)
        with self._clients_lock:
            other = self._other_clients.get(url)
            if other is None:
                other = self._client_class.from_options(self.client.options.for_router(url))
                self._other_clients[url] = other
        if other.private_key is None and self.client.private_key is not None:
            other._set_key(self.client.private_key, self.client.public_key_pem)
        return other

    # -- requests -------------------------------------------------------------------------

    def _payload(
        self,
        model: str,
        messages: Messages,
        parameters: dict[str, Any],
        extra_body: Mapping[str, Any] | None,
        kwargs: dict[str, Any],
    ) -> dict[str, Any]:
        """The plaintext request: model, messages, the given parameters, then ``extra_body``.

        Raises:
            InvalidRequestError: ``stream=True`` (encrypted inference does not stream).
            TypeError: ``messages`` is not a list of message mappings.
        """
        if parameters.get("stream") or kwargs.get("stream"):
            raise InvalidRequestError(
                "stream=True is not supported: encrypted inference returns one sealed reply",
                status_code=None,
            )
        if extra_body is not None and not isinstance(extra_body, Mapping):
            raise TypeError("extra_body must be a mapping of extra request fields")
        payload: dict[str, Any] = {"model": model, "messages": checked_messages(messages)}
        payload.update(parameters)
        payload.update(kwargs)
        if extra_body:
            payload.update(extra_body)
        return payload

    def _prepare(
        self, model: str, messages: Messages, stream: object, kwargs: Mapping[str, Any]
    ) -> PreparedRequest:
        """Check the arguments of ``create`` (both twins) and build the request.

        Raises:
            TypeError / InvalidRequestError: see ``create``; RuntimeError: the client is
                closed.
        """
        given = {**kwargs, "stream": stream} if stream is not NOT_GIVEN else kwargs
        parameters, options, other = split_arguments(given)
        payload = self._payload(model, messages, parameters, options.extra_body, other)
        self._client_for(options.base_url)
        if options.api_key is None and self.api_key is not None:
            options = dataclasses.replace(options, api_key=self.api_key)
        return PreparedRequest(payload, options.payload_id or _new_payload_id(), options)


def _stream_arguments(
    stream: object, stream_options: Mapping[str, Any] | None
) -> tuple[bool, bool]:
    """``(stream, include_usage)`` of ``chat.completions.create``, checked as OpenAI does."""
    if stream_options is not None:
        if not stream:
            raise InvalidRequestError(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled."
            )
        if not isinstance(stream_options, Mapping):
            raise TypeError("stream_options must be a mapping such as {'include_usage': True}")
    if stream not in (None, True, False) and not isinstance(stream, NotGiven):
        raise TypeError("stream must be a bool")
    return bool(stream is True), bool(stream_options and stream_options.get("include_usage"))


StreamT = TypeVar("StreamT", Stream, AsyncStream)


def _as_stream(
    completion: ChatCompletion, streaming: tuple[bool, bool], stream_class: type[StreamT]
) -> ChatCompletion | StreamT:
    """The completion, or with ``stream=True`` a stream of its chunks."""
    stream, include_usage = streaming
    return stream_class(completion, include_usage=include_usage) if stream else completion


CompletionT = TypeVar("CompletionT", covariant=True)
ChunksT = TypeVar("ChunksT", covariant=True)


class CreateCall(Protocol[CompletionT, ChunksT]):
    """``chat.completions.create`` of either client, typed once: ``stream=True`` gives the
    chunks (a stream), anything else the completion; ``**kwargs`` are ``CreateArguments``."""

    @overload
    def __call__(
        self,
        model: str,
        messages: Messages,
        *,
        stream: Literal[True],
        stream_options: Mapping[str, Any] | None = None,
        **kwargs: Unpack[CreateArguments],
    ) -> ChunksT: ...

    @overload
    def __call__(
        self,
        model: str,
        messages: Messages,
        *,
        stream: Literal[False] | NotGiven | None = NOT_GIVEN,
        stream_options: None = None,
        **kwargs: Unpack[CreateArguments],
    ) -> CompletionT: ...


class AsyncCompletions:
    """``client.chat.completions`` of :class:`SecureChatCompletion`.

    ``create(...)`` takes what :meth:`SecureChatCompletion.create` takes; with
    ``stream=True`` it returns an :class:`~nomyo.AsyncStream` of chunks (emulated: the router
    answers once; the stream gives that reply back as OpenAI's chunks, see ``nomyo._stream``).
    """

    create: CreateCall[Awaitable[ChatCompletion], Awaitable[AsyncStream]]

    def __init__(self, owner: SecureChatCompletion) -> None:
        self._owner = owner
        self.create = self._create

    async def _create(self, model: str, messages: Messages, **kwargs: Any) -> Any:
        """``await client.chat.completions.create(model=..., messages=..., ...)``"""
        streaming = _stream_arguments(
            kwargs.pop("stream", NOT_GIVEN), kwargs.pop("stream_options", None)
        )
        with streamed(streaming[0]):
            completion = await self._owner.create(model, messages, **kwargs)
        return _as_stream(completion, streaming, AsyncStream)


class AsyncChat:
    """``client.chat`` of :class:`SecureChatCompletion`."""

    def __init__(self, owner: SecureChatCompletion) -> None:
        self.completions = AsyncCompletions(owner)


class SyncCompletions:
    """``client.chat.completions`` of :class:`SyncSecureChatCompletion`.

    ``create(...)`` takes what :meth:`SyncSecureChatCompletion.create` takes; with
    ``stream=True`` it returns a :class:`~nomyo.Stream` of chunks (emulated, as in
    :class:`AsyncCompletions`).
    """

    create: CreateCall[ChatCompletion, Stream]

    def __init__(self, owner: SyncSecureChatCompletion) -> None:
        self._owner = owner
        self.create = self._create

    def _create(self, model: str, messages: Messages, **kwargs: Any) -> Any:
        """``client.chat.completions.create(model=..., messages=..., ...)``"""
        streaming = _stream_arguments(
            kwargs.pop("stream", NOT_GIVEN), kwargs.pop("stream_options", None)
        )
        with streamed(streaming[0]):
            completion = self._owner.create(model, messages, **kwargs)
        return _as_stream(completion, streaming, Stream)


class SyncChat:
    """``client.chat`` of :class:`SyncSecureChatCompletion`."""

    def __init__(self, owner: SyncSecureChatCompletion) -> None:
        self.completions = SyncCompletions(owner)


def _new_payload_id() -> str:
    return str(uuid.uuid4())


CreateT = TypeVar("CreateT", bound=Callable[..., Any])


def _create_signature(create: CreateT) -> CreateT:
    """Show every keyword of ``create`` in ``help()`` and ``inspect.signature``: its typed
    ``**kwargs`` stand for the OpenAI parameters and request options of ``_params``."""
    signature = inspect.signature(create)
    owner = [p for p in signature.parameters.values() if p.name in ("self", "model", "messages")]
    parameters = create_signature(owner)
    create.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return create


class SecureChatCompletion(
    BaseSecureChat[SecureCompletionClient, "httpx.AsyncBaseTransport", "httpx.AsyncClient"],
    AsyncCloseable,
):
    """OpenAI-compatible chat completions, end-to-end encrypted to a NOMYO Router (async).

    :class:`SyncSecureChatCompletion` is its blocking twin (same arguments).

    Args:
        base_url: the router (HTTPS); default ``$NOMYO_BASE_URL``, else
            ``https://api.nomyo.ai``.
        allow_http: allow plain HTTP (local development only).
        api_key: bearer API key sent with every request (never inside the payload);
            default ``$NOMYO_API_KEY``.
        secure_memory: True (default): secrets in locked native memory where the OS allows
            (best effort); ``"require"``: fail with ``SecureMemoryError`` before sending
            when they cannot be locked; False: not locked (still zeroed). See
            :class:`~nomyo.SecureCompletionClient`.
        key_dir: load the key pair from this directory, or generate and save one there.
            None: the process-wide in-memory key pair, shared by every client without a
            key of its own and rotated every ``key_rotation_interval`` (docs/security.md).
        key_rotation_interval: seconds between rotations of that process-wide pair
            (default ``$NOMYO_KEY_ROTATION``, else 24 hours; None: never). A request in
            flight across a rotation still opens its reply.
        max_retries: retries on 429/5xx and network errors.
        key_password: password (or a callable returning it) of the key in ``key_dir``;
            default: the ``NOMYO_KEY_PASSWORD`` environment variable, if set.
        rate_limit: True keeps every request of this client to the router's public limits
            (2/s, bursts of 4 once per 10 s); a :class:`~nomyo.RateLimiter` can be shared.
        max_request_size: the most text one request may hold, in bytes (default 32 MiB); a
            larger request raises :class:`~nomyo.RequestTooLargeError` before it is
            encrypted. Keep it at most 3/4 of the router's body limit (sealing adds 1/3).
        timeout, verify, server_key_fingerprint, known_hosts, attestation, expected_pcrs,
            known_pcrs, trusted_aik, reply_binding, receipts, transport, http_client: see
            :class:`~nomyo.SecureCompletionClient`.

    Attributes:
        chat: ``client.chat.completions.create(...)``, the official SDK's call shape.
    """

    chat: AsyncChat
    _chat_class = AsyncChat
    _client_class = SecureCompletionClient

    async def _ensure_keys(self) -> None:
        if self.client.private_key is None and self._key_dir is not None:
            await run_sync(self._load_or_generate_once)

    def _load_or_generate_once(self) -> None:
        with self._keys_lock:
            if self.client.private_key is None:
                self._load_or_generate()

    @_create_signature
    async def create(
        self,
        model: str,
        messages: Messages,
        *,
        stream: bool | NotGiven | None = NOT_GIVEN,
        **kwargs: Unpack[CreateArguments],
    ) -> ChatCompletion:
        """Create an encrypted chat completion.

        The OpenAI parameters go into the encrypted request only when given (``NOT_GIVEN``
        leaves them out; None is sent as null); any other keyword goes in untouched, then
        ``extra_body``. These configure this one request instead, as in the official SDK,
        and never go into its body: ``timeout``, ``max_retries``, ``extra_headers`` (HTTP
        headers to the router; ``Authorization``/``X-Security-Tier`` may be replaced, None
        removes one), ``extra_query`` (the URL's query), and nomyo's ``security_tier``,
        ``api_key``, ``base_url`` and ``payload_id`` (the request's ``X-Payload-ID``).

        Returns:
            The decrypted ``chat.completion`` (a ``dict`` with attribute access), with
            ``_metadata`` completed.

        Raises:
            TypeError: ``messages`` is not a list of message mappings (nothing is sent).
            InvalidRequestError: ``stream=True`` (encrypted inference does not stream).
            RequestTooLargeError: the request's text exceeds ``max_request_size`` (nothing
                is sent), or the router answered 413.
            ConfigurationError: an invalid security tier, ``max_retries`` or extra header.
            SecurityError, EnvelopeError, APIError, APIConnectionError: see
                :meth:`SecureCompletionClient.send_secure_request`.
        """
        request = self._prepare(model, messages, stream, kwargs)
        await self._ensure_keys()
        client = self._client_for(request.options.base_url)
        return await client._drive(client._call_flow(*request))

    async def acreate(self, model: str, messages: Messages, **kwargs: Any) -> ChatCompletion:
        """Alias of :meth:`create`."""
        return await self.create(model, messages, **kwargs)

    async def aclose(self) -> None:
        """Close the connection pools."""
        for client in (self.client, *self._other_clients.values()):
            await client.aclose()


class SyncSecureChatCompletion(
    BaseSecureChat[SyncSecureCompletionClient, "httpx.BaseTransport", "httpx.Client"], Closeable
):
    """The blocking twin of :class:`SecureChatCompletion`; one instance serves many threads.

    Takes the same arguments, with ``transport`` an ``httpx.BaseTransport`` and
    ``http_client`` an ``httpx.Client``. The server key is fetched once, whatever the number
    of threads; the native crypto releases the GIL, so threads encrypt in parallel.
    ``chat.completions.create(...)`` is the official SDK's call shape, as on the async twin.
    """

    chat: SyncChat
    _chat_class = SyncChat
    _client_class = SyncSecureCompletionClient

    def _ensure_keys(self) -> None:
        if self.client.private_key is None and self._key_dir is not None:
            with self._keys_lock:
                if self.client.private_key is None:
                    self._load_or_generate()

    @_create_signature
    def create(
        self,
        model: str,
        messages: Messages,
        *,
        stream: bool | NotGiven | None = NOT_GIVEN,
        **kwargs: Unpack[CreateArguments],
    ) -> ChatCompletion:
        """Create an encrypted chat completion (blocking); see ``SecureChatCompletion.create``."""
        request = self._prepare(model, messages, stream, kwargs)
        self._ensure_keys()
        client = self._client_for(request.options.base_url)
        return client._drive(client._call_flow(*request))

    def close(self) -> None:
        """Close the connection pools."""
        for client in (self.client, *self._other_clients.values()):
            client.close()
