"""The request pipeline, written once: a sans-I/O core that both clients drive.

Every decision of a request lives here as a plain generator (a *flow*): the URL and headers,
the retry loop with its backoff and ``Retry-After``, the key re-fetch when the server's key
rotated, pins and known hosts, the status-to-exception map, the reply binding, the
attestation policy and ``_metadata``. A flow never does I/O: it yields an *effect*
(:class:`Ready`, :class:`Sleep`, :class:`OffLoop`, :class:`RateWait`, :class:`KeyLock`,
:class:`HttpSend`, :class:`NativeCall`) and is sent back the outcome. Each effect knows how
to run blocking (``run``) and awaited (``arun``), so the blocking client drives a flow with
:func:`drive` and the async one with :func:`adrive`; neither holds any logic of its own
(as h11 is driven by any I/O, or httpcore's twins share one pipeline).

The flows do not know their transport either: :class:`NativeSealedTransport` (sealing,
HTTP and opening in Rust) and :class:`HttpxSealedTransport` (httpx, sealing and opening
with ``_core``) both answer ``get_key(url)`` and ``post_sealed(request)`` with a
:class:`Reply`, and both raise ``APIConnectionError``/``APITimeoutError`` themselves.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, Protocol, TypeVar

from . import _aio, _core
from ._base import BaseSecureClient, KeyRotated, error_details, logger
from ._config import ClientOptions, Timeouts
from ._constants import (
    MAX_ERROR_BODY_BYTES,
    MAX_KEY_BYTES,
    PUBLIC_KEY_PATH,
)
from ._exceptions import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    EnvelopeError,
    SecurityError,
)
from ._native import NativeTransport, native_trust
from ._params import NOT_GIVEN, NotGiven, RequestOptions
from ._ratelimit import RateLimiter
from ._response import ChatCompletion
from ._retry import retry_delay
from ._signature import takes_arguments_of
from ._transport import (
    IDENTITY,
    TimeoutTypes,
    asend_streamed,
    check_caller_http,
    send_streamed,
)

if TYPE_CHECKING:
    import httpx

__all__ = [
    "HttpxSealedTransport",
    "NativeSealedTransport",
    "PipelineClient",
    "Reply",
    "SealedRequest",
    "adrive",
    "drive",
    "transport_error",
]

T = TypeVar("T")
ClientT = TypeVar("ClientT", bound="PipelineClient[Any, Any]")
TransportT = TypeVar("TransportT")
HttpClientT = TypeVar("HttpClientT")

#: A flow: yields effects, is sent their outcomes, returns its value.
Flow = Generator["Effect", Any, T]


# -- effects: the only I/O a flow asks for ------------------------------------------------


class Effect:
    """Something a flow needs done: blocking (:meth:`run`) or awaited (:meth:`arun`)."""

    def run(self, io: Any) -> Any:
        raise NotImplementedError

    async def arun(self, io: Any) -> Any:
        raise NotImplementedError


class Ready(Effect):
    """Before the first I/O: the client is open (async: its pool is on the running loop)."""

    def run(self, io: Any) -> None:
        io._check_open()

    async def arun(self, io: Any) -> None:
        io._bind_loop()


@dataclass
class Sleep(Effect):
    """Back off for ``seconds`` before a retry."""

    seconds: float

    def run(self, io: Any) -> None:
        time.sleep(self.seconds)

    async def arun(self, io: Any) -> None:
        await _aio.sleep(self.seconds)


class OffLoop(Effect):
    """CPU work (sealing, opening): on a worker thread when awaited, inline when blocking."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.fn, self.args = fn, args

    def run(self, io: Any) -> Any:
        return self.fn(*self.args)

    async def arun(self, io: Any) -> Any:
        return await _aio.run_sync(self.fn, *self.args)


@dataclass
class RateWait(Effect):
    """Wait for the rate limiter; the outcome is the seconds waited."""

    limiter: RateLimiter

    def run(self, io: Any) -> float:
        return self.limiter.wait()

    async def arun(self, io: Any) -> float:
        return await self.limiter.wait_async()


@dataclass
class KeyLock(Effect):
    """Run ``flow`` holding the client's server-key lock (one fetch at a time)."""

    flow: Flow[Any]

    def run(self, io: Any) -> Any:
        with io._server_key_lock:
            return drive(self.flow, io)

    async def arun(self, io: Any) -> Any:
        async with io._server_key_lock:
            return await adrive(self.flow, io)


