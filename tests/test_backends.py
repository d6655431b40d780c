"""The async client under every async backend: asyncio, uvloop and trio (issue 16 item 5).

Every test runs the same calls through ``anyio.run`` on each backend, against the
development router, and checks first that the backend really is the one named. The native
transport is the default; the httpx transport (``NOMYO_TRANSPORT=httpx``) runs where it has
code of its own (retries, cancellation, timeouts, a pool per event loop).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import openai
import pytest
import sniffio
import uvloop
from chat_support import TRANSPORTS

import nomyo
from nomyo import _aio, _constants, _core
from nomyo._transports import NativeTransport, _completions, _trio
from nomyo._transports import native as _native
from nomyo.testing import Fault, RecordedRequest, RouterThread

T = TypeVar("T")
#: tests/conftest.py's run_reference fixture
RunReference = Callable[..., tuple[int, dict[str, Any]]]

#: (id, anyio backend, backend options)
BACKENDS = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}


@pytest.fixture(autouse=True)
def _clean_faults(router: RouterThread) -> Iterator[None]:
    router.router.faults.clear()
    yield
    router.router.faults.clear()


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    name: str = request.param
    if name == "httpx":
        monkeypatch.setenv("NOMYO_TRANSPORT", "httpx")
    else:
        monkeypatch.delenv("NOMYO_TRANSPORT", raising=False)
    return name


def run_on(backend: str, fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn()`` on a fresh event loop of ``backend``, after checking it is that one."""
    name, options = BACKENDS[backend]

    async def checked() -> T:
        assert running_backend() == backend
        return await fn()

    return anyio.run(checked, backend=name, backend_options=options)


def running_backend() -> str:
    """The running loop as the tests name it: asyncio, uvloop or trio."""
    loop = _aio.running_asyncio_loop()
    if loop is None:
        return sniffio.current_async_library()
    return "uvloop" if isinstance(loop, uvloop.Loop) else "asyncio"


def chat(router: RouterThread, key: _core.PrivateKey, **kwargs: Any) -> nomyo.SecureChatCompletion:
    client = nomyo.SecureChatCompletion(base_url=router.url, allow_http=True, **kwargs)
    client.client._set_key(key)
    return client


def ask(text: str) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}]}


def content(reply: Any) -> Any:
    return reply["choices"][0]["message"]["content"]


def completions_queue() -> _completions.LoopCompletions | None:
    """The running loop's completion queue of the native transport (None: callbacks)."""
    loop = _aio.running_asyncio_loop()
    if loop is None:
        return _trio._QUEUE.get(None)
    return _native._COMPLETIONS.get(loop)


def since(router: RouterThread, before: int) -> list[RecordedRequest]:
    """The secure-completion requests the router recorded after the ``before``-th."""
    return list(router.router.requests)[before - router.router.secure_requests :]


async def wait_for_request(router: RouterThread, count: int) -> None:
    """Until the router has seen ``count`` secure-completion requests."""
    with anyio.fail_after(30):
        while router.router.secure_requests < count:
            await anyio.sleep(0.01)


# -- one completion -------------------------------------------------------------------------


def test_completion(
    backend: str, transport: str, router: RouterThread, client_key: _core.PrivateKey
) -> None:
    async def go() -> tuple[Any, _completions.LoopCompletions | None]:
        async with chat(router, client_key) as client:
            assert isinstance(client.client._transport, NativeTransport) == (transport == "native")
            reply = await client.create(**ask(f"hello from {backend}"))
            return reply, completions_queue()

    reply, queue = run_on(backend, go)
    assert content(reply) == f"hello from {backend}"
    recorded = router.router.requests[-1]
    assert reply["_metadata"]["payload_id"] == recorded.payload_id
    assert reply["_metadata"]["is_encrypted"] is True
    assert recorded.body == ask(f"hello from {backend}")
    if transport == "native":
        # Finished requests came through the loop's descriptor (no GIL on the workers),
        # and nothing is left waiting in it.
        assert isinstance(queue, _completions.LoopCompletions)
        assert len(queue.futures) == 0
    else:
        assert queue is None


