"""``nomyo proxy`` under floods from a local user (security review, finding 2).

Reproduces both attacks of the review against the running proxy (a ``nomyo proxy``
subprocess in front of the development router): idle sockets that used up the descriptors
(``ulimit -n 1024``, 1,100 sockets: a real completion then failed with ``EMFILE``), and
connections that never finish their bodies (100 of them took 2.1 GiB). Now the proxy bounds
both, sheds load with 503 in OpenAI's error shape, and a legitimate request still completes.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cli_support import Server, cli_env

from nomyo.testing import DevRouter, RouterThread

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.fixture(scope="module")
def router() -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        yield handle


def completion(url: str, text: str) -> httpx.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=60)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def start_proxy(router: RouterThread, tmp_path: Path, *extra: str, nofile: int) -> Server:
    """A ``nomyo proxy`` subprocess whose soft descriptor limit is ``nofile``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))
    try:  # Popen inherits the limit; ours is restored at once
        return Server(
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--base-url",
            router.url,
            "--allow-http",
            *extra,
            log=tmp_path / "proxy.log",
        )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def raise_own_nofile(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def test_idle_sockets_cannot_use_up_the_descriptors(router: RouterThread, tmp_path: Path) -> None:
    # The review's numbers: the proxy under `ulimit -n 1024`, 1,100 idle sockets.
    available = raise_own_nofile(1400)
    flood = min(1100, available - 100)
    assert flood > 300, f"this test needs ~1,200 descriptors, the hard limit allows {available}"
    server = start_proxy(router, tmp_path, nofile=1024)
    pid = server.proc.pid
    sockets: list[socket.socket] = []
    try:
        assert completion(server.url, "warm-up").status_code == 200
        for _ in range(flood):
            sock = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
            sockets.append(sock)
        time.sleep(0.5)  # let the proxy accept (and shed) them all
        # The proxy holds at most its connection cap (a quarter of 1024) plus its own files.
        assert open_files(pid) < 1024 // 4 + 64
        reply = completion(server.url, "still served")
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == "still served"
        # Sockets beyond the cap were closed by the proxy (the longest-idle first).
        closed = 0
        for sock in sockets:
            sock.setblocking(False)
            try:
                closed += sock.recv(1) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
        assert closed >= flood - 1024 // 4
    finally:
        for sock in sockets:
            sock.close()
        assert server.stop() == 0


def test_unfinished_bodies_cannot_exhaust_memory(router: RouterThread, tmp_path: Path) -> None:
    # 40 connections each send 4 MiB of a declared 8 MiB body and then stall: 160 MiB
    # offered against a budget of 16 MiB.
    budget_mib, connections, sent_mib = 16, 40, 4
    server = start_proxy(router, tmp_path, "--max-buffered-mib", str(budget_mib), nofile=1024)
    pid = server.proc.pid
    port = int(server.url.rsplit(":", 1)[1])
    assert completion(server.url, "warm-up").status_code == 200
    before = rss_kib(pid)
    sockets: list[socket.socket] = []
    shed: list[bytes] = []
    lock = threading.Lock()

    def stall_with_a_partial_body() -> None:
        sock = socket.create_connection(("127.0.0.1", port))
        with lock:
            sockets.append(sock)
        sock.settimeout(20)
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/json\r\nContent-Length: 8388608\r\n\r\n"
        )
        with contextlib.suppress(OSError):  # the proxy stopped reading: it answered, closes
            sock.sendall(head.encode() + b" " * (sent_mib * 1024 * 1024))
        reply = b""
        try:
            while (part := sock.recv(65536)) and b"}}" not in reply + part:
                reply += part
            reply += part
        except OSError:
            pass
        if reply:
            with lock:
                shed.append(reply)

    threads = [threading.Thread(target=stall_with_a_partial_body) for _ in range(connections)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        peak = before
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            peak = max(peak, rss_kib(pid))
            if len(shed) >= connections - budget_mib // sent_mib:
                break
            time.sleep(0.05)
        peak = max(peak, rss_kib(pid))
        # The shed connections got a 503 in OpenAI's error shape.
        assert len(shed) >= connections - budget_mib // sent_mib - 1
        assert all(r.startswith(b"HTTP/1.1 503") for r in shed)
        assert b'"type": "service_unavailable_error"' in shed[0]
        # Memory stays near the budget (the stalled bodies admitted), far below 160 MiB.
        growth_mib = (peak - before) / 1024
        assert growth_mib < budget_mib + 40, f"RSS grew by {growth_mib:.0f} MiB"
        # A legitimate request is still served while the admitted bodies stall.
        reply = completion(server.url, "served during the flood")
        assert reply.status_code == 200, reply.text
    finally:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the threads still waiting in recv
            sock.close()
        for thread in threads:
            thread.join(30)
        assert server.stop(signal.SIGTERM) == 0


def test_slow_request_heads_make_room_for_real_requests(
    router: RouterThread, tmp_path: Path
) -> None:
    # Slow loris: every slot holds a request head that never completes.
    server = start_proxy(router, tmp_path, "--max-connections", "8", nofile=1024)
    port = int(server.url.rsplit(":", 1)[1])
    sockets = []
    try:
        for _ in range(8):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            sockets.append(sock)
        time.sleep(2.5)  # older than a head may take
        reply = completion(server.url, "past the slow heads")
        assert reply.status_code == 200, reply.text
    finally:
        for sock in sockets:
            sock.close()
        assert server.stop() == 0


def test_limits_are_options(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nomyo", "proxy", "--help"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert "--max-connections" in result.stdout and "--max-buffered-mib" in result.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "nomyo", "proxy", "--max-connections", "0"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
