"""``SecureChatCompletion`` (async) and ``SyncSecureChatCompletion`` (blocking).

The OpenAI-style entry points: ``create(model, messages, ...)`` as in the reference client,
and ``client.chat.completions.create(...)`` as in the official SDK. Both twins share
:class:`BaseSecureChat` for everything but I/O: the arguments ``create`` consumes itself,
the ``stream=True`` refusal, the request body, and loading or generating the key pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from . import _core
from ._attestation import AttestationMode, PcrPolicy
from ._base import BaseSecureClient
from ._client import SecureCompletionClient
from ._config import resolve_api_key
from ._constants import DEFAULT_MAX_RETRIES, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE
from ._exceptions import ConfigurationError, InvalidRequestError
from ._keys import Password, password_from_env, save_key_pair
from ._params import (
    NOT_GIVEN,
    OPENAI_PARAMETERS,
    NotGiven,
    SecurityTier,
    given_parameters,
)
from ._ratelimit import RateLimiter, make_rate_limiter
from ._response import ChatCompletion
from ._sync_client import SyncSecureCompletionClient
from ._transport import TimeoutTypes, VerifyTypes

if TYPE_CHECKING:
    import httpx

__all__ = [
    "CLIENT_ARGUMENTS",
    "RELAY_REFUSED_FIELDS",
    "AsyncChat",
    "AsyncCompletions",
    "BaseSecureChat",
    "SecureChatCompletion",
    "SyncChat",
    "SyncCompletions",
    "SyncSecureChatCompletion",
]

#: Arguments of ``create`` that configure the client instead of going into the request.
CLIENT_ARGUMENTS = ("security_tier", "api_key", "base_url", "extra_body", "timeout")
#: What a relayed request body (proxy, SDK transport) may not carry: client settings that would
#: redirect the relay, swap its API key, or change its timeouts. The tier is handled apart.
RELAY_REFUSED_FIELDS = tuple(a for a in CLIENT_ARGUMENTS if a != "security_tier")
#: Official-SDK arguments that would change the HTTP request to the router, which nomyo
#: builds itself; refused rather than silently put into the encrypted body.
UNSUPPORTED_ARGUMENTS = ("extra_headers", "extra_query")

ClientT = TypeVar("ClientT", bound=BaseSecureClient)
Messages = Iterable[Mapping[str, Any]]


class BaseSecureChat(Generic[ClientT]):
    """What the async and the blocking chat client share (everything but I/O)."""

    client: ClientT

    def _setup(
        self,
        base_url: str | None,
        api_key: str | None,
        key_dir: str | os.PathLike[str] | None,
        key_password: Password,
        http_client: object,
        options: dict[str, Any],
    ) -> None:
        options["rate_limit"] = make_rate_limiter(options.get("rate_limit"))
        self._options = options
        self.client = self._new_client(base_url, http_client)
        self.api_key = resolve_api_key(api_key)
        self._key_dir = None if key_dir is None else Path(key_dir)
        self._key_password = key_password if key_password is not None else password_from_env()
        self._other_clients: dict[str, ClientT] = {}
        self._clients_lock = threading.Lock()

    def _new_client(self, base_url: str | None, http_client: object = None) -> ClientT:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.client.router_url}>"

    @property
    def rate_limiter(self) -> RateLimiter | None:
        """The limiter shared by every request of this client (None: no client-side limit)."""
        return self.client.rate_limiter

    # -- keys -----------------------------------------------------------------------------

    def _load_or_generate(self) -> None:
        """Load the key dir's key (a failure is an error, never a silent regeneration)."""
        if self._key_dir is None:
            self.client.generate_keys()
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
        key = _core.PrivateKey.generate(self.client.key_size)
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
        if base_url is None or base_url.rstrip("/") == self.client.router_url:
            return self.client
        url = base_url.rstrip("/")
        with self._clients_lock:
            other = self._other_clients.get(url)
            if other is None:
                other = self._new_client(url)
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
            ConfigurationError: an official-SDK argument nomyo cannot honour.
        """
        if parameters.get("stream") or kwargs.get("stream"):
            raise InvalidRequestError(
                "stream=True is not supported: encrypted inference returns one sealed reply",
                status_code=None,
            )
        for name in UNSUPPORTED_ARGUMENTS:
            if name in kwargs:
                raise ConfigurationError(
                    f"{name} is not supported: the request to the router is built by nomyo "
                    "(put extra request fields in extra_body)"
                )
        if not isinstance(messages, list):
            messages = list(messages)
        payload: dict[str, Any] = {"model": model, "messages": messages}
        payload.update(parameters)
        payload.update(kwargs)
        if extra_body:
            payload.update(extra_body)
        return payload

    def _api_key_for(self, api_key: str | None) -> str | None:
        return api_key if api_key is not None else self.api_key


def _new_payload_id() -> str:
    return str(uuid.uuid4())


class SecureChatCompletion(BaseSecureChat[SecureCompletionClient]):
    """OpenAI-compatible chat completions, end-to-end encrypted to a NOMYO Router (async).

    :class:`SyncSecureChatCompletion` is its blocking twin (same arguments).

    Args:
        base_url: the router (HTTPS); default ``$NOMYO_BASE_URL``, else
            ``https://api.nomyo.ai``.
        allow_http: allow plain HTTP (local development only).
        api_key: bearer API key sent with every request (never inside the payload);
            default ``$NOMYO_API_KEY``.
        secure_memory: accepted for compatibility; secrets always stay in native memory.
        key_dir: load the key pair from this directory, or generate and save one there.
            None: a fresh in-memory key pair for this client.
        max_retries: retries on 429/5xx and network errors.
        key_password: password (or a callable returning it) of the key in ``key_dir``;
            default: the ``NOMYO_KEY_PASSWORD`` environment variable, if set.
        rate_limit: True keeps every request of this client to the router's public limits
            (2/s, bursts of 4 once per 10 s); a :class:`~nomyo.RateLimiter` can be shared.
        timeout, verify, server_key_fingerprint, known_hosts, attestation, expected_pcrs,
            transport, http_client: see :class:`~nomyo.SecureCompletionClient`.

    Attributes:
        chat: ``client.chat.completions.create(...)``, the official SDK's call shape.
    """

    def __init__(
        self,
        base_url: str | None = None,
        allow_http: bool = False,
        api_key: str | None = None,
        secure_memory: bool = True,
        key_dir: str | os.PathLike[str] | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        *,
        key_password: Password = None,
        timeout: TimeoutTypes = None,
        verify: VerifyTypes = True,
        server_key_fingerprint: str | Iterable[str] | None = None,
        known_hosts: bool | str | os.PathLike[str] | None = None,
        attestation: AttestationMode = "off",
        expected_pcrs: PcrPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
        rate_limit: bool | RateLimiter | None = None,
    ) -> None:
        options: dict[str, Any] = {
            "known_hosts": known_hosts,
            "attestation": attestation,
            "expected_pcrs": expected_pcrs,
            "allow_http": allow_http,
            "secure_memory": secure_memory,
            "max_retries": max_retries,
            "timeout": timeout,
            "verify": verify,
            "server_key_fingerprint": server_key_fingerprint,
            "transport": transport,
            "rate_limit": rate_limit,
        }
        self._setup(base_url, api_key, key_dir, key_password, http_client, options)
        # A thread lock taken in the executor: unlike asyncio.Lock it is not tied to one loop.
        self._keys_lock = threading.Lock()
        self.chat = AsyncChat(self)

    def _new_client(
        self, base_url: str | None, http_client: object = None
    ) -> SecureCompletionClient:
        client = cast("httpx.AsyncClient | None", http_client)
        return SecureCompletionClient(base_url, http_client=client, **self._options)

    async def _ensure_keys(self) -> _core.PrivateKey:
        if self.client.private_key is not None:
            return self.client.private_key
        await asyncio.get_running_loop().run_in_executor(None, self._load_or_generate_once)
        assert self.client.private_key is not None
        return self.client.private_key

    def _load_or_generate_once(self) -> None:
        with self._keys_lock:
            if self.client.private_key is None:
                self._load_or_generate()

    async def create(
        self,
        model: str,
        messages: Messages,
        *,
        frequency_penalty: float | NotGiven | None = NOT_GIVEN,
        logit_bias: Mapping[str, int] | NotGiven | None = NOT_GIVEN,
        logprobs: bool | NotGiven | None = NOT_GIVEN,
        max_completion_tokens: int | NotGiven | None = NOT_GIVEN,
        max_tokens: int | NotGiven | None = NOT_GIVEN,
        n: int | NotGiven | None = NOT_GIVEN,
        parallel_tool_calls: bool | NotGiven = NOT_GIVEN,
        presence_penalty: float | NotGiven | None = NOT_GIVEN,
        reasoning_effort: str | NotGiven | None = NOT_GIVEN,
        response_format: Mapping[str, Any] | NotGiven = NOT_GIVEN,
        seed: int | NotGiven | None = NOT_GIVEN,
        stop: str | Sequence[str] | NotGiven | None = NOT_GIVEN,
        stream: bool | NotGiven | None = NOT_GIVEN,
        temperature: float | NotGiven | None = NOT_GIVEN,
        tool_choice: str | Mapping[str, Any] | NotGiven = NOT_GIVEN,
        tools: Iterable[Mapping[str, Any]] | NotGiven = NOT_GIVEN,
        top_logprobs: int | NotGiven | None = NOT_GIVEN,
        top_p: float | NotGiven | None = NOT_GIVEN,
        user: str | NotGiven = NOT_GIVEN,
        security_tier: SecurityTier | str | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        **kwargs: Any,
    ) -> ChatCompletion:
        """Create an encrypted chat completion.

        The OpenAI parameters go into the encrypted request only when given (``NOT_GIVEN``
        leaves them out; None is sent as null); any other keyword goes in untouched, then
        ``extra_body``. ``security_tier``, ``api_key``, ``base_url`` and ``timeout`` are
        used by the client instead.

        Returns:
            The decrypted ``chat.completion`` (a ``dict`` with attribute access), with
            ``_metadata`` completed.

        Raises:
            InvalidRequestError: ``stream=True`` (encrypted inference does not stream).
            ConfigurationError: an invalid security tier, or ``extra_headers``/``extra_query``.
            SecurityError, EnvelopeError, APIError, APIConnectionError: see
                :meth:`SecureCompletionClient.send_secure_request`.
        """
        parameters = given_parameters(locals(), OPENAI_PARAMETERS)
        payload = self._payload(model, messages, parameters, extra_body, kwargs)
        self._client_for(base_url)
        await self._ensure_keys()
        client = self._client_for(base_url)
        return await client.send_secure_request(
            payload,
            _new_payload_id(),
            self._api_key_for(api_key),
            security_tier,
            timeout=timeout,
        )

    async def acreate(self, model: str, messages: Messages, **kwargs: Any) -> ChatCompletion:
        """Alias of :meth:`create`."""
        return await self.create(model, messages, **kwargs)

    async def aclose(self) -> None:
        """Close the connection pools."""
        for client in (self.client, *self._other_clients.values()):
            await client.aclose()

    async def __aenter__(self) -> SecureChatCompletion:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class SyncSecureChatCompletion(BaseSecureChat[SyncSecureCompletionClient]):
    """The blocking twin of :class:`SecureChatCompletion`; one instance serves many threads.

    Takes the same arguments, with ``transport`` an ``httpx.BaseTransport`` and
    ``http_client`` an ``httpx.Client``. The server key is fetched once, whatever the number
    of threads; the native crypto releases the GIL, so threads encrypt in parallel.

    Attributes:
        chat: ``client.chat.completions.create(...)``, the official SDK's call shape.
    """

    def __init__(
        self,
        base_url: str | None = None,
        allow_http: bool = False,
        api_key: str | None = None,
        secure_memory: bool = True,
        key_dir: str | os.PathLike[str] | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        *,
        key_password: Password = None,
        timeout: TimeoutTypes = None,
        verify: VerifyTypes = True,
        server_key_fingerprint: str | Iterable[str] | None = None,
        known_hosts: bool | str | os.PathLike[str] | None = None,
        attestation: AttestationMode = "off",
        expected_pcrs: PcrPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        http_client: httpx.Client | None = None,
        rate_limit: bool | RateLimiter | None = None,
    ) -> None:
        options: dict[str, Any] = {
            "known_hosts": known_hosts,
            "attestation": attestation,
            "expected_pcrs": expected_pcrs,
            "allow_http": allow_http,
            "secure_memory": secure_memory,
            "max_retries": max_retries,
            "timeout": timeout,
            "verify": verify,
            "server_key_fingerprint": server_key_fingerprint,
            "transport": transport,
            "rate_limit": rate_limit,
        }
        self._setup(base_url, api_key, key_dir, key_password, http_client, options)
        self._keys_lock = threading.Lock()
        self.chat = SyncChat(self)

    def _new_client(
        self, base_url: str | None, http_client: object = None
    ) -> SyncSecureCompletionClient:
        client = cast("httpx.Client | None", http_client)
        return SyncSecureCompletionClient(base_url, http_client=client, **self._options)

    def _ensure_keys(self) -> _core.PrivateKey:
        key = self.client.private_key
        if key is None:
            with self._keys_lock:
                if self.client.private_key is None:
                    self._load_or_generate()
                key = self.client.private_key
        assert key is not None
        return key

    def create(
        self,
        model: str,
        messages: Messages,
        *,
        frequency_penalty: float | NotGiven | None = NOT_GIVEN,
        logit_bias: Mapping[str, int] | NotGiven | None = NOT_GIVEN,
        logprobs: bool | NotGiven | None = NOT_GIVEN,
        max_completion_tokens: int | NotGiven | None = NOT_GIVEN,
        max_tokens: int | NotGiven | None = NOT_GIVEN,
        n: int | NotGiven | None = NOT_GIVEN,
        parallel_tool_calls: bool | NotGiven = NOT_GIVEN,
        presence_penalty: float | NotGiven | None = NOT_GIVEN,
        reasoning_effort: str | NotGiven | None = NOT_GIVEN,
        response_format: Mapping[str, Any] | NotGiven = NOT_GIVEN,
        seed: int | NotGiven | None = NOT_GIVEN,
        stop: str | Sequence[str] | NotGiven | None = NOT_GIVEN,
        stream: bool | NotGiven | None = NOT_GIVEN,
        temperature: float | NotGiven | None = NOT_GIVEN,
        tool_choice: str | Mapping[str, Any] | NotGiven = NOT_GIVEN,
        tools: Iterable[Mapping[str, Any]] | NotGiven = NOT_GIVEN,
        top_logprobs: int | NotGiven | None = NOT_GIVEN,
        top_p: float | NotGiven | None = NOT_GIVEN,
        user: str | NotGiven = NOT_GIVEN,
        security_tier: SecurityTier | str | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        **kwargs: Any,
    ) -> ChatCompletion:
        """Create an encrypted chat completion (blocking); see ``SecureChatCompletion.create``."""
        parameters = given_parameters(locals(), OPENAI_PARAMETERS)
        payload = self._payload(model, messages, parameters, extra_body, kwargs)
        self._client_for(base_url)
        self._ensure_keys()
        client = self._client_for(base_url)
        return client.send_secure_request(
            payload,
            _new_payload_id(),
            self._api_key_for(api_key),
            security_tier,
            timeout=timeout,
        )

    def close(self) -> None:
        """Close the connection pools."""
        for client in (self.client, *self._other_clients.values()):
            client.close()

    def __enter__(self) -> SyncSecureChatCompletion:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncCompletions:
    """``client.chat.completions`` of :class:`SecureChatCompletion`."""

    def __init__(self, owner: SecureChatCompletion) -> None:
        #: ``await client.chat.completions.create(model=..., messages=..., ...)``
        self.create = owner.create


class AsyncChat:
    """``client.chat`` of :class:`SecureChatCompletion`."""

    def __init__(self, owner: SecureChatCompletion) -> None:
        self.completions = AsyncCompletions(owner)


class SyncCompletions:
    """``client.chat.completions`` of :class:`SyncSecureChatCompletion`."""

    def __init__(self, owner: SyncSecureChatCompletion) -> None:
        #: ``client.chat.completions.create(model=..., messages=..., ...)``
        self.create = owner.create


class SyncChat:
    """``client.chat`` of :class:`SyncSecureChatCompletion`."""

    def __init__(self, owner: SyncSecureChatCompletion) -> None:
        self.completions = SyncCompletions(owner)