def test_keys_generated_and_saved_under_each_backend(
    backend: str, router: RouterThread, tmp_path: Path
) -> None:
    async def go() -> Any:
        async with nomyo.SecureChatCompletion(
            base_url=router.url, allow_http=True, key_dir=tmp_path
        ) as client:
            # Two requests at once: one generates the key pair, the other waits for it.
            async with anyio.create_task_group() as group:
                replies: list[Any] = []

                async def one(text: str) -> None:
                    replies.append(await client.create(**ask(text)))

                group.start_soon(one, "first")
                group.start_soon(one, "second")
            return sorted(content(r) for r in replies)

    assert run_on(backend, go) == ["first", "second"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [_constants.PRIVATE_KEY_FILE, _constants.PUBLIC_KEY_FILE]
    )


# -- concurrency ----------------------------------------------------------------------------


def test_twenty_concurrent_completions(
    backend: str, transport: str, router: RouterThread, client_key: _core.PrivateKey
) -> None:
    before = router.router.secure_requests

    async def go() -> dict[int, Any]:
        replies: dict[int, Any] = {}
        async with chat(router, client_key) as client:

            async def one(i: int) -> None:
                replies[i] = await client.create(**ask(f"request {i} on {backend}"))

            async with anyio.create_task_group() as group:
                for i in range(20):
                    group.start_soon(one, i)
        return replies

    replies = run_on(backend, go)
    assert {i: content(r) for i, r in replies.items()} == {
        i: f"request {i} on {backend}" for i in range(20)
    }
    recorded = since(router, before)
    assert len(recorded) == 20
    assert {r.payload_id for r in recorded} == {
        r["_metadata"]["payload_id"] for r in replies.values()
    }


# -- retries ----------------------------------------------------------------------------------


def test_retry_after_429(
    backend: str, transport: str, router: RouterThread, client_key: _core.PrivateKey
) -> None:
    router.router.faults.push(Fault(status=429, retry_after="0.05"))
    before = router.router.secure_requests

    async def go() -> Any:
        async with chat(router, client_key, max_retries=2) as client:
            return await client.create(**ask("after a 429"))

    reply = run_on(backend, go)
    assert content(reply) == "after a 429"
    first, second = since(router, before)
    assert first.status == 429 and first.fault is not None
    assert second.fault is None
    assert first.payload_id == second.payload_id == reply["_metadata"]["payload_id"]


def test_rate_limiter_waits_under_each_backend(
    backend: str, router: RouterThread, client_key: _core.PrivateKey
) -> None:
    # A clock that never moves: every request after the first must wait its turn (50 ms
    # each), so the limiter's own sleep runs on the backend.
    policy = nomyo.RateLimitPolicy(requests=1, burst=1, period=0.05, burst_interval=0.05, margin=0)
    limiter = nomyo.RateLimiter(policy, clock=lambda: 0.0)

    async def go() -> list[Any]:
        async with chat(router, client_key, rate_limit=limiter) as client:
            return [content(await client.create(**ask(f"turn {i}"))) for i in range(3)]

    assert run_on(backend, go) == ["turn 0", "turn 1", "turn 2"]
    assert limiter.reserve() == pytest.approx(0.15)  # three starts booked before this one


# -- cancellation and timeouts --------------------------------------------------------------------


def test_cancelled_mid_flight_then_usable(
    backend: str, transport: str, router: RouterThread, client_key: _core.PrivateKey
) -> None:
    router.router.faults.push(Fault(delay=5))
    before = router.router.secure_requests

    async def go() -> tuple[bool, Any, _completions.LoopCompletions | None]:
        async with chat(router, client_key) as client:
            cancelled = False
            async with anyio.create_task_group() as group:

                async def doomed() -> None:
                    nonlocal cancelled
                    try:
                        await client.create(**ask("never answered"))
                    except anyio.get_cancelled_exc_class():
                        cancelled = True
                        raise

                group.start_soon(doomed)
                await wait_for_request(router, before + 1)  # the router holds it now
                group.cancel_scope.cancel()
            after = await client.create(**ask("still usable"))
            return cancelled, after, completions_queue()

    cancelled, after, queue = run_on(backend, go)
    assert cancelled
    assert content(after) == "still usable"
    held, answered = since(router, before)
    assert held.fault == Fault(delay=5) and held.body is None  # cancelled while held
    assert answered.fault is None and answered.body == ask("still usable")
    if queue is not None:
        assert len(queue.futures) == 0  # the cancelled request left nothing behind


