"""A loopback TCP proxy that adds latency, to emulate a WAN round-trip time.

Every chunk read from one side is delivered to the other ``delay`` seconds later (one-way
latency; chunks are pipelined, so bandwidth is not limited). A new connection costs one
round trip before any byte flows, like a TCP handshake over the emulated link. With the
default 10 ms each way the round-trip time is 20 ms.

Usage: ``python benches/_delay_proxy.py --target-port 8443 [--delay 0.010]``; prints one
JSON line ``{"port": ..., "pid": ...}`` once it listens, then serves until SIGTERM/SIGINT
or until its stdin is closed. ``DelayProxy`` can also be used in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading

CHUNK = 65536


class DelayProxy:
    """Forward ``listen_host:port`` -> ``target_host:target_port`` with added latency."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        delay: float = 0.010,
        listen_host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.delay = delay
        self.listen_host = listen_host
        self.port = port
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> DelayProxy:
        self._server = await asyncio.start_server(self._on_client, self.listen_host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _on_client(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        loop = asyncio.get_running_loop()
        ready = loop.time() + 2 * self.delay  # the emulated TCP handshake: one round trip
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
            await asyncio.sleep(max(0.0, ready - loop.time()))
            await asyncio.gather(
                self._pipe(client_reader, upstream_writer),
                self._pipe(upstream_reader, client_writer),
            )
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for writer in (client_writer, upstream_writer):
                if writer is not None:
                    writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction; each chunk is written ``delay`` after it was read."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def _read() -> None:
            try:
                while True:
                    chunk = await reader.read(CHUNK)
                    queue.put_nowait((loop.time() + self.delay, chunk))
                    if not chunk:
                        return
            except OSError:
                queue.put_nowait((loop.time(), b""))

        async def _write() -> None:
            while True:
                due, chunk = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not chunk:
                    with contextlib.suppress(OSError):
                        if writer.can_write_eof():
                            writer.write_eof()
                    return
                writer.write(chunk)
                await writer.drain()

        reader_task = asyncio.ensure_future(_read())
        try:
            await _write()
        finally:
            reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader_task


async def _main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def _read_stdin() -> None:
        try:
            while sys.stdin.buffer.read(65536):
                pass
        except (OSError, ValueError):
            pass
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=_read_stdin, name="stdin-watch", daemon=True).start()
    proxy = await DelayProxy(
        args.target_host, args.target_port, delay=args.delay, listen_host=args.listen_host
    ).start()
    sys.stdout.write(json.dumps({"port": proxy.port, "pid": os.getpid()}) + "\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await proxy.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target-host", default="127.0.0.1")
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--delay", type=float, default=0.010, help="one-way delay in seconds")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
