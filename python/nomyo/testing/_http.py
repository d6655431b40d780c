"""HTTP/1.1 server connections on asyncio streams, parsed with h11 (keep-alive, size caps)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus

import h11

__all__ = ["Connections", "HTTPRequest", "HTTPResponse", "Limits", "serve_connection"]

logger = logging.getLogger("nomyo.testing")

_SERVER_NAME = b"nomyo-dev-router"
_READ_SIZE = 65536
_TRICKLE_PIECES = 20
_LINGER_SECONDS = 2.0


@dataclass(frozen=True)
class Limits:
    """Connection limits.

    Attributes:
        max_body: largest accepted request body in bytes (larger -> 413).
        max_header_bytes: largest accepted request head (larger -> 400).
        request_timeout: seconds allowed to receive one request, head and body.
        idle_timeout: seconds a keep-alive connection may sit idle before it is closed.
        write_timeout: seconds allowed for the peer to take one reply.
    """

    max_body: int = 64 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    request_timeout: float = 30.0
    idle_timeout: float = 60.0
    write_timeout: float = 30.0


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
    """A reply. ``drop`` closes the connection without answering; ``trickle`` slows the body."""

    status: int
    body: bytes = b""
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


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


Handler = Callable[[HTTPRequest], Awaitable[HTTPResponse]]


class _Closed(Exception):
    """The peer went away, or the connection must end now."""


class _Connection:
    """One server-side HTTP/1.1 connection."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handler: Handler,
        limits: Limits,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.handler = handler
        self.limits = limits
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self._unread_input = False

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
                response = await self.handler(request)
                if response.drop:
                    return
                await self._send_response(response, head_only=request.method == "HEAD")
                if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is not h11.DONE:
                    return
                self.conn.start_next_cycle()
        except (_Closed, OSError, asyncio.TimeoutError, h11.LocalProtocolError):
            return
        finally:
            await self._close()

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
                data = await asyncio.wait_for(
                    self.reader.read(_READ_SIZE), self.limits.idle_timeout
                )
                self.conn.receive_data(data)
                started = bool(data)
            deadline = loop.time() + self.limits.request_timeout
            event = await self._read_event(deadline)
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
                    body += part.data
                    if len(body) > self.limits.max_body:
                        return self._too_large()
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:
                    return None
        except h11.RemoteProtocolError as exc:
            logger.debug("invalid HTTP request: %s", exc)
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
            ("Server", _SERVER_NAME.decode()),
            ("Date", formatdate(usegmt=True)),
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
        if not head_only and response.body:
            if response.trickle > 0:
                await self._trickle(response.body, response.trickle)
            else:
                await self._write(self.conn.send(h11.Data(data=response.body)))
        await self._write(self.conn.send(h11.EndOfMessage()))

    async def _trickle(self, body: bytes, seconds: float) -> None:
        pieces = min(_TRICKLE_PIECES, len(body))
        step = -(-len(body) // pieces)
        pause = seconds / pieces
        for start in range(0, len(body), step):
            await asyncio.sleep(pause)
            await self._write(self.conn.send(h11.Data(data=body[start : start + step])))

    async def _write(self, data: bytes | None) -> None:
        if not data:
            return
        if self.writer.is_closing():
            raise _Closed
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), self.limits.write_timeout)

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            if self._unread_input:
                await self._linger()
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 5.0)

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


async def serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handler: Handler,
    limits: Limits,
) -> None:
    """Serve HTTP/1.1 requests on one connection with ``handler`` until it ends."""
    await _Connection(reader, writer, handler, limits).run()


class Connections:
    """The open connections of one server, so that stopping it closes every one of them."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handler: Handler,
        limits: Limits,
    ) -> None:
        """Serve one connection (an ``asyncio.start_server`` callback), tracked until it ends."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await serve_connection(reader, writer, handler, limits)
        except asyncio.CancelledError:
            # Cancelled by close(): end quietly (asyncio's stream callback on Python < 3.12
            # would report a cancelled connection task as an error).
            writer.close()
        except Exception:  # pragma: no cover - a bug; keep serving other connections
            logger.exception("%s connection failed", self._name)
            writer.close()
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def close(self, server: asyncio.Server) -> None:
        """Stop listening, cancel every open connection and wait (bounded) for the end."""
        server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5.0)
