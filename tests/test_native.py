"""The native transport (Rust, hyper + rustls) against the development router.

Which transport a client uses, keep-alive reuse and recovery from a server that closed an
idle connection, HTTPS trust (the CA given, SSL_CERT_FILE, refusal of an unknown CA),
cancellation of an async request, Ctrl-C during a blocking one, and the same replies from
both transports.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import nomyo
from nomyo import _core
from nomyo._transports import NativeTransport
from nomyo.testing import DevCertificates, DevRouter, Fault, RouterThread, make_test_certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    return make_test_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_router(certs: DevCertificates) -> Iterator[RouterThread]:
    router = DevRouter(key_bits=2048, tls_cert=certs.cert, tls_key=certs.key, idle_timeout=0.5)
    with router.run_in_thread() as handle:
        yield handle


@pytest.fixture(autouse=True)
def _no_proxy_or_override(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOMYO_TRANSPORT", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name in ("https_proxy", "http_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def native(client: nomyo.SecureChatCompletion | nomyo.SyncSecureChatCompletion) -> Any:
    """The client's native pool; None when it was given the httpx transport."""
    transport = client.client._transport
    return transport.pool if isinstance(transport, NativeTransport) else None


#: Body limits and timeouts for requests started on a bare ``_core.Transport``.
LIMITS: dict[str, Any] = {
    "ok_limit": 1 << 20,
    "error_limit": 1 << 16,
    "timeouts": (10.0, 10.0, 10.0, 10.0),
}


def start_sealed(
    transport: _core.Transport,
    completions: Any,
    router: RouterThread,
    client_key: _core.PrivateKey,
    token: int,
) -> Any:
    """Start a sealed completion whose reply goes to ``completions`` under ``token``."""
    from urllib.parse import quote

    server_key = _core.PublicKey.from_pem(router.router.public_key_pem)
    headers = [
        ("X-Payload-ID", f"token-{token}"),
        ("X-Public-Key", quote(client_key.public_key().to_pem())),
        ("Content-Type", "application/octet-stream"),
    ]
    request = {
        "method": "POST",
        "url": router.url + "/v1/chat/secure_completion",
        "headers": headers,
        "seal": ({"model": "m", "messages": user(f"token {token}")}, server_key),
        "open": (client_key, 1 << 20),
        **LIMITS,
    }
    return transport.start(completions, request, token=token)


