"""The process-wide ephemeral key pair (``nomyo._ephemeral``): one pair for every client without a
key of its own, shared across clients, threads, event loops and the SDK transport; a forked
child makes its own; scheduled rotation without a failed request; ``key_dir`` and explicit keys
unchanged."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import openai
import pytest

import nomyo
from nomyo import _core
from nomyo._ephemeral import (
    DEFAULT_ROTATION_SECONDS,
    ENV_KEY_ROTATION,
    ProcessKey,
    process_key,
    resolve_rotation_interval,
)
from nomyo._params import NOT_GIVEN
from nomyo.cli._main import _UsageError, build_parser
from nomyo.testing import DevRouter, RouterThread

MESSAGES = [{"role": "user", "content": "one key for the process"}]


@pytest.fixture(scope="module")
def router() -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        yield handle


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_KEY_ROTATION, raising=False)


def sent_keys(router: RouterThread, since: int = 0) -> list[str]:
    """The client public keys (PEM) of the requests the router saw, from ``since`` on."""
    return [unquote(r.headers["x-public-key"]) for r in list(router.router.requests)[since:]]


def text(reply: Any) -> str:
    return str(reply["choices"][0]["message"]["content"])


def test_every_kind_of_client_seals_under_the_one_process_pair(router: RouterThread) -> None:
    # A rotation interval of this test's own: a ProcessKey nobody else in this process uses.
    interval = 7_001.0
    start = len(router.router.requests)
    for _ in range(2):  # a new client per call, twice
        with nomyo.SyncSecureChatCompletion(
            router.url, allow_http=True, key_rotation_interval=interval
        ) as chat:
            assert text(chat.create("m", MESSAGES)) == MESSAGES[0]["content"]

    async def on_a_loop() -> None:
        async with nomyo.SecureChatCompletion(
            router.url, allow_http=True, key_rotation_interval=interval
        ) as chat:
            assert text(await chat.create("m", MESSAGES))
        async with nomyo.SecureCompletionClient(
            router.url, allow_http=True, key_rotation_interval=interval
        ) as low:  # no generate_keys(): the process pair, made on first use
            assert text(await low.send_secure_request({"model": "m", "messages": MESSAGES}, "p"))

    asyncio.run(on_a_loop())
    asyncio.run(on_a_loop())  # another event loop, the same pair
    http = nomyo.openai_http_client(router.url, allow_http=True, key_rotation_interval=interval)
    with openai.OpenAI(api_key="x", max_retries=0, http_client=http) as sdk:
        out = sdk.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
        assert out.choices[0].message.content == MESSAGES[0]["content"]
    pair = process_key(interval).wait()
    keys = sent_keys(router, start)
    assert len(keys) == 7
    assert set(keys) == {pair.public_key_pem}
    assert pair.generation == 1 and process_key(interval).rotations == 0


def test_own_keys_and_key_dirs_keep_their_own(router: RouterThread, tmp_path: Path) -> None:
    interval = 7_002.0
    shared = process_key(interval).wait().public_key_pem
    start = len(router.router.requests)
    with nomyo.SyncSecureCompletionClient(
        router.url, allow_http=True, key_rotation_interval=interval
    ) as own:
        own.key_size = 2048  # (quicker to make)
        own.generate_keys()  # an explicit key: this client's alone
        own.send_secure_request({"model": "m", "messages": MESSAGES}, "own")
        own_pem = own.public_key_pem
    with nomyo.SyncSecureChatCompletion(
        router.url, allow_http=True, key_dir=tmp_path, key_rotation_interval=interval
    ) as saved:
        saved.client.key_size = 2048
        saved.create("m", MESSAGES)
    saved_pem = (tmp_path / "public_key.pem").read_text()
    keys = sent_keys(router, start)
    assert own_pem is not None
    assert [k.strip() for k in keys] == [own_pem.strip(), saved_pem.strip()]
    assert shared.strip() not in {k.strip() for k in keys}


def test_threads_racing_to_the_first_use_make_one_pair(router: RouterThread) -> None:
    interval = 7_003.0
    start = len(router.router.requests)

    def call(i: int) -> str:
        with nomyo.SyncSecureChatCompletion(
            router.url, allow_http=True, key_rotation_interval=interval
        ) as chat:
            return text(chat.create("m", [{"role": "user", "content": f"thread {i}"}]))

    with ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(call, range(16))) == sorted(f"thread {i}" for i in range(16))
    pair = process_key(interval).wait()
    assert pair.generation == 1, "racing first uses made more than one pair"
    assert set(sent_keys(router, start)) == {pair.public_key_pem}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_makes_its_own_pair(router: RouterThread) -> None:
    interval = 7_004.0
    with nomyo.SyncSecureChatCompletion(
        router.url, allow_http=True, key_rotation_interval=interval
    ) as chat:
        assert text(chat.create("m", MESSAGES))
        parent_pem = process_key(interval).wait().public_key_pem
        before = len(router.router.requests)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its reply, then the key it sealed under, through the pipe
            code = 1
            try:
                signal.alarm(60)
                os.close(read_end)
                reply = chat.create("m", [{"role": "user", "content": "child"}])
                child_pem = process_key(interval).wait().public_key_pem
                os.write(write_end, (text(reply) + "\n" + child_pem).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            said = pipe.read().decode()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        reply_text, _, child_pem = said.partition("\n")
        assert reply_text == "child"
        assert child_pem and child_pem != parent_pem
        assert sent_keys(router, before) == [child_pem]
        # The parent still seals under its own pair.
        assert text(chat.create("m", MESSAGES))
        assert sent_keys(router, before)[-1] == parent_pem


class GatedTransport(httpx.BaseTransport):
    """A real HTTP transport that holds sealed requests at a gate until released."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.entered = threading.Event()
        self.release = threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/secure_completion"):
            self.entered.set()
            assert self.release.wait(60)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_a_reply_sealed_before_a_rotation_still_opens(router: RouterThread) -> None:
    interval = 7_005.0
    gate = GatedTransport()
    start = len(router.router.requests)
    with nomyo.SyncSecureChatCompletion(
        router.url, allow_http=True, transport=gate, key_rotation_interval=interval
    ) as chat:
        key = chat.client.process_key
        old = key.wait()
        old_pem, old_ref = old.public_key_pem, weakref.ref(old.private_key)
        del old
        results: list[str] = []
        worker = threading.Thread(
            target=lambda: results.append(text(chat.create("m", MESSAGES))), daemon=True
        )
        worker.start()
        assert gate.entered.wait(60)  # sealed under the old pair, held before the router
        new = key.rotate()
        assert new.generation == 2 and new.public_key_pem != old_pem
        assert key.current() is new
        assert old_ref() is not None, "the request in flight still holds the old key"
        gate.release.set()
        worker.join(60)
        assert results == [MESSAGES[0]["content"]]
        assert text(chat.create("m", MESSAGES))  # the next request: the new pair
    assert sent_keys(router, start) == [old_pem, new.public_key_pem]
    gc.collect()
    assert old_ref() is None, "nothing in flight needs the old key: it is freed (and zeroed)"


