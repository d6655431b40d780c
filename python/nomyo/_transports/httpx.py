"""The ``httpx`` transport (:class:`HttpxTransport`): one pooled ``httpx`` client per nomyo
client, bounded body reads, and the checks of a caller's httpx transport or client."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .._aio import current_loop
from .._config import Timeouts, VerifyTypes
from .._constants import MAX_ERROR_BODY_BYTES, MAX_KEY_BYTES, READ_TIMEOUT
from .._core import open_json, seal_json
from .._effects import Effect, Flow, OffLoop, RateWait, TransportLike
from .._exceptions import APITimeoutError, ConfigurationError, EnvelopeError
from .._params import NOT_GIVEN, TimeoutTypes, is_given
from .base import Reply, SealedRequest, Timings, Transport

if TYPE_CHECKING:
    import httpx

__all__ = [
    "IDENTITY",
    "HttpSend",
    "HttpxTransport",
    "TimeoutTypes",
    "VerifyTypes",
    "aread_limited",
    "asend_streamed",
    "body_deadline",
    "check_caller_http",
    "default_timeout",
    "http2_available",
    "make_async_client",
    "make_sync_client",
    "read_limited",
    "request_timeout",
    "send_streamed",
]

logger = logging.getLogger("nomyo")


def default_timeout() -> httpx.Timeout:
    """Connect fast, allow long inference."""
    return Timeouts().to_httpx()


def http2_available() -> bool:
    """True when the optional ``h2`` package is installed (``pip install nomyo-rs[http2]``)."""
    return importlib.util.find_spec("h2") is not None


def _verify(verify: VerifyTypes) -> bool | ssl.SSLContext:
    if verify is False:
        raise ConfigurationError("certificate verification cannot be turned off")
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    if isinstance(verify, ssl.SSLContext) and (
        verify.verify_mode != ssl.CERT_REQUIRED or not verify.check_hostname
    ):
        raise ConfigurationError(
            "the SSLContext must verify certificates and host names "
            "(verify_mode=CERT_REQUIRED, check_hostname=True)"
        )
    return verify


_NOT_VERIFYING = (
    "certificate verification cannot be turned off: the given {what} does not verify "
    "certificates and host names (built with verify=False or a non-verifying SSLContext)"
)
_unchecked_lock = threading.Lock()
_unchecked_logged: set[str] = set()


def _transports_of(transport: object, http_client: object) -> list[tuple[str, object]]:
    """The httpx transports a caller supplied, directly or inside an httpx client."""
    found: list[tuple[str, object]] = []
    if transport is not None:
        found.append(("transport", transport))
    if http_client is not None:
        found.append(("http_client", getattr(http_client, "_transport", None)))
        mounts = getattr(http_client, "_mounts", None)
        if isinstance(mounts, dict):
            found.extend(("http_client (proxy mount)", t) for t in mounts.values())
    return [(what, t) for what, t in found if t is not None]


def check_caller_http(transport: object, http_client: object) -> None:
    """Refuse a caller's httpx transport or client that does not verify certificates.

    httpx's own transports (also those of an ``httpx.Client``/``AsyncClient`` and its proxy
    mounts) are inspected: their SSL context must require certificates and check host
    names. ``httpx.MockTransport`` never reaches the network. Any other transport cannot be
    inspected; it is logged once per class as unchecked.

    Raises:
        ConfigurationError: a caller-supplied transport or client does not verify.
    """
    if transport is None and http_client is None:
        return
    import httpx

    for what, candidate in _transports_of(transport, http_client):
        if isinstance(candidate, httpx.MockTransport):
            continue
        if isinstance(candidate, (httpx.HTTPTransport, httpx.AsyncHTTPTransport)):
            context = getattr(getattr(candidate, "_pool", None), "_ssl_context", None)
            if isinstance(context, ssl.SSLContext):
                if context.verify_mode != ssl.CERT_REQUIRED or not context.check_hostname:
                    raise ConfigurationError(_NOT_VERIFYING.format(what=what))
                continue
        name = f"{type(candidate).__module__}.{type(candidate).__qualname__}"
        with _unchecked_lock:
            if name in _unchecked_logged:
                continue
            _unchecked_logged.add(name)
        logger.warning(
            "the %s given (%s) cannot be inspected: nomyo cannot tell whether it verifies "
            "TLS certificates; that is the caller's responsibility",
            what,
            name,
        )


def _client_options(
    *,
    timeout: TimeoutTypes = None,
    verify: VerifyTypes = True,
    transport: object = None,
    **kwargs: Any,
) -> dict[str, Any]:
    import httpx

    return {
        "transport": transport,
        "timeout": default_timeout() if timeout is None else timeout,
        "verify": _verify(verify),
        "http2": http2_available() and transport is None,
        "trust_env": True,
        "limits": httpx.Limits(max_connections=100, max_keepalive_connections=32),
        "follow_redirects": False,
        # The ciphertext does not compress; identity also rules out decompression bombs.
        "headers": {"Accept-Encoding": "identity"},
        **kwargs,
    }


def make_async_client(**options: Any) -> httpx.AsyncClient:
    """One keep-alive pool; proxies and ``SSL_CERT_FILE``/``SSL_CERT_DIR`` from the environment.

    Takes ``timeout``, ``verify``, ``transport`` (an ``httpx.AsyncBaseTransport``) and more
    ``httpx.AsyncClient`` arguments.
    """
    import httpx

    return httpx.AsyncClient(**_client_options(**options))


def make_sync_client(**options: Any) -> httpx.Client:
    """The blocking twin of :func:`make_async_client` (its pool is safe to share by threads)."""
    import httpx

    return httpx.Client(**_client_options(**options))


def request_timeout(timeout: object) -> Any:
    """A per-request ``timeout=`` for httpx: the client's default unless one was given."""
    import httpx

    if not is_given(timeout):
        return httpx.USE_CLIENT_DEFAULT
    return timeout


