"""A hostile router: malformed, oversized, slow and lying replies, for the client tests
``test_hostile_replies`` and ``test_hostile_retries``.

A raw asyncio TCP server (deliberately not the DevRouter, which only speaks correct HTTP)
serves a valid ``/pki/public_key`` and answers ``POST /v1/chat/secure_completion`` in the
way the current ``mode`` (a key of ``MODES``) says; in ``good`` mode it opens the request
with its key and seals an echo to the client's ``X-Public-Key``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import json
import socket
import struct
import threading
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from nomyo import _core

__all__ = [
    "CLIENT_KEY",
    "KEY_MODES",
    "LIMIT",
    "MARKER",
    "MODES",
    "SERVER_KEY",
    "STRANGER",
    "TIMEOUT",
    "Handler",
    "HostileServer",
    "MiB",
    "Request",
    "Writer",
    "gzip_bomb_body",
]

SERVER_KEY = _core.PrivateKey.generate(2048)
CLIENT_KEY = _core.PrivateKey.generate(2048)
STRANGER = _core.PrivateKey.generate(2048).public_key()
MARKER = "PLAINTEXT-MARKER-c0ffee"
TIMEOUT = 2.0
LIMIT = 1 << 20  # the client's max_response_size in these tests
MiB = 1 << 20


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Writer = asyncio.StreamWriter
Handler = Callable[["HostileServer", Request, Writer], Awaitable[bool]]


@dataclass
class HostileServer:
    """A tiny HTTP/1.1 server on its own event loop thread; ``mode`` picks the behaviour."""

    mode: str = "good"
    key_mode: str = "good"
    host: str = "127.0.0.1"
    port: int = 0
    secure_hits: int = 0
    sent: int = 0  # body bytes written by the streaming modes
    busy: set[asyncio.Task[Any]] = field(default_factory=set)  # inside a hostile handler
    loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> HostileServer:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self.loop = loop

            async def main() -> None:
                self._server = await asyncio.start_server(self._connection, self.host, 0)
                self.port = self._server.sockets[0].getsockname()[1]
                ready.set()
                async with self._server:
                    await self._server.serve_forever()

            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main())
            loop.close()

        self._thread = threading.Thread(target=run, name="hostile-router", daemon=True)
        self._thread.start()
        assert ready.wait(10)
        return self

    def reset(self, mode: str) -> None:
        """Switch mode, ending the connections still inside a handler of the last mode (idle
        keep-alive connections stay, so the client's pool is reused across modes)."""
        assert self.loop is not None
        asyncio.run_coroutine_threadsafe(self._cancel_tasks(), self.loop).result(10)
        self.mode = mode
        self.key_mode = "good"
        self.secure_hits = 0
        self.sent = 0

    async def _cancel_tasks(self) -> None:
        tasks = [t for t in self.busy if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        if self.loop is not None and self._server is not None:
            self.reset("good")
            self.loop.call_soon_threadsafe(self._shut)
        if self._thread is not None:
            self._thread.join(10)

    def _shut(self) -> None:
        """On the server's loop: close the listener and cancel every task. One callback, so
        nothing is scheduled from outside once the cancelled main task lets the loop close."""
        assert self.loop is not None and self._server is not None
        self._server.close()
        for task in asyncio.all_tasks(self.loop):
            task.cancel()

    # -- HTTP -------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: Writer) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = Request(method, path, headers, body)
                if path == "/pki/public_key":
                    self.busy.add(task)
                    try:
                        if not await KEY_MODES[self.key_mode](self, request, writer):
                            return
                    finally:
                        self.busy.discard(task)
                    continue
                if path != "/v1/chat/secure_completion":
                    await respond(writer, 404, b'{"detail": "Not Found"}')
                    continue
                self.secure_hits += 1
                self.busy.add(task)
                try:
                    keep_alive = await MODES[self.mode](self, request, writer)
                finally:
                    self.busy.discard(task)
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def sealed_echo(self, request: Request, **overrides: Any) -> bytes:
        """What a correct router answers: the request opened, an echo sealed to the client."""
        payload, _, _ = _core.open_json(request.body, SERVER_KEY)
        client_key = _core.PublicKey.from_pem(urllib.parse.unquote(request.headers["x-public-key"]))
        reply = {
            "id": "chatcmpl-hostile",
            "object": "chat.completion",
            "model": payload["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": payload["messages"][-1]["content"]},
                    "finish_reason": "stop",
                }
            ],
            "_metadata": {"payload_id": request.headers.get("x-payload-id")},
        }
        reply.update(overrides)
        return _core.seal_json(reply, client_key, processed_at=1)


