"""HTTP/1.1 server connections on asyncio streams, parsed with h11.

The serving code of ``nomyo proxy`` and of the development router (``nomyo.testing`` builds on
it; nothing here imports the testing package). Every server bounds what a peer can make it
hold: request head and body sizes, receive and idle timeouts, the number of open connections,
the bytes of request bodies buffered at once across all of them, and the bytes of replies
waiting for readers that are slow or do not read at all. Past a bound the server sheds load (a
503 reply with ``Retry-After``, or the connection that sat idle longest is closed) and keeps
serving the requests it admitted; a reader that takes nothing for the write timeout is
dropped (with what was buffered for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import cast

import h11

from ._server_limits import Limits, default_max_connections

try:
    import fcntl
    import termios

    #: ``SIOCOUTQ`` (= ``TIOCOUTQ``): unsent bytes in a socket's send queue (Linux).
    _SIOCOUTQ: int | None = termios.TIOCOUTQ if sys.platform.startswith("linux") else None
except ImportError:  # pragma: no cover - not POSIX
    _SIOCOUTQ = None

__all__ = [
    "Connections",
    "HTTPRequest",
    "HTTPResponse",
    "Limits",
    "close_server",
    "default_max_connections",
]

_READ_SIZE = 65536
_TRICKLE_PIECES = 20
#: The first bytes of every body do not count against the shared budget, so that ordinary
#: small requests are served while large ones wait for room (at most this much per open
#: connection beyond ``max_buffered_bytes``).
_FREE_BODY_BYTES = 64 * 1024
#: A request head still arriving after this many seconds may be closed to make room.
_SLOW_HEAD_SECONDS = 2.0
_LINGER_SECONDS = 2.0
#: Replies are handed to the socket in pieces of this size, so the transport never holds a
#: second copy of a whole reply that its reader does not take.
_WRITE_PIECE = 256 * 1024
#: Like request bodies, the first bytes of every reply do not count against the reply budget:
#: small replies are always sent.
_FREE_REPLY_BYTES = 64 * 1024


@dataclass
class HTTPRequest:
    """A fully received request; header names are lower case."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        """The first value of a header, or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return None

    def __repr__(self) -> str:
        return f"HTTPRequest({self.method} {self.path}, {len(self.body)} bytes)"


@dataclass
class HTTPResponse:
    """A reply. ``drop`` closes the connection without answering; ``trickle`` slows the body.

    A ``bytearray`` body (a decrypted reply, say) is written as it is and zeroed once sent.
    """

    status: int
    body: bytes | bytearray = b""
    content_type: str | None = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False
    drop: bool = False
    trickle: float = 0.0

    @classmethod
    def error(cls, status: int, detail: str, *, close: bool = False) -> HTTPResponse:
        """A JSON ``{"detail": ...}`` error reply."""
        body = json.dumps({"detail": detail}).encode("utf-8")
        return cls(status, body, "application/json", close=close)

    def __repr__(self) -> str:
        return f"HTTPResponse({self.status}, {len(self.body)} bytes)"


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    """The ``Date`` header value, formatted once per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


Handler = Callable[[HTTPRequest], Awaitable[HTTPResponse]]


class _Closed(Exception):
    """The peer went away, or the connection must end now."""


class _Budget:
    """Bytes held at once over every connection of one server (request bodies, or replies)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def force(self, size: int) -> None:
        self.used += size

    def give_back(self, size: int) -> None:
        self.used -= size


