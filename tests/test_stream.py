"""``nomyo._stream``: one completion given back as OpenAI's chunk stream, table-driven, each
chunk checked with the official SDK's ``ChatCompletionChunk`` model; ``Stream`` and
``AsyncStream`` iterated, closed early and used as context managers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from openai.types.chat import ChatCompletionChunk as SDKChunk

from nomyo import AsyncStream, ChatCompletion, ChatCompletionChunk, Stream
from nomyo._response import to_response
from nomyo._stream import completion_chunks

USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def reply(*messages: dict[str, Any], finish: str = "stop", **extra: Any) -> dict[str, Any]:
    choices = [
        {"index": i, "message": {"role": "assistant", **m}, "finish_reason": finish}
        for i, m in enumerate(messages)
    ]
    base = {"id": "c1", "object": "chat.completion", "created": 7, "model": "m"}
    return {**base, "choices": choices, "usage": USAGE, **extra}


def deltas(chunks: list[dict[str, Any]], index: int) -> list[dict[str, Any]]:
    return [
        c["choices"][0]["delta"]
        for c in chunks
        if c["choices"][0:1] and c["choices"][0]["index"] == index
    ]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (
            reply({"content": "hi"}),
            [{"role": "assistant", "content": "", "refusal": None}, {"content": "hi"}, {}],
        ),
        (reply({"content": ""}), [{"role": "assistant", "content": "", "refusal": None}, {}]),
        (
            reply({"content": None, "tool_calls": [TOOL_CALL]}, finish="tool_calls"),
            [
                {"role": "assistant", "content": None, "refusal": None},
                {"tool_calls": [{"index": 0, **TOOL_CALL}]},
                {},
            ],
        ),
        (
            reply({"reasoning_content": "think", "content": "answer"}),
            [
                {"role": "assistant", "content": "", "refusal": None},
                {"reasoning_content": "think"},
                {"content": "answer"},
                {},
            ],
        ),
        (
            reply({"content": None, "refusal": "no"}),
            [{"role": "assistant", "content": None, "refusal": None}, {"refusal": "no"}, {}],
        ),
    ],
    ids=["content", "empty", "tool-call", "reasoning", "refusal"],
)
def test_one_choice_as_deltas(completion: dict[str, Any], expected: list[dict[str, Any]]) -> None:
    chunks = completion_chunks(completion)
    assert deltas(chunks, 0) == expected
    finishes = [c["choices"][0]["finish_reason"] for c in chunks]
    assert finishes == [None] * (len(chunks) - 1) + [completion["choices"][0]["finish_reason"]]
    for chunk in chunks:
        SDKChunk.model_validate(chunk)  # the official SDK reads every chunk
        assert (chunk["id"], chunk["object"], chunk["created"]) == (
            "c1",
            "chat.completion.chunk",
            7,
        )


@pytest.mark.parametrize("include_usage", [False, True])
def test_usage_and_metadata_ride_on_the_last_chunk(include_usage: bool) -> None:
    metadata = {"payload_id": "p-1", "is_encrypted": True}
    chunks = completion_chunks(
        reply({"content": "a"}, _metadata=metadata), include_usage=include_usage
    )
    assert chunks[-1]["_metadata"] is metadata
    assert all("_metadata" not in c for c in chunks[:-1])
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == USAGE
        assert all(c["usage"] is None for c in chunks[:-1])
    else:
        assert all("usage" not in c for c in chunks)


def test_several_choices_come_one_after_the_other() -> None:
    chunks = completion_chunks(reply({"content": "a"}, {"content": "b"}))
    indexes = [c["choices"][0]["index"] for c in chunks]
    assert indexes == sorted(indexes) and set(indexes) == {0, 1}
    assert [d.get("content") for d in deltas(chunks, 1)] == ["", "b", None]


def test_nothing_is_copied() -> None:
    text = "x" * 1000
    chunks = completion_chunks(reply({"content": text}))
    assert chunks[1]["choices"][0]["delta"]["content"] is text


def test_a_reply_without_choices_streams_nothing_but_its_usage() -> None:
    assert completion_chunks({"id": "c", "choices": None}) == []
    assert completion_chunks({"id": "c"}, include_usage=True)[0]["choices"] == []


def completion(**extra: Any) -> ChatCompletion:
    return to_response(
        reply({"content": "hi"}, _metadata={"payload_id": "p-2"}, **extra), ChatCompletion
    )


def test_stream_iterates_closes_and_keeps_the_completion() -> None:
    whole = completion()
    with Stream(whole, include_usage=True) as stream:
        assert "open" in repr(stream)
        first = next(stream)
        assert isinstance(first, ChatCompletionChunk)
        assert first.choices[0].delta.role == "assistant"
        rest = list(stream)
    assert rest[-1].usage is not None and rest[-1].usage.total_tokens == 5
    assert stream.completion is whole
    assert stream.metadata is not None and stream.metadata.payload_id == "p-2"
    assert "closed" in repr(stream) and list(stream) == []


def test_stream_closed_early_ends_at_once() -> None:
    stream = Stream(completion())
    next(stream)
    stream.close()
    assert list(stream) == []


def test_async_stream_iterates_and_closes() -> None:
    async def run() -> tuple[list[ChatCompletionChunk], list[ChatCompletionChunk]]:
        async with AsyncStream(completion()) as stream:
            got = [chunk async for chunk in stream]
        early = AsyncStream(completion())
        await early.__anext__()
        await early.aclose()
        return got, [chunk async for chunk in early]

    got, after_close = asyncio.run(run())
    assert [c.choices[0].finish_reason for c in got] == [None, None, "stop"]
    assert after_close == []