@dataclass
class HttpSend(Effect):
    """One request on the client's ``httpx`` pool; the outcome is ``(response, body)``."""

    method: str
    url: str
    headers: Mapping[str, str]
    content: bytes | None = None
    timeout: Any = NOT_GIVEN
    ok_limit: int = MAX_KEY_BYTES
    error_limit: int = MAX_KEY_BYTES
    #: An error body too large (or undecodable) reads as empty instead of raising.
    error_body_optional: bool = False

    def run(self, io: Any) -> tuple[httpx.Response, bytes]:
        return send_streamed(io._http, self)

    async def arun(self, io: Any) -> tuple[httpx.Response, bytes]:
        return await asend_streamed(io._http, self)


@dataclass
class NativeCall(Effect):
    """``NativeTransport.<name>(*args)`` (blocking) or ``a<name>`` (awaited)."""

    transport: NativeTransport
    name: str
    args: tuple[Any, ...]

    def run(self, io: Any) -> _core.Exchange:
        return getattr(self.transport, self.name)(*self.args)  # type: ignore[no-any-return]

    async def arun(self, io: Any) -> _core.Exchange:
        return await getattr(self.transport, "a" + self.name)(*self.args)  # type: ignore[no-any-return]


class _Stepper(Generic[T]):
    """Steps one flow: sends it each effect's outcome (or throws its failure)."""

    def __init__(self, flow: Flow[T]) -> None:
        self.flow = flow
        self.outcome: Any = None
        self.failure: BaseException | None = None
        self.result: T

    def next(self) -> Effect | None:
        """The flow's next effect; None once it returned (its value is ``result``)."""
        failure, self.failure = self.failure, None
        try:
            return self.flow.send(self.outcome) if failure is None else self.flow.throw(failure)
        except StopIteration as stop:
            self.result = stop.value
            return None


def drive(flow: Flow[T], io: Any) -> T:
    """Run ``flow`` to its end, doing each effect blocking; returns what the flow returns."""
    stepper = _Stepper(flow)
    while (effect := stepper.next()) is not None:
        try:
            stepper.outcome = effect.run(io)
        except BaseException as exc:  # the flow handles it or lets it through
            stepper.outcome, stepper.failure = None, exc
    return stepper.result


async def adrive(flow: Flow[T], io: Any) -> T:
    """:func:`drive`, awaiting each effect on the running loop."""
    stepper = _Stepper(flow)
    while (effect := stepper.next()) is not None:
        try:
            stepper.outcome = await effect.arun(io)
        except BaseException as exc:  # a cancellation too: the flow's finally blocks run
            stepper.outcome, stepper.failure = None, exc
    return stepper.result


# -- the transports, sans I/O ---------------------------------------------------------------


def transport_error(
    exc: httpx.TransportError | _core.TransportError,
    payload_id: str | None,
    what: str = "request",
) -> APIConnectionError:
    """The nomyo exception for a network failure (a timeout or anything else) of either
    transport."""
    if isinstance(exc, _core.TransportError):
        timed_out = exc.kind == "timeout"
    else:
        import httpx

        timed_out = isinstance(exc, httpx.TimeoutException)
    if timed_out:
        return APITimeoutError(f"{what} timed out: {exc}", payload_id=payload_id)
    return APIConnectionError(f"{what} failed: {type(exc).__name__}: {exc}", payload_id=payload_id)


@dataclass
class SealedRequest:
    """One sealed completion request, as the pipeline hands it to a transport."""

    url: str
    headers: dict[str, str]
    payload: dict[str, Any]
    server_key: _core.PublicKey
    client_key: _core.PrivateKey
    max_response: int
    secure_memory: str
    timeout: TimeoutTypes | NotGiven
    payload_id: str
    rate_limiter: RateLimiter | None = None


class Timings(NamedTuple):
    """What one attempt sent and received, and how long each step took (seconds)."""

    sent_bytes: int
    received_bytes: int
    seal_seconds: float
    waited: float
    exchange_seconds: float
    open_seconds: float


@dataclass
class Reply:
    """One reply of either transport: status, headers, the body (a key, an error, or the
    sealed reply), and the timings of the attempt."""

    status: int
    headers: Mapping[str, str]
    body: bytes = b""
    encoding: str = "utf-8"
    timings: Timings = field(default_factory=lambda: Timings(0, 0, 0.0, 0.0, 0.0, 0.0))
    #: Opens a 200 reply: ``(value, processed_at, algorithm)``.
    opener: Callable[[], Flow[tuple[Any, Any, str]]] | None = field(default=None, repr=False)

    @property
    def opened(self) -> bool:
        """A 200 reply, ready to open."""
        return self.opener is not None

    def text(self) -> str:
        return self.body.decode(self.encoding, errors="replace")


