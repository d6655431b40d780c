"""The embedded HTTP/1.1 server (``nomyo._http_server``) on real sockets: what a reader gets."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from nomyo._http_server import Connections, HTTPRequest, HTTPResponse, Limits

PATTERN = bytes(range(1, 256))


class PatternServer:
    """A server on its own loop whose reply is ``size`` bytes of a non-zero pattern, handed
    over as a ``bytearray`` that the server zeroes once sent (as a decrypted reply is)."""

    def __init__(self) -> None:
        self.connections = Connections("test", Limits())
        self.loop = asyncio.new_event_loop()
        self.bodies: list[bytearray] = []
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        assert started.wait(30)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            # A small send buffer, as on a congested network: the kernel takes the reply in
            # small steps, so the transport holds part of it for longer.
            w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            await self.connections.serve(r, w, self.handle)

        self.server = self.loop.run_until_complete(asyncio.start_server(serve, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()

    async def handle(self, request: HTTPRequest) -> HTTPResponse:
        size = int(request.target.partition("size=")[2] or 0)
        body = bytearray((PATTERN * (size // len(PATTERN) + 1))[:size])
        self.bodies.append(body)
        return HTTPResponse(200, body, "application/octet-stream")

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)


@pytest.fixture
def server() -> Iterator[PatternServer]:
    srv = PatternServer()
    try:
        yield srv
    finally:
        srv.close()


def _read_reply(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(4096):
        data += chunk
        time.sleep(0.0005)  # a reader slower than the writer
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head[:40]
    return body


@pytest.mark.parametrize("size", [100, 70_000, 1 << 20, 4 << 20])
def test_a_slow_reader_gets_the_whole_reply_and_the_body_is_wiped_after(
    server: PatternServer, size: int
) -> None:
    """The reply body is zeroed once sent. From Python 3.12 asyncio's transport keeps views of
    what it has not sent yet instead of copies: zeroing the body when ``drain()`` returns (the
    buffer below its low-water mark, not empty) sent zeros as the reply's last bytes to a
    reader that was not keeping up."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(60)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(
        f"GET /?size={size} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    )
    deadline = time.monotonic() + 30
    while not server.bodies:  # the handler ran: the reply is being written, nobody reads yet
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.2)
    try:
        body = _read_reply(sock)
    finally:
        sock.close()
    expected = (PATTERN * (size // len(PATTERN) + 1))[:size]
    assert len(body) == size
    if body != expected:
        first = next(i for i in range(size) if body[i] != expected[i])
        pytest.fail(f"the reply differs from byte {first} on (all zeros: {not any(body[first:])})")
    deadline = time.monotonic() + 30
    while any(server.bodies[0]):  # wiped once the reader has it all
        assert time.monotonic() < deadline, "the reply body was never wiped"
        time.sleep(0.01)
