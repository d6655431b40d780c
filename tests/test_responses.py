"""OpenAI's Responses API with the real ``openai`` SDK: through ``nomyo proxy`` and through
both SDK transports (``nomyo.openai_http_client``/``openai_async_http_client``), each call one
sealed chat completion; the routes nothing encrypts are refused with 501; an SDK call against
a router that always answers 429 reaches it at most 3 times."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from gateway_support import MODEL, TOKEN, WEATHER, ProxyThread
from pydantic import BaseModel

import nomyo
from nomyo import _core
from nomyo.testing import DevRouter, Fault, RouterThread

TOOLS: list[Any] = [
    {"type": "function", "name": "get_weather", "description": "weather", "parameters": WEATHER}
]


class City(BaseModel):
    city: str
    population: int


@pytest.fixture(scope="module")
def router() -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        yield handle


@pytest.fixture(scope="module")
def proxy(router: RouterThread, client_key: _core.PrivateKey) -> Iterator[ProxyThread]:
    handle = ProxyThread(router.url, client_key)
    yield handle
    handle.close()


@pytest.fixture(autouse=True)
def _clean(router: RouterThread) -> Iterator[None]:
    router.router.faults.clear()
    yield
    router.router.faults.clear()


def through_proxy(proxy: ProxyThread, **options: Any) -> openai.OpenAI:
    options.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=TOKEN, **options)


def through_transport(router: RouterThread, key: _core.PrivateKey) -> openai.OpenAI:
    http_client = nomyo.openai_http_client(router.url, allow_http=True)
    http_client._transport.chat.client._set_key(key)  # type: ignore[attr-defined]
    return openai.OpenAI(api_key="unused", max_retries=0, http_client=http_client)


@pytest.fixture(params=["proxy", "transport"])
def client(
    request: pytest.FixtureRequest, proxy: ProxyThread, router: RouterThread, client_key: Any
) -> Iterator[openai.OpenAI]:
    sdk = (
        through_proxy(proxy) if request.param == "proxy" else through_transport(router, client_key)
    )
    with sdk:
        yield sdk


def test_create_sends_one_sealed_completion(client: openai.OpenAI, router: RouterThread) -> None:
    before = router.router.secure_requests
    response = client.responses.create(
        model=MODEL,
        instructions="answer briefly",
        input="hello responses",
        max_output_tokens=50,
        temperature=0.5,
        metadata={"run": "7"},
    )
    assert response.object == "response" and response.status == "completed"
    assert response.output_text == "hello responses"
    assert response.metadata == {"run": "7"} and response.instructions == "answer briefly"
    assert response.usage is not None and response.usage.output_tokens == 2
    assert response.usage.total_tokens == response.usage.input_tokens + 2
    assert response.store is False
    assert router.router.secure_requests - before == 1


def test_stream_gives_openais_event_sequence(client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input="streamed words") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [event.type for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == (
        "streamed words"
    )
    assert final.output_text == "streamed words"
    raw = client.responses.create(model=MODEL, input="raw stream", stream=True)
    assert [e.type for e in raw][-1] == "response.completed"


def test_tool_calls_and_their_outputs_sent_back(client: openai.OpenAI) -> None:
    first = client.responses.create(model=MODEL, input="Paris", tools=TOOLS, tool_choice="auto")
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    second = client.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "Paris"},
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 24 C"},
        ],
        tools=TOOLS,
    )
    assert second.output_text == "sunny, 24 C"
    with client.responses.stream(model=MODEL, input="Rome", tools=TOOLS) as stream:
        kinds = [event.type for event in stream]
        streamed = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    assert "response.function_call_arguments.done" in kinds
    assert streamed.output[0].type == "function_call"
    assert json.loads(streamed.output[0].arguments) == {"city": "Rome"}


def test_parse_fills_the_schema(client: openai.OpenAI) -> None:
    parsed = client.responses.parse(
        model=MODEL, input='{"city": "Oslo", "population": 700000}', text_format=City
    )
    assert parsed.output_parsed == City(city="Oslo", population=700000)


def test_stateful_fields_and_server_tools_are_refused_before_sending(
    client: openai.OpenAI, router: RouterThread
) -> None:
    before = router.router.secure_requests
    for options in (
        {"previous_response_id": "resp_123"},
        {"tools": [{"type": "web_search"}]},
        {"input": [{"type": "item_reference", "id": "msg_1"}]},
    ):
        arguments: dict[str, Any] = {"model": MODEL, "input": "x", **options}
        with pytest.raises(openai.BadRequestError, match="nothing was sent"):
            client.responses.create(**arguments)
    assert router.router.secure_requests == before


def test_other_routes_are_refused_not_hidden(client: openai.OpenAI, router: RouterThread) -> None:
    before = router.router.secure_requests
    for call in (
        lambda: client.embeddings.create(model=MODEL, input="x"),
        lambda: client.completions.create(model=MODEL, prompt="x"),
        lambda: client.images.generate(prompt="x"),
        lambda: client.files.list(),
    ):
        with pytest.raises(openai.APIStatusError) as caught:
            call()
        assert caught.value.status_code == 501
        assert "not end-to-end encrypted" in caught.value.message
        assert "nothing was sent" in caught.value.message
        assert caught.value.response.headers["x-should-retry"] == "false"
    assert router.router.secure_requests == before


def test_the_async_transport_answers_responses_too(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    async def main() -> tuple[str, list[str]]:
        http_client = nomyo.openai_async_http_client(router.url, allow_http=True)
        http_client._transport.chat.client._set_key(client_key)  # type: ignore[attr-defined]
        async with openai.AsyncOpenAI(api_key="x", max_retries=0, http_client=http_client) as sdk:
            response = await sdk.responses.create(model=MODEL, input="async hello")
            stream = await sdk.responses.create(model=MODEL, input="async stream", stream=True)
            return response.output_text, [event.type async for event in stream]

    text, kinds = asyncio.run(main())
    assert text == "async hello"
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"


def test_a_429_router_is_reached_at_most_three_times(
    proxy: ProxyThread, router: RouterThread
) -> None:
    router.router.faults.push(Fault(status=429, retry_after="0", times=20))
    before = router.router.secure_requests
    sdk = through_proxy(proxy, max_retries=openai.DEFAULT_MAX_RETRIES)  # the defaults
    with sdk, pytest.raises(openai.RateLimitError) as caught:
        sdk.responses.create(model=MODEL, input="rate limited")
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert router.router.secure_requests - before <= 3


def test_healthz_needs_no_token_and_tells_nothing(proxy: ProxyThread) -> None:
    health = httpx.get(proxy.url + "/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert httpx.get(proxy.url + "/v1/models").status_code == 401