def test_native_is_the_default_and_httpx_is_chosen_when_needed(
    certs: DevCertificates, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "https://127.0.0.1:1"
    assert native(nomyo.SecureChatCompletion(url, verify=certs.ca_cert)) is not None
    assert native(nomyo.SyncSecureChatCompletion(url, verify=certs.ca_cert)) is not None
    context = ssl.create_default_context(cafile=certs.ca_cert)
    assert native(nomyo.SecureChatCompletion(url, verify=context)) is None

    transport = httpx.AsyncHTTPTransport(verify=context)
    assert native(nomyo.SecureChatCompletion(url, transport=transport)) is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")  # the engine tunnels
    assert native(nomyo.SecureChatCompletion(url, verify=certs.ca_cert)) is not None
    monkeypatch.setenv("HTTPS_PROXY", "https://proxy.invalid:3128")  # TLS to the proxy: httpx
    assert native(nomyo.SecureChatCompletion(url, verify=certs.ca_cert)) is None
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setenv("NOMYO_TRANSPORT", "httpx")
    assert native(nomyo.SecureChatCompletion(url, verify=certs.ca_cert)) is None
    monkeypatch.setenv("NOMYO_TRANSPORT", "carrier-pigeon")
    with pytest.raises(nomyo.ConfigurationError, match="NOMYO_TRANSPORT"):
        nomyo.SecureChatCompletion(url, verify=certs.ca_cert)


def test_both_transports_give_the_same_reply(
    tls_router: RouterThread,
    certs: DevCertificates,
    client_key: _core.PrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = 'same on both wires: ünïcödé, emoji 🔐, quotes " and \\ and \x00'

    def ask() -> dict[str, Any]:
        with nomyo.SyncSecureChatCompletion(tls_router.url, verify=certs.ca_cert) as client:
            client.client._set_key(client_key)
            return dict(client.create(model="m", messages=user(text)))

    ours = ask()
    monkeypatch.setenv("NOMYO_TRANSPORT", "httpx")
    theirs = ask()
    assert ours["choices"] == theirs["choices"]
    assert ours["choices"][0]["message"]["content"] == text
    assert ours["_metadata"]["payload_id"] != theirs["_metadata"]["payload_id"]


def test_keep_alive_reuse_and_recovery_after_the_server_closed_idle_connections(
    tls_router: RouterThread, certs: DevCertificates, client_key: _core.PrivateKey
) -> None:
    async def scenario() -> None:
        async with nomyo.SecureChatCompletion(tls_router.url, verify=certs.ca_cert) as client:
            client.client._set_key(client_key)
            before = tls_router.router.connections
            for i in range(5):
                reply = await client.create(model="m", messages=user(f"n{i}"))
                assert reply.choices[0].message.content == f"n{i}"
            assert tls_router.router.connections - before == 1, "one kept-alive connection"
            assert native(client).idle_connections == 1
            await asyncio.sleep(1.0)  # the router closes connections idle for 0.5 s
            reply = await client.create(model="m", messages=user("after idle close"))
            assert reply.choices[0].message.content == "after idle close"
            assert tls_router.router.connections - before == 2

    asyncio.run(scenario())


def test_unknown_ca_is_refused_and_ssl_cert_file_is_honoured(
    tls_router: RouterThread,
    certs: DevCertificates,
    client_key: _core.PrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stranger = nomyo.SyncSecureChatCompletion(tls_router.url, max_retries=0)  # certifi only
    stranger.client._set_key(client_key)
    before = tls_router.router.secure_requests
    with pytest.raises(nomyo.APIConnectionError, match=r"(?i)certificate|issuer"):
        stranger.create(model="m", messages=user("x"))
    assert tls_router.router.secure_requests == before
    monkeypatch.setenv("SSL_CERT_FILE", certs.ca_cert)
    with nomyo.SyncSecureChatCompletion(tls_router.url) as trusting:
        trusting.client._set_key(client_key)
        assert trusting.create(model="m", messages=user("env")).choices[0].message.content == (
            "env"
        )


def test_missing_or_empty_ca_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(nomyo.ConfigurationError, match="CA file"):
        nomyo.SecureChatCompletion("https://127.0.0.1:1", verify=str(tmp_path / "absent.pem"))
    empty = tmp_path / "empty.pem"
    empty.write_text("no certificates here\n")
    with pytest.raises(nomyo.ConfigurationError, match="no usable CA"):
        nomyo.SecureChatCompletion("https://127.0.0.1:1", verify=str(empty))


def test_cancelling_an_async_request_stops_it_and_the_client_stays_usable(
    tls_router: RouterThread, certs: DevCertificates, client_key: _core.PrivateKey
) -> None:
    async def scenario() -> None:
        async with nomyo.SecureChatCompletion(tls_router.url, verify=certs.ca_cert) as client:
            client.client._set_key(client_key)
            await client.create(model="m", messages=user("warm"))
            tls_router.router.faults.push(Fault(delay=30.0))
            task = asyncio.ensure_future(client.create(model="m", messages=user("slow")))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            tls_router.router.faults.clear()
            reply = await asyncio.wait_for(client.create(model="m", messages=user("next")), 30)
            assert reply.choices[0].message.content == "next"

    asyncio.run(scenario())


class Interrupted(Exception):
    pass


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals")
def test_a_signal_interrupts_a_blocking_request(
    tls_router: RouterThread, certs: DevCertificates, client_key: _core.PrivateKey
) -> None:
    def handler(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        with nomyo.SyncSecureChatCompletion(
            tls_router.url, verify=certs.ca_cert, max_retries=0
        ) as client:
            client.client._set_key(client_key)
            client.create(model="m", messages=user("warm"))
            tls_router.router.faults.push(Fault(delay=30.0))
            signal.setitimer(signal.ITIMER_REAL, 0.3)
            with pytest.raises(Interrupted):
                client.create(model="m", messages=user("slow"))
            tls_router.router.faults.clear()
            assert client.create(model="m", messages=user("ok")).choices[0].message.content == (
                "ok"
            )
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_error_status_headers_and_body_reach_the_exception(
    tls_router: RouterThread, certs: DevCertificates, client_key: _core.PrivateKey
) -> None:
    tls_router.router.faults.push(Fault(status=429, detail="slow down", retry_after="7"))
    with nomyo.SyncSecureChatCompletion(
        tls_router.url, verify=certs.ca_cert, max_retries=0
    ) as client:
        client.client._set_key(client_key)
        with pytest.raises(nomyo.RateLimitError, match="slow down") as info:
            client.create(model="m", messages=user("x"))
    assert info.value.retry_after == 7
    assert info.value.status_code == 429


def test_ssl_cert_dir_may_list_several_folders(
    tls_router: RouterThread,
    certs: DevCertificates,
    client_key: _core.PrivateKey,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    empty, with_ca = tmp_path / "empty", tmp_path / "ca"
    empty.mkdir()
    with_ca.mkdir()
    (with_ca / "test-ca.pem").write_text(Path(certs.ca_cert).read_text())
    monkeypatch.setenv("SSL_CERT_DIR", f"{empty}{os.pathsep}{with_ca}")
    with nomyo.SyncSecureChatCompletion(tls_router.url) as client:
        client.client._set_key(client_key)
        assert client.create(model="m", messages=user("dirs")).choices[0].message.content == (
            "dirs"
        )


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_uses_its_own_pool(
    tls_router: RouterThread, certs: DevCertificates, client_key: _core.PrivateKey
) -> None:
    with nomyo.SyncSecureChatCompletion(tls_router.url, verify=certs.ca_cert) as client:
        client.client._set_key(client_key)
        assert client.create(model="m", messages=user("parent")).choices[0].message.content
        pid = os.fork()
        if pid == 0:  # the child: exit status says whether its request worked
            code = 1
            try:
                signal.alarm(60)
                reply = client.create(model="m", messages=user("child"))
                code = 0 if reply.choices[0].message.content == "child" else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert client.create(model="m", messages=user("again")).choices[0].message.content == (
            "again"
        )


def test_concurrent_replies_reach_their_own_requests_through_the_loop_queue(
    tls_router: RouterThread, certs: DevCertificates, client_key: _core.PrivateKey
) -> None:
    from nomyo._transports import native as _native

    async def scenario() -> None:
        async with nomyo.SecureChatCompletion(tls_router.url, verify=certs.ca_cert) as client:
            client.client._set_key(client_key)
            texts = [f"request {i}: " + "x" * (i * 37) for i in range(48)]
            replies = await asyncio.gather(
                *(client.create(model="m", messages=user(text)) for text in texts)
            )
            assert [r.choices[0].message.content for r in replies] == texts
            queue = _native._COMPLETIONS[asyncio.get_running_loop()]
            assert queue is not None, "a selector loop watches the completions descriptor"
            assert len(queue.futures) == 0, "every future was settled and forgotten"

    asyncio.run(scenario())


def test_a_loop_that_cannot_watch_descriptors_gets_callbacks(
    tls_router: RouterThread, certs: DevCertificates, client_key: _core.PrivateKey
) -> None:
    from nomyo._transports import native as _native

    class NoReaders(asyncio.SelectorEventLoop):  # like the proactor loop on Windows
        def add_reader(self, *args: Any, **kwargs: Any) -> None:
            raise NotImplementedError

    async def scenario() -> list[str]:
        async with nomyo.SecureChatCompletion(tls_router.url, verify=certs.ca_cert) as client:
            client.client._set_key(client_key)
            replies = await asyncio.gather(
                *(client.create(model="m", messages=user(f"cb {i}")) for i in range(5))
            )
            assert _native._COMPLETIONS[asyncio.get_running_loop()] is None
            return [r.choices[0].message.content for r in replies]

    loop = NoReaders()
    try:
        assert loop.run_until_complete(scenario()) == [f"cb {i}" for i in range(5)]
    finally:
        loop.close()


@pytest.mark.skipif(not hasattr(_core, "Completions"), reason="POSIX only")
def test_completions_queue_wakes_its_descriptor_once_per_batch(
    tls_router: RouterThread, certs: DevCertificates, client_key: _core.PrivateKey
) -> None:
    import select

    transport = _core.Transport([certs.ca_cert])
    completions = _core.Completions()
    assert completions.drain() == []
    assert select.select([completions], [], [], 0)[0] == [], "nothing finished yet"
    for token in (7, 8):
        start_sealed(transport, completions, tls_router, client_key, token)
    finished: dict[int, Any] = {}
    while len(finished) < 2:
        assert select.select([completions], [], [], 30)[0], "the descriptor became readable"
        for token, ok, value in completions.drain():
            assert ok, value
            finished[token] = value
    for token, exchange in finished.items():
        assert exchange.status == 200
        value, _, _ = exchange.reply()
        assert value["choices"][0]["message"]["content"] == f"token {token}"
    assert select.select([completions], [], [], 0)[0] == [], "drained: no wake byte left"
    assert completions.drain() == []


@pytest.mark.skipif(not hasattr(_core, "Completions"), reason="POSIX only")
# Where PyO3 assumed an allocation could not fail, it reports the MemoryError as unraisable
# and panics (pyo3::instance::panic_on_null); drain() catches that panic.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("free_lists", ["as they are", "emptied"])
def test_completions_lose_nothing_when_python_runs_out_of_memory(
    tls_router: RouterThread,
    certs: DevCertificates,
    client_key: _core.PrivateKey,
    free_lists: str,
) -> None:
    """Each of the first 24 Python allocations in turn fails inside ``drain()``; every
    finished request still comes out exactly once (then or on the next wake-up), with its
    own outcome. With CPython's list free list emptied, making the result list allocates
    too (and may fail before the wake-up byte is read)."""
    import select
    import time

    testcapi = pytest.importorskip("_testcapi")
    transport = _core.Transport([certs.ca_cert])
    completions = _core.Completions()
    for failing in range(24):
        pending = [
            start_sealed(transport, completions, tls_router, client_key, token) for token in (1, 2)
        ]
        pending.append(
            transport.start(
                completions,
                {"method": "GET", "url": "https://127.0.0.1:1/", "headers": [], **LIMITS},
                token=3,
            )
        )
        deadline = time.monotonic() + 30
        while not all(p.done for p in pending):
            assert time.monotonic() < deadline, "the requests finished"
            time.sleep(0.005)
        batch: list[Any] = []
        held = [[] for _ in range(200)] if free_lists == "emptied" else []
        testcapi.set_nomemory(failing, failing + 1)
        try:
            batch = completions.drain()  # nothing else allocates while the hook is on
        except MemoryError:
            pass
        finally:
            testcapi.remove_mem_hooks()
        del held
        got = list(batch)
        while select.select([completions], [], [], 0)[0]:
            got.extend(completions.drain())
        assert sorted(token for token, _, _ in got) == [1, 2, 3], failing
        for token, ok, value in got:
            if token == 3:
                assert not ok and isinstance(value, _core.TransportError), value
            else:
                assert ok, value
                assert value.status == 200
                reply, _, _ = value.reply()
                assert reply["choices"][0]["message"]["content"] == f"token {token}"


@pytest.mark.parametrize("transport", ["native", "httpx"])
def test_a_closed_client_refuses_requests_on_both_transports(
    tls_router: RouterThread,
    certs: DevCertificates,
    client_key: _core.PrivateKey,
    monkeypatch: pytest.MonkeyPatch,
    transport: str,
) -> None:
    monkeypatch.setenv("NOMYO_TRANSPORT", transport)
    received = tls_router.router.secure_requests
    closed = "client has been closed"

    with nomyo.SyncSecureChatCompletion(tls_router.url, verify=certs.ca_cert) as client:
        client.client._set_key(client_key)
        assert client.create(model="m", messages=user("open")).choices[0].message.content
    with pytest.raises(RuntimeError, match=closed):
        client.create(model="m", messages=user("after close"))
    with pytest.raises(RuntimeError, match=closed):  # no new per-call client either
        client.create(model="m", messages=user("elsewhere"), base_url="https://127.0.0.1:1")

    async def scenario() -> nomyo.SecureChatCompletion:
        async with nomyo.SecureChatCompletion(tls_router.url, verify=certs.ca_cert) as client:
            client.client._set_key(client_key)
            assert (await client.create(model="m", messages=user("open"))).choices
        with pytest.raises(RuntimeError, match=closed):
            await client.create(model="m", messages=user("after close"))
        await client.aclose()  # closing twice is harmless
        return client

    reused = asyncio.run(scenario())
    with pytest.raises(RuntimeError, match=closed):  # a new event loop does not reopen it
        asyncio.run(reused.create(model="m", messages=user("next loop")))
    assert tls_router.router.secure_requests - received == 2, "nothing sent after close"


def test_a_loop_closed_with_a_request_in_flight_is_not_kept_alive(
    tls_router: RouterThread, certs: DevCertificates, client_key: _core.PrivateKey
) -> None:
    import gc
    import weakref

    from nomyo._transports import native as _native

    gc.collect()
    queues = len(_native._COMPLETIONS)
    client = nomyo.SecureChatCompletion(tls_router.url, verify=certs.ca_cert)
    client.client._set_key(client_key)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(client.create(model="m", messages=user("warm")))
    tls_router.router.faults.push(Fault(delay=2.0))
    try:
        task = loop.create_task(client.create(model="m", messages=user("abandoned")))
        loop.run_until_complete(asyncio.wait({task}, timeout=0.3))
        assert not task.done()
    finally:
        loop.close()  # the task is never awaited again
        tls_router.router.faults.clear()
    gone = weakref.ref(loop)
    del loop, task, client  # the client remembers the last loop it ran on
    gc.collect()
    assert gone() is None, "nothing of ours keeps the closed loop (and its queue) alive"
    assert len(_native._COMPLETIONS) == queues, "its queue (and descriptors) went with it"


MiB = 1 << 20


_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    import nomyo

    url, limit = sys.argv[1], int(sys.argv[2])
    client = nomyo.SyncSecureCompletionClient(
        url, allow_http=True, max_retries=0, max_response_size=limit
    )
    client.generate_keys()
    client.fetch_server_public_key()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        client.send_secure_request({"model": "m", "messages": []}, "p")
        outcome = "accepted"
    except nomyo.NomyoError as exc:
        outcome = type(exc).__name__
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"outcome": outcome, "grew_kib": after - before}))
    """
)


class DeclaringServer(socketserver.ThreadingTCPServer):
    """Serves a real key, then declares ``declared`` reply bytes, sends 1 KiB and closes."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, declared: int) -> None:
        self.declared = declared
        self.key_pem = _core.PrivateKey.generate(2048).public_key().to_pem().encode()
        super().__init__(("127.0.0.1", 0), _DeclaringHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _DeclaringHandler(socketserver.StreamRequestHandler):
    server: DeclaringServer

    def handle(self) -> None:
        while True:
            line = self.rfile.readline(65536)
            if not line:
                return
            head = [line]
            while head[-1] not in (b"\r\n", b"\n", b""):
                head.append(self.rfile.readline(65536))
            length = 0
            for header in head[1:]:
                name, _, value = header.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            self.rfile.read(length)
            if line.startswith(b"GET"):
                body = self.server.key_pem
                self.wfile.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
                continue
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                + f"Content-Length: {self.server.declared}\r\n\r\n".encode()
                + b"{" * 1024
            )
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return


@pytest.mark.parametrize("transport", ["native", "httpx"])
def test_declared_length_is_not_reserved(transport: str) -> None:
    """A reply declaring (almost) 1 GiB and sending 1 KiB costs no more than it sends.

    Before the fix the native transport reserved the declared length up front (and, with
    every freed block wiped, touched all of it): the child's peak RSS grew by ~1 GiB.
    """
    server = DeclaringServer((1 << 30) - 1)
    try:
        env = {**os.environ, "NOMYO_TRANSPORT": transport, "NO_PROXY": "*"}
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, server.url, str(1 << 30)],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr  # no abort (134)
    result = json.loads(done.stdout)
    assert result["outcome"] in ("APIConnectionError", "EnvelopeError"), result
    assert result["grew_kib"] * 1024 < 64 * MiB, result


def test_declared_terabyte_is_refused_not_fatal() -> None:
    server = DeclaringServer(1 << 40)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, server.url, str(1 << 30)],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "NO_PROXY": "*"},
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outcome"] in ("APIConnectionError", "EnvelopeError")


@pytest.mark.parametrize("size", [0, -1, (1 << 30) + 1, 1 << 40, 2.5, True])
def test_max_response_size_is_bounded(size: Any) -> None:
    for cls in (nomyo.SecureCompletionClient, nomyo.SyncSecureCompletionClient):
        with pytest.raises(nomyo.ConfigurationError, match="max_response_size"):
            cls("https://x.example", max_response_size=size)
    nomyo.SyncSecureCompletionClient("https://x.example", max_response_size=1 << 30).close()
