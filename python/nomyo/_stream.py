"""Emulated streaming: one opened ``chat.completion`` given back as OpenAI's chunk stream.

The protocol returns one sealed reply, so nothing streams on the wire. A caller that asks for
``stream=True`` gets what OpenAI's streaming API would have sent for the same completion: per
choice a first delta with the role, the content (and reasoning, refusal, tool calls) in
deltas, then ``finish_reason`` on the choice's last chunk; with
``stream_options={"include_usage": True}`` every chunk carries ``"usage": null`` and a last
chunk with empty ``choices`` carries the usage. The reply's ``_metadata`` (payload id,
attestation result) rides on the last chunk, and on :attr:`Stream.completion`.

:func:`completion_chunks` makes the chunk objects (sharing the reply's strings, nothing is
copied); :class:`Stream` and :class:`AsyncStream` iterate them like the official SDK's
``Stream``/``AsyncStream``; ``nomyo._relay`` writes them as server-sent events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, ClassVar, Literal, NamedTuple

from ._lifecycle import AsyncCloseable, Closeable
from ._response import (
    ChatCompletion,
    CompletionUsage,
    FinishReason,
    ResponseList,
    ResponseObject,
    _Children,
    to_response,
)

__all__ = [
    "AsyncStream",
    "ChatCompletionChunk",
    "ChoiceDelta",
    "ChoiceDeltaFunctionCall",
    "ChoiceDeltaToolCall",
    "ChoiceDeltaToolCallFunction",
    "ChunkChoice",
    "Stream",
    "completion_chunks",
]

#: Message fields given as their own delta, in this order, after the role.
_TEXT_FIELDS = ("reasoning_content", "reasoning", "content", "refusal")


class ChoiceDeltaToolCallFunction(ResponseObject):
    """The function part of a streamed tool call (``arguments`` may come in pieces)."""

    __slots__ = ()
    name: str | None
    arguments: str | None


class ChoiceDeltaFunctionCall(ResponseObject):
    """The deprecated ``function_call`` of a delta."""

    __slots__ = ()
    name: str | None
    arguments: str | None


class ChoiceDeltaToolCall(ResponseObject):
    """One tool call of a delta, identified by ``index`` across chunks."""

    __slots__ = ()
    index: int
    id: str | None
    type: Literal["function"] | None
    function: ChoiceDeltaToolCallFunction | None
    _children: ClassVar[_Children] = {"function": ChoiceDeltaToolCallFunction}


class ChoiceDelta(ResponseObject):
    """What one chunk adds to a choice's message."""

    __slots__ = ()
    role: str | None
    content: str | None
    refusal: str | None
    reasoning_content: str | None
    tool_calls: ResponseList[ChoiceDeltaToolCall] | None
    function_call: ChoiceDeltaFunctionCall | None
    _children: ClassVar[_Children] = {
        "tool_calls": ChoiceDeltaToolCall,
        "function_call": ChoiceDeltaFunctionCall,
    }


class ChunkChoice(ResponseObject):
    """One choice of a chunk."""

    __slots__ = ()
    index: int
    delta: ChoiceDelta
    finish_reason: FinishReason | None
    logprobs: ResponseObject | None
    _children: ClassVar[_Children] = {"delta": ChoiceDelta}


class ChatCompletionChunk(ResponseObject):
    """One ``chat.completion.chunk`` of a stream."""

    __slots__ = ()
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: ResponseList[ChunkChoice]
    usage: CompletionUsage | None
    system_fingerprint: str | None
    service_tier: str | None
    _children: ClassVar[_Children] = {"choices": ChunkChoice, "usage": CompletionUsage}


class _Frame(NamedTuple):
    """What every chunk of one stream repeats."""

    fields: dict[str, Any]
    include_usage: bool


def _frame(reply: Mapping[str, Any], include_usage: bool) -> _Frame:
    """The fields every chunk repeats."""
    frame: dict[str, Any] = {
        "id": reply.get("id", ""),
        "object": "chat.completion.chunk",
        "created": reply.get("created", 0),
        "model": reply.get("model", ""),
    }
    for name in ("service_tier", "system_fingerprint"):
        if name in reply:
            frame[name] = reply[name]
    return _Frame(frame, include_usage)


def _with_choices(
    frame: dict[str, Any], choices: list[dict[str, Any]], include_usage: bool, usage: Any = None
) -> dict[str, Any]:
    """A chunk: the frame, its choices, then ``usage`` (OpenAI's key order)."""
    chunk = {**frame, "choices": choices}
    if include_usage:
        chunk["usage"] = usage
    return chunk


def _chunk(
    frame: _Frame,
    index: int,
    delta: dict[str, Any],
    finish_reason: Any = None,
    logprobs: Any = None,
) -> dict[str, Any]:
    choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
    return _with_choices(frame.fields, [choice], frame.include_usage)


