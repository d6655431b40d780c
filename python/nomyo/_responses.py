"""OpenAI's Responses API (``POST /v1/responses``) answered by one sealed chat completion.

The router speaks chat completions and keeps no state, so a Responses request is translated
to one chat completion and its reply back to a ``response`` object:

- ``input`` (a string, or items: messages with text and image parts, ``function_call`` and
  ``function_call_output`` items), ``instructions`` (a system message first), function
  ``tools``, ``tool_choice``, ``parallel_tool_calls``, ``text.format`` (``json_schema``,
  ``json_object``) as ``response_format``, ``max_output_tokens``, ``temperature``,
  ``top_p``, ``reasoning.effort`` and ``user`` go to the router;
- ``metadata`` is echoed, ``store`` keeps nothing (the reply says ``"store": false``);
- ``previous_response_id``, ``conversation``, stored prompts, background responses, item
  references and server-side tools (web search, file search, code interpreter, ...) need
  state or tools the router does not have: 400, and nothing is sent.

The ``output`` holds a ``reasoning`` item (when the model reasoned), a ``message`` with an
``output_text`` (or ``refusal``) part, and one ``function_call`` item per tool call. With
``"stream": true`` the same response is given as OpenAI's event sequence with
``sequence_number``s (:func:`response_events`), so the SDK's ``responses.stream()`` and
``responses.create(stream=True)`` work unchanged.
"""

from __future__ import annotations

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

__all__ = ["RESPONSES", "parse_responses_body", "response_events", "response_object"]

#: Fields that need state the router does not keep.
_STATEFUL = ("previous_response_id", "conversation", "prompt")
#: Passed to the router under the same name.
_SAME = ("temperature", "top_p", "parallel_tool_calls", "user", "top_logprobs")
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_FINISHED = {"length": "max_output_tokens", "content_filter": "content_filter"}


def parse_responses_body(
    body: bytes, *, default_model: str | None = None, security_tier: str | None = None
) -> ChatCall | ErrorReply:
    """Check a Responses request and translate it to a :class:`ChatCall` (context: the
    request, for the reply)."""
    return translated(body, _translate, default_model, security_tier)


def _translate(
    request: dict[str, Any], default_model: str | None, security_tier: str | None
) -> ChatCall:
    for name in REFUSED_FIELDS:
        if name in request:
            raise Refused(f"'{name}' is not accepted in a relayed request", name)
    for name in _STATEFUL:
        if request.get(name) is not None:
            raise Refused(
                f"'{name}' needs state the NOMYO router does not keep (it stores no "
                "responses): send the whole conversation in 'input'; nothing was sent",
                name,
            )
    if request.get("background"):
        raise Refused("background responses need stored state; nothing was sent", "background")
    model = request.get("model") or default_model
    if not isinstance(model, str) or not model:
        raise Refused("'model' must be a non-empty string", "model")
    stream = request.get("stream")
    if stream not in (None, True, False):
        raise Refused("'stream' must be a boolean", "stream")
    messages: list[dict[str, Any]] = []
    instructions = request.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise Refused("'instructions' must be a string", "instructions")
        messages.append({"role": "system", "content": instructions})
    messages.extend(_input_messages(request.get("input")))
    if not messages:
        raise Refused("'input' must not be empty", "input")
    options = _options(request)
    tier = request.get("security_tier") or security_tier
    if tier:
        options["security_tier"] = tier
    return ChatCall(model, messages, options, bool(stream), context=request)


def _options(request: Mapping[str, Any]) -> dict[str, Any]:
    options = {name: request[name] for name in _SAME if request.get(name) is not None}
    if request.get("max_output_tokens") is not None:
        options["max_tokens"] = request["max_output_tokens"]
    tools = request.get("tools")
    if tools is not None:
        options["tools"] = _tools(tools)
    choice = request.get("tool_choice")
    if choice is not None:
        options["tool_choice"] = _tool_choice(choice)
    text = request.get("text")
    if isinstance(text, Mapping):
        response_format = _response_format(text.get("format"))
        if response_format is not None:
            options["response_format"] = response_format
        if text.get("verbosity") is not None:
            options["verbosity"] = text["verbosity"]
    reasoning = request.get("reasoning")
    if isinstance(reasoning, Mapping) and reasoning.get("effort") is not None:
        options["reasoning_effort"] = reasoning["effort"]
    return options


