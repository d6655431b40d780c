"""Clients that never read their replies, against ``nomyo proxy`` (issue 24, finding 5).

The review: 24 clients that never read 16 MB replies took the proxy from 34 MiB to 1,312 MiB,
and it stayed at 1,327 MiB 15 s after they closed. This script replays it: a ``nomyo proxy``
subprocess with ``--max-buffered-mib 16`` in front of the development router (echo backend:
the reply holds the request's text), then, one after another, each client sends a request
whose reply is ``--reply-mb`` MB, reads the status line and stops reading. Then they all
close. The proxy's RSS is sampled throughout.

Target: peak RSS at most 256 MiB over the idle proxy; at most 64 MiB over it 15 s after the
clients leave. ``make bench-reply-flood`` runs it in full, also with glibc's default (dynamic) mmap
threshold (``--dynamic-mmap``) to show what ``nomyo._heap`` is for; ``tests/test_reply_budget.py``
runs a short version.

    python benches/reply_flood.py [--clients 24] [--reply-mb 16] [--after 15] [--dynamic-mmap]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nomyo.testing import DevRouter

MIB = 1024 * 1024
#: The proxy, optionally with glibc's dynamic mmap threshold (nomyo._heap patched out).
_PROXY = """\
import sys
if sys.argv[1] == "dynamic-mmap":
    import nomyo._heap
    nomyo._heap.keep_large_buffers_mapped = lambda: False
from nomyo.cli import main
sys.exit(main(sys.argv[2:]))
"""


@dataclass
class Result:
    clients: int
    reply_mb: int
    budget_mib: int
    fixed_mmap: bool
    idle_mib: float = 0.0
    peak_mib: float = 0.0
    after_mib: float = 0.0
    after_seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def peak_over_idle(self) -> float:
        return self.peak_mib - self.idle_mib

    @property
    def after_over_idle(self) -> float:
        return self.after_mib - self.idle_mib

    def render(self) -> str:
        return (
            f"{self.clients} non-reading clients of {self.reply_mb} MB replies, "
            f"--max-buffered-mib {self.budget_mib}, mmap threshold "
            f"{'fixed (nomyo._heap)' if self.fixed_mmap else 'dynamic (glibc default)'}: "
            f"idle {self.idle_mib:.0f} MiB, peak {self.peak_mib:.0f} MiB "
            f"(+{self.peak_over_idle:.0f}; target <= +256), "
            f"{self.after_seconds:.0f} s after they left {self.after_mib:.0f} MiB "
            f"(+{self.after_over_idle:.0f}; target <= +64); statuses {self.statuses}"
        )


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _request(reply_bytes: int) -> bytes:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * reply_bytes}]})
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body.encode()


def _status_line(sock: socket.socket) -> str:
    """Read up to the end of the status line, and no further than one small read."""
    seen = b""
    while b"\r\n" not in seen:
        part = sock.recv(64)
        if not part:
            break
        seen += part
    return seen.split(b" ", 2)[1].decode() if seen.count(b" ") >= 2 else "closed"


def flood(
    *,
    clients: int = 24,
    reply_mb: int = 16,
    budget_mib: int = 16,
    after: float = 15.0,
    fixed_mmap: bool = True,
    settle: float = 1.0,
) -> Result:
    """Run the flood against a fresh proxy; ``after``: seconds to wait once clients left."""
    result = Result(clients, reply_mb, budget_mib, fixed_mmap)
    with DevRouter(key_bits=2048).run_in_thread() as router:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _PROXY,
                "fixed-mmap" if fixed_mmap else "dynamic-mmap",
                "proxy",
                "--listen",
                "127.0.0.1:0",
                "--base-url",
                router.url,
                "--allow-http",
                "--max-buffered-mib",
                str(budget_mib),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            url = line.split("listening on ", 1)[1].split()[0]
            port = int(url.rsplit(":", 1)[1])
            with socket.create_connection(("127.0.0.1", port)) as warm:
                warm.sendall(_request(16))
                assert _status_line(warm) == "200"
            time.sleep(settle)
            result.idle_mib = rss_mib(proc.pid)
            peak = [result.idle_mib]
            sampling = threading.Event()

            def sample() -> None:
                while not sampling.is_set():
                    peak[0] = max(peak[0], rss_mib(proc.pid))
                    time.sleep(0.01)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            request = _request(reply_mb * 1000 * 1000)
            sockets: list[socket.socket] = []
            try:
                for _ in range(clients):
                    sock = socket.create_connection(("127.0.0.1", port))
                    sockets.append(sock)
                    sock.settimeout(120)
                    try:
                        sock.sendall(request)
                        status = _status_line(sock)  # then never read again
                    except OSError:
                        status = "reset"
                    result.statuses[status] = result.statuses.get(status, 0) + 1
                time.sleep(settle)
            finally:
                for sock in sockets:
                    sock.close()  # they leave
            left = time.monotonic()
            deadline = left + after
            while time.monotonic() < deadline:
                time.sleep(0.1)
            result.after_seconds = time.monotonic() - left
            sampling.set()
            sampler.join()
            result.peak_mib = peak[0]
            result.after_mib = rss_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--reply-mb", type=int, default=16)
    parser.add_argument("--budget-mib", type=int, default=16)
    parser.add_argument("--after", type=float, default=15.0)
    parser.add_argument(
        "--dynamic-mmap", action="store_true", help="the proxy with glibc's default threshold"
    )
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    result = flood(
        clients=args.clients,
        reply_mb=args.reply_mb,
        budget_mib=args.budget_mib,
        after=args.after,
        fixed_mmap=not args.dynamic_mmap,
    )
    print(result.render())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    met = result.peak_over_idle <= 256 and result.after_over_idle <= 64
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