def _tool_call_delta(position: int, call: Mapping[str, Any]) -> dict[str, Any]:
    function = call.get("function")
    function = function if isinstance(function, Mapping) else {}
    return {
        "index": position,
        "id": call.get("id"),
        "type": call.get("type", "function"),
        "function": {"name": function.get("name"), "arguments": function.get("arguments", "")},
    }


def _choice_chunks(frame: _Frame, position: int, choice: Any) -> Iterator[dict[str, Any]]:
    index = choice.get("index", position) if isinstance(choice, Mapping) else position
    message = choice.get("message") if isinstance(choice, Mapping) else None
    message = message if isinstance(message, Mapping) else {}
    content = message.get("content")
    first: dict[str, Any] = {"role": message.get("role") or "assistant"}
    first["content"] = "" if isinstance(content, str) else None
    first["refusal"] = None
    yield _chunk(frame, index, first)
    logprobs = choice.get("logprobs") if isinstance(choice, Mapping) else None
    for name in _TEXT_FIELDS:
        value = message.get(name)
        if isinstance(value, str) and value:
            chosen = logprobs if name == "content" else None
            yield _chunk(frame, index, {name: value}, logprobs=chosen)
    function_call = message.get("function_call")
    if isinstance(function_call, Mapping):
        yield _chunk(frame, index, {"function_call": dict(function_call)})
    tool_calls = message.get("tool_calls")
    if isinstance(tool_calls, list):
        for number, call in enumerate(tool_calls):
            if isinstance(call, Mapping):
                yield _chunk(frame, index, {"tool_calls": [_tool_call_delta(number, call)]})
    finish_reason = choice.get("finish_reason") if isinstance(choice, Mapping) else None
    yield _chunk(frame, index, {}, finish_reason=finish_reason or "stop")


def completion_chunks(
    reply: Mapping[str, Any], *, include_usage: bool = False
) -> list[dict[str, Any]]:
    """The chunks OpenAI's streaming API sends for ``reply`` (plain dicts, in order).

    ``_metadata`` (when the reply has it) is on the last chunk. The strings are the reply's
    own objects; nothing is copied.
    """
    frame = _frame(reply, include_usage)
    chunks: list[dict[str, Any]] = []
    choices = reply.get("choices")
    for position, choice in enumerate(choices if isinstance(choices, list) else ()):
        chunks.extend(_choice_chunks(frame, position, choice))
    if include_usage:
        chunks.append(_with_choices(frame.fields, [], True, reply.get("usage")))
    metadata = reply.get("_metadata")
    if metadata is not None and chunks:
        chunks[-1]["_metadata"] = metadata
    return chunks


class _StreamBase:
    """What both streams hold: the chunks, the whole completion, and whether it is closed."""

    def __init__(self, completion: ChatCompletion, *, include_usage: bool = False) -> None:
        #: The non-streamed reply these chunks were made from (``completion._metadata``).
        self.completion = completion
        self._chunks: Iterator[dict[str, Any]] = iter(
            completion_chunks(completion, include_usage=include_usage)
        )
        self._closed = False

    @property
    def metadata(self) -> ResponseObject | None:
        """The reply's ``_metadata``: payload id, encryption, attestation result."""
        metadata = self.completion.get("_metadata")
        return metadata if isinstance(metadata, ResponseObject) else None

    def _next(self) -> ChatCompletionChunk | None:
        if self._closed:
            return None
        chunk = next(self._chunks, None)
        if chunk is None:
            self._closed = True
            return None
        return to_response(chunk, ChatCompletionChunk)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.completion.get('id', '')!s} {state}>"


class Stream(_StreamBase, Closeable):
    """The chunks of ``client.chat.completions.create(..., stream=True)`` (blocking client).

    Iterate it, or use it as a context manager; ``close()`` ends it early. Like the
    official SDK's ``Stream`` of ``ChatCompletionChunk``.
    """

    def __iter__(self) -> Iterator[ChatCompletionChunk]:
        return self

    def __next__(self) -> ChatCompletionChunk:
        chunk = self._next()
        if chunk is None:
            raise StopIteration
        return chunk

    def close(self) -> None:
        """Stop the stream; later iteration ends at once."""
        self._closed = True


class AsyncStream(_StreamBase, AsyncCloseable):
    """The chunks of ``await client.chat.completions.create(..., stream=True)`` (async client).

    ``async for chunk in stream``, or ``async with``; ``await stream.close()`` ends it early.
    """

    def __aiter__(self) -> AsyncIterator[ChatCompletionChunk]:
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        chunk = self._next()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def close(self) -> None:
        """Stop the stream; later iteration ends at once."""
        self._closed = True

    async def aclose(self) -> None:
        """Alias of :meth:`close` (``async with`` calls it)."""
        await self.close()
