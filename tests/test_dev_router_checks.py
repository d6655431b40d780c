"""The development router checks requests as a real one does (issue 19, item 14).

Driven as a user would: through nomyo's public clients and the official ``openai`` SDK
(``nomyo.openai_http_client``) against a real ``DevRouter`` over loopback.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest

import nomyo
from nomyo import InvalidRequestError, SecureCompletionClient, SyncSecureChatCompletion
from nomyo.testing import DevRouter, RouterThread

MODEL = "test-model"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
            "required": ["zone"],
        },
    },
}


@pytest.fixture(scope="module")
def router() -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        yield handle


@pytest.fixture
def client(router: RouterThread) -> Iterator[SyncSecureChatCompletion]:
    with SyncSecureChatCompletion(base_url=router.url, allow_http=True, max_retries=0) as chat:
        yield chat


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = str(tmp_path_factory.mktemp("keys"))
    SecureCompletionClient("https://127.0.0.1:1").generate_keys(True, directory)
    return directory


def send_raw(router: RouterThread, key_dir: str, payload: Any) -> dict[str, Any]:
    """Send ``payload`` as it is (no client-side checks) through the reference-style low-level
    API; returns the decrypted reply or raises the router's error."""

    async def main() -> dict[str, Any]:
        async with SecureCompletionClient(router.url, allow_http=True, max_retries=0) as low:
            low.load_keys(f"{key_dir}/private_key.pem")
            return dict(await low.send_secure_request(payload, str(uuid.uuid4())))

    return asyncio.run(main())


# -- malformed requests: 400 in OpenAI's error shape ----------------------------------------


@pytest.mark.parametrize(
    ("messages", "param", "words"),
    [
        ([], "messages", "empty array"),
        ("hello", "messages", "got a string"),
        ({"role": "user", "content": "hi"}, "messages", "got an object"),
        (["hello"], "messages[0]", "got a string"),
        ([{"content": "hi"}], "messages[0].role", "Missing required parameter"),
        ([{"role": "robot", "content": "hi"}], "messages[0].role", "Supported values"),
        ([{"role": "user"}], "messages[0].content", "Missing required parameter"),
        ([{"role": "user", "content": 42}], "messages[0].content", "got a number"),
        (
            [{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}],
            "messages[1].tool_call_id",
            "tool_call_id",
        ),
        (
            [{"role": "user", "content": "hi"}, {"role": "assistant"}],
            "messages[1].content",
            "unless 'tool_calls'",
        ),
        (
            [{"role": "assistant", "tool_calls": [{"id": "c1"}]}],
            "messages[0].tool_calls[0]",
            "arguments",
        ),
    ],
)
def test_malformed_messages_are_refused_with_400(
    router: RouterThread, key_dir: str, messages: Any, param: str, words: str
) -> None:
    before = router.router.secure_requests
    with pytest.raises(InvalidRequestError) as caught:
        send_raw(router, key_dir, {"model": MODEL, "messages": messages})
    assert router.router.secure_requests == before + 1  # the router, not the client, refused
    exc = caught.value
    assert exc.status_code == 400
    details = exc.error_details
    assert details is not None
    error = details["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] is None
    assert words in error["message"]
    assert details["detail"] == error["message"]  # what NOMYO clients read
    assert words in str(exc)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),
        ({"n": "2"}, "n"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": -0.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function"}}, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"tools": [{"type": "function"}]}, "tools[0]"),
    ],
)
def test_out_of_range_parameters_are_refused(
    client: SyncSecureChatCompletion, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        client.create(MODEL, [{"role": "user", "content": "hi"}], **extra)
    assert caught.value.error_details is not None
    assert caught.value.error_details["error"]["param"] == param


def test_the_openai_sdk_gets_a_bad_request_error(router: RouterThread) -> None:
    client = openai.OpenAI(
        api_key="unused",
        max_retries=0,
        http_client=nomyo.openai_http_client(router.url, allow_http=True, max_retries=0),
    )
    with client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice={"type": "function", "function": {"name": "get_stock_price"}},
        )
    assert caught.value.status_code == 400
    assert "'tool_choice'" in caught.value.message
    assert "get_stock_price" in caught.value.message


def test_well_formed_conversations_pass(client: SyncSecureChatCompletion) -> None:
    conversation: list[dict[str, Any]] = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "weather in Paris?"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    refused = [{"role": "user", "content": "x"}, {"role": "assistant", "refusal": "no"}]
    assert client.create(MODEL, [*refused, {"role": "user", "content": "y"}]).choices
    reply = client.create(MODEL, conversation, tools=[WEATHER])
    assert reply.choices[0].message.content == "sunny"
    assert reply.choices[0].finish_reason == "stop"


# -- n ------------------------------------------------------------------------------------


def test_n_gives_n_distinct_deterministic_choices(client: SyncSecureChatCompletion) -> None:
    messages = [{"role": "user", "content": "name a colour"}]
    first = client.create(MODEL, messages, n=3)
    again = client.create(MODEL, messages, n=3)
    assert [c.index for c in first.choices] == [0, 1, 2]
    contents = [c.message.content for c in first.choices]
    assert contents[0] == "name a colour"  # choice 0 is the plain echo
    assert len(set(contents)) == 3
    assert [c.message.content for c in again.choices] == contents
    assert all(c.finish_reason == "stop" for c in first.choices)
    words = sum(len(str(c).split()) for c in contents)
    assert first.usage.completion_tokens == words


def test_n_with_tools_gives_distinct_tool_calls(client: SyncSecureChatCompletion) -> None:
    reply = client.create(
        MODEL, [{"role": "user", "content": "Oslo"}], n=2, tools=[WEATHER], tool_choice="required"
    )
    calls = [c.message.tool_calls[0] for c in reply.choices]
    assert [c.index for c in reply.choices] == [0, 1]
    assert calls[0].id != calls[1].id
    assert {c.function.name for c in calls} == {"get_weather"}
    assert [c.function.arguments for c in calls] == ['{"city": "Oslo"}', '{"city": "Oslo (2)"}']


def test_without_n_there_is_one_choice(client: SyncSecureChatCompletion) -> None:
    reply = client.create(MODEL, [{"role": "user", "content": "one"}])
    assert len(reply.choices) == 1


# -- tool_choice ----------------------------------------------------------------------------


def test_a_forced_tool_choice_is_answered_with_that_tool(
    client: SyncSecureChatCompletion,
) -> None:
    forced = {"type": "function", "function": {"name": "get_time"}}
    reply = client.create(
        MODEL, [{"role": "user", "content": "time?"}], tools=[WEATHER, CLOCK], tool_choice=forced
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "get_time"
    assert call.function.arguments == '{"zone": "UTC"}'


def test_a_forced_tool_choice_is_honoured_after_a_tool_result(
    client: SyncSecureChatCompletion,
) -> None:
    conversation: list[dict[str, Any]] = [
        {"role": "user", "content": "time?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"zone": "UTC"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
    ]
    forced = {"type": "function", "function": {"name": "get_weather"}}
    reply = client.create(MODEL, conversation, tools=[WEATHER, CLOCK], tool_choice=forced)
    assert reply.choices[0].message.tool_calls[0].function.name == "get_weather"
    auto = client.create(MODEL, conversation, tools=[WEATHER, CLOCK], tool_choice="auto")
    assert auto.choices[0].message.content == "12:00"
    none = client.create(
        MODEL, [{"role": "user", "content": "x"}], tools=[WEATHER], tool_choice="none"
    )
    assert none.choices[0].message.content == "x"
    assert none.choices[0].message.tool_calls is None
