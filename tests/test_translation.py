"""The translations of ``nomyo._responses`` and ``nomyo._anthropic``, field by field: what
reaches the router for each request field, and what comes back for each part of a reply
(reasoning, refusals, truncation), including what the echo router never produces."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nomyo._anthropic import MESSAGES, message_events
from nomyo._relay import ChatCall, ErrorReply
from nomyo._responses import RESPONSES, response_events


def responses_call(**request: Any) -> ChatCall:
    call = RESPONSES.parse(json.dumps({"model": "m", **request}).encode())
    assert isinstance(call, ChatCall), call
    return call


def messages_call(**request: Any) -> ChatCall:
    body = {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "x"}]}
    call = MESSAGES.parse(json.dumps({**body, **request}).encode())
    assert isinstance(call, ChatCall), call
    return call


IMAGE = "data:image/png;base64,AA"
PNG = {"type": "base64", "media_type": "image/png", "data": "AA"}
SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}


@pytest.mark.parametrize(
    ("request_fields", "options"),
    [
        ({"max_output_tokens": 7}, {"max_tokens": 7}),
        ({"temperature": 0.3, "top_p": 0.9}, {"temperature": 0.3, "top_p": 0.9}),
        ({"reasoning": {"effort": "low"}}, {"reasoning_effort": "low"}),
        (
            {"text": {"format": {"type": "json_object"}}},
            {"response_format": {"type": "json_object"}},
        ),
        (
            {"text": {"format": {"type": "json_schema", "name": "s", "schema": SCHEMA}}},
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "s", "schema": SCHEMA},
                }
            },
        ),
        ({"text": {"format": {"type": "text"}}}, {}),
        (
            {
                "tools": [{"type": "function", "name": "f", "parameters": SCHEMA}],
                "tool_choice": {"type": "function", "name": "f"},
                "parallel_tool_calls": False,
            },
            {
                "tools": [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}}],
                "tool_choice": {"type": "function", "function": {"name": "f"}},
                "parallel_tool_calls": False,
            },
        ),
        ({"metadata": {"k": "v"}, "store": True, "include": ["x"]}, {}),  # never sent
        ({"security_tier": "high"}, {"security_tier": "high"}),
    ],
)
def test_responses_fields_reach_the_router(
    request_fields: dict[str, Any], options: dict[str, Any]
) -> None:
    assert responses_call(input="x", **request_fields).options == options


def test_responses_input_items_become_chat_messages() -> None:
    call = responses_call(
        instructions="sys",
        input=[
            {"role": "developer", "content": "dev"},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "look"},
                {"type": "input_image", "image_url": IMAGE, "detail": "low"},
            ]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "calling"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
            {"type": "reasoning", "summary": []},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {"type": "function_call_output", "call_id": "c2", "output": "two"},
        ],
    )  # fmt: skip
    assert call.messages == [
        {"role": "system", "content": "sys"},
        {"role": "system", "content": "dev"},
        {"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": IMAGE, "detail": "low"}},
        ]},
        {"role": "assistant", "content": "calling", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
    ]  # fmt: skip


@pytest.mark.parametrize(
    "request_fields",
    [
        {"conversation": "conv_1"},
        {"prompt": {"id": "pmpt_1"}},
        {"background": True},
        {"tools": [{"type": "file_search"}]},
        {"tool_choice": {"type": "web_search_preview"}},
        {"input": [{"type": "computer_call_output"}]},
        {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
        {"api_key": "sk-x"},
        {"input": []},
    ],
)
def test_responses_requests_the_router_cannot_answer(request_fields: dict[str, Any]) -> None:
    reply = RESPONSES.parse(json.dumps({"model": "m", "input": "x", **request_fields}).encode())
    assert isinstance(reply, ErrorReply) and reply.status == 400


def completion(message: dict[str, Any], finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "created": 5,
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {
            "prompt_tokens": 3,
            "completion_tokens": 4,
            "total_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 2},
            "completion_tokens_details": {"reasoning_tokens": 1},
        },
        "_metadata": {"payload_id": "p"},
    }


def answer(api: Any, call: ChatCall, reply: dict[str, Any]) -> Any:
    body, content_type = api.answer(call, reply)
    return json.loads(bytes(body)) if content_type == "application/json" else bytes(body)


def test_a_reply_with_reasoning_refusal_and_truncation_as_a_response() -> None:
    message = {"role": "assistant", "content": None, "reasoning_content": "hmm", "refusal": "no"}
    response = answer(RESPONSES, responses_call(input="x"), completion(message, "length"))
    assert [item["type"] for item in response["output"]] == ["reasoning", "message"]
    assert response["output"][0]["content"] == [{"type": "reasoning_text", "text": "hmm"}]
    assert response["output"][1]["content"] == [{"type": "refusal", "refusal": "no"}]
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["usage"]["input_tokens_details"] == {"cached_tokens": 2}
    assert response["usage"]["output_tokens_details"] == {"reasoning_tokens": 1}
    assert response["_metadata"] == {"payload_id": "p"}
    kinds = [event["type"] for event in response_events(response)]
    assert kinds[-1] == "response.incomplete"
    assert "response.refusal.delta" in kinds and "response.refusal.done" in kinds


def test_a_streamed_response_is_server_sent_events() -> None:
    stream = answer(
        RESPONSES, responses_call(input="x", stream=True), completion({"content": "hi"})
    )
    events = stream.decode().strip().split("\n\n")
    names = [event.split("\n")[0].removeprefix("event: ") for event in events]
    data = [json.loads(event.split("\n")[1].removeprefix("data: ")) for event in events]
    assert names == [item["type"] for item in data]
    assert [item["sequence_number"] for item in data] == list(range(len(data)))
    assert b"[DONE]" not in stream


@pytest.mark.parametrize(
    ("request_fields", "options"),
    [
        ({"stop_sequences": ["END"], "top_p": 0.5}, {"stop": ["END"], "top_p": 0.5}),
        ({"metadata": {"user_id": "u1"}}, {"user": "u1"}),
        ({"tools": [{"name": "f", "input_schema": SCHEMA}], "tool_choice": {"type": "any"}},
         {"tools": [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}}],
          "tool_choice": "required"}),
        ({"tools": [{"name": "f", "input_schema": SCHEMA}],
          "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": True}},
         {"tools": [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}}],
          "tool_choice": {"type": "function", "function": {"name": "f"}},
          "parallel_tool_calls": False}),
    ],
)  # fmt: skip
def test_messages_fields_reach_the_router(
    request_fields: dict[str, Any], options: dict[str, Any]
) -> None:
    assert messages_call(**request_fields).options == {"max_tokens": 9, **options}


def test_messages_blocks_become_chat_messages() -> None:
    call = messages_call(
        system=[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        messages=[
            {"role": "user", "content": [
                {"type": "text", "text": "see"},
                {"type": "image", "source": PNG},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "t", "signature": "s"},
                {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": "x"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "is_error": True,
                 "content": [{"type": "text", "text": "r"}]},
                {"type": "text", "text": "and?"},
            ]},
        ],
    )  # fmt: skip
    assert call.messages == [
        {"role": "system", "content": "a\n\nb"},
        {"role": "user", "content": [
            {"type": "text", "text": "see"},
            {"type": "image_url", "image_url": {"url": IMAGE}},
        ]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a": "x"}'}},
        ]},
        {"role": "tool", "tool_call_id": "t1", "content": "Error: r"},
        {"role": "user", "content": "and?"},
    ]  # fmt: skip


def test_a_reply_with_reasoning_and_truncation_as_a_message() -> None:
    message = {"content": "done", "reasoning_content": "hmm"}
    result = answer(MESSAGES, messages_call(), completion(message, "length"))
    assert [block["type"] for block in result["content"]] == ["thinking", "text"]
    assert result["stop_reason"] == "max_tokens"
    assert result["usage"]["cache_read_input_tokens"] == 2
    kinds = [event["type"] for event in message_events(result)]
    assert kinds.count("content_block_start") == 2 and kinds[-1] == "message_stop"


@pytest.mark.parametrize(
    "request_fields",
    [
        {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
        {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
        {"messages": []},
        {"system": 3},
        {"tool_choice": {"type": "sometimes"}},
    ],
)
def test_messages_requests_the_router_cannot_answer(request_fields: dict[str, Any]) -> None:
    body = {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "x"}]}
    reply = MESSAGES.parse(json.dumps({**body, **request_fields}).encode())
    assert isinstance(reply, ErrorReply) and reply.status == 400
    error = json.loads(MESSAGES.error_body(reply))
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
