"""Inference backends of the development router: a deterministic echo, or an upstream server."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Protocol

import httpx

__all__ = [
    "Backend",
    "BackendError",
    "EchoBackend",
    "UpstreamBackend",
    "check_chat_request",
    "echo_completion",
]


class BackendError(Exception):
    """The backend could not produce a completion; ``status`` is the HTTP status to answer.

    ``param`` names the offending request field of an invalid request (a 400), as in
    OpenAI's error object.
    """

    def __init__(self, status: int, detail: str, *, param: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.param = param

    def openai_body(self) -> dict[str, Any]:
        """The error as OpenAI answers it, plus the NOMYO router's ``detail``.

        ``{"error": {"message", "type", "param", "code"}}`` is what OpenAI SDKs parse;
        ``detail`` is what NOMYO clients (this one and the reference) read.
        """
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        error = {"message": self.detail, "type": kind, "param": self.param, "code": None}
        return {"error": error, "detail": self.detail}


_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_MAX_N = 128


def _invalid(message: str, param: str) -> BackendError:
    return BackendError(400, message, param=param)


def _type_name(value: Any) -> str:
    names = {str: "a string", dict: "an object", list: "an array", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else "a value")


def _check_content(content: Any, where: str, *, required: bool) -> None:
    if content is None:
        if required:
            raise _invalid(f"Missing required parameter: '{where}'.", where)
        return
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _invalid(
            f"Invalid type for '{where}': expected a string or an array of content parts, "
            f"but got {_type_name(content)} instead.",
            where,
        )
    for i, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _invalid(
                f"Invalid content part '{where}[{i}]': expected an object with a 'type'.",
                f"{where}[{i}]",
            )


def _check_tool_calls(calls: Any, where: str) -> None:
    if not isinstance(calls, list):
        raise _invalid(f"Invalid type for '{where}': expected an array.", where)
    for i, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(call, dict)
            or not isinstance(call.get("id"), str)
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("arguments"), str)
        ):
            raise _invalid(
                f"Invalid '{where}[{i}]': expected an object with 'id', 'type' and "
                "'function' {'name', 'arguments' (a JSON string)}.",
                f"{where}[{i}]",
            )


def _check_message(message: Any, i: int) -> None:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise _invalid(
            f"Invalid type for '{where}': expected an object, but got "
            f"{_type_name(message)} instead.",
            where,
        )
    role = message.get("role")
    if role is None:
        raise _invalid(f"Missing required parameter: '{where}.role'.", f"{where}.role")
    if role not in _ROLES:
        raise _invalid(
            f"Invalid value: {json.dumps(role)}. Supported values are: "
            + ", ".join(f"'{r}'" for r in _ROLES)
            + ".",
            f"{where}.role",
        )
    has_calls = role == "assistant" and message.get("tool_calls") is not None
    _check_content(message.get("content"), f"{where}.content", required=role != "assistant")
    stands_in = ("tool_calls", "function_call", "refusal", "audio")  # for an assistant's content
    if role == "assistant" and all(message.get(k) is None for k in ("content", *stands_in)):
        raise _invalid(
            f"Missing parameter: '{where}.content' is required unless 'tool_calls' is given.",
            f"{where}.content",
        )
    if has_calls:
        _check_tool_calls(message["tool_calls"], f"{where}.tool_calls")
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise _invalid(
            f"Missing required parameter: '{where}.tool_call_id'.", f"{where}.tool_call_id"
        )


def _function_names(request: dict[str, Any]) -> list[str]:
    tools = request.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise _invalid("Invalid type for 'tools': expected an array.", "tools")
    names = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _invalid(
                f"Invalid 'tools[{i}]': expected {{'type': 'function', 'function': "
                "{'name': ...}}.",
                f"tools[{i}]",
            )
        names.append(function["name"])
    return names


def _check_tool_choice(request: dict[str, Any]) -> None:
    if "tool_choice" not in request or request["tool_choice"] is None:
        return
    choice = request["tool_choice"]
    names = _function_names(request)
    if not names:
        raise _invalid("'tool_choice' is only allowed when 'tools' are specified.", "tool_choice")
    if choice in ("none", "auto", "required"):
        return
    function = choice.get("function") if isinstance(choice, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise _invalid(
            "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or "
            "{'type': 'function', 'function': {'name': ...}}.",
            "tool_choice",
        )
    if function["name"] not in names:
        raise _invalid(
            f"Invalid value for 'tool_choice': function {json.dumps(function['name'])} is "
            "not one of the 'tools'.",
            "tool_choice",
        )


def _check_number(request: dict[str, Any], name: str, low: float, high: float) -> None:
    value = request.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _invalid(f"Invalid type for '{name}': expected a number.", name)
    if not low <= value <= high:
        raise _invalid(f"Invalid '{name}': {value} is not between {low} and {high}.", name)


def _check_count(request: dict[str, Any], name: str, high: int | None = None) -> None:
    value = request.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"Invalid type for '{name}': expected an integer.", name)
    if value < 1 or (high is not None and value > high):
        limit = f"between 1 and {high}" if high is not None else "at least 1"
        raise _invalid(f"Invalid '{name}': {value} is not {limit}.", name)


def check_chat_request(request: Any) -> None:
    """Check a decrypted chat-completions request as OpenAI's API does.

    Refuses what a real router (and the model server behind it) refuses, so that client bugs
    show in development: a request that is not an object, no ``model``, ``messages`` that
    are not a non-empty array of message objects with a known ``role`` and a ``content`` of
    the right type (``tool_calls`` and ``tool_call_id`` where they belong), ``n`` outside
    1-128, ``temperature``/``top_p``/``max_tokens`` out of range, ``tools`` without
    function names, a ``tool_choice`` without ``tools`` or naming a function not among them,
    and ``stream``.

    Raises:
        BackendError: status 400, ``param`` naming the field.
    """
    if not isinstance(request, dict):
        raise _invalid("The request body must be a JSON object.", "body")
    if not isinstance(request.get("model"), str) or not request["model"]:
        raise _invalid("Missing required parameter: 'model' (a string).", "model")
    messages = request.get("messages")
    if not isinstance(messages, list):
        raise _invalid(
            f"Invalid type for 'messages': expected an array of message objects, but got "
            f"{_type_name(messages)} instead.",
            "messages",
        )
    if not messages:
        raise _invalid(
            "Invalid 'messages': empty array; at least one message is needed.", "messages"
        )
    for i, message in enumerate(messages):
        _check_message(message, i)
    _check_count(request, "n", _MAX_N)
    _check_count(request, "max_tokens")
    _check_count(request, "max_completion_tokens")
    _check_number(request, "temperature", 0, 2)
    _check_number(request, "top_p", 0, 1)
    _function_names(request)
    _check_tool_choice(request)
    if request.get("stream"):
        raise _invalid(
            "Streaming is not supported for encrypted inference; use stream=False", "stream"
        )


class Backend(Protocol):
    """Something that turns a decrypted chat-completions request into a completion."""

    async def complete(self, request: dict[str, Any], payload_id: str) -> dict[str, Any]:
        """Return an OpenAI ``chat.completion`` object; raise BackendError on failure."""
        ...

    async def aclose(self) -> None:
        """Release resources."""
        ...


def _text(content: Any) -> str:
    """The text of a message ``content`` (a string, or a list of content parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return str(content)


def _words(text: str) -> int:
    return len(text.split())


def _last_content(messages: list[Any], role: str) -> str | None:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == role:
            return _text(message.get("content"))
    return None


def _chosen_tool(request: dict[str, Any], *, after_tool: bool) -> dict[str, Any] | None:
    """The function definition the echo backend calls, or None when no tool is to be called.

    A forced ``tool_choice`` (a named function, or ``"required"``) is always answered with a
    tool call, even right after a tool result, as OpenAI does; ``"auto"`` (the default) calls
    a tool unless the conversation ends with a tool result.
    """
    tools = request.get("tools")
    choice = request.get("tool_choice")
    if not isinstance(tools, list) or choice == "none":
        return None
    forced = choice == "required" or isinstance(choice, dict)
    if after_tool and not forced:
        return None
    functions: list[dict[str, Any]] = [
        t["function"]
        for t in tools
        if isinstance(t, dict)
        and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str)
    ]
    if not functions:
        return None
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        wanted = choice["function"].get("name")
        for function in functions:
            if function["name"] == wanted:
                return function
        return None  # check_chat_request refuses this
    return functions[0]