def _input_messages(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise Refused("'input' must be a string or a list of items", "input")
    messages: list[dict[str, Any]] = []
    for number, item in enumerate(value):
        where = f"input[{number}]"
        if not isinstance(item, Mapping):
            raise Refused(f"{where} must be an object", where)
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            _add_call(messages, item, where)
        elif kind == "function_call_output":
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": _string(item, "call_id", where),
                    "content": _output_text(item.get("output"), where),
                }
            )
        elif kind == "reasoning":
            continue  # a model's earlier reasoning: chat completions have no place for it
        elif kind == "item_reference":
            raise Refused(
                f"{where}: item references need stored state the NOMYO router does not keep; "
                "nothing was sent",
                where,
            )
        else:
            raise Refused(
                f"{where}: items of type {kind!r} are not available through the NOMYO router "
                "(it runs no server-side tools); nothing was sent",
                where,
            )
    return messages


def _string(item: Mapping[str, Any], name: str, where: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise Refused(f"{where}.{name} must be a string", f"{where}.{name}")
    return value


def _message(item: Mapping[str, Any], where: str) -> dict[str, Any]:
    role = _ROLES.get(item.get("role"))  # type: ignore[arg-type]
    if role is None:
        raise Refused(f"{where}.role must be user, assistant, system or developer", where)
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise Refused(f"{where}.content must be a string or a list of parts", where)
    parts = [_part(part, f"{where}.content[{n}]") for n, part in enumerate(content)]
    if role != "user" and all(part["type"] == "text" for part in parts):
        return {"role": role, "content": "".join(part["text"] for part in parts)}
    return {"role": role, "content": parts}


def _part(part: Any, where: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, Mapping) else None
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": _string(part, "text", where)}
    if kind == "refusal":
        return {"type": "text", "text": _string(part, "refusal", where)}
    if kind == "input_image" and isinstance(part.get("image_url"), str):
        image: dict[str, Any] = {"url": part["image_url"]}
        if part.get("detail") is not None:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    raise Refused(
        f"{where}: content parts of type {kind!r} are not available through the NOMYO router "
        "(text and images by URL or data URL are); nothing was sent",
        where,
    )


def _add_call(messages: list[dict[str, Any]], item: Mapping[str, Any], where: str) -> None:
    call = {
        "id": _string(item, "call_id", where),
        "type": "function",
        "function": {"name": _string(item, "name", where), "arguments": item.get("arguments")},
    }
    if not isinstance(call["function"]["arguments"], str):  # type: ignore[index]
        raise Refused(f"{where}.arguments must be a string", f"{where}.arguments")
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant" and "tool_call_id" not in last:
        last.setdefault("tool_calls", []).append(call)
        last.setdefault("content", None)
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _output_text(output: Any, where: str) -> Any:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return [_part(part, f"{where}.output[{n}]") for n, part in enumerate(output)]
    raise Refused(f"{where}.output must be a string or a list of parts", f"{where}.output")


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise Refused("'tools' must be a list", "tools")
    translated = []
    for number, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        if kind != "function":
            raise Refused(
                f"tools[{number}]: {kind!r} tools run on OpenAI's servers; the NOMYO router "
                "runs no server-side tools (web search, file search, code interpreter, ...), "
                "only function tools that your program runs; nothing was sent",
                f"tools[{number}]",
            )
        function = {"name": _string(tool, "name", f"tools[{number}]")}
        for name in ("description", "parameters", "strict"):
            if tool.get(name) is not None:
                function[name] = tool[name]
        translated.append({"type": "function", "function": function})
    return translated


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": _string(choice, "name", "tool_choice")}}
    raise Refused(
        "'tool_choice' must be auto, none, required or a function; nothing was sent",
        "tool_choice",
    )


def _response_format(value: Any) -> dict[str, Any] | None:
    kind = value.get("type") if isinstance(value, Mapping) else None
    if value is None or kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and isinstance(value, Mapping):
        schema = {k: value[k] for k in ("name", "schema", "strict", "description") if k in value}
        return {"type": "json_schema", "json_schema": schema}
    raise Refused("'text.format' must be text, json_object or json_schema", "text.format")


# --- the reply ----------------------------------------------------------------------------


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(24)


def _usage(usage: Any) -> dict[str, Any] | None:
    if not isinstance(usage, Mapping):
        return None
    prompt = usage.get("prompt_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    cached = prompt_details.get("cached_tokens") if isinstance(prompt_details, Mapping) else 0
    reasoning = (
        completion_details.get("reasoning_tokens") if isinstance(completion_details, Mapping) else 0
    )
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached or 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning or 0},
        "total_tokens": usage.get("total_tokens") or prompt + completion,
    }