async def write(writer: Writer, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


async def respond(
    writer: Writer,
    status: int,
    body: bytes,
    content_type: str = "application/json",
    extra: str = "",
) -> bool:
    head = (
        f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    await write(writer, head.encode() + body)
    return True


def reset_connection(writer: Writer) -> None:
    """Close with an RST (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# --- the modes ----------------------------------------------------------------------------------


async def good(server: HostileServer, req: Request, w: Writer) -> bool:
    return await respond(w, 200, server.sealed_echo(req), "application/octet-stream")


def body_200(body: bytes, content_type: str = "application/json") -> Handler:
    async def handler(server: HostileServer, req: Request, w: Writer) -> bool:
        return await respond(w, 200, body, content_type)

    return handler


def raw(data: bytes, then: str = "close") -> Handler:
    """Write these bytes, then close (FIN), reset (RST) or hang."""

    async def handler(server: HostileServer, req: Request, w: Writer) -> bool:
        await write(w, data)
        if then == "reset":
            reset_connection(w)
        elif then == "hang":
            await asyncio.sleep(3600)
        return False

    return handler


async def sealed_to_stranger(server: HostileServer, req: Request, w: Writer) -> bool:
    body = _core.seal_json({"choices": [], "secret": MARKER}, STRANGER)
    return await respond(w, 200, body)


def sealed_plaintext(plaintext: bytes) -> Handler:
    async def handler(server: HostileServer, req: Request, w: Writer) -> bool:
        key = _core.PublicKey.from_pem(urllib.parse.unquote(req.headers["x-public-key"]))
        return await respond(w, 200, _core.seal_bytes(plaintext, key))

    return handler


async def other_payload_id(server: HostileServer, req: Request, w: Writer) -> bool:
    key = _core.PublicKey.from_pem(urllib.parse.unquote(req.headers["x-public-key"]))
    reply = {"choices": [], "_metadata": {"payload_id": "someone-else"}, "x": MARKER}
    return await respond(w, 200, _core.seal_json(reply, key))


async def huge_base64_fields(server: HostileServer, req: Request, w: Writer) -> bool:
    envelope = {
        "version": "1.0",
        "algorithm": "hybrid-aes256-rsa4096",
        "encrypted_payload": {
            "ciphertext": "QUFB" * (200 * 1024),  # 600 KiB of base64
            "nonce": "A" * 16,
            "tag": "A" * 24,
        },
        "encrypted_aes_key": "QUFB" * 50_000,  # 150 KB: not the size of an RSA-2048 block
    }
    return await respond(w, 200, json.dumps(envelope).encode())


async def declared_1gib_closes_early(server: HostileServer, req: Request, w: Writer) -> bool:
    await write(w, b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n" + b"{" * 1000)
    return False


async def stream_70mib(server: HostileServer, req: Request, w: Writer, chunked: bool) -> bool:
    total, piece = 70 * MiB, b"A" * (64 * 1024)
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"Connection: close\r\n\r\n"
    await write(w, head)
    try:
        while server.sent < total:
            if chunked:
                await write(w, b"%x\r\n%s\r\n" % (len(piece), piece))
            else:
                await write(w, piece)
            server.sent += len(piece)
        if chunked:
            await write(w, b"0\r\n\r\n")
    except ConnectionError:
        pass
    return False


async def stream_70mib_chunked(server: HostileServer, req: Request, w: Writer) -> bool:
    return await stream_70mib(server, req, w, chunked=True)


async def stream_70mib_http10(server: HostileServer, req: Request, w: Writer) -> bool:
    return await stream_70mib(server, req, w, chunked=False)


async def declared_70mib(server: HostileServer, req: Request, w: Writer) -> bool:
    await write(w, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (70 * MiB))
    try:
        piece = b"A" * (64 * 1024)
        while server.sent < 70 * MiB:
            await write(w, piece)
            server.sent += len(piece)
    except ConnectionError:
        pass
    return False


def trickle(interval: float, chunked: bool = False) -> Handler:
    """Send the body one byte (or one 1-byte chunk) every ``interval`` seconds."""

    async def handler(server: HostileServer, req: Request, w: Writer) -> bool:
        if chunked:
            await write(w, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        else:
            await write(w, b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        while True:
            await write(w, b"1\r\n{\r\n" if chunked else b"{")
            server.sent += 1
            await asyncio.sleep(interval)

    return handler


async def chunked_stalls(server: HostileServer, req: Request, w: Writer) -> bool:
    await write(w, b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n')
    await asyncio.sleep(3600)
    return False


async def headers_never_end(server: HostileServer, req: Request, w: Writer) -> bool:
    await write(w, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    await asyncio.sleep(3600)
    return False


@functools.cache
def gzip_bomb_body() -> bytes:
    """~64 KiB that inflate to 64 MiB (made once: compressing takes seconds on slow CI)."""
    return gzip.compress(b"\x00" * (64 * MiB), compresslevel=9)


async def gzip_bomb(server: HostileServer, req: Request, w: Writer) -> bool:
    body = gzip_bomb_body()
    return await respond(w, 200, body, extra="Content-Encoding: gzip\r\n")


async def compressed_503(server: HostileServer, req: Request, w: Writer) -> bool:
    body = gzip.compress(b'{"detail": "busy, come back later"}')
    return await respond(w, 503, body, extra="Content-Encoding: gzip\r\n")


async def bad_gzip(server: HostileServer, req: Request, w: Writer) -> bool:
    return await respond(w, 200, b"this is not gzip", extra="Content-Encoding: gzip\r\n")


async def good_wrong_content_type(server: HostileServer, req: Request, w: Writer) -> bool:
    return await respond(w, 200, server.sealed_echo(req), "text/html; charset=utf-8")


async def good_http10(server: HostileServer, req: Request, w: Writer) -> bool:
    await write(w, b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
    await write(w, server.sealed_echo(req))
    return False


async def short_body_then_close(server: HostileServer, req: Request, w: Writer) -> bool:
    body = server.sealed_echo(req)
    await write(w, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(body) + 500) + body)
    return False


def storm(statuses: list[int], retry_afters: list[str]) -> Handler:
    async def handler(server: HostileServer, req: Request, w: Writer) -> bool:
        i = server.secure_hits - 1
        status = statuses[i % len(statuses)]
        retry_after = retry_afters[i % len(retry_afters)]
        extra = f"Retry-After: {retry_after}\r\n" if retry_after else ""
        return await respond(w, status, b'{"detail": "go away"}', extra=extra)

    return handler


async def good_key(server: HostileServer, req: Request, w: Writer) -> bool:
    return await respond(w, 200, SERVER_KEY.public_key().to_pem().encode(), "text/plain")


KEY_MODES: dict[str, Handler] = {
    "good": good_key,
    "key_streamed_70MiB": stream_70mib_chunked,
    "key_bad_gzip": bad_gzip,
}

MODES: dict[str, Handler] = {
    "good": good,
    "good_wrong_content_type": good_wrong_content_type,
    "good_http10_close_delimited": good_http10,
    # --- hostile 200 bodies
    "empty_200": body_200(b""),
    "not_json": body_200(b"<html><body>hello</body></html>", "text/html"),
    "invalid_utf8": body_200(b"\xff\xfe\xfd{"),
    "json_array": body_200(b"[1, 2, 3]"),
    "json_string": body_200(b'"hello"'),
    "missing_fields": body_200(b'{"version": "1.0"}'),
    "wrong_types": body_200(
        b'{"version": 1, "algorithm": [], "encrypted_payload": "x", "encrypted_aes_key": 5}'
    ),
    "null_fields": body_200(
        b'{"version": "1.0", "algorithm": "hybrid-aes256-rsa4096", "encrypted_payload": '
        b'{"ciphertext": null, "nonce": null, "tag": null}, "encrypted_aes_key": null}'
    ),
    "wrong_content_type_garbage": body_200(b"\x00\x01binary", "image/png"),
    "huge_base64_fields": huge_base64_fields,
    "sealed_to_another_key": sealed_to_stranger,
    "plaintext_not_json": sealed_plaintext(b"\xff\xfe not json " + MARKER.encode()),
    "plaintext_json_array": sealed_plaintext(json.dumps([MARKER, 1, 2]).encode()),
    "plaintext_metadata_not_object": sealed_plaintext(
        json.dumps({"choices": [], "_metadata": [MARKER]}).encode()
    ),
    "reply_for_another_payload_id": other_payload_id,
    # --- size limits
    "declared_1GiB_closes_early": declared_1gib_closes_early,
    "declared_70MiB": declared_70mib,
    "streamed_70MiB_chunked": stream_70mib_chunked,
    "streamed_70MiB_http10_no_length": stream_70mib_http10,
    "gzip_bomb_64MiB": gzip_bomb,
    "compressed_503": compressed_503,
    # --- broken HTTP
    "truncated_headers": raw(b"HTTP/1.1 200 OK\r\nContent-Len"),
    "headers_never_end": headers_never_end,
    "garbage_status_line": raw(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"),
    "huge_header": raw(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (2 * MiB) + b"\r\n\r\n"),
    "reset_mid_body": raw(b'HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n{"version"', "reset"),
    "reset_before_reply": raw(b"", "reset"),
    "close_without_reply": raw(b""),
    "content_length_larger_than_body": short_body_then_close,
    "http10_no_length_garbage": raw(b"HTTP/1.0 200 OK\r\n\r\nnot an envelope at all"),
    "bad_gzip": bad_gzip,
    "chunked_stalls": chunked_stalls,
    "bad_chunk_size": raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n"),
    "slow_loris_over_read_timeout": trickle(2.6),
    "redirect": raw(
        b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://169.254.169.254/\r\n"
        b"Content-Length: 0\r\n\r\n"
    ),
    # --- slow drips that each stay under the read timeout (see the xfail below)
    "slow_loris_1_byte_per_0.5s": trickle(0.5),
    "chunked_trickle_forever": trickle(0.5, chunked=True),
    # --- status storms
    "5xx_storm_garbage_retry_after": storm(
        [500, 502, 503, 504], ["soon", "-5", "NaN", "", "Fri, 99 Foo 2024", "0x10", "1e-3"]
    ),
    "503_retry_after_infinite": storm([503], ["1e309"]),
    "429_storm": storm([429], [""]),
    "429_retry_after_one_hour": storm([429], ["3600"]),
}