def test_rotation_under_load_fails_no_request(router: RouterThread) -> None:
    """A short interval, so that swaps happen while requests are in flight: every request of
    four threads and an event loop succeeds across at least two swaps."""
    interval = 0.05
    start = len(router.router.requests)
    key = process_key(interval, 2048)  # 2048 bits: quicker swaps
    failures: list[BaseException] = []
    done = {"sync": 0, "async": 0}
    cap = 20_000  # a bound, never reached unless rotation is broken

    def keep_sending(chat: nomyo.SyncSecureChatCompletion, name: str) -> None:
        while key.rotations < 2 and done["sync"] < cap:
            try:
                content = f"{name} {done['sync']}"
                assert text(chat.create("m", [{"role": "user", "content": content}])) == content
            except BaseException as exc:
                failures.append(exc)
                return
            done["sync"] += 1

    async def keep_sending_async() -> None:
        async with nomyo.SecureChatCompletion(
            router.url, allow_http=True, key_rotation_interval=interval
        ) as chat:
            chat.client.key_size = 2048

            async def one(i: int) -> None:
                content = f"async {i}"
                assert text(await chat.create("m", [{"role": "user", "content": content}])) == (
                    content
                )

            while key.rotations < 2 and done["async"] < cap:
                await asyncio.gather(*(one(done["async"] + i) for i in range(4)))
                done["async"] += 4

    with nomyo.SyncSecureChatCompletion(
        router.url, allow_http=True, key_rotation_interval=interval
    ) as chat:
        chat.client.key_size = 2048
        threads = [threading.Thread(target=keep_sending, args=(chat, f"t{i}")) for i in range(4)]
        for thread in threads:
            thread.start()
        try:
            asyncio.run(keep_sending_async())
        except BaseException as exc:
            failures.append(exc)
        for thread in threads:
            thread.join()
    assert failures == []
    assert key.rotations >= 2, f"no two swaps within {cap} requests"
    keys = sent_keys(router, start)
    assert len(set(keys)) >= 3  # the first pair and at least two successors were used