#: Per-request headers that keep replies uncompressed even on a caller-supplied client.
IDENTITY = {"Accept-Encoding": "identity"}


def body_deadline(client: httpx.AsyncClient | httpx.Client) -> float:
    """When reading a reply body must be over: the read timeout, for the whole body.

    httpx's read timeout applies to each read, so a server dripping one byte at a time
    would never time out without an overall deadline.
    """
    return time.monotonic() + (client.timeout.read or READ_TIMEOUT)


class _Body:
    """Accumulates a streamed body under a size limit and an overall deadline."""

    def __init__(self, response: httpx.Response, limit: int, deadline: float | None) -> None:
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise EnvelopeError(f"reply of {declared} bytes exceeds the limit of {limit} bytes")
        self.limit = limit
        self.deadline = deadline
        self.chunks = bytearray()

    def add(self, chunk: bytes) -> None:
        if len(self.chunks) + len(chunk) > self.limit:
            raise EnvelopeError(f"reply exceeds the limit of {self.limit} bytes")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise APITimeoutError("the reply body arrived too slowly (overall read deadline)")
        self.chunks += chunk


_UNDECODABLE = "the reply body could not be decoded (bad Content-Encoding)"


async def aread_limited(
    response: httpx.Response, limit: int, deadline: float | None = None
) -> bytes:
    """The awaited twin of :func:`read_limited`."""
    import httpx

    body = _Body(response, limit, deadline)
    try:
        async for chunk in response.aiter_bytes():
            body.add(chunk)
    except httpx.DecodingError:
        raise EnvelopeError(_UNDECODABLE) from None
    return bytes(body.chunks)


def read_limited(response: httpx.Response, limit: int, deadline: float | None = None) -> bytes:
    """Read a streamed body, refusing one longer than ``limit`` bytes before reading it all.

    Raises:
        EnvelopeError: the body is (or announces itself) larger than ``limit``, or its
            content encoding is broken.
        APITimeoutError: the body was still arriving at ``deadline`` (monotonic seconds).
    """
    import httpx

    body = _Body(response, limit, deadline)
    try:
        for chunk in response.iter_bytes():
            body.add(chunk)
    except httpx.DecodingError:
        raise EnvelopeError(_UNDECODABLE) from None
    return bytes(body.chunks)


class StreamedRequest(Protocol):
    """What :func:`send_streamed` sends (``_pipeline.HttpSend``)."""

    method: str
    url: str
    headers: Mapping[str, str]
    content: bytes | None
    timeout: Any
    ok_limit: int
    error_limit: int
    error_body_optional: bool


def _stream_arguments(request: StreamedRequest) -> dict[str, Any]:
    return {
        "method": request.method,
        "url": request.url,
        "content": request.content,
        "headers": request.headers,
        "timeout": request_timeout(request.timeout),
        "follow_redirects": False,
    }


def _limit(request: StreamedRequest, response: httpx.Response) -> int:
    return request.ok_limit if response.status_code == 200 else request.error_limit


def _unreadable(request: StreamedRequest, response: httpx.Response) -> bool:
    """An error body that may read as empty when it is too large or undecodable."""
    return response.status_code != 200 and request.error_body_optional


def send_streamed(client: httpx.Client, request: StreamedRequest) -> tuple[httpx.Response, bytes]:
    """Send ``request`` and read its body under its limit and the read deadline.

    Raises:
        httpx.TransportError: the network failed (the transport maps it).
        EnvelopeError / APITimeoutError: see :func:`read_limited`.
    """
    with client.stream(**_stream_arguments(request)) as response:
        try:
            body = read_limited(response, _limit(request, response), body_deadline(client))
        except EnvelopeError:
            if not _unreadable(request, response):
                raise
            body = b""
    return response, body