def _output(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The output items of one chat message."""
    items: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        items.append(
            {
                "id": _new_id("rs_"),
                "type": "reasoning",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": reasoning}],
            }
        )
    content, refusal = message.get("content"), message.get("refusal")
    part: dict[str, Any] | None = None
    if isinstance(refusal, str) and refusal:
        part = {"type": "refusal", "refusal": refusal}
    elif isinstance(content, str) and content:
        part = {"type": "output_text", "text": content, "annotations": [], "logprobs": []}
    if part is not None:
        items.append(
            {
                "id": _new_id("msg_"),
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [part],
            }
        )
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping):
            continue
        items.append(
            {
                "id": _new_id("fc_"),
                "type": "function_call",
                "status": "completed",
                "call_id": call.get("id") or _new_id("call_"),
                "name": function.get("name"),
                "arguments": function.get("arguments") or "",
            }
        )
    return items


def response_object(request: Mapping[str, Any], reply: Mapping[str, Any]) -> dict[str, Any]:
    """The ``response`` object for the chat ``reply`` to the Responses ``request``."""
    choices = reply.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], Mapping) else {}
    message = choice.get("message")
    finish = _FINISHED.get(choice.get("finish_reason"))  # type: ignore[arg-type]
    text = request.get("text") if isinstance(request.get("text"), Mapping) else None
    response: dict[str, Any] = {
        "id": _new_id("resp_"),
        "object": "response",
        "created_at": reply.get("created", 0),
        "status": "incomplete" if finish else "completed",
        "background": False,
        "error": None,
        "incomplete_details": {"reason": finish} if finish else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "metadata": request.get("metadata") or {},
        "model": reply.get("model") or request.get("model"),
        "output": _output(message if isinstance(message, Mapping) else {}),
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": request.get("reasoning") or {"effort": None, "summary": None},
        "store": False,
        "temperature": request.get("temperature"),
        "text": text or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p"),
        "truncation": request.get("truncation") or "disabled",
        "usage": _usage(reply.get("usage")),
        "user": request.get("user"),
    }
    if "_metadata" in reply:
        response["_metadata"] = reply["_metadata"]
    return response


def _item_events(index: int, item: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The events of one output item, from ``output_item.added`` to ``output_item.done``."""
    kind = item["type"]
    item_id = item["id"]
    at = {"item_id": item_id, "output_index": index}
    if kind == "message":
        opened = {**item, "status": "in_progress", "content": []}
    elif kind == "function_call":
        opened = {**item, "status": "in_progress", "arguments": ""}
    else:
        opened = item
    yield {"type": "response.output_item.added", "output_index": index, "item": opened}
    if kind == "message":
        for number, part in enumerate(item["content"]):
            where = {**at, "content_index": number}
            empty = {**part, "text": ""} if part["type"] == "output_text" else {**part}
            if part["type"] == "refusal":
                empty["refusal"] = ""
            yield {"type": "response.content_part.added", **where, "part": empty}
            if part["type"] == "output_text":
                text = part["text"]
                yield {"type": "response.output_text.delta", **where, "delta": text, "logprobs": []}
                yield {"type": "response.output_text.done", **where, "text": text, "logprobs": []}
            else:
                refusal = part["refusal"]
                yield {"type": "response.refusal.delta", **where, "delta": refusal}
                yield {"type": "response.refusal.done", **where, "refusal": refusal}
            yield {"type": "response.content_part.done", **where, "part": part}
    elif kind == "function_call":
        arguments = item["arguments"]
        yield {"type": "response.function_call_arguments.delta", **at, "delta": arguments}
        yield {
            "type": "response.function_call_arguments.done",
            **at,
            "name": item["name"],
            "arguments": arguments,
        }
    yield {"type": "response.output_item.done", "output_index": index, "item": item}


def response_events(response: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """OpenAI's event sequence for a finished ``response``, with ``sequence_number``s."""
    opened = {**response, "status": "in_progress", "output": [], "usage": None}
    opened["incomplete_details"] = None
    events: list[Iterator[dict[str, Any]]] = [
        iter(({"type": "response.created", "response": opened},)),
        iter(({"type": "response.in_progress", "response": opened},)),
    ]
    events.extend(_item_events(n, item) for n, item in enumerate(response["output"]))
    last = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
    events.append(iter(({"type": last, "response": response},)))
    number = 0
    for group in events:
        for event in group:
            event["sequence_number"] = number
            number += 1
            yield event


def _answer(call: ChatCall, reply: Mapping[str, Any]) -> tuple[bytearray, str]:
    return object_answer(response_object(call.context, reply), call.stream, response_events)


#: The Responses API.
RESPONSES = Api("responses", parse_responses_body, _answer)
