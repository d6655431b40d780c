"""Emulated streaming on every OpenAI-shaped surface, checked with the real clients.

The router is asked once, without streaming; each surface gives the opened reply back as
OpenAI's chunk stream. Every test reassembles the stream and compares it with the
non-streamed reply for the same request: the official ``openai`` SDK (sync and async),
LangChain's ``ChatOpenAI``, and ``curl -N`` for the bytes, each through ``nomyo proxy``
(``ChatProxy``) and through the SDK transports; and ``chat.completions.create(stream=True)``
on our own clients.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

import nomyo
from nomyo import _core
from nomyo._proxy import ChatProxy
from nomyo.testing import DevRouter, Fault, RouterThread

MODEL = "test-model"
TOKEN = "proxy-token-for-tests"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def router() -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        yield handle


class ProxyThread:
    """A ChatProxy on its own event loop in a daemon thread."""

    def __init__(self, router_url: str, key: _core.PrivateKey, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, args=(router_url, key, options))
        self._thread.daemon = True
        self._thread.start()
        assert self._started.wait(30), "the proxy did not start"
        self.url = self.proxy.url

    def _run(self, router_url: str, key: _core.PrivateKey, options: dict[str, Any]) -> None:
        async def main() -> None:
            chat = nomyo.SecureChatCompletion(router_url, allow_http=True, max_retries=0)
            chat.client._set_key(key)
            self.proxy = await ChatProxy(chat, "127.0.0.1", 0, model=MODEL, **options).start()
            self._stop = asyncio.Event()
            self._started.set()
            await self._stop.wait()
            await self.proxy.stop()
            await chat.aclose()

        self._loop.run_until_complete(main())

    def close(self) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture(scope="module")
def proxy(router: RouterThread, client_key: _core.PrivateKey) -> Iterator[ProxyThread]:
    handle = ProxyThread(router.url, client_key, auth_token=TOKEN)
    yield handle
    handle.close()


@pytest.fixture(autouse=True)
def _clean(router: RouterThread, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("NOMYO_API_KEY", "NOMYO_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    router.router.faults.clear()
    yield
    router.router.faults.clear()


# --- reassembly ------------------------------------------------------------------------------


def reassemble(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``chat.completion`` built from chunk dicts, as an accumulating client would."""
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    first = chunks[0]
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert (chunk["id"], chunk["created"], chunk["model"]) == (
            first["id"],
            first["created"],
            first["model"],
        )
        if chunk.get("usage") is not None:
            assert chunk["choices"] == []
            usage = chunk["usage"]
        for part in chunk["choices"]:
            choice = choices.setdefault(
                part["index"],
                {"index": part["index"], "message": {}, "finish_reason": None},
            )
            assert choice["finish_reason"] is None, "a chunk after the choice's finish_reason"
            message = choice["message"]
            delta = part["delta"]
            if delta.get("role") is not None:
                assert "role" not in message, "the role comes once, in the first delta"
                message["role"] = delta["role"]
                message["content"] = None
            assert "role" in message, "the first delta of a choice carries the role"
            if delta.get("content"):
                message["content"] = (message["content"] or "") + delta["content"]
            for call in delta.get("tool_calls") or []:
                calls = message.setdefault("tool_calls", [])
                if call["index"] == len(calls):
                    calls.append(
                        {"id": None, "type": None, "function": {"name": "", "arguments": ""}}
                    )
                entry = calls[call["index"]]
                entry["id"] = call.get("id") or entry["id"]
                entry["type"] = call.get("type") or entry["type"]
                function = call.get("function") or {}
                entry["function"]["name"] += function.get("name") or ""
                entry["function"]["arguments"] += function.get("arguments") or ""
            choice["finish_reason"] = part["finish_reason"]
    return {
        "id": first["id"],
        "model": first["model"],
        "choices": [choices[i] for i in sorted(choices)],
        "usage": usage,
    }


