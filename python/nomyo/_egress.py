"""The egress guard of ``nomyo run``: nothing leaves the child program around the proxy.

The child's ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY`` point at this guard, a forward proxy
on a loopback port, and ``NO_PROXY`` names only the nomyo proxy. A program that honours the
proxy variables (the OpenAI and Anthropic SDKs, httpx, requests, urllib, curl, ...) then
reaches the NOMYO router only through the encrypting proxy; any other destination is refused
(``403``, nothing is sent) and reported once on stderr with the way to allow it. A program
that opens raw sockets, or ignores the variables, is not covered.

Allowed destinations (``--allow-egress HOST[:PORT]``) are connected to directly, or through
the user's own forward proxy when the environment names one (plain ``http://`` proxies, with
their credentials; ``NO_PROXY`` as the user set it). ``CONNECT`` tunnels and plain-HTTP
requests in absolute form are served; plain-HTTP requests are sent with
``Connection: close``, so each request's destination is checked.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit
from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]

from ._http_server import close_server

__all__ = ["Destination", "EgressGuard", "parse_destination"]

_HEAD_LIMIT = 64 * 1024
_READ_SIZE = 65536
_CONNECT_TIMEOUT = 30.0
_HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "upgrade"}
)


@dataclass(frozen=True)
class Destination:
    """An allowed destination: a host name or address, on one port or (None) any."""

    host: str
    port: int | None = None

    def allows(self, host: str, port: int) -> bool:
        return self.host == host.lower().strip("[]") and self.port in (None, port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """``HOST``, ``HOST:PORT``, ``[IPV6]`` or ``[IPV6]:PORT``.

    Raises:
        ValueError: not of that form.
    """
    parts = urlsplit("//" + text.strip())
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"not HOST[:PORT]: {text!r}") from None
    host = parts.hostname
    if not host or parts.path or parts.username or parts.query:
        raise ValueError(f"not HOST[:PORT]: {text!r}")
    return Destination(host.lower(), port)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _split_target(target: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit("//" + target)
    if not parts.hostname:
        raise _Refused(400, f"not a destination: {target!r}")
    try:
        return parts.hostname.lower(), parts.port or default_port
    except ValueError:
        raise _Refused(400, f"not a destination: {target!r}") from None


class EgressGuard:
    """A forward proxy on ``127.0.0.1`` that lets only allowed destinations through.

    Args:
        allowed: destinations let through (besides ``always``).
        always: let through in any case (the nomyo proxy itself, for a program whose proxy
            library does not read ``host:port`` entries of ``NO_PROXY``).
        report: called once per refused ``host:port`` with a line for the user.
        environ: where the user's own forward proxy is read (the ``*_proxy`` variables).
    """

    def __init__(
        self,
        allowed: Sequence[Destination] = (),
        *,
        always: Sequence[Destination] = (),
        report: Callable[[str], None] = print,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.allowed = [*allowed, *always]
        self._report = report
        self._proxies = _user_proxies(environ)
        self.refused: dict[str, int] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the value of the child's proxy variables."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> EgressGuard:
        self._server = await asyncio.start_server(
            self._on_connection, "127.0.0.1", 0, limit=_HEAD_LIMIT
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        await close_server(server, self._tasks)

    async def __aenter__(self) -> EgressGuard:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def child_environment(self, bypass: str) -> dict[str, str]:
        """The variables that route the child through this guard; ``bypass`` (the nomyo
        proxy's ``host:port``) is the only entry of ``NO_PROXY``."""
        env = {}
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            env[name] = env[name.lower()] = self.url
        env["NO_PROXY"] = env["no_proxy"] = bypass
        return env

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except _Refused as exc:
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                body = (exc.message + "\n").encode("utf-8")
                writer.write(
                    f"HTTP/1.1 {exc.status} {_REASONS.get(exc.status, 'Error')}\r\n"
                    "Content-Type: text/plain; charset=utf-8\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
                    + body
                )
                await asyncio.wait_for(writer.drain(), 5.0)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
            pass  # the program went away, or sent no HTTP
        except asyncio.LimitOverrunError:
            pass  # a request head beyond 64 KiB: closed
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _CONNECT_TIMEOUT)
        lines = head.decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        target, _, version = rest.partition(" ")
        headers = [tuple(line.split(":", 1)) for line in lines[1:] if ":" in line]
        if method.upper() == "CONNECT":
            host, port = _split_target(target, 443)
            self._check(host, port)
            upstream = await self._open(host, port, "https")
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await _tunnel(reader, writer, *upstream)
            return
        url = urlsplit(target)
        if url.scheme != "http" or not url.hostname:
            raise _Refused(400, "the nomyo egress guard takes CONNECT and http:// requests only")
        host, port = _split_target(url.netloc.rpartition("@")[2], 80)
        self._check(host, port)
        proxy = self._proxy_for(host, "http")
        request_target = (
            target if proxy else (url.path or "/") + (f"?{url.query}" if url.query else "")
        )
        kept = [f"{k}:{v}" for k, v in headers if k.strip().lower() not in _HOP_HEADERS]
        if proxy and proxy[2]:
            kept.append(f"Proxy-Authorization: {proxy[2]}")
        new_head = "\r\n".join([f"{method} {request_target} {version}", *kept, "Connection: close"])
        up_reader, up_writer = await self._dial(host, port, proxy)
        up_writer.write(new_head.encode("latin-1") + b"\r\n\r\n")
        await _tunnel(reader, writer, up_reader, up_writer)

    def _check(self, host: str, port: int) -> None:
        if any(destination.allows(host, port) for destination in self.allowed):
            return
        where = str(Destination(host, port))
        if where not in self.refused:
            self._report(
                f"nomyo run: refused a connection to {where}: it would not be end-to-end "
                f"encrypted by NOMYO, and nothing was sent. To allow it: nomyo run "
                f"--allow-egress {where} ... (or --egress allow to turn the guard off)"
            )
        self.refused[where] = self.refused.get(where, 0) + 1
        raise _Refused(
            403,
            f"nomyo run: {where} is not allowed (not end-to-end encrypted by NOMYO; nothing "
            f"was sent); allow it with --allow-egress {where}",
        )

    def _proxy_for(self, host: str, scheme: str) -> tuple[str, int, str | None] | None:
        """The user's proxy for ``host`` (host, port, ``Proxy-Authorization``), or None."""
        proxies = self._proxies
        url = proxies.get(scheme) or proxies.get("all")
        if not url or proxy_bypass_environment(host, proxies):
            return None
        parts = urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme != "http" or not parts.hostname:
            raise _Refused(
                502,
                f"your proxy {parts.scheme}://{parts.hostname} is not plain http://: the "
                "nomyo egress guard cannot forward through it",
            )
        auth = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            auth = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
        return parts.hostname, parts.port or 80, auth

    async def _dial(
        self, host: str, port: int, proxy: tuple[str, int, str | None] | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        where = (proxy[0], proxy[1]) if proxy else (host, port)
        try:
            return await asyncio.wait_for(asyncio.open_connection(*where), _CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            raise _Refused(502, f"cannot connect to {where[0]}:{where[1]}: {exc}") from None

    async def _open(
        self, host: str, port: int, scheme: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to ``host:port``: direct, or tunnelled through the user's proxy."""
        proxy = self._proxy_for(host, scheme)
        reader, writer = await self._dial(host, port, proxy)
        if proxy is None:
            return reader, writer
        target = str(Destination(host, port))
        auth = f"Proxy-Authorization: {proxy[2]}\r\n" if proxy[2] else ""
        writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n".encode())
        reply = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _CONNECT_TIMEOUT)
        status = reply.split(b" ", 2)[1] if reply.count(b" ") >= 1 else b""
        if status != b"200":
            writer.close()
            raise _Refused(502, f"your proxy refused {target}: {reply.splitlines()[0]!r}")
        return reader, writer


_REASONS = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}


def _user_proxies(environ: Mapping[str, str] | None) -> dict[str, str]:
    """The user's ``*_proxy`` variables (lower-case names win, as in urllib)."""
    if environ is None:
        return urllib.request.getproxies_environment()
    proxies: dict[str, str] = {}
    for upper in (False, True):
        for name, value in environ.items():
            key = name.lower()
            if value and key.endswith("_proxy") and (name == key) != upper:
                proxies.setdefault(key[: -len("_proxy")], value)
    return proxies


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_READ_SIZE):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()


async def _tunnel(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    """Bytes both ways until both sides are done (each end passed on as a half-close)."""
    try:
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    finally:
        up_writer.close()
