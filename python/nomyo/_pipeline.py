"""The request pipeline, written once: a sans-I/O core that both clients drive.

Every decision of a request lives here as a plain generator (a *flow*): the URL and headers,
the retry loop with its backoff and ``Retry-After``, the key re-fetch when the server's key
rotated, pins and known hosts, the status-to-exception map, the reply binding, the
attestation policy and ``_metadata``. A flow never does I/O: it yields an *effect*
(``nomyo._effects``: :class:`Sleep`, :class:`OffLoop`, :class:`RateWait`, :class:`KeyLock`,
:class:`BindLoop`, and the transports' own) and is sent back the outcome. Each effect knows
how to run blocking and awaited, so the blocking client drives a flow with :func:`drive` and
the async one with :func:`adrive`; neither holds any logic of its own (as h11 is driven by
any I/O, or httpcore's twins share one pipeline).

The flows do not know their transport either (``nomyo._transports``): the native one and
the ``httpx`` one both answer ``get_key(url)`` and ``post_sealed(request)`` with a
:class:`Reply`, and both raise ``APIConnectionError``/``APITimeoutError`` themselves.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from ._base import BaseSecureClient, KeyRotated, error_details, logger
from ._config import ClientOptions
from ._constants import PUBLIC_KEY_PATH
from ._core import PrivateKey, PublicKey, open_json, seal_json
from ._effects import BindLoop, Effect, Flow, KeyLock, OffLoop, Sleep, adrive, drive
from ._exceptions import APIConnectionError, APIError, EnvelopeError, SecurityError
from ._params import NOT_GIVEN, NotGiven, RequestOptions, TimeoutTypes
from ._receipts import ReceiptContext
from ._response import ChatCompletion
from ._retry import retry_delay
from ._signature import takes_arguments_of
from ._transports import Reply, SealedRequest, Transport, make_transport

__all__ = [
    "Effect",
    "Flow",
    "OffLoop",
    "PipelineClient",
    "Reply",
    "SealedRequest",
    "Sleep",
    "adrive",
    "drive",
]

ClientT = TypeVar("ClientT", bound="PipelineClient[Any, Any]")
TransportT = TypeVar("TransportT")
HttpClientT = TypeVar("HttpClientT")

# -- the pipeline ------------------------------------------------------------------------


class PipelineClient(BaseSecureClient, Generic[TransportT, HttpClientT]):
    """The secure-completion pipeline both clients drive (see the module docstring).

    Holds one transport (``make_transport`` picks it) and the flows;
    :class:`~nomyo.SecureCompletionClient` and :class:`~nomyo.SyncSecureCompletionClient`
    add a driver, a lock and a lifecycle.
    """

    _server_key_lock: Any
    #: Whether this client's calls are awaited (its httpx pool, if any, is async).
    _asynchronous = False

    @takes_arguments_of(ClientOptions.__init__)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._configure(ClientOptions(*args, **kwargs))

    @classmethod
    def from_options(cls: type[ClientT], options: ClientOptions) -> ClientT:
        """A client of ``options`` (made once, e.g. by the chat client)."""
        client = cls.__new__(cls)
        client._configure(options)
        return client

    def _configure(self, options: ClientOptions) -> None:
        super().__init__(options)
        self._transport: Transport = make_transport(options, asynchronous=self._asynchronous)
        self._server_key_lock = self._new_lock()

    @staticmethod
    def _new_lock() -> Any:
        """The lock of one server-key fetch at a time (a thread lock, or the loop's)."""
        raise NotImplementedError

    # -- flows ------------------------------------------------------------------------------

    def _fetch_key_flow(self) -> Flow[str]:
        """Fetch, validate (pins, known hosts) and cache the server key; returns its PEM."""
        yield from self._ready_flow()
        reply = yield from self._transport.get_key(self.router_url + PUBLIC_KEY_PATH)
        return self._accept_server_key(reply.status, reply.body, reply.text())

    def _ready_flow(self) -> Flow[None]:
        """Before the first I/O: the client is open and, awaited, on the running loop (a
        new loop gets a new server-key lock)."""
        self._check_open()
        if (yield BindLoop()):
            self._server_key_lock = self._new_lock()

    def _fetch_key_if_missing_flow(self) -> Flow[None]:
        if self._server_key is None:
            yield from self._fetch_key_flow()

    def _server_key_flow(self) -> Flow[PublicKey]:
        """The cached server key, fetched once (under the lock) when there is none."""
        key = self._server_key
        if key is None:
            yield KeyLock(self._server_key_lock, self._fetch_key_if_missing_flow())
            key = self._server_key
        assert key is not None
        return key

    def _key_changed_flow(self, used: PublicKey) -> Flow[bool]:
        """After a 'cannot decrypt' reply, re-fetch the key once and report if it changed."""
        yield KeyLock(self._server_key_lock, self._refetch_flow(used))
        return self._server_key != used

    def _refetch_flow(self, used: PublicKey) -> Flow[None]:
        if self._server_key is used:
            yield from self._fetch_key_flow()

    def _seal_flow(self, payload: dict[str, Any]) -> Flow[bytes]:
        self._check_payload(payload)
        server_key = yield from self._server_key_flow()
        seal = functools.partial(seal_json, secure_memory=self.secure_memory_mode)
        sealed: bytes = yield OffLoop(seal, payload, server_key)
        return sealed

    def _sealing_key_flow(self) -> Flow[tuple[PrivateKey, str]]:
        """The key a request is sealed under (waiting off the loop for the process key)."""
        found = self._sealing_key()
        if found is None:
            pair = yield OffLoop(self.process_key.wait)
            found = pair.private_key, pair.quoted_public_key
        return found

    def _open_flow(
        self, encrypted_response: object, payload_id: str, reply_binding: str | None
    ) -> Flow[ChatCompletion]:
        found = self._sealing_key()
        if found is None:  # no key of its own, and no process pair yet: nothing was sealed
            raise SecurityError(
                "no client key: send a request first, or call generate_keys() or load_keys()"
            )
        key = found[0]
        if not isinstance(encrypted_response, (bytes, bytearray, memoryview)):
            raise EnvelopeError("encrypted response must be bytes")
        opener = functools.partial(open_json, secure_memory=self.secure_memory_mode)
        value, processed_at, algorithm = yield OffLoop(
            opener, bytes(encrypted_response), key, self._max_response
        )
        return self._finish_reply(value, payload_id, processed_at, algorithm, reply_binding)

    def _request_flow(
        self,
        /,
        payload: dict[str, Any],
        payload_id: str,
        api_key: str | None = None,
        security_tier: str | None = None,
        *,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
        max_retries: int | NotGiven = NOT_GIVEN,
        extra_headers: Mapping[str, str | None] | None = None,
        extra_query: Mapping[str, object] | None = None,
    ) -> Flow[ChatCompletion]:
        """``send_secure_request`` (both clients): see :meth:`_call_flow`."""
        options = RequestOptions(
            security_tier=security_tier,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            extra_headers=extra_headers,
            extra_query=extra_query,
        )
        return (yield from self._call_flow(payload, payload_id, options))

    def _call_flow(
        self, payload: dict[str, Any], payload_id: str, options: RequestOptions
    ) -> Flow[ChatCompletion]:
        """Check everything, then attempt, back off and retry, re-fetch a rotated key."""
        retries = self._retries(options.max_retries)
        self._check_request_size(payload)
        headers = self._request_headers(
            payload_id,
            options.api_key,
            options.security_tier,
            options.extra_headers,
            public_key="",
        )
        url = self._completion_url(options.extra_query)
        timeout = options.timeout
        payload, binding = self._bind_request(payload)
        yield from self._ready_flow()
        # Every attempt of this request is sealed under this key, which it keeps until its
        # reply is opened (a rotation in between does not fail it).
        key, public_key = yield from self._sealing_key_flow()
        headers["X-Public-Key"] = public_key
        refetched = False
        attempt = 0
        while True:
            try:
                return (
                    yield from self._attempt_flow(
                        payload, payload_id, headers, attempt, timeout, binding, url, key
                    )
                )
            except KeyRotated:
                if refetched:
                    raise SecurityError(
                        "the server could not decrypt the request after a key re-fetch",
                        payload_id=payload_id,
                    ) from None
                refetched = True
            except (SecurityError, EnvelopeError) as exc:
                if exc.payload_id is None:
                    exc.payload_id = payload_id
                raise
            except (APIConnectionError, APIError) as exc:
                if not self._should_retry(exc, attempt, retries):
                    raise
                delay = retry_delay(attempt, getattr(exc, "retry_after", None))
                attempt += 1
                self._log_retry(payload_id, exc, attempt, delay, retries)
                yield Sleep(delay)

    def _attempt_flow(
        self,
        payload: dict[str, Any],
        payload_id: str,
        headers: dict[str, str],
        attempt: int,
        timeout: TimeoutTypes | NotGiven,
        binding: str | None,
        url: str,
        key: PrivateKey,
    ) -> Flow[ChatCompletion]:
        """One attempt: seal, send, read, open (or map the error status) under ``key``."""
        self._check_payload(payload)
        used_key = yield from self._server_key_flow()
        request = SealedRequest(
            url,
            headers,
            payload,
            used_key,
            key,
            self._max_response,
            self.secure_memory_mode,
            timeout,
            payload_id,
            self.rate_limiter,
        )
        reply = yield from self._transport.post_sealed(request)
        self._log_reply(payload_id, attempt, reply)
        if reply.opener is not None:
            receipt = ReceiptContext.of(self, request, reply.digests)
            try:
                value, processed_at, algorithm = yield from reply.opener()
            except (SecurityError, EnvelopeError) as exc:
                if receipt is not None:  # a 200 reply that does not open: refused
                    receipt.write(None, "off" if binding is None else "not_checked", exc)
                raise
            if logger.isEnabledFor(logging.DEBUG):
                self._log_opened(payload_id, reply.timings.open_seconds)
            return self._finish_reply(value, payload_id, processed_at, algorithm, binding, receipt)
        details = error_details(reply.body)
        if self._is_decrypt_failure(reply.status, details) and (
            yield from self._key_changed_flow(used_key)
        ):
            raise KeyRotated
        sent = reply.timings.sent_bytes
        raise self._status_error(reply.status, details, reply.headers, payload_id, sent)

    def _log_reply(self, payload_id: str, attempt: int, reply: Reply) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            sent, received, seal, waited, exchange, _ = reply.timings
            self._log_exchange(
                payload_id, attempt, sent, reply.status, received, seal, waited, exchange
            )