def comparable(completion: dict[str, Any], *, usage: bool = True) -> dict[str, Any]:
    """What must agree between a streamed and a non-streamed reply to the same request.

    The id differs between two requests (the echo backend derives it from the payload id).
    """
    choices = []
    for choice in completion["choices"]:
        message = {k: v for k, v in choice["message"].items() if v is not None}
        message.pop("refusal", None)
        for call in message.get("tool_calls") or []:
            call.pop("id")
            call.pop("index", None)  # the SDK's accumulator keeps the delta's index
            call["function"] = {k: v for k, v in call["function"].items() if v is not None}
        choices.append(
            {"index": choice["index"], "message": message, "finish_reason": choice["finish_reason"]}
        )
    out: dict[str, Any] = {"model": completion["model"], "choices": choices}
    if usage:
        out["usage"] = completion["usage"]
    return out


def plain(value: Any) -> Any:
    """An SDK object (pydantic) or one of ours as plain JSON values."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", exclude_unset=True)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def body(text: str = "hello stream", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


# --- the bytes on the wire ---------------------------------------------------------------------


def parse_events(raw: bytes) -> list[dict[str, Any]]:
    """The chunks of an event stream, checking OpenAI's framing byte for byte."""
    assert raw.endswith(b"data: [DONE]\n\n")
    events = raw.split(b"\n\n")
    assert events[-1] == b""
    assert events[-2] == b"data: [DONE]"
    chunks = []
    for event in events[:-2]:
        assert event.startswith(b"data: {"), event[:40]
        assert b"\n" not in event
        payload = event[len(b"data: ") :]
        chunk = json.loads(payload)
        # Compact JSON, as OpenAI sends it.
        assert payload == json.dumps(chunk, separators=(",", ":"), ensure_ascii=False).encode()
        chunks.append(chunk)
    return chunks