def _tool_arguments(function: dict[str, Any], text: str) -> str:
    """Deterministic arguments: each required parameter gets a value of its declared type."""
    parameters = function.get("parameters")
    if not isinstance(parameters, dict):
        return "{}"
    properties = parameters.get("properties")
    required = parameters.get("required")
    if not isinstance(properties, dict) or not isinstance(required, list):
        return "{}"
    defaults: dict[str, Any] = {
        "string": text,
        "integer": 0,
        "number": 0,
        "boolean": False,
        "array": [],
        "object": {},
    }
    arguments: dict[str, Any] = {}
    for name in required:
        schema = properties.get(name)
        kind = schema.get("type") if isinstance(schema, dict) else None
        if isinstance(schema, dict) and isinstance(schema.get("enum"), list) and schema["enum"]:
            arguments[name] = schema["enum"][0]
        else:
            arguments[name] = defaults.get(kind) if isinstance(kind, str) else None
    return json.dumps(arguments, sort_keys=True)


def _completion_id(payload_id: str) -> str:
    return "chatcmpl-" + hashlib.sha256(payload_id.encode("utf-8")).hexdigest()[:24]


def echo_completion(request: dict[str, Any], payload_id: str) -> dict[str, Any]:
    """The deterministic completion of the echo backend.

    The reply echoes the last user message. When ``tools`` are given (and ``tool_choice`` is
    not ``"none"``) it calls the first tool, or the one ``tool_choice`` names, unless the
    conversation ends with a ``tool`` message (and the call is not forced), whose content is
    then echoed. ``n`` gives n choices, index 0 to n-1: choice 0 as described, choice i > 0
    the same text followed by `` (i+1)`` (its tool call has its own id). Token counts are
    whitespace word counts.
    """
    messages = request.get("messages")
    messages = messages if isinstance(messages, list) else []
    prompt_tokens = sum(_words(_text(m.get("content"))) for m in messages if isinstance(m, dict))
    user_text = _last_content(messages, "user") or ""
    last = messages[-1] if messages else None
    ends_with_tool = isinstance(last, dict) and last.get("role") == "tool"
    function = _chosen_tool(request, after_tool=ends_with_tool)
    completion_id = _completion_id(payload_id)
    n = request.get("n")
    count = n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= _MAX_N else 1
    choices: list[dict[str, Any]] = []
    completion_tokens = 0
    for index in range(count):
        suffix = f" ({index + 1})" if index else ""
        message: dict[str, Any]
        if function is not None:
            arguments = _tool_arguments(function, user_text + suffix)
            call_id = (
                completion_id[-24:] if index == 0 else _completion_id(f"{payload_id}#{index}")[-24:]
            )
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_" + call_id,
                        "type": "function",
                        "function": {"name": function["name"], "arguments": arguments},
                    }
                ],
            }
            finish_reason = "tool_calls"
            completion_tokens += _words(arguments)
        else:
            text = (
                _text(last.get("content"))
                if ends_with_tool and isinstance(last, dict)
                else user_text
            ) + suffix
            message = {"role": "assistant", "content": text}
            finish_reason = "stop"
            completion_tokens += _words(text)
        choices.append(
            {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason}
        )
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model"),
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