def test_backend_timeout_cancels_the_request(
    backend: str, router: RouterThread, client_key: _core.PrivateKey
) -> None:
    router.router.faults.push(Fault(delay=5))

    async def go() -> Any:
        async with chat(router, client_key) as client:
            with pytest.raises(TimeoutError):
                with anyio.fail_after(0.5):
                    await client.create(**ask("too slow"))
            return await client.create(**ask("in time"))

    assert content(run_on(backend, go)) == "in time"


@pytest.mark.parametrize("per_call", [False, True], ids=["client", "per-call"])
def test_read_timeout(
    backend: str,
    transport: str,
    per_call: bool,
    router: RouterThread,
    client_key: _core.PrivateKey,
) -> None:
    router.router.faults.push(Fault(delay=5))
    options: dict[str, Any] = {"timeout": 0.5} if per_call else {}

    async def go() -> Any:
        client_options: dict[str, Any] = {} if per_call else {"timeout": 0.5}
        async with chat(router, client_key, max_retries=0, **client_options) as client:
            with pytest.raises(nomyo.APITimeoutError) as caught:
                await client.create(**ask("too slow"), **options)
            assert caught.value.payload_id is not None
            return await client.create(**ask("in time"), **options)

    assert content(run_on(backend, go)) == "in time"


# -- streaming ------------------------------------------------------------------------------------


def test_stream(backend: str, router: RouterThread, client_key: _core.PrivateKey) -> None:
    text = f"streamed on {backend}"

    async def go() -> list[Any]:
        async with chat(router, client_key) as client:
            stream = await client.chat.completions.create(
                **ask(text), stream=True, stream_options={"include_usage": True}
            )
            async with stream:
                return [chunk async for chunk in stream]

    chunks = run_on(backend, go)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[0].choices[0].delta.role == "assistant"


def test_openai_sdk_under_each_backend(backend: str, router: RouterThread) -> None:
    """``openai.AsyncOpenAI`` over nomyo's encrypting transport, plain and streamed."""
    text = f"sdk on {backend}"

    async def go() -> tuple[Any, str]:
        http = nomyo.openai_async_http_client(router.url, allow_http=True)
        async with openai.AsyncOpenAI(api_key="unused", http_client=http) as sdk:
            reply = await sdk.chat.completions.create(**ask(text))
            stream = await sdk.chat.completions.create(**ask(text), stream=True)
            streamed = "".join(
                [c.choices[0].delta.content or "" async for c in stream if c.choices]
            )
            return reply.choices[0].message.content, streamed

    assert run_on(backend, go) == (text, text)


# -- one client, several loops -------------------------------------------------------------------


def test_one_client_across_backends(
    transport: str, router: RouterThread, client_key: _core.PrivateKey
) -> None:
    client = chat(router, client_key)
    seen = []
    for backend in ["asyncio", "trio", "uvloop", "trio", "asyncio"]:

        async def go(backend: str = backend) -> Any:
            return await client.create(**ask(f"again on {backend}"))

        seen.append(content(run_on(backend, go)))
    assert seen == [f"again on {b}" for b in ["asyncio", "trio", "uvloop", "trio", "asyncio"]]
    run_on("trio", client.aclose)


def test_no_event_loop_is_named() -> None:
    with pytest.raises(RuntimeError, match="asyncio, uvloop or trio"):
        _aio.current_loop()


# -- the reference client, for comparison -------------------------------------------------------


@pytest.mark.reference
@pytest.mark.parametrize("ref_backend", ["asyncio", "trio"])
def test_reference_client_under_the_same_backends(
    ref_backend: str, run_reference: RunReference, router: RouterThread
) -> None:
    """The reference (nomyo 0.2.9, httpx through anyio) answers the same request under
    asyncio and trio, as ours does above."""
    code, out = run_reference(
        "chat",
        router.url,
        "--model",
        "m",
        "--message",
        f"reference on {ref_backend}",
        "--allow-http",
        "--backend",
        ref_backend,
    )
    assert code == 0, out
    reply = out["responses"][0]
    assert reply["choices"][0]["message"]["content"] == f"reference on {ref_backend}"
    assert reply["_metadata"]["is_encrypted"] is True
