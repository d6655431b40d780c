"""The native transport: HTTP/1.1 and HTTP/2 over rustls in Rust, for the protocol's two
requests.

A request runs as one task on a native I/O runtime without the GIL: the envelope is sealed
there, sent, and the reply read and opened into locked memory; Python only turns the
payload into JSON before and the opened JSON into objects after. The event loop never runs
RSA, AES or TLS, and no ciphertext or plaintext ``bytes`` object is made for a completion.

It is used unless something only httpx can honour is asked for: a caller's ``transport`` or
``http_client``, an ``ssl.SSLContext`` for ``verify``, a proxy that is not ``http://`` (an
``https://`` or SOCKS proxy), or ``NOMYO_TRANSPORT=httpx``. Trust anchors are the ones httpx
would load for the same ``verify``: ``SSL_CERT_FILE`` or ``SSL_CERT_DIR`` from the
environment, else certifi's bundle, or the given CA file or folder.

Proxies from the environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``,
either case, and the system's settings where ``urllib`` reads them) are chosen per URL by
httpx's own rules (:func:`proxy_for`), read once when the transport is made, as httpx does.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import ssl
import sys
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import nomyo._core as _core  # the native module itself, not the package above it

from .._config import Timeouts
from .._constants import MAX_ERROR_BODY_BYTES, MAX_KEY_BYTES, READ_TIMEOUT
from .._effects import Effect, Flow, RateWait, TransportLike
from .._exceptions import ConfigurationError
from .._signature import takes_arguments_of
from ._completions import TOKENS, LoopCompletions, settle
from .base import Reply, SealedRequest, Timings, Transport

__all__ = [
    "NativeCall",
    "NativePool",
    "NativeTransport",
    "ProxyRule",
    "environment_proxies",
    "native_trust",
    "proxy_configured",
    "proxy_for",
]

_PROXY_VARIABLES = ("https_proxy", "http_proxy", "all_proxy")
_USER_AGENT = f"nomyo-rs/{_core.__version__}"

#: Pools inherited from a parent process: kept alive, never used (see NativePool).
_ORPHANED: list[_core.Transport] = []


def proxy_configured() -> bool:
    """A proxy is configured in the environment (or the system, where httpx reads it)."""
    if any(os.environ.get(v) or os.environ.get(v.upper()) for v in _PROXY_VARIABLES):
        return True
    if sys.platform in ("darwin", "win32"):  # system proxy settings, as httpx reads them
        import urllib.request

        return bool(urllib.request.getproxies())
    return False


@dataclass(frozen=True)
class ProxyRule:
    """One of httpx's proxy mounts: a URL pattern (``all://*example.com``, ``https://``)
    and the proxy URL for the URLs it matches (None: go direct)."""

    pattern: str
    proxy: str | None

    def __repr__(self) -> str:  # never the proxy's credentials
        return f"ProxyRule({self.pattern!r}, proxied={self.proxy is not None})"


def _environment_proxy_info() -> dict[str, str]:
    """``urllib.request.getproxies()``, which httpx reads; skipped (no import) when no
    ``*_proxy`` variable is set on a system without proxy settings of its own."""
    if sys.platform not in ("darwin", "win32") and not any(
        name.lower().endswith("_proxy") for name in os.environ
    ):
        return {}
    import urllib.request

    return urllib.request.getproxies()


def _ip_host(hostname: str, kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> bool:
    try:
        kind(hostname.split("/")[0])
    except ValueError:
        return False
    return True


def environment_proxies() -> list[ProxyRule]:
    """The proxy rules httpx (``trust_env=True``) derives from the environment, most
    specific first: ``httpx._utils.get_environment_proxies`` ordered as httpx orders its
    mounts. Empty when no proxy applies."""
    info = _environment_proxy_info()
    mounts: dict[str, str | None] = {}
    for scheme in ("http", "https", "all"):
        if info.get(scheme):
            value = info[scheme]
            mounts[f"{scheme}://"] = value if "://" in value else f"http://{value}"
    for hostname in (host.strip() for host in info.get("no", "").split(",")):
        if hostname == "*":
            return []
        if not hostname:
            continue
        if "://" in hostname:
            mounts[hostname] = None
        elif _ip_host(hostname, ipaddress.IPv4Address):
            mounts[f"all://{hostname}"] = None
        elif _ip_host(hostname, ipaddress.IPv6Address):
            mounts[f"all://[{hostname}]"] = None
        elif hostname.lower() == "localhost":
            mounts[f"all://{hostname}"] = None
        else:
            mounts[f"all://*{hostname}"] = None
    if not any(proxy is not None for proxy in mounts.values()):
        return []
    rules = [_Pattern(pattern, proxy) for pattern, proxy in mounts.items()]
    rules.sort(key=lambda rule: rule.priority)  # stable, as httpx's sorted(dict)
    return [ProxyRule(rule.pattern, rule.proxy) for rule in rules]


class _Pattern:
    """httpx's ``URLPattern`` (same parsing, through ``httpx.URL``, and the same rules)."""

    def __init__(self, pattern: str, proxy: str | None) -> None:
        import httpx

        url = httpx.URL(pattern)
        self.pattern = pattern
        self.proxy = proxy
        self.scheme = "" if url.scheme == "all" else url.scheme
        self.host = "" if url.host == "*" else url.host
        self.port = url.port
        self.host_regex: re.Pattern[str] | None
        if not url.host or url.host == "*":
            self.host_regex = None
        elif url.host.startswith("*."):
            self.host_regex = re.compile(f"^.+\\.{re.escape(url.host[2:])}$")
        elif url.host.startswith("*"):
            self.host_regex = re.compile(f"^(.+\\.)?{re.escape(url.host[1:])}$")
        else:
            self.host_regex = re.compile(f"^{re.escape(url.host)}$")

    @property
    def priority(self) -> tuple[int, int, int]:
        return (0 if self.port is not None else 1, -len(self.host), -len(self.scheme))

    def matches(self, scheme: str, host: str, port: int | None) -> bool:
        if self.scheme and self.scheme != scheme:
            return False
        if self.host and self.host_regex is not None and not self.host_regex.match(host):
            return False
        return self.port is None or self.port == port


