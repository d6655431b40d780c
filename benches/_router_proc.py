"""Run one nomyo DevRouter (HTTPS) in its own process for the benchmarks.

Usage: ``python benches/_router_proc.py --cert server.pem --key server-key.pem [--key-bits 4096]``

Prints one JSON line ``{"url": ..., "pid": ..., "fingerprint": ...}`` once it listens, then
serves until SIGTERM/SIGINT or until its stdin is closed (so it never outlives the parent).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading

from nomyo.testing import DevRouter


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Set ``stop`` when stdin reaches EOF (the parent closed the pipe or died)."""

    def _read() -> None:
        try:
            while sys.stdin.buffer.read(65536):
                pass
        except (OSError, ValueError):
            pass
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=_read, name="stdin-watch", daemon=True).start()


async def _main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _watch_stdin(loop, stop)
    router = DevRouter(
        host=args.host,
        key_bits=args.key_bits,
        tls_cert=args.cert,
        tls_key=args.key,
        max_body=256 * 1024 * 1024,
        idle_timeout=600.0,
    )
    async with router:
        line = {
            "url": router.url,
            "pid": os.getpid(),
            "fingerprint": router.public_key.fingerprint(),
        }
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--key-bits", type=int, default=4096)
    parser.add_argument("--host", default="127.0.0.1")
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
