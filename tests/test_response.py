"""``ChatCompletion``: a dict with attribute access, a content-hiding repr, pickle and JSON."""

from __future__ import annotations

import asyncio
import copy
import json
import pickle
from collections.abc import Iterator
from typing import Any

import pytest
from chat_support import HELLO, sync_chat

import nomyo
from nomyo import _core
from nomyo._response import (
    ChatCompletionMessage,
    ChatCompletionMessageToolCall,
    Choice,
    CompletionUsage,
    Function,
    to_response,
)
from nomyo.testing import DevRouter, RouterThread

SECRET = "the-secret-answer-7c1e"
ARGS = '{"city": "secret-city-99"}'
REASONING = "secret-thoughts-42"


def sample() -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": SECRET,
                    "reasoning_content": REASONING,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ARGS},
                        }
                    ],
                },
                "logprobs": {"content": [{"token": "secret-token", "logprob": -0.1}]},
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        "_metadata": {"payload_id": "p-1", "is_encrypted": True},
    }


@pytest.fixture
def resp() -> nomyo.ChatCompletion:
    return to_response(sample(), nomyo.ChatCompletion)


def test_is_a_dict_with_the_reference_api(resp: nomyo.ChatCompletion) -> None:
    assert isinstance(resp, dict)
    assert resp == sample()
    assert resp["choices"][0]["message"]["content"] == SECRET
    assert resp.get("missing") is None
    assert list(resp) == list(sample())


def test_attribute_access(resp: nomyo.ChatCompletion) -> None:
    assert resp.choices[0].message.content == SECRET
    assert resp.usage.total_tokens == 7
    assert resp._metadata.payload_id == "p-1"
    call = resp.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "secret-city-99"}
    assert type(resp.choices[0]) is Choice
    assert type(resp.choices[0].message) is ChatCompletionMessage
    assert type(call) is ChatCompletionMessageToolCall
    assert type(call.function) is Function
    assert type(resp.usage) is CompletionUsage
    assert isinstance(resp.choices, nomyo.ResponseList)
    assert isinstance(resp._metadata, nomyo.ResponseObject)


def test_declared_fields_read_none_others_raise(resp: nomyo.ChatCompletion) -> None:
    message = resp.choices[0].message
    del message["tool_calls"]
    assert message.tool_calls is None
    assert resp.system_fingerprint is None
    with pytest.raises(AttributeError):
        _ = resp.no_such_field
    with pytest.raises(KeyError):
        _ = resp["system_fingerprint"]
    assert not hasattr(resp, "__json__")


def test_attribute_writes_are_item_writes(resp: nomyo.ChatCompletion) -> None:
    resp.choices[0].message.content = "changed"
    assert resp["choices"][0]["message"]["content"] == "changed"
    del resp.choices[0].message.content
    assert "content" not in resp["choices"][0]["message"]
    with pytest.raises(AttributeError):
        del resp.nothing


def test_strings_are_not_copied() -> None:
    raw = sample()
    content = raw["choices"][0]["message"]["content"]
    resp = to_response(raw, nomyo.ChatCompletion)
    assert resp.choices[0].message.content is content
    plain = resp.to_dict()
    assert plain["choices"][0]["message"]["content"] is content


def test_repr_hides_content(resp: nomyo.ChatCompletion) -> None:
    for shown in (repr(resp), str(resp), repr(resp.choices), repr(resp.choices[0].message)):
        assert SECRET not in shown
        assert "secret-city" not in shown
        assert REASONING not in shown
        assert "secret-token" not in shown
    text = repr(resp)
    assert text.startswith("ChatCompletion(")
    assert "<redacted: 22 chars>" in text
    assert "'total_tokens': 7" in text
    assert "get_weather" in text


def test_repr_content_switch(resp: nomyo.ChatCompletion, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nomyo.ResponseObject, "repr_content", True)
    assert SECRET in repr(resp)
    assert "secret-city" in repr(resp.choices)