class EchoBackend:
    """Deterministic backend that echoes the last user message (see ``echo_completion``)."""

    async def complete(self, request: dict[str, Any], payload_id: str) -> dict[str, Any]:
        """Return the echo completion."""
        return echo_completion(request, payload_id)

    async def aclose(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return "EchoBackend()"


class UpstreamBackend:
    """Forwards the request to an OpenAI-compatible ``{base_url}/chat/completions``."""

    def __init__(self, base_url: str, *, timeout: float = 300.0) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._client = httpx.AsyncClient(timeout=timeout)

    async def complete(self, request: dict[str, Any], payload_id: str) -> dict[str, Any]:
        """POST the request upstream; any upstream failure becomes BackendError(502)."""
        try:
            response = await self._client.post(self.url, json=request)
        except httpx.TimeoutException:
            raise BackendError(502, "upstream timed out") from None
        except httpx.HTTPError as exc:
            raise BackendError(502, f"upstream unreachable: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise BackendError(502, f"upstream returned HTTP {response.status_code}")
        try:
            completion = response.json()
        except ValueError:
            raise BackendError(502, "upstream reply is not JSON") from None
        if not isinstance(completion, dict):
            raise BackendError(502, "upstream reply is not a JSON object")
        return completion

    async def aclose(self) -> None:
        """Close the pooled HTTP client."""
        await self._client.aclose()

    def __repr__(self) -> str:
        return f"UpstreamBackend({self.url!r})"