def test_curl_reads_openai_event_stream_bytes(proxy: ProxyThread) -> None:
    assert shutil.which("curl"), "curl is installed by scripts/install-system-deps.sh"
    request = body(stream=True, stream_options={"include_usage": True})
    result = subprocess.run(
        [
            "curl",
            "-sSN",
            "--fail-with-body",
            "-D",
            "-",
            "-H",
            f"Authorization: Bearer {TOKEN}",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            json.dumps(request),
            proxy.url + "/v1/chat/completions",
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    head, _, raw = result.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    headers = {
        k.strip().lower(): v.strip()
        for k, _, v in (line.decode().partition(":") for line in head.split(b"\r\n")[1:])
    }
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    chunks = parse_events(raw)
    # Every chunk has "usage": null but the last, which has empty choices and the usage.
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert chunks[-2]["choices"][0]["delta"] == {}
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    metadata = chunks[-1]["_metadata"]
    assert metadata["is_encrypted"] is True
    assert headers["x-request-id"] == metadata["payload_id"]
    assert all("_metadata" not in c for c in chunks[:-1])

    whole = httpx.post(
        proxy.url + "/v1/chat/completions",
        json=body(),
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )
    assert whole.status_code == 200
    assert comparable(reassemble(chunks)) == comparable(whole.json())

    # Without include_usage there is no usage key at all.
    plain_stream = httpx.post(
        proxy.url + "/v1/chat/completions",
        json=body(stream=True),
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )
    assert all("usage" not in c for c in parse_events(plain_stream.content))


def test_stream_options_without_stream_is_refused(proxy: ProxyThread) -> None:
    reply = httpx.post(
        proxy.url + "/v1/chat/completions",
        json=body(stream_options={"include_usage": True}),
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "stream_options"


def test_router_never_sees_stream_fields(proxy: ProxyThread, router: RouterThread) -> None:
    before = len(router.router.requests)
    reply = httpx.post(
        proxy.url + "/v1/chat/completions",
        json=body("no stream upstream", stream=True, stream_options={"include_usage": True}),
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )
    assert reply.status_code == 200
    recorded = list(router.router.requests)[before:]
    assert len(recorded) == 1
    decrypted = recorded[0].body
    assert decrypted is not None
    assert "stream" not in decrypted and "stream_options" not in decrypted
    assert decrypted["messages"][0]["content"] == "no stream upstream"


def test_an_error_before_the_reply_is_an_ordinary_error_response(
    proxy: ProxyThread, router: RouterThread
) -> None:
    router.router.faults.push(Fault(status=429, retry_after="3"))
    reply = httpx.post(
        proxy.url + "/v1/chat/completions",
        json=body(stream=True),
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )
    assert reply.status_code == 429
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.headers["retry-after"] == "3"
    assert reply.json()["error"]["type"] == "rate_limit_error"


# --- the official SDK ------------------------------------------------------------------------


def sdk_through_proxy(proxy: ProxyThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=TOKEN, max_retries=0)


def sdk_through_transport(router: RouterThread, key: _core.PrivateKey) -> openai.OpenAI:
    http_client = nomyo.openai_http_client(router.url, allow_http=True)
    http_client._transport.chat.client._set_key(key)  # type: ignore[attr-defined]
    return openai.OpenAI(
        base_url="https://nomyo.invalid/v1",
        api_key="unused",
        max_retries=0,
        http_client=http_client,
    )


def async_sdk_through_transport(router: RouterThread, key: _core.PrivateKey) -> openai.AsyncOpenAI:
    http_client = nomyo.openai_async_http_client(router.url, allow_http=True)
    http_client._transport.chat.client._set_key(key)  # type: ignore[attr-defined]
    return openai.AsyncOpenAI(
        base_url="https://nomyo.invalid/v1",
        api_key="unused",
        max_retries=0,
        http_client=http_client,
    )


@pytest.fixture(params=["proxy", "transport"])
def sdk(
    request: pytest.FixtureRequest,
    proxy: ProxyThread,
    router: RouterThread,
    client_key: _core.PrivateKey,
) -> Iterator[openai.OpenAI]:
    client = (
        sdk_through_proxy(proxy)
        if request.param == "proxy"
        else sdk_through_transport(router, client_key)
    )
    yield client
    client.close()


@pytest.fixture(params=["proxy", "transport"])
def async_sdk(
    request: pytest.FixtureRequest,
    proxy: ProxyThread,
    router: RouterThread,
    client_key: _core.PrivateKey,
) -> openai.AsyncOpenAI:
    if request.param == "proxy":
        return openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=TOKEN, max_retries=0)
    return async_sdk_through_transport(router, client_key)


@pytest.mark.parametrize("include_usage", [False, True])
def test_sdk_stream_equals_the_reply(sdk: openai.OpenAI, include_usage: bool) -> None:
    options: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    whole = sdk.chat.completions.create(**body("same either way"))
    with sdk.chat.completions.create(**body("same either way"), stream=True, **options) as stream:
        chunks = [plain(chunk) for chunk in stream]
    assert comparable(reassemble(chunks), usage=include_usage) == comparable(
        plain(whole), usage=include_usage
    )
    assert reassemble(chunks)["choices"][0]["message"]["content"] == "same either way"
    # The SDK's own accumulator agrees.
    assert [c["object"] for c in chunks] == ["chat.completion.chunk"] * len(chunks)


def test_sdk_streamed_tool_call_equals_the_reply(sdk: openai.OpenAI) -> None:
    request = body("Paris", tools=[WEATHER_TOOL], tool_choice="required")
    whole = sdk.chat.completions.create(**request)
    assert whole.choices[0].message.tool_calls
    with sdk.chat.completions.stream(**request) as stream:  # the SDK's streaming helper
        for _ in stream:
            pass
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert final.choices[0].finish_reason == "tool_calls"
    assert comparable(plain(final), usage=False) == comparable(plain(whole), usage=False)


def test_sdk_stream_metadata_on_the_last_chunk(sdk: openai.OpenAI) -> None:
    with sdk.chat.completions.create(**body(), stream=True) as stream:
        chunks = list(stream)
    last = chunks[-1]
    extra = last.model_extra or {}
    assert extra["_metadata"]["is_encrypted"] is True
    assert stream.response.headers["x-request-id"] == extra["_metadata"]["payload_id"]


def test_sdk_stream_error_is_raised_before_any_chunk(
    sdk: openai.OpenAI, router: RouterThread
) -> None:
    router.router.faults.push(Fault(status=503))
    with pytest.raises(openai.InternalServerError):
        sdk.chat.completions.create(**body(), stream=True)


def test_async_sdk_stream_equals_the_reply(async_sdk: openai.AsyncOpenAI) -> None:
    async def main() -> tuple[Any, list[dict[str, Any]]]:
        async with async_sdk:
            whole = await async_sdk.chat.completions.create(**body("async stream", n=2))
            stream = await async_sdk.chat.completions.create(
                **body("async stream", n=2), stream=True, stream_options={"include_usage": True}
            )
            chunks = [plain(chunk) async for chunk in stream]
            return whole, chunks

    whole, chunks = asyncio.run(main())
    assert len(whole.choices) == 2
    assert comparable(reassemble(chunks)) == comparable(plain(whole))


# --- LangChain -------------------------------------------------------------------------------


def langchain_models(
    kind: str, proxy: ProxyThread, router: RouterThread, key: _core.PrivateKey, **options: Any
) -> Any:
    import langchain_openai

    if kind == "proxy":
        return langchain_openai.ChatOpenAI(
            model=MODEL, base_url=proxy.url + "/v1", api_key=TOKEN, max_retries=0, **options
        )
    sync_client = nomyo.openai_http_client(router.url, allow_http=True)
    sync_client._transport.chat.client._set_key(key)  # type: ignore[attr-defined]
    async_client = nomyo.openai_async_http_client(router.url, allow_http=True)
    async_client._transport.chat.client._set_key(key)  # type: ignore[attr-defined]
    return langchain_openai.ChatOpenAI(
        model=MODEL,
        base_url="https://nomyo.invalid/v1",
        api_key="unused",
        max_retries=0,
        http_client=sync_client,
        http_async_client=async_client,
        **options,
    )


@pytest.mark.parametrize("kind", ["proxy", "transport"])
def test_langchain_invoke_stream_astream(
    kind: str, proxy: ProxyThread, router: RouterThread, client_key: _core.PrivateKey
) -> None:
    llm = langchain_models(kind, proxy, router, client_key)
    invoked = llm.invoke("hello langchain")
    assert invoked.content == "hello langchain"

    pieces = list(llm.stream("hello langchain"))
    assert len(pieces) > 1
    streamed = pieces[0]
    for piece in pieces[1:]:
        streamed = streamed + piece
    assert streamed.content == invoked.content

    async def collect() -> Any:
        total = None
        async for piece in llm.astream("hello langchain"):
            total = piece if total is None else total + piece
        return total

    assert asyncio.run(collect()).content == invoked.content

    streaming = langchain_models(kind, proxy, router, client_key, streaming=True)
    assert streaming.invoke("hello langchain").content == invoked.content


@pytest.mark.parametrize("kind", ["proxy", "transport"])
def test_langchain_streamed_tool_call(
    kind: str, proxy: ProxyThread, router: RouterThread, client_key: _core.PrivateKey
) -> None:
    llm = langchain_models(kind, proxy, router, client_key).bind_tools(
        [WEATHER_TOOL], tool_choice="get_weather"
    )
    invoked = llm.invoke("Lyon")
    assert invoked.tool_calls and invoked.tool_calls[0]["name"] == "get_weather"
    total = None
    for piece in llm.stream("Lyon"):
        total = piece if total is None else total + piece
    assert total is not None
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [
        (c["name"], c["args"]) for c in invoked.tool_calls
    ]
    assert total.tool_calls[0]["args"] == {"city": "Lyon"}


# --- our own clients -------------------------------------------------------------------------


def test_sync_client_chat_completions_stream(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    with nomyo.SyncSecureChatCompletion(router.url, allow_http=True) as client:
        client.client._set_key(client_key)
        whole = client.chat.completions.create(**body("ours, blocking"))
        stream = client.chat.completions.create(
            **body("ours, blocking"), stream=True, stream_options={"include_usage": True}
        )
        assert isinstance(stream, nomyo.Stream)
        with stream:
            chunks = [chunk for chunk in stream]
        assert all(isinstance(c, nomyo.ChatCompletionChunk) for c in chunks)
        assert chunks[1].choices[0].delta.content == "ours, blocking"
        assert chunks[0].choices[0].delta.role == "assistant"
        assert comparable(reassemble([c.to_dict() for c in chunks])) == comparable(whole.to_dict())
        assert stream.metadata is not None and stream.metadata["is_encrypted"] is True
        assert chunks[-1]["_metadata"] is stream.metadata
        assert "ours, blocking" not in repr(chunks[1])  # content stays out of reprs

        early = client.chat.completions.create(**body(), stream=True)
        next(early)
        early.close()
        assert list(early) == []

        with pytest.raises(nomyo.InvalidRequestError):
            client.chat.completions.create(**body(), stream_options={"include_usage": True})


def test_async_client_chat_completions_stream(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    async def main() -> None:
        async with nomyo.SecureChatCompletion(router.url, allow_http=True) as client:
            client.client._set_key(client_key)
            request = body("ours, async", tools=[WEATHER_TOOL], tool_choice="required")
            whole = await client.chat.completions.create(**request)
            stream = await client.chat.completions.create(**request, stream=True)
            assert isinstance(stream, nomyo.AsyncStream)
            async with stream:
                chunks = [chunk async for chunk in stream]
            tool_chunk = chunks[1].choices[0].delta.tool_calls[0]
            assert tool_chunk.index == 0 and tool_chunk.function.name == "get_weather"
            assert chunks[-1].choices[0].finish_reason == "tool_calls"
            assert comparable(reassemble([c.to_dict() for c in chunks]), usage=False) == comparable(
                whole.to_dict(), usage=False
            )
            # The drop-in surface keeps the reference client's refusal.
            with pytest.raises(nomyo.InvalidRequestError):
                await client.create(MODEL, [{"role": "user", "content": "x"}], stream=True)

    asyncio.run(main())


def test_router_error_fields_reach_the_sdk(sdk: openai.OpenAI) -> None:
    # The router refuses n=0 with OpenAI's error object; its param survives the relay.
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(**body(), n=0)
    assert info.value.param == "n"
    assert info.value.type == "invalid_request_error"


def test_a_bytearray_reply_is_sent_whole_and_then_zeroed() -> None:
    """The proxy hands decrypted replies to the server as a bytearray: sent as they are (no
    joined copy), then wiped."""
    from nomyo._http_server import Connections, HTTPResponse, Limits
    from nomyo._relay import event_stream

    reply = {
        "id": "chatcmpl-x",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "secret"}}],
    }
    body = event_stream(reply)
    expected = bytes(body)
    assert expected.startswith(b"data: {") and expected.endswith(b"data: [DONE]\n\n")
    sent: list[bytearray] = []

    async def handler(_request: object) -> HTTPResponse:
        sent.append(body)
        return HTTPResponse(200, body, "text/event-stream")

    async def main() -> bytes:
        connections = Connections("test", Limits())
        server = await asyncio.start_server(
            lambda r, w: connections.serve(r, w, handler), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        async with httpx.AsyncClient() as http:
            got = await http.get(f"http://127.0.0.1:{port}/")
        await connections.close(server)
        return got.content

    assert asyncio.run(main()) == expected
    assert sent and sent[0] == bytearray(len(expected))  # zeroed once written