class SealedTransport(Protocol):
    """What the pipeline asks of a transport."""

    def get_key(self, url: str) -> Flow[Reply]: ...
    def post_sealed(self, request: SealedRequest) -> Flow[Reply]: ...


class NativeSealedTransport:
    """The native transport: sealed, sent, read and opened in Rust without the GIL."""

    def __init__(self, native: NativeTransport) -> None:
        self.native = native

    def _call(self, name: str, *args: Any) -> NativeCall:
        return NativeCall(self.native, name, args)

    def get_key(self, url: str) -> Flow[Reply]:
        try:
            exchange = yield self._call("get_key", url)
        except _core.TransportError as exc:
            raise transport_error(exc, None, "fetching the server key") from exc
        return Reply(exchange.status, {}, exchange.body())

    def post_sealed(self, request: SealedRequest) -> Flow[Reply]:
        limiter = request.rate_limiter
        waited = (yield RateWait(limiter)) if limiter is not None else 0.0
        try:
            exchange = yield self._call(
                "post_sealed",
                request.url,
                request.headers,
                request.payload,
                request.server_key,
                request.client_key,
                request.max_response,
                Timeouts.of_call(request.timeout),
            )
        except _core.TransportError as exc:
            raise transport_error(exc, request.payload_id) from exc

        def opener() -> Flow[tuple[Any, Any, str]]:
            yield from ()
            opened: tuple[Any, Any, str] = exchange.reply()
            return opened

        opened = exchange.opened
        return Reply(
            exchange.status,
            {} if opened else exchange.headers(),
            b"" if opened else exchange.body(),
            timings=Timings(
                exchange.sent_bytes,
                exchange.received_bytes,
                exchange.seal_seconds,
                waited,
                exchange.exchange_seconds,
                exchange.open_seconds,
            ),
            opener=opener if opened else None,
        )


class HttpxSealedTransport:
    """The ``httpx`` transport: sealed and opened with ``_core``, sent by httpx."""

    def get_key(self, url: str) -> Flow[Reply]:
        import httpx  # the httpx transport only (see _native)

        try:
            response, body = yield HttpSend("GET", url, IDENTITY)
        except httpx.TransportError as exc:
            raise transport_error(exc, None, "fetching the server key") from exc
        return Reply(response.status_code, response.headers, body, response.encoding or "utf-8")

    def post_sealed(self, request: SealedRequest) -> Flow[Reply]:
        import httpx  # the httpx transport only (see _native)

        started = time.perf_counter()
        seal = functools.partial(_core.seal_json, secure_memory=request.secure_memory)
        body = yield OffLoop(seal, request.payload, request.server_key)
        sealed = time.perf_counter()
        limiter = request.rate_limiter
        waited = (yield RateWait(limiter)) if limiter is not None else 0.0
        sending = time.perf_counter()
        send = HttpSend(
            "POST",
            request.url,
            request.headers,
            content=body,
            timeout=request.timeout,
            ok_limit=request.max_response,
            error_limit=MAX_ERROR_BODY_BYTES,
            error_body_optional=True,
        )
        try:
            response, data = yield send
        except httpx.TransportError as exc:
            raise transport_error(exc, request.payload_id) from exc
        reply = Reply(
            response.status_code,
            response.headers,
            data,
            timings=Timings(
                len(body), len(data), sealed - started, waited, time.perf_counter() - sending, 0.0
            ),
        )

        def opener() -> Flow[tuple[Any, Any, str]]:
            opening = time.perf_counter()
            opened = yield _open_effect(data, request.client_key, request)
            reply.timings = reply.timings._replace(open_seconds=time.perf_counter() - opening)
            return opened  # type: ignore[no-any-return]

        if reply.status == 200:
            reply.opener = opener
        return reply


def _open_effect(data: bytes, key: _core.PrivateKey, request: SealedRequest) -> OffLoop:
    opener = functools.partial(_core.open_json, secure_memory=request.secure_memory)
    return OffLoop(opener, data, key, request.max_response)


# -- the pipeline ------------------------------------------------------------------------


