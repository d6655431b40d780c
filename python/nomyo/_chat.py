"""``SecureChatCompletion``: the OpenAI-style entry point of the reference client."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from . import _core
from ._attestation import AttestationMode, PcrPolicy
from ._client import SecureCompletionClient
from ._constants import DEFAULT_BASE_URL, DEFAULT_MAX_RETRIES, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE
from ._exceptions import InvalidRequestError
from ._keys import Password, password_from_env, save_key_pair
from ._transport import TimeoutTypes, VerifyTypes

__all__ = ["SecureChatCompletion"]

#: Arguments of ``create`` that configure the client instead of going into the request.
CLIENT_ARGUMENTS = ("security_tier", "api_key", "base_url")


class SecureChatCompletion:
    """OpenAI-compatible chat completions, end-to-end encrypted to a NOMYO Router.

    Args:
        base_url: the router (HTTPS).
        allow_http: allow plain HTTP (local development only).
        api_key: bearer API key sent with every request (never inside the payload).
        secure_memory: accepted for compatibility; secrets always stay in native memory.
        key_dir: load the key pair from this directory, or generate and save one there.
            None: a fresh in-memory key pair for this client.
        max_retries: retries on 429/5xx and network errors.
        key_password: password (or a callable returning it) of the key in ``key_dir``;
            default: the ``NOMYO_KEY_PASSWORD`` environment variable, if set.
        timeout, verify, server_key_fingerprint, known_hosts, attestation, expected_pcrs,
            transport, http_client: see :class:`SecureCompletionClient`.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
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
    ) -> None:
        self._options: dict[str, Any] = {
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
        }
        self.client = SecureCompletionClient(base_url, http_client=http_client, **self._options)
        self.api_key = api_key
        self._key_dir = None if key_dir is None else Path(key_dir)
        self._key_password = key_password if key_password is not None else password_from_env()
        self._keys_lock = asyncio.Lock()
        self._other_clients: dict[str, SecureCompletionClient] = {}

    def __repr__(self) -> str:
        return f"<SecureChatCompletion {self.client.router_url}>"

    async def _ensure_keys(self) -> _core.PrivateKey:
        if self.client.private_key is not None:
            return self.client.private_key
        async with self._keys_lock:
            if self.client.private_key is None:
                await asyncio.get_running_loop().run_in_executor(None, self._load_or_generate)
        assert self.client.private_key is not None
        return self.client.private_key

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
        save_key_pair(key, self._key_dir, self._key_password)
        self.client.load_keys(private_path, password=self._key_password)

    def _client_for(self, base_url: str | None) -> SecureCompletionClient:
        if base_url is None or base_url.rstrip("/") == self.client.router_url:
            return self.client
        url = base_url.rstrip("/")
        other = self._other_clients.get(url)
        if other is None:
            other = SecureCompletionClient(url, **self._options)
            self._other_clients[url] = other
        if other.private_key is None and self.client.private_key is not None:
            other.private_key = self.client.private_key
            other.public_key_pem = self.client.public_key_pem
        return other

    async def create(
        self, model: str, messages: list[dict[str, Any]], **kwargs: Any
    ) -> dict[str, Any]:
        """Create an encrypted chat completion.

        Every OpenAI parameter in ``kwargs`` goes into the encrypted request untouched;
        ``security_tier``, ``api_key`` and ``base_url`` are used by the client instead.

        Returns:
            The decrypted ``chat.completion`` dict, with ``_metadata`` completed.

        Raises:
            InvalidRequestError: ``stream=True`` (encrypted inference does not stream).
            ConfigurationError: an invalid security tier.
            SecurityError, EnvelopeError, APIError, APIConnectionError: see
                :meth:`SecureCompletionClient.send_secure_request`.
        """
        base_url = kwargs.pop("base_url", None)
        security_tier = kwargs.pop("security_tier", None)
        api_key = kwargs.pop("api_key", None)
        if kwargs.get("stream"):
            raise InvalidRequestError(
                "stream=True is not supported: encrypted inference returns one sealed reply",
                status_code=None,
            )
        client = self._client_for(base_url)
        await self._ensure_keys()
        client = self._client_for(base_url)
        payload = {"model": model, "messages": messages, **kwargs}
        return await client.send_secure_request(
            payload,
            str(uuid.uuid4()),
            api_key if api_key is not None else self.api_key,
            security_tier,
        )

    async def acreate(
        self, model: str, messages: list[dict[str, Any]], **kwargs: Any
    ) -> dict[str, Any]:
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