class _Connection:
    """One server-side HTTP/1.1 connection."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handler: Handler,
        server: Connections,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.handler = handler
        self.server = server
        self.limits = server.limits
        self.conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes
        )
        self._unread_input = False
        #: Waiting for the first byte of a request (may be closed to make room).
        self.idle = True
        self.idle_since = 0.0
        #: Receiving a request head since this loop time (None: not in a head); a head still
        #: incomplete after ``_SLOW_HEAD_SECONDS`` may be closed to make room too.
        self.head_since: float | None = None
        #: Body bytes this connection holds against the server's budget.
        self.reserved = 0
        #: Reply bytes this connection holds against the server's reply budget.
        self.reply_reserved = 0

    async def run(self) -> None:
        """Serve requests until the peer closes, an error occurs or keep-alive ends."""
        try:
            while True:
                request = await self._receive_request()
                if isinstance(request, HTTPResponse):
                    # An error found while receiving: part of the request may be unread.
                    self._unread_input = True
                    await self._send_response(request, head_only=False)
                    return
                if request is None:
                    return
                if self.server.replies.used >= self.server.replies.limit:
                    # Replies already wait for readers up to the budget: open no more.
                    request.body = b""
                    self._release()
                    self.server.shed += 1
                    await self._send_response(self.server.overloaded_response(), head_only=False)
                    return
                try:
                    response = await self.handler(request)
                finally:
                    request.body = b""
                    self._release()
                if response.drop:
                    return
                if not self._reserve_reply(response, head_only=request.method == "HEAD"):
                    _wipe(response.body)
                    self.server.shed += 1
                    await self._send_response(self.server.overloaded_response(), head_only=False)
                    return
                try:
                    await self._send_response(response, head_only=request.method == "HEAD")
                finally:
                    self._release_reply()
                if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is not h11.DONE:
                    return
                self.conn.start_next_cycle()
        except (_Closed, OSError, asyncio.TimeoutError, h11.LocalProtocolError):
            return
        finally:
            self._release()
            self._release_reply()
            await self._close()

    def _release(self) -> None:
        if self.reserved:
            self.server.budget.give_back(self.reserved)
            self.reserved = 0

    def _reserve_reply(self, response: HTTPResponse, *, head_only: bool) -> bool:
        """Count the reply against the reply budget; False: over it (answer 503 instead).

        A reply larger than the whole budget is still sent when no other reply waits, so
        that no reply is refused for its size alone.
        """
        size = 0 if head_only else max(0, len(response.body) - _FREE_REPLY_BYTES)
        if not size:
            return True
        replies = self.server.replies
        if not replies.take(size):
            if replies.used:
                return False
            replies.force(size)
        self.reply_reserved = size
        return True

    def _release_reply(self) -> None:
        if self.reply_reserved:
            self.server.replies.give_back(self.reply_reserved)
            self.reply_reserved = 0

    def _mark_idle(self, idle: bool) -> None:
        self.idle = idle
        if idle:
            self.idle_since = asyncio.get_running_loop().time()

    async def _read_event(self, deadline: float) -> h11.Event:
        """The next h11 event, reading from the socket until ``deadline`` (loop time)."""
        loop = asyncio.get_running_loop()
        while True:
            event = self.conn.next_event()
            if event is h11.PAUSED:
                raise _Closed  # a pipelined request while we still answer: not supported here
            if event is not h11.NEED_DATA:
                assert not isinstance(event, type)
                return event
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise asyncio.TimeoutError
            data = await asyncio.wait_for(self.reader.read(_READ_SIZE), remaining)
            self.conn.receive_data(data)

    async def _receive_request(self) -> HTTPRequest | HTTPResponse | None:
        """A complete request; an error reply to send before closing; None to close silently."""
        loop = asyncio.get_running_loop()
        started = bool(self.conn.trailing_data[0])
        try:
            # Wait for the first bytes under the idle timeout, then for the whole request
            # under the request timeout.
            if not started:
                self._mark_idle(True)
                data = await asyncio.wait_for(
                    self.reader.read(_READ_SIZE), self.limits.idle_timeout
                )
                self.conn.receive_data(data)
                started = bool(data)
            self._mark_idle(False)
            deadline = loop.time() + self.limits.request_timeout
            self.head_since = loop.time()
            try:
                event = await self._read_event(deadline)
            finally:
                self.head_since = None
            if isinstance(event, h11.ConnectionClosed):
                return None
            if not isinstance(event, h11.Request):
                return HTTPResponse.error(400, "invalid HTTP request", close=True)
            too_large = self._declared_too_large(event)
            if too_large is not None:
                return too_large
            if self.conn.they_are_waiting_for_100_continue:
                await self._write(
                    self.conn.send(h11.InformationalResponse(status_code=100, headers=[]))
                )
            body = bytearray()
            while True:
                part = await self._read_event(deadline)
                if isinstance(part, h11.Data):
                    if len(body) + len(part.data) > self.limits.max_body:
                        return self._too_large()
                    counted = max(0, len(body) + len(part.data) - _FREE_BODY_BYTES)
                    counted -= self.reserved
                    if counted > 0 and not self.server.budget.take(counted):
                        self.server.shed += 1
                        return self.server.overloaded_response()
                    self.reserved += max(counted, 0)
                    body += part.data
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:
                    return None
        except h11.RemoteProtocolError as exc:
            self.server._logger.debug("invalid HTTP request: %s", exc)
            status = exc.error_status_hint if 400 <= exc.error_status_hint < 500 else 400
            return HTTPResponse.error(status, "invalid HTTP request", close=True)
        except asyncio.TimeoutError:
            if not started:
                return None  # idle keep-alive connection: close quietly
            return HTTPResponse.error(400, "request timed out", close=True)
        headers = [
            (name.decode("latin-1").lower(), value.decode("latin-1"))
            for name, value in event.headers
        ]
        return HTTPRequest(
            method=event.method.decode("ascii", "replace"),
            target=event.target.decode("latin-1"),
            headers=headers,
            body=bytes(body),
        )

    def _declared_too_large(self, request: h11.Request) -> HTTPResponse | None:
        for name, value in request.headers:
            if name.lower() == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return None  # h11 already rejected malformed lengths
                if declared > self.limits.max_body:
                    return self._too_large()
        return None

    def _too_large(self) -> HTTPResponse:
        return HTTPResponse.error(
            413, f"request body exceeds {self.limits.max_body} bytes", close=True
        )

    async def _send_response(self, response: HTTPResponse, *, head_only: bool) -> None:
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            raise _Closed
        headers: list[tuple[str, str]] = [
            ("Server", self.server.server_name),
            ("Date", _http_date()),
        ]
        if response.content_type is not None:
            headers.append(("Content-Type", response.content_type))
        headers.append(("Content-Length", str(len(response.body))))
        headers.extend(response.headers)
        if response.close or self.conn.their_state is not h11.DONE:
            headers.append(("Connection", "close"))
        await self._write(
            self.conn.send(
                h11.Response(
                    status_code=response.status, headers=headers, reason=_reason(response.status)
                )
            )
        )
        try:
            if not head_only and response.body:
                if response.trickle > 0:
                    await self._trickle(response.body, response.trickle)
                else:
                    # Views of the body (no joined copy: it may be a decrypted reply), one
                    # piece at a time, so a reader that does not read holds one piece in the
                    # transport, not a second copy of the reply.
                    view = memoryview(response.body)
                    try:
                        for start in range(0, len(view), _WRITE_PIECE):
                            data = h11.Data(data=cast(bytes, view[start : start + _WRITE_PIECE]))
                            for piece in self.conn.send_with_data_passthrough(data) or ():
                                await self._write(piece)
                    finally:
                        view.release()
            await self._write(self.conn.send(h11.EndOfMessage()))
            if isinstance(response.body, bytearray):
                await self._flush()
        except BaseException:
            if (
                isinstance(response.body, bytearray)
                and self.writer.transport.get_write_buffer_size()
            ):
                self.writer.transport.abort()  # views of the body wait in it: drop them first
            raise
        finally:
            _wipe(response.body)  # the caller's wipeable copy

    async def _trickle(self, body: bytes | bytearray, seconds: float) -> None:
        pieces = min(_TRICKLE_PIECES, len(body))
        step = -(-len(body) // pieces)
        pause = seconds / pieces
        for start in range(0, len(body), step):
            await asyncio.sleep(pause)
            await self._write(
                self.conn.send(h11.Data(data=cast(bytes, body[start : start + step])))
            )

    async def _write(self, data: bytes | bytearray | None) -> None:
        if not data:
            return
        if self.writer.is_closing():
            raise _Closed
        self.writer.write(data)
        if self.writer.transport.get_write_buffer_size():
            await self._drain()

    async def _flush(self) -> None:
        """Wait until the transport holds nothing more of ours.

        From Python 3.12 asyncio's transports keep views of what they have not sent yet (no
        copy), and ``drain()`` returns once the buffer is below its low-water mark, not empty:
        a body zeroed then would send zeros as its last bytes.
        """
        transport = self.writer.transport
        if not transport.get_write_buffer_size():
            return
        high, low = transport.get_write_buffer_limits()
        transport.set_write_buffer_limits(high=0, low=0)  # drain() now waits for empty
        try:
            await self._drain()
        finally:
            if not transport.is_closing():
                transport.set_write_buffer_limits(high=high, low=low)

    async def _drain(self) -> None:
        """Wait until the peer took our buffered bytes; drop it if it takes none for the
        write timeout (a slow reader that makes progress is waited for)."""
        transport = self.writer.transport
        while True:
            before = _unsent(transport)
            try:
                await asyncio.wait_for(self.writer.drain(), self.limits.write_timeout)
                return
            except asyncio.TimeoutError:
                if _unsent(transport) < before:
                    continue  # it reads, slowly
                transport.abort()  # it does not: drop it and what waits for it
                raise

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            if self._unread_input:
                await self._linger()
            self.writer.close()
            try:
                await asyncio.wait_for(self.writer.wait_closed(), 5.0)
            except asyncio.TimeoutError:
                self.writer.transport.abort()  # unsent bytes for a peer that does not read

    async def _linger(self) -> None:
        """Half-close and discard unread input for a while before closing.

        Closing a socket with unread data makes the kernel send a reset, which can destroy
        the error reply (413, 400) before the client reads it.
        """
        if self.writer.can_write_eof():
            self.writer.write_eof()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _LINGER_SECONDS
        while (remaining := deadline - loop.time()) > 0:
            if not await asyncio.wait_for(self.reader.read(_READ_SIZE), remaining):
                return


def _unsent(transport: asyncio.WriteTransport) -> int:
    """Bytes the peer has not taken yet: in the transport, and (Linux) in the kernel's send
    queue, which the kernel refills only in large steps (so that alone shows progress)."""
    pending = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if _SIOCOUTQ is not None and sock is not None:
        with contextlib.suppress(OSError, ValueError):
            out = fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0")
            pending += int.from_bytes(out, sys.byteorder, signed=True)
    return pending


def _wipe(body: bytes | bytearray) -> None:
    """Zero a ``bytearray`` body (a wipeable copy, say a decrypted reply)."""
    if isinstance(body, bytearray):
        body[:] = bytes(len(body))


def _overloaded() -> HTTPResponse:
    return HTTPResponse.error(503, "the server is overloaded: try again later", close=True)


def _with_retry_after(response: HTTPResponse) -> HTTPResponse:
    if not any(name.lower() == "retry-after" for name, _ in response.headers):
        response.headers.append(("Retry-After", "1"))
    response.close = True
    return response


async def close_server(server: asyncio.Server, tasks: Iterable[asyncio.Task[None]]) -> None:
    """Stop listening, cancel the connections' ``tasks`` and wait (bounded) for the end."""
    server.close()
    open_tasks = list(tasks)
    for task in open_tasks:
        task.cancel()
    if open_tasks:
        await asyncio.gather(*open_tasks, return_exceptions=True)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(server.wait_closed(), 5.0)


