"""Inference backends of the development router: a deterministic echo, or an upstream server."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Protocol

import httpx

__all__ = ["Backend", "BackendError", "EchoBackend", "UpstreamBackend", "echo_completion"]


class BackendError(Exception):
    """The backend could not produce a completion; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


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


def _chosen_tool(request: dict[str, Any]) -> dict[str, Any] | None:
    """The function definition the echo backend calls, or None when no tool is to be called."""
    tools = request.get("tools")
    choice = request.get("tool_choice")
    if not isinstance(tools, list) or choice == "none":
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
    conversation ends with a ``tool`` message, whose content is then echoed. Token counts are
    whitespace word counts.
    """
    messages = request.get("messages")
    messages = messages if isinstance(messages, list) else []
    prompt_tokens = sum(_words(_text(m.get("content"))) for m in messages if isinstance(m, dict))
    user_text = _last_content(messages, "user") or ""
    last = messages[-1] if messages else None
    ends_with_tool = isinstance(last, dict) and last.get("role") == "tool"
    function = None if ends_with_tool else _chosen_tool(request)
    completion_id = _completion_id(payload_id)
    message: dict[str, Any]
    if function is not None:
        arguments = _tool_arguments(function, user_text)
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_" + completion_id[-24:],
                    "type": "function",
                    "function": {"name": function["name"], "arguments": arguments},
                }
            ],
        }
        finish_reason = "tool_calls"
        completion_tokens = _words(arguments)
    else:
        text = (
            _text(last.get("content")) if ends_with_tool and isinstance(last, dict) else user_text
        )
        message = {"role": "assistant", "content": text}
        finish_reason = "stop"
        completion_tokens = _words(text)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model"),
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
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