def proxy_for(url: str, rules: list[ProxyRule]) -> str | None:
    """The proxy URL httpx would use for ``url`` under ``rules`` (None: direct)."""
    if not rules:
        return None
    import httpx

    target = httpx.URL(url)
    for rule in rules:
        if _Pattern(rule.pattern, rule.proxy).matches(target.scheme, target.host, target.port):
            return rule.proxy
    return None


def _native_proxy(proxy: str) -> bool:
    """A proxy the native engine speaks to: plain ``http://`` (TLS to the router is
    tunnelled with ``CONNECT``)."""
    return proxy.split("://", 1)[0].lower() == "http"


def native_trust(verify: object, custom_http: bool) -> list[str] | None:
    """The CA files (or folders) the native transport should trust; None: use httpx.

    Raises:
        ConfigurationError: ``NOMYO_TRANSPORT`` has an unknown value, or verification was
            turned off.
    """
    choice = os.environ.get("NOMYO_TRANSPORT", "").strip().lower()
    if choice not in ("", "native", "httpx"):
        raise ConfigurationError("NOMYO_TRANSPORT must be 'native' or 'httpx'")
    if verify is False:
        raise ConfigurationError("certificate verification cannot be turned off")
    if choice == "httpx" or custom_http or isinstance(verify, ssl.SSLContext):
        return None
    if any(r.proxy is not None and not _native_proxy(r.proxy) for r in environment_proxies()):
        return None  # an https:// or SOCKS proxy: httpx speaks to it
    if isinstance(verify, (str, os.PathLike)):
        return [os.fspath(verify)]
    if os.environ.get("SSL_CERT_FILE"):
        return [os.environ["SSL_CERT_FILE"]]
    if os.environ.get("SSL_CERT_DIR"):  # like OpenSSL: several folders joined by os.pathsep
        return [d for d in os.environ["SSL_CERT_DIR"].split(os.pathsep) if d]
    import certifi

    return [certifi.where()]


#: One queue per event loop, or None where the loop cannot watch a descriptor. The loop
#: holds the queue (its reader); the queue never holds the loop.
_COMPLETIONS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopCompletions | None]
_COMPLETIONS = weakref.WeakKeyDictionary()


