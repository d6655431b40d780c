"""Anthropic's Messages API through ``nomyo proxy`` with the real ``anthropic`` SDK: each call
one sealed chat completion; Anthropic's errors, token header and events; a call against a
router that always answers 429 reaches it at most 3 times."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from gateway_support import MODEL, TOKEN, WEATHER, ProxyThread

from nomyo import _core
from nomyo.testing import DevRouter, Fault, RouterThread

TOOLS: list[Any] = [{"name": "get_weather", "description": "weather", "input_schema": WEATHER}]


@pytest.fixture(scope="module")
def router() -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        yield handle


@pytest.fixture(scope="module")
def proxy(router: RouterThread) -> Iterator[ProxyThread]:
    handle = ProxyThread(router.url, _core.PrivateKey.generate(2048))
    yield handle
    handle.close()


@pytest.fixture
def client(proxy: ProxyThread, router: RouterThread) -> Iterator[anthropic.Anthropic]:
    router.router.faults.clear()
    with anthropic.Anthropic(base_url=proxy.url, api_key=TOKEN, max_retries=0) as sdk:
        yield sdk
    router.router.faults.clear()


def test_create_sends_one_sealed_completion(
    client: anthropic.Anthropic, router: RouterThread
) -> None:
    before = router.router.secure_requests
    message = client.messages.create(
        model=MODEL,
        max_tokens=64,
        system="answer briefly",
        messages=[{"role": "user", "content": "hello anthropic"}],
        stop_sequences=["END"],
    )
    assert message.type == "message" and message.role == "assistant"
    [block] = message.content
    assert block.type == "text" and block.text == "hello anthropic"
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 2 and message.usage.input_tokens == 4
    assert router.router.secure_requests - before == 1
    assert router.router.requests[-1].headers.get("authorization") is None  # token stays local


def test_stream_gives_anthropics_events(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "streamed hello"}]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert {"content_block_start", "content_block_delta", "content_block_stop"} <= set(kinds)
    assert "message_delta" in kinds
    assert final.content[0].type == "text" and final.content[0].text == "streamed hello"
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 2


def test_tool_use_and_results_sent_back(client: anthropic.Anthropic) -> None:
    first = client.messages.create(
        model=MODEL,
        max_tokens=64,
        tools=TOOLS,
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "Rome"}],
    )
    [use] = first.content
    assert use.type == "tool_use" and use.name == "get_weather"
    assert use.input == {"city": "Rome"} and first.stop_reason == "tool_use"
    second = client.messages.create(
        model=MODEL,
        max_tokens=64,
        tools=TOOLS,
        messages=[
            {"role": "user", "content": "Rome"},
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "rainy"}],
            },
        ],
    )
    assert second.content[0].type == "text" and second.content[0].text == "rainy"
    with client.messages.stream(
        model=MODEL, max_tokens=64, tools=TOOLS, messages=[{"role": "user", "content": "Oslo"}]
    ) as stream:
        streamed = stream.get_final_message()
    assert streamed.content[0].type == "tool_use"
    assert streamed.content[0].input == {"city": "Oslo"}


def test_errors_take_anthropics_shape(client: anthropic.Anthropic, proxy: ProxyThread) -> None:
    with pytest.raises(anthropic.BadRequestError, match="server tool"):
        client.messages.create(
            model=MODEL,
            max_tokens=64,
            tools=[{"type": "web_search_20250305", "name": "web_search"}],
            messages=[{"role": "user", "content": "x"}],
        )
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 501 and "nothing was sent" in caught.value.message
    unauthorized = httpx.post(
        proxy.url + "/v1/messages", json={"model": MODEL}, headers={"x-api-key": "wrong"}
    )
    assert unauthorized.status_code == 401
    body = unauthorized.json()
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"


def test_a_429_router_is_reached_at_most_three_times(
    proxy: ProxyThread, router: RouterThread
) -> None:
    router.router.faults.push(Fault(status=429, retry_after="0", times=20))
    before = router.router.secure_requests
    sdk = anthropic.Anthropic(base_url=proxy.url, api_key=TOKEN)  # default retries
    with sdk, pytest.raises(anthropic.RateLimitError):
        sdk.messages.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}])
    router.router.faults.clear()
    assert router.router.secure_requests - before <= 3