class Connections:
    """The open connections of one server: admission, the body budget, and closing them all.

    Args:
        name: what the log calls this server (``"proxy"``, ``"dev router"``).
        limits: the bounds every connection keeps.
        server_name: the ``Server`` header.
        logger: where connection failures are logged.
        overloaded: the reply when load is shed (503; ``close`` is forced).
    """

    def __init__(
        self,
        name: str,
        limits: Limits,
        *,
        server_name: str = "nomyo",
        logger: logging.Logger | None = None,
        overloaded: Callable[[], HTTPResponse] = _overloaded,
    ) -> None:
        self._name = name
        self.limits = limits
        self.server_name = server_name
        self._logger = logger or logging.getLogger("nomyo.server")
        self._overloaded = overloaded
        self.budget = _Budget(limits.max_buffered_bytes)
        self.replies = _Budget(limits.reply_bytes)
        self._open: dict[asyncio.Task[None], _Connection] = {}
        #: Connections closed or refused to make room, and bodies refused for the budget.
        self.evicted = 0
        self.refused = 0
        self.shed = 0

    @property
    def open(self) -> int:
        """Connections open now."""
        return len(self._open)

    @property
    def buffered_bytes(self) -> int:
        """Request body bytes held now."""
        return self.budget.used

    @property
    def reply_bytes(self) -> int:
        """Reply bytes (beyond each reply's first 64 KiB) waiting for their readers now."""
        return self.replies.used

    def overloaded_response(self) -> HTTPResponse:
        return _with_retry_after(self._overloaded())

    async def serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handler: Handler,
    ) -> None:
        """Serve one connection (an ``asyncio.start_server`` callback), tracked until it ends."""
        task = asyncio.current_task()
        if not self._admit():
            self.refused += 1
            await self._refuse(writer)
            return
        connection = _Connection(reader, writer, handler, self)
        connection._mark_idle(True)
        if task is not None:
            self._open[task] = connection
        try:
            await connection.run()
        except asyncio.CancelledError:
            # Cancelled by close() or to make room: end quietly (asyncio's stream callback
            # on Python < 3.12 would report a cancelled connection task as an error).
            writer.close()
        except Exception:  # pragma: no cover - a bug; keep serving other connections
            self._logger.exception("%s connection failed", self._name)
            writer.close()
        finally:
            if task is not None:
                self._open.pop(task, None)

    def _admit(self) -> bool:
        """Room for one more connection, made by closing the longest-idle one if needed."""
        if len(self._open) < self.limits.connections:
            return True
        candidates = [(c.idle_since, t) for t, c in self._open.items() if c.idle and not t.done()]
        if not candidates:
            # No idle connection: one that has dribbled its request head for a while (a
            # client sends a head at once; a slow-loris attack does not).
            slow = asyncio.get_running_loop().time() - _SLOW_HEAD_SECONDS
            candidates = [
                (c.head_since, t)
                for t, c in self._open.items()
                if c.head_since is not None and c.head_since < slow and not t.done()
            ]
        if not candidates:
            return False
        _, oldest = min(candidates, key=lambda item: item[0])
        connection = self._open.pop(oldest)
        connection.writer.close()
        oldest.cancel()
        self.evicted += 1
        return True

    async def _refuse(self, writer: asyncio.StreamWriter) -> None:
        """Answer 503 without reading the request, then close."""
        response = self.overloaded_response()
        head = (
            f"HTTP/1.1 {response.status} {_reason(response.status).decode()}\r\n"
            f"Server: {self.server_name}\r\n"
            f"Content-Type: {response.content_type or 'application/octet-stream'}\r\n"
            f"Content-Length: {len(response.body)}\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in response.headers)
            + "Connection: close\r\n\r\n"
        )
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            writer.write(head.encode("latin-1") + response.body)
            await asyncio.wait_for(writer.drain(), 1.0)
        writer.close()

    async def close(self, server: asyncio.Server) -> None:
        """Stop listening, cancel every open connection and wait (bounded) for the end."""
        await close_server(server, self._open)