def test_rotation_interval_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_rotation_interval(NOT_GIVEN) == DEFAULT_ROTATION_SECONDS == 86_400
    assert resolve_rotation_interval(None) is None
    assert resolve_rotation_interval(30) == 30.0
    monkeypatch.setenv(ENV_KEY_ROTATION, "3600")
    assert resolve_rotation_interval(NOT_GIVEN) == 3600.0
    assert resolve_rotation_interval(5) == 5.0  # an explicit value wins
    monkeypatch.setenv(ENV_KEY_ROTATION, "never")
    assert resolve_rotation_interval(NOT_GIVEN) is None
    monkeypatch.setenv(ENV_KEY_ROTATION, "daily")
    with pytest.raises(nomyo.ConfigurationError, match=ENV_KEY_ROTATION):
        resolve_rotation_interval(NOT_GIVEN)
    for bad in (0, -1, float("inf"), float("nan"), True, "60"):
        with pytest.raises(nomyo.ConfigurationError):
            resolve_rotation_interval(bad)  # type: ignore[arg-type]
    with pytest.raises(nomyo.ConfigurationError):
        nomyo.SyncSecureChatCompletion("https://router.invalid", key_rotation_interval=0)


def test_decrypt_response_opens_with_the_process_pair() -> None:
    interval = 7_007.0
    client = nomyo.SyncSecureCompletionClient(
        "https://router.invalid", key_rotation_interval=interval
    )
    pair = client.process_key.wait()
    reply = {"id": "r", "object": "chat.completion", "choices": []}
    sealed = _core.seal_json(reply, pair.private_key.public_key())
    opened = client.decrypt_response(sealed, "pid")
    assert opened["id"] == "r" and opened["_metadata"]["payload_id"] == "pid"
    client.close()


def test_a_failed_key_generation_is_raised_and_retried() -> None:
    key = ProcessKey(None, bits=1000)  # a size aws-lc refuses: generation fails for real
    for attempt in (1, 2):
        with pytest.raises(nomyo.KeyFormatError, match="1000"):
            key.wait()
        assert key.current() is None and key._pending is None, attempt
    with pytest.raises(nomyo.KeyFormatError):
        key.rotate()


def test_doctor_reports_the_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    from nomyo.cli.doctor import diagnose

    monkeypatch.setenv(ENV_KEY_ROTATION, "600")
    assert diagnose(4096)["client_keys"]["process_key_rotation_seconds"] == 600.0
    monkeypatch.setenv(ENV_KEY_ROTATION, "never")
    assert diagnose(4096)["client_keys"]["process_key_rotation_seconds"] is None


def test_cli_option(router: RouterThread) -> None:
    parser = build_parser()
    args = parser.parse_args(["proxy", "--key-rotation", "90"])
    assert args.key_rotation == 90.0
    assert parser.parse_args(["chat", "hi", "--key-rotation", "never"]).key_rotation is None
    assert parser.parse_args(["run", "--", "true"]).key_rotation is NOT_GIVEN
    with pytest.raises(_UsageError, match="positive"):
        parser.parse_args(["proxy", "--key-rotation", "0"])
