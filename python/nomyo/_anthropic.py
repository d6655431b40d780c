"""Anthropic's Messages API (``POST /v1/messages``) answered by one sealed chat completion.

A program written for Anthropic's SDK talks to ``nomyo proxy`` (``ANTHROPIC_BASE_URL`` under
``nomyo run``); each request is translated to one chat completion for the NOMYO router:
``system`` (a string or text blocks) as the first message, ``messages`` with ``text``,
``image``, ``tool_use`` and ``tool_result`` blocks, ``tools``, ``tool_choice``,
``max_tokens``, ``stop_sequences``, ``temperature``, ``top_p`` and ``metadata.user_id``.
The reply is a ``message`` with ``thinking`` (when the model reasoned), ``text`` and
``tool_use`` blocks, a ``stop_reason`` and the ``usage``; with ``"stream": true``,
Anthropic's events (:func:`message_events`). Errors take Anthropic's shape
``{"type": "error", "error": {"type", "message"}}``. Server tools (web search, code
execution, ...) and documents are refused with a 400 before anything is sent.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator, Mapping
from typing import Any

from ._relay import (
    REFUSED_FIELDS,
    Api,
    ChatCall,
    ErrorReply,
    Refused,
    object_answer,
    translated,
)

__all__ = ["MESSAGES", "anthropic_error_body", "message_events", "message_object"]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def anthropic_error_body(reply: ErrorReply) -> bytes:
    """``reply`` in Anthropic's shape; the type follows the status as in Anthropic's API."""
    kind = _ERROR_TYPES.get(reply.status, "api_error")
    error = {"type": "error", "error": {"type": kind, "message": reply.message}}
    return json.dumps(error).encode("utf-8")


def parse_messages_body(
    body: bytes, *, default_model: str | None = None, security_tier: str | None = None
) -> ChatCall | ErrorReply:
    """Check a Messages request and translate it to a :class:`ChatCall`."""
    return translated(body, _translate, default_model, security_tier)


def _translate(
    request: dict[str, Any], default_model: str | None, security_tier: str | None
) -> ChatCall:
    for name in REFUSED_FIELDS:
        if name in request:
            raise Refused(f"{name}: not accepted in a relayed request")
    model = request.get("model") or default_model
    if not isinstance(model, str) or not model:
        raise Refused("model: must be a non-empty string")
    stream = request.get("stream")
    if stream not in (None, True, False):
        raise Refused("stream: must be a boolean")
    messages: list[dict[str, Any]] = []
    system = request.get("system")
    if system is not None:
        messages.append({"role": "system", "content": _system_text(system)})
    given = request.get("messages")
    if not isinstance(given, list) or not given:
        raise Refused("messages: must be a non-empty list")
    for number, message in enumerate(given):
        messages.extend(_chat_messages(message, f"messages.{number}"))
    options: dict[str, Any] = {}
    for name, target in (
        ("max_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("stop_sequences", "stop"),
    ):
        if request.get(name) is not None:
            options[target] = request[name]
    metadata = request.get("metadata")
    if isinstance(metadata, Mapping) and isinstance(metadata.get("user_id"), str):
        options["user"] = metadata["user_id"]
    if request.get("tools") is not None:
        options["tools"] = _tools(request["tools"])
    if request.get("tool_choice") is not None:
        options.update(_tool_choice(request["tool_choice"]))
    tier = request.get("security_tier") or security_tier
    if tier:
        options["security_tier"] = tier
    return ChatCall(model, messages, options, bool(stream), context=request)


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    if isinstance(system, list) and all(
        isinstance(block, Mapping) and block.get("type") == "text" for block in system
    ):
        return "\n\n".join(str(block.get("text", "")) for block in system)
    raise Refused("system: must be a string or a list of text blocks")


def _chat_messages(message: Any, where: str) -> list[dict[str, Any]]:
    """The chat messages of one Anthropic message: tool results first (as ``tool``
    messages), then the rest."""
    role = message.get("role") if isinstance(message, Mapping) else None
    if role not in ("user", "assistant"):
        raise Refused(f"{where}.role: must be user or assistant")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise Refused(f"{where}.content: must be a string or a list of blocks")
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for number, block in enumerate(content):
        at = f"{where}.content.{number}"
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image" and role == "user":
            parts.append(_image(block.get("source"), at))
        elif kind == "tool_use" and role == "assistant":
            arguments = json.dumps(block.get("input") or {})
            function = {"name": block.get("name"), "arguments": arguments}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
        elif kind == "tool_result" and role == "user":
            results.append(_tool_result(block, at))
        elif kind in ("thinking", "redacted_thinking"):
            continue  # earlier reasoning: chat completions have no place for it
        else:
            raise Refused(
                f"{at}: blocks of type {kind!r} are not available through the NOMYO router "
                "(text, images, tool_use and tool_result are); nothing was sent"
            )
    messages = results
    if role == "assistant":
        text = "".join(part["text"] for part in parts)
        reply: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            reply["tool_calls"] = calls
        if text or calls:
            messages.append(reply)
    elif parts:
        only_text = all(part["type"] == "text" for part in parts)
        content_out: Any = "".join(p["text"] for p in parts) if only_text else parts
        messages.append({"role": "user", "content": content_out})
    return messages


def _image(source: Any, where: str) -> dict[str, Any]:
    kind = source.get("type") if isinstance(source, Mapping) else None
    if kind == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif kind == "url":
        url = str(source.get("url"))
    else:
        raise Refused(f"{where}.source: images must be base64 data or a URL")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    content = block.get("content")
    if isinstance(content, list):
        texts = []
        for number, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text":
                raise Refused(f"{where}.content.{number}: tool results must be text")
            texts.append(str(part.get("text", "")))
        content = "".join(texts)
    text = "" if content is None else str(content)
    if block.get("is_error"):
        text = "Error: " + text
    return {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text}


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise Refused("tools: must be a list")
    translated = []
    for number, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        if kind not in (None, "custom") or not isinstance(tool.get("name"), str):
            raise Refused(
                f"tools.{number}: {kind!r} is a server tool that runs at Anthropic; the NOMYO "
                "router runs none, only tools your program runs (name, input_schema); "
                "nothing was sent"
            )
        function = {"name": tool["name"], "parameters": tool.get("input_schema") or {}}
        if tool.get("description") is not None:
            function["description"] = tool["description"]
        translated.append({"type": "function", "function": function})
    return translated


def _tool_choice(choice: Any) -> dict[str, Any]:
    kind = choice.get("type") if isinstance(choice, Mapping) else None
    options: dict[str, Any] = {}
    if kind == "auto":
        options["tool_choice"] = "auto"
    elif kind == "any":
        options["tool_choice"] = "required"
    elif kind == "none":
        options["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        options["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise Refused("tool_choice: must be auto, any, none or tool")
    if choice.get("disable_parallel_tool_use"):
        options["parallel_tool_calls"] = False
    return options


# --- the reply ----------------------------------------------------------------------------


def _arguments(text: Any) -> Any:
    try:
        value = json.loads(text) if isinstance(text, str) and text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _content(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        blocks.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = message.get("content") or message.get("refusal")
    if isinstance(text, str) and text:
        blocks.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            blocks.append(
                {
                    "type": "tool_use",
                    "id": call.get("id") or "toolu_" + secrets.token_hex(12),
                    "name": function.get("name"),
                    "input": _arguments(function.get("arguments")),
                }
            )
    return blocks


def message_object(request: Mapping[str, Any], reply: Mapping[str, Any]) -> dict[str, Any]:
    """The ``message`` for the chat ``reply`` to the Messages ``request``."""
    choices = reply.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], Mapping) else {}
    message = choice.get("message")
    usage: Mapping[str, Any] = reply.get("usage") or {}
    usage = usage if isinstance(usage, Mapping) else {}
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    result: dict[str, Any] = {
        "id": "msg_" + secrets.token_hex(12),
        "type": "message",
        "role": "assistant",
        "model": reply.get("model") or request.get("model"),
        "content": _content(message if isinstance(message, Mapping) else {}),
        "stop_reason": _STOP_REASONS.get(str(choice.get("finish_reason")), "end_turn"),
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.get("prompt_tokens") or 0,
            "output_tokens": usage.get("completion_tokens") or 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached or 0,
        },
    }
    if "_metadata" in reply:
        result["_metadata"] = reply["_metadata"]
    return result


def _block_events(index: int, block: dict[str, Any]) -> Iterator[dict[str, Any]]:
    kind = block["type"]
    if kind == "text":
        start: dict[str, Any] = {"type": "text", "text": ""}
        delta = {"type": "text_delta", "text": block["text"]}
    elif kind == "thinking":
        start = {"type": "thinking", "thinking": "", "signature": ""}
        delta = {"type": "thinking_delta", "thinking": block["thinking"]}
    else:
        start = {**block, "input": {}}
        delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
    yield {"type": "content_block_start", "index": index, "content_block": start}
    yield {"type": "content_block_delta", "index": index, "delta": delta}
    yield {"type": "content_block_stop", "index": index}


def message_events(message: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Anthropic's event sequence for a finished ``message``."""
    usage = message["usage"]
    opened = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 0}}
    yield {"type": "message_start", "message": opened}
    for index, block in enumerate(message["content"]):
        yield from _block_events(index, block)
    yield {
        "type": "message_delta",
        "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
        "usage": {"output_tokens": usage["output_tokens"]},
    }
    yield {"type": "message_stop"}


def _answer(call: ChatCall, reply: Mapping[str, Any]) -> tuple[bytearray, str]:
    return object_answer(message_object(call.context, reply), call.stream, message_events)


#: Anthropic's Messages API.
MESSAGES = Api("messages", parse_messages_body, _answer, anthropic_error_body)