def _completions(loop: asyncio.AbstractEventLoop) -> LoopCompletions | None:
    try:
        found = _COMPLETIONS[loop]
    except TypeError:  # a loop without weak references: callbacks
        return None
    except KeyError:
        found = None
        if hasattr(_core, "Completions"):  # POSIX builds
            found = LoopCompletions()
            try:
                loop.add_reader(found.queue.fileno(), found.drain)
            except NotImplementedError:  # e.g. the proactor loop on Windows
                found = None
        _COMPLETIONS[loop] = found
    if found is not None and found.pid != os.getpid():
        return None  # a forked child: the descriptor is shared with the parent
    return found


class NativePool:
    """One native connection pool with the client's default timeouts.

    Args:
        trust: CA files or folders (see :func:`native_trust`).
        timeouts: default ``(connect, read, write, pool)`` seconds, ``None`` for no limit.
        secure_memory: the policy of the secret buffers sealing and opening make (``off``,
            ``best_effort`` or ``require``).
    """

    def __init__(
        self, trust: list[str], timeouts: Timeouts, *, secure_memory: str = "best_effort"
    ) -> None:
        self._trust = trust
        self._pid = os.getpid()
        self._secure_memory = secure_memory
        self._native = _core.Transport(trust, secure_memory=secure_memory)
        self.timeouts = timeouts
        self._proxy_rules = environment_proxies()
        self._proxies: dict[str, str | None] = {}

    @property
    def _transport(self) -> _core.Transport:
        """This process's pool: a forked child starts a new one and never touches (or
        frees) the parent's, whose locks and slots may be held by threads the child lacks."""
        if os.getpid() != self._pid:
            _ORPHANED.append(self._native)
            self._native = _core.Transport(self._trust, secure_memory=self._secure_memory)
            self._pid = os.getpid()
        return self._native

    def _timeouts(self, timeouts: Timeouts | None) -> _core._Timeouts:
        return (self.timeouts if timeouts is None else timeouts).seconds()

    def _body_deadline(self) -> float:
        # Like the httpx path: the whole body within the client's read timeout.
        return self.timeouts.read or READ_TIMEOUT

    @staticmethod
    def _headers(headers: Mapping[str, str]) -> list[tuple[str, str]]:
        return [("User-Agent", _USER_AGENT), ("Accept", "*/*"), *headers.items()]

    def _proxy(self, url: str) -> str | None:
        """The proxy for ``url`` (httpx's choice), remembered per URL."""
        try:
            return self._proxies[url]
        except KeyError:
            chosen = proxy_for(url, self._proxy_rules)
            if len(self._proxies) < 64:
                self._proxies[url] = chosen
            return chosen

    def _key_request(self, url: str) -> _core._Request:
        return {
            "method": "GET",
            "url": url,
            "proxy": self._proxy(url),
            "headers": self._headers({"Accept-Encoding": "identity"}),
            "ok_limit": MAX_KEY_BYTES,
            "error_limit": MAX_KEY_BYTES,
            "timeouts": self._timeouts(None),
            "body_deadline": self._body_deadline(),
        }

    def _sealed_request(
        self,
        /,
        url: str,
        headers: Mapping[str, str],
        payload: dict[str, Any],
        server_key: _core.PublicKey,
        client_key: _core.PrivateKey,
        max_response: int,
        timeouts: Timeouts | None = None,
    ) -> _core._Request:
        return {
            "method": "POST",
            "url": url,
            "proxy": self._proxy(url),
            "headers": self._headers(headers),
            "seal": (payload, server_key),
            "open": (client_key, max_response),
            "ok_limit": max_response,
            "error_limit": MAX_ERROR_BODY_BYTES,
            "timeouts": self._timeouts(timeouts),
            "body_deadline": self._body_deadline(),
        }

    async def _run(self, request: _core._Request) -> _core.Reply:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio: trio (see _trio)
            from . import _trio

            return await _trio.run(self._transport, request)
        future: asyncio.Future[Any] = loop.create_future()
        completions = _completions(loop)
        token = 0
        if completions is not None:
            token = next(TOKENS)
            pending = self._transport.start(completions.queue, request, token=token)
            completions.futures[token] = future
        else:

            def done(ok: bool, value: Any) -> None:  # runs on a native worker thread
                loop.call_soon_threadsafe(settle, future, ok, value)

            pending = self._transport.start(done, request)
        try:
            reply: _core.Reply = await future
            return reply
        except asyncio.CancelledError:
            pending.cancel()
            if completions is not None:
                completions.futures.pop(token, None)
            raise

    def get_key(self, url: str) -> _core.Reply:
        """``GET`` the server key (body limited to ``MAX_KEY_BYTES``)."""
        return self._transport.send(self._key_request(url))

    async def aget_key(self, url: str) -> _core.Reply:
        """The awaited twin of :meth:`get_key`."""
        return await self._run(self._key_request(url))

    @takes_arguments_of(_sealed_request)
    def post_sealed(self, *args: Any, **kwargs: Any) -> _core.Reply:
        """Seal ``payload`` to ``server_key``, ``POST`` it, and open a 200 reply with
        ``client_key`` (see ``Reply.reply``)."""
        return self._transport.send(self._sealed_request(*args, **kwargs))

    @takes_arguments_of(_sealed_request)
    async def apost_sealed(self, *args: Any, **kwargs: Any) -> _core.Reply:
        """The awaited twin of :meth:`post_sealed`."""
        return await self._run(self._sealed_request(*args, **kwargs))

    def close(self) -> None:
        """Close idle connections (requests in flight finish; the client refuses new ones)."""
        if os.getpid() == self._pid:
            self._native.close_idle()

    @property
    def idle_connections(self) -> int:
        return self._native.idle_connections if os.getpid() == self._pid else 0


