"""Replies held for readers that are slow or absent (second security review, finding 5).

The review: 24 clients that never read 16 MB replies took ``nomyo proxy`` from 34 MiB to
1,312 MiB, still 1,327 MiB 15 s after they closed. Now reply bytes waiting for readers count
against a budget (503 with ``Retry-After`` beyond it), a reader that takes nothing for the
write timeout is dropped, and large buffers go back to the OS when freed. The flood itself is
``benches/reply_flood.py`` (``make bench-reply-flood`` runs it in full); here a short version,
and the server's rules one by one on real sockets.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nomyo._http_server import Connections, HTTPRequest, HTTPResponse, Limits

BENCHES = Path(__file__).resolve().parent.parent / "benches"
if str(BENCHES) not in sys.path:
    sys.path.insert(0, str(BENCHES))

import reply_flood  # noqa: E402

MIB = 1024 * 1024
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


class BigReplies:
    """A server on its own loop whose every reply is ``size`` bytes (``GET /?size=N``)."""

    def __init__(self, limits: Limits) -> None:
        self.connections = Connections("test", limits)
        self.loop = asyncio.new_event_loop()
        self.sent = 0
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        assert started.wait(30)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await self.connections.serve(r, w, self.handle)

        self.server = self.loop.run_until_complete(asyncio.start_server(serve, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()

    async def handle(self, request: HTTPRequest) -> HTTPResponse:
        size = int(request.target.partition("size=")[2] or 0)
        self.sent += 1
        return HTTPResponse(200, bytearray(b"x" * size), "application/octet-stream")

    def connect(self, size: int, *, rcvbuf: int | None = None) -> socket.socket:
        sock = socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.connect(("127.0.0.1", self.port))
        sock.sendall(
            f"GET /?size={size} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        return sock

    def wait_until(self, condition: str, check: object, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"never: {condition}"
            time.sleep(0.02)

    def close(self) -> None:
        async def stop() -> None:
            await self.connections.close(self.server)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[BigReplies]:
    handle = BigReplies(request.param)
    try:
        yield handle
    finally:
        handle.close()


def read_head(sock: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        part = sock.recv(1)
        if not part:
            break
        head += part
    return head


def read_all(sock: socket.socket, *, piece: int = 65536, pause: float = 0.0) -> int:
    """Bytes read until EOF or reset (pausing between pieces: a slow reader)."""
    total = 0
    sock.settimeout(60)
    try:
        while part := sock.recv(piece):
            total += len(part)
            if pause:
                time.sleep(pause)
    except ConnectionResetError:
        pass
    return total


@pytest.mark.parametrize("server", [Limits(write_timeout=0.5)], indirect=True)
def test_a_reader_that_takes_nothing_is_dropped(server: BigReplies) -> None:
    size = 64 * MIB  # well beyond what the kernel buffers on loopback
    sock = server.connect(size, rcvbuf=64 * 1024)
    try:
        server.wait_until("a reply is held", lambda: server.connections.reply_bytes > 0)
        server.wait_until("the reader is dropped", lambda: server.connections.open == 0, timeout=60)
        assert server.connections.reply_bytes == 0
        assert read_all(sock) < size  # it never got the whole reply
    finally:
        sock.close()


@pytest.mark.parametrize("server", [Limits(write_timeout=1.0)], indirect=True)
def test_a_slow_reader_that_makes_progress_gets_everything(server: BigReplies) -> None:
    size = 8 * MIB
    sock = server.connect(size, rcvbuf=64 * 1024)
    try:
        head = read_head(sock)
        assert head.startswith(b"HTTP/1.1 200"), head
        # 64 KiB (the receive buffer) every 0.05 s: slower than the server writes, never idle
        # for a second.
        assert read_all(sock, piece=256 * 1024, pause=0.05) == size
    finally:
        sock.close()


BUDGET = Limits(write_timeout=30.0, max_buffered_bytes=16 * MIB)


@pytest.mark.parametrize("server", [BUDGET], indirect=True)
def test_a_reply_beyond_the_budget_is_refused_small_ones_are_sent(server: BigReplies) -> None:
    stuck = server.connect(12 * MIB, rcvbuf=64 * 1024)  # a reader that never reads
    others: list[socket.socket] = []
    try:
        server.wait_until("a reply is held", lambda: server.connections.reply_bytes > 8 * MIB)
        big = server.connect(8 * MIB)
        others.append(big)
        refused = read_head(big)
        assert refused.startswith(b"HTTP/1.1 503"), refused
        assert b"retry-after: 1" in refused.lower()
        small = server.connect(16)
        others.append(small)
        assert read_head(small).startswith(b"HTTP/1.1 200")
        assert server.connections.shed == 1
    finally:
        stuck.close()  # the reader leaves: its reply is released
        for sock in others:
            sock.close()
    server.wait_until("the reply is released", lambda: server.connections.reply_bytes == 0)
    again = server.connect(8 * MIB)
    try:
        assert read_head(again).startswith(b"HTTP/1.1 200")
        assert read_all(again) == 8 * MIB
    finally:
        again.close()


@pytest.mark.parametrize("server", [BUDGET], indirect=True)
def test_no_reply_is_opened_while_the_budget_is_full(server: BigReplies) -> None:
    stuck = server.connect(64 * MIB, rcvbuf=64 * 1024)  # larger than the budget: sent alone
    small: socket.socket | None = None
    try:
        server.wait_until("the budget is full", lambda: server.connections.reply_bytes > 16 * MIB)
        before = server.sent
        small = server.connect(16)
        refused = read_head(small)
        assert refused.startswith(b"HTTP/1.1 503"), refused
        assert b"retry-after: 1" in refused.lower()
        assert server.sent == before  # refused before the handler made a reply
    finally:
        stuck.close()
        if small is not None:
            small.close()


@linux
def test_non_reading_clients_stay_within_the_memory_target() -> None:
    """The review's flood, shortened (make bench-reply-flood: 24 clients, 15 s after)."""
    result = reply_flood.flood(clients=4, reply_mb=16, budget_mib=16, after=3.0, settle=0.5)
    print(result.render())
    assert result.statuses.get("503", 0) >= 1, result.render()
    assert result.statuses.get("200", 0) >= 1, result.render()
    assert result.peak_over_idle <= 256, result.render()
    assert result.after_over_idle <= 64, result.render()