async def asend_streamed(
    client: httpx.AsyncClient, request: StreamedRequest
) -> tuple[httpx.Response, bytes]:
    """The awaited twin of :func:`send_streamed`."""
    async with client.stream(**_stream_arguments(request)) as response:
        try:
            limit = _limit(request, response)
            body = await aread_limited(response, limit, body_deadline(client))
        except EnvelopeError:
            if not _unreadable(request, response):
                raise
            body = b""
    return response, body


@dataclass
class HttpSend(Effect):
    """One request on the transport's ``httpx`` pool; the outcome is ``(response, body)``."""

    method: str
    url: str
    headers: Mapping[str, str]
    content: bytes | None = None
    timeout: Any = NOT_GIVEN
    ok_limit: int = MAX_KEY_BYTES
    error_limit: int = MAX_KEY_BYTES
    #: An error body too large (or undecodable) reads as empty instead of raising.
    error_body_optional: bool = False

    def run(self, transport: TransportLike) -> tuple[httpx.Response, bytes]:
        assert isinstance(transport, HttpxTransport)
        return send_streamed(transport.http, self)

    async def arun(self, transport: TransportLike) -> tuple[httpx.Response, bytes]:
        assert isinstance(transport, HttpxTransport)
        return await asend_streamed(transport.http, self)


class HttpxTransport(Transport):
    """The ``httpx`` transport: sealed and opened with ``_core``, sent by an httpx pool it
    makes (or a caller's ``http_client``, which it never closes).

    Args:
        asynchronous: an ``httpx.AsyncClient`` pool (else an ``httpx.Client``).
        http_client: the caller's pool, used as is.
        options: ``timeout``, ``verify`` and ``transport`` of the pool it makes.
    """

    def __init__(self, asynchronous: bool, http_client: Any = None, **options: Any) -> None:
        self._asynchronous = asynchronous
        self._options = options
        self._owns = http_client is None
        self.http: Any = http_client if http_client is not None else self._new_pool()

    def __repr__(self) -> str:
        kind = "async" if self._asynchronous else "blocking"
        return f"<HttpxTransport {kind}{'' if self._owns else ' (caller' + chr(39) + 's pool)'}>"

    def _new_pool(self) -> Any:
        make = make_async_client if self._asynchronous else make_sync_client
        return make(**self._options)

    @staticmethod
    def _failure(exc: httpx.TransportError, payload_id: str | None, what: str) -> Exception:
        import httpx

        timed_out = isinstance(exc, httpx.TimeoutException)
        return Transport.connection_error(timed_out, exc, payload_id, what)

    def get_key(self, url: str) -> Flow[Reply]:
        import httpx

        try:
            response, body = yield HttpSend("GET", url, IDENTITY)
        except httpx.TransportError as exc:
            raise self._failure(exc, None, "fetching the server key") from exc
        return Reply(response.status_code, response.headers, body, response.encoding or "utf-8")

    def post_sealed(self, request: SealedRequest) -> Flow[Reply]:
        import httpx

        started = time.perf_counter()
        seal = functools.partial(seal_json, secure_memory=request.secure_memory)
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
            raise self._failure(exc, request.payload_id, "request") from exc
        reply = Reply(
            response.status_code,
            response.headers,
            data,
            timings=Timings(
                len(body), len(data), sealed - started, waited, time.perf_counter() - sending, 0.0
            ),
            digests=lambda: (hashlib.sha256(body).digest(), hashlib.sha256(data).digest()),
        )

        def opener() -> Flow[tuple[Any, Any, str]]:
            opening = time.perf_counter()
            opener = functools.partial(open_json, secure_memory=request.secure_memory)
            opened = yield OffLoop(opener, data, request.client_key, request.max_response)
            reply.timings = reply.timings._replace(open_seconds=time.perf_counter() - opening)
            return opened  # type: ignore[no-any-return]

        if reply.status == 200:
            reply.opener = opener
        return reply

    def _on_new_loop(self, previous: object | None) -> None:
        """Connections belong to the loop that opened them: on a new loop (a second
        ``asyncio.run`` or ``trio.run``), a fresh pool replaces the orphaned one."""
        if previous is not None and self._owns:
            self.http = self._new_pool()

    def close(self) -> None:
        self.closed = True
        if self._owns and not self._asynchronous:
            self.http.close()

    async def aclose(self) -> None:
        self.closed = True
        if not self._owns:
            return
        if not self._asynchronous:
            self.http.close()
        elif self._loop is not None and self._loop is not current_loop():
            # The pool belongs to an event loop that has ended; its connections went with it.
            self.http = self._new_pool()
            self._loop = None
        else:
            await self.http.aclose()