def test_to_dict_is_plain(resp: nomyo.ChatCompletion) -> None:
    plain = resp.to_dict()
    assert plain == sample()

    def kinds(value: Any) -> set[type]:
        if isinstance(value, dict):
            return {type(value)} | {t for v in value.values() for t in kinds(v)}
        if isinstance(value, list):
            return {type(value)} | {t for v in value for t in kinds(v)}
        return set()

    assert kinds(plain) == {dict, list}
    assert SECRET in repr(plain)
    assert resp.choices.to_list() == sample()["choices"]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle(resp: nomyo.ChatCompletion, protocol: int) -> None:
    back = pickle.loads(pickle.dumps(resp, protocol=protocol))
    assert back == resp
    assert type(back) is nomyo.ChatCompletion
    assert back.choices[0].message.tool_calls[0].function.name == "get_weather"


def test_copy_and_json(resp: nomyo.ChatCompletion) -> None:
    assert json.loads(json.dumps(resp)) == sample()
    clone = copy.deepcopy(resp)
    assert clone == resp
    assert type(clone.choices[0].message) is ChatCompletionMessage
    clone.choices[0].message.content = "other"
    assert resp.choices[0].message.content == SECRET


def test_dir_lists_keys(resp: nomyo.ChatCompletion) -> None:
    assert {"choices", "usage", "to_dict"} <= set(dir(resp))


# -- both clients return it --------------------------------------------------------------------


@pytest.fixture(scope="module")
def router() -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        yield handle


def test_both_clients_return_chat_completion(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    messages = [{"role": "user", "content": SECRET}]
    with nomyo.SyncSecureChatCompletion(router.url, allow_http=True) as sync:
        sync.client._set_key(client_key)
        sync_reply = sync.create("m", messages, tools=tools)

    async def go() -> nomyo.ChatCompletion:
        async with nomyo.SecureChatCompletion(router.url, allow_http=True) as client:
            client.client._set_key(client_key)
            return await client.create("m", messages)

    async_reply = asyncio.run(go())
    for reply in (sync_reply, async_reply):
        assert type(reply) is nomyo.ChatCompletion
        assert reply._metadata.is_encrypted is True
        assert SECRET not in repr(reply)
        assert pickle.loads(pickle.dumps(reply)) == reply
    assert async_reply.choices[0].message.content == SECRET
    call = sync_reply.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert sync_reply.choices[0].finish_reason == "tool_calls"


@pytest.mark.usefixtures("_clean")
def test_model_dump_and_json_like_the_sdk(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    import openai.types.chat as sdk

    with sync_chat(router.url, client_key) as client:
        reply = client.create("m", [{"role": "user", "content": "grüße"}])
    dumped = reply.model_dump()
    assert type(dumped) is dict and type(dumped["choices"][0]) is dict
    assert dumped == reply.to_dict()
    compact = reply.model_dump_json()
    assert json.loads(compact) == dumped
    assert compact == json.dumps(dumped, separators=(",", ":"), ensure_ascii=False)
    assert "grüße" in compact
    assert reply.to_json() == json.dumps(dumped, indent=2, ensure_ascii=False)
    assert json.loads(reply.model_dump_json(indent=4)) == dumped
    assert "null" not in reply.model_dump_json(exclude_none=True)
    # the SDK's own model reads what we dump
    parsed = sdk.ChatCompletion.model_validate(dumped)
    assert parsed.choices[0].message.content == "grüße"


@pytest.mark.usefixtures("_clean")
def test_a_cached_reply_rebuilt_from_plain_data(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    with sync_chat(router.url, client_key) as client:
        reply = client.create("m", HELLO)
    cached = json.loads(reply.model_dump_json())
    for rebuilt in (
        nomyo.ChatCompletion(cached),
        nomyo.ChatCompletion(**cached),
        nomyo.ChatCompletion.model_validate(cached),
        pickle.loads(pickle.dumps(nomyo.ChatCompletion(cached))),
    ):
        assert rebuilt == reply
        assert rebuilt.choices[0].message.content == "hello"
        assert isinstance(rebuilt.choices[0], nomyo.Choice)
        assert isinstance(rebuilt.choices, nomyo.ResponseList)
        assert rebuilt.usage is not None and rebuilt.usage.total_tokens > 0
        assert rebuilt._metadata.payload_id == reply._metadata.payload_id
        assert "hello" not in repr(rebuilt), "content stays hidden"
    with pytest.raises(TypeError):
        nomyo.ChatCompletion.model_validate([1, 2])  # type: ignore[arg-type]