@dataclass
class NativeCall(Effect):
    """One request on the native pool: ``send`` blocking, ``asend`` awaited."""

    send: Callable[..., _core.Reply]
    asend: Callable[..., Awaitable[_core.Reply]]
    args: tuple[Any, ...]

    def run(self, transport: TransportLike) -> _core.Reply:
        return self.send(*self.args)

    async def arun(self, transport: TransportLike) -> _core.Reply:
        return await self.asend(*self.args)


class NativeTransport(Transport):
    """The native transport: sealed, sent, read and opened in Rust without the GIL, on one
    :class:`NativePool` it owns (the same pool serves blocking and awaited calls)."""

    def __init__(
        self, trust: list[str], timeouts: Timeouts, *, secure_memory: str = "best_effort"
    ) -> None:
        self.pool = NativePool(trust, timeouts, secure_memory=secure_memory)

    def __repr__(self) -> str:
        return f"<NativeTransport idle={self.pool.idle_connections}>"

    @staticmethod
    def _failure(exc: _core.TransportError, payload_id: str | None, what: str) -> Exception:
        return Transport.connection_error(exc.kind == "timeout", exc, payload_id, what)

    def get_key(self, url: str) -> Flow[Reply]:
        try:
            exchange = yield NativeCall(self.pool.get_key, self.pool.aget_key, (url,))
        except _core.TransportError as exc:
            raise self._failure(exc, None, "fetching the server key") from exc
        return Reply(exchange.status, {}, exchange.body())

    def post_sealed(self, request: SealedRequest) -> Flow[Reply]:
        limiter = request.rate_limiter
        waited = (yield RateWait(limiter)) if limiter is not None else 0.0
        arguments = (
            request.url,
            request.headers,
            request.payload,
            request.server_key,
            request.client_key,
            request.max_response,
            Timeouts.of_call(request.timeout),
        )
        try:
            exchange = yield NativeCall(self.pool.post_sealed, self.pool.apost_sealed, arguments)
        except _core.TransportError as exc:
            raise self._failure(exc, request.payload_id, "request") from exc

        def opener() -> Flow[tuple[Any, Any, str]]:
            yield from ()
            opened: tuple[Any, Any, str] = exchange.reply()
            return opened

        opened = exchange.opened
        seal_seconds, exchange_seconds, open_seconds = exchange.timings
        return Reply(
            exchange.status,
            {} if opened else exchange.headers(),
            b"" if opened else exchange.body(),
            timings=Timings(
                exchange.sent_bytes,
                exchange.received_bytes,
                seal_seconds,
                waited,
                exchange_seconds,
                open_seconds,
            ),
            opener=opener if opened else None,
            digests=lambda: (exchange.request_sha256, exchange.reply_sha256),
        )

    def close(self) -> None:
        self.closed = True
        self.pool.close()