class PipelineClient(BaseSecureClient, Generic[TransportT, HttpClientT]):
    """The secure-completion pipeline both clients drive (see the module docstring).

    Picks the transport (native unless something only httpx honours is asked for) and
    holds the flows; :class:`~nomyo.SecureCompletionClient` and
    :class:`~nomyo.SyncSecureCompletionClient` add a driver, a lock and a lifecycle.
    """

    _server_key_lock: Any

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
        transport, http_client = options.transport, options.http_client
        check_caller_http(transport, http_client)
        trust = native_trust(options.verify, transport is not None or http_client is not None)
        self._native = (
            None
            if trust is None
            else NativeTransport(trust, options.timeouts, secure_memory=self.secure_memory_mode)
        )
        self._transport: SealedTransport = (
            HttpxSealedTransport() if self._native is None else NativeSealedTransport(self._native)
        )
        self._owns_http = http_client is None
        self._http_options: dict[str, Any] = {
            "timeout": options.timeout,
            "verify": options.verify,
            "transport": transport,
        }
        self._http: HttpClientT | None = None
        if self._native is None:
            self._http = http_client or self._new_http()
        self._server_key_lock = self._new_lock()

    def _new_http(self) -> HttpClientT:
        """A pool of this client's kind (``httpx.AsyncClient`` or ``httpx.Client``)."""
        raise NotImplementedError

    @staticmethod
    def _new_lock() -> Any:
        """The lock of one server-key fetch at a time (a thread lock, or the loop's)."""
        raise NotImplementedError

    # -- flows ------------------------------------------------------------------------------

    def _fetch_key_flow(self) -> Flow[str]:
        """Fetch, validate (pins, known hosts) and cache the server key; returns its PEM."""
        yield Ready()
        reply = yield from self._transport.get_key(self.router_url + PUBLIC_KEY_PATH)
        return self._accept_server_key(reply.status, reply.body, reply.text())

    def _fetch_key_if_missing_flow(self) -> Flow[None]:
        if self._server_key is None:
            yield from self._fetch_key_flow()

    def _server_key_flow(self) -> Flow[_core.PublicKey]:
        """The cached server key, fetched once (under the lock) when there is none."""
        key = self._server_key
        if key is None:
            yield KeyLock(self._fetch_key_if_missing_flow())
            key = self._server_key
        assert key is not None
        return key

    def _key_changed_flow(self, used: _core.PublicKey) -> Flow[bool]:
        """After a 'cannot decrypt' reply, re-fetch the key once and report if it changed."""
        yield KeyLock(self._refetch_flow(used))
        return self._server_key != used

    def _refetch_flow(self, used: _core.PublicKey) -> Flow[None]:
        if self._server_key is used:
            yield from self._fetch_key_flow()

    def _seal_flow(self, payload: dict[str, Any]) -> Flow[bytes]:
        self._check_payload(payload)
        server_key = yield from self._server_key_flow()
        seal = functools.partial(_core.seal_json, secure_memory=self.secure_memory_mode)
        sealed: bytes = yield OffLoop(seal, payload, server_key)
        return sealed

    def _open_flow(
        self, encrypted_response: object, payload_id: str, reply_binding: str | None
    ) -> Flow[ChatCompletion]:
        key = self._require_keys()
        if not isinstance(encrypted_response, (bytes, bytearray, memoryview)):
            raise EnvelopeError("encrypted response must be bytes")
        opener = functools.partial(_core.open_json, secure_memory=self.secure_memory_mode)
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
            payload_id, options.api_key, options.security_tier, options.extra_headers
        )
        url = self._completion_url(options.extra_query)
        timeout = options.timeout
        payload, binding = self._bind_request(payload)
        yield Ready()
        refetched = False
        attempt = 0
        while True:
            try:
                return (
                    yield from self._attempt_flow(
                        payload, payload_id, headers, attempt, timeout, binding, url
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
    ) -> Flow[ChatCompletion]:
        """One attempt: seal, send, read, open (or map the error status)."""
        self._check_payload(payload)
        used_key = yield from self._server_key_flow()
        request = SealedRequest(
            url,
            headers,
            payload,
            used_key,
            self._require_keys(),
            self._max_response,
            self.secure_memory_mode,
            timeout,
            payload_id,
            self.rate_limiter,
        )
        reply = yield from self._transport.post_sealed(request)
        self._log_reply(payload_id, attempt, reply)
        if reply.opener is not None:
            value, processed_at, algorithm = yield from reply.opener()
            if logger.isEnabledFor(logging.DEBUG):
                self._log_opened(payload_id, reply.timings.open_seconds)
            return self._finish_reply(value, payload_id, processed_at, algorithm, binding)
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
