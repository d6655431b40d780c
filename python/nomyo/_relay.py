"""What both OpenAI-shaped front ends share: ``nomyo proxy`` and the SDK transports.

Both receive an OpenAI ``POST /chat/completions`` body, forward it through a chat client
and answer as OpenAI would. The body checks (:func:`parse_chat_body`), the error replies
(:func:`error_reply`, :func:`failure_reply`) and the emulated event stream
(:func:`event_stream`) live here once, so the two cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._core import dumps
from ._exceptions import (
    APIConnectionError,
    APIError,
    ConfigurationError,
    EnvelopeError,
    KeyFormatError,
    NomyoError,
    SecureMemoryError,
    SecurityError,
)
from ._params import REQUEST_OPTIONS
from ._stream import completion_chunks

__all__ = [
    "CHAT",
    "EVENT_STREAM",
    "JSON",
    "NO_RETRY",
    "REFUSED_FIELDS",
    "Api",
    "ChatCall",
    "ErrorReply",
    "Refused",
    "error_reply",
    "event_stream",
    "failure_reply",
    "json_object",
    "object_answer",
    "openai_error_body",
    "parse_chat_body",
    "refusal",
    "reply_body",
    "reply_headers",
    "sse_stream",
    "translated",
]

#: Fields of a relayed body that would reconfigure the client (redirect it, swap its API key,
#: change its timeouts or retries, add HTTP headers to the router request): every option of
#: a call but the security tier, so a new option is refused here until allowed on purpose.
REFUSED_FIELDS = tuple(name for name in REQUEST_OPTIONS if name != "security_tier")
#: The content type of a streamed reply.
EVENT_STREAM = "text/event-stream; charset=utf-8"
_NAME, _EVENT, _EVENT_END, _DONE = b"event: ", b"data: ", b"\n\n", b"data: [DONE]\n\n"

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}
#: A failure a retry cannot cure (or one already retried): the OpenAI and Anthropic SDKs read
#: this header and do not retry.
NO_RETRY = {"x-should-retry": "false"}
_NO_RETRY = NO_RETRY


@dataclass
class ErrorReply:
    """An OpenAI-style error: ``{"error": {"message", "type", "param", "code"}}``."""

    status: int
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def body(self) -> bytes:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return json.dumps({"error": error}).encode("utf-8")


def error_reply(
    status: int,
    message: str,
    error_type: str | None = None,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> ErrorReply:
    """An error reply; the type follows the status as in OpenAI's API unless given."""
    kind = error_type or _ERROR_TYPES.get(status, "api_error")
    return ErrorReply(status, message, kind, param, code, dict(headers or {}))


@dataclass
class ChatCall:
    """A checked chat-completions request: the arguments of ``create`` and how to answer."""

    model: str
    messages: list[Any]
    options: dict[str, Any]
    #: Answer with an event stream (the router is asked without streaming).
    stream: bool = False
    #: ``stream_options.include_usage``: a last chunk with the usage.
    include_usage: bool = False
    #: What the API that was called needs to answer (the Responses request, say).
    context: Any = None


def json_object(body: bytes) -> dict[str, Any] | ErrorReply:
    """``body`` parsed as a JSON object, or the 400 reply every relayed API gives otherwise."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return error_reply(400, "the request body is not valid JSON")
    if not isinstance(value, dict):
        return error_reply(400, "the request body must be a JSON object")
    return value


class Refused(Exception):
    """A relayed request a translation cannot answer: a 400 (``param``: the field at fault)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def translated(
    body: bytes,
    translate: Callable[[dict[str, Any], str | None, str | None], ChatCall],
    default_model: str | None,
    security_tier: str | None,
) -> ChatCall | ErrorReply:
    """``translate(request, default_model, security_tier)`` of a JSON-object ``body``; a
    :class:`Refused` request and a body that is no JSON object get their 400 reply."""
    request = json_object(body)
    if isinstance(request, ErrorReply):
        return request
    try:
        return translate(request, default_model, security_tier)
    except Refused as exc:
        return error_reply(400, exc.message, param=exc.param)


def object_answer(
    value: dict[str, Any],
    stream: bool,
    events: Callable[[dict[str, Any]], Iterable[dict[str, Any]]],
) -> tuple[bytearray, str]:
    """``value`` as a JSON reply, or (``stream``) its ``events`` as server-sent events."""
    if not stream:
        return reply_body(value), JSON
    return sse_stream((event["type"], event) for event in events(value)), EVENT_STREAM


def parse_chat_body(
    body: bytes,
    *,
    default_model: str | None = None,
    security_tier: str | None = None,
) -> ChatCall | ErrorReply:
    """Check a request body as OpenAI's API would and turn it into a :class:`ChatCall`.

    Args:
        body: the raw JSON body.
        default_model: the model when the body names none (None: ``model`` is required).
        security_tier: the tier when the body has none (e.g. an ``X-Security-Tier`` header).
    """
    value = json_object(body)
    if isinstance(value, ErrorReply):
        return value
    for name in REFUSED_FIELDS:
        if name in value:
            return error_reply(400, f"'{name}' is not accepted in a relayed request", param=name)
    model = value.pop("model", None) or default_model
    if not isinstance(model, str) or not model:
        return error_reply(400, "'model' must be a non-empty string", param="model")
    messages = value.pop("messages", None)
    if not isinstance(messages, list) or not messages:
        return error_reply(400, "'messages' must be a non-empty list", param="messages")
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return error_reply(
                400,
                f"messages[{number}] must be an object with a 'role'",
                param=f"messages.[{number}]",
            )
    stream = value.pop("stream", None)
    if stream not in (None, True, False):
        return error_reply(400, "'stream' must be a boolean", param="stream")
    stream_options = value.pop("stream_options", None)
    if stream_options is not None:
        if not stream:
            return error_reply(
                400,
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
            )
        if not isinstance(stream_options, dict):
            return error_reply(400, "'stream_options' must be an object", param="stream_options")
    include_usage = bool(stream_options and stream_options.get("include_usage"))
    tier = value.pop("security_tier", None) or security_tier
    if tier:
        value["security_tier"] = tier
    return ChatCall(model, messages, value, bool(stream), include_usage)


def failure_reply(exc: NomyoError) -> ErrorReply:
    """The reply for an exception of the chat client.

    A router status stays (with ``Retry-After`` and the payload id); an unreachable router is
    502 ``api_connection_error``; a reply that failed the security checks is 502
    ``security_error`` and never retried; a configuration error is 400.
    """
    if isinstance(exc, APIError):
        headers: dict[str, str] = {}
        if exc.payload_id:
            headers["x-request-id"] = exc.payload_id
        if exc.retry_after is not None:
            headers["retry-after"] = f"{exc.retry_after:g}"
        status = exc.status_code if exc.status_code is not None else 502
        kind, param, code = _router_error_fields(exc.error_details)
        return error_reply(status, exc.message, kind, param=param, code=code, headers=headers)
    if isinstance(exc, APIConnectionError):
        return error_reply(
            502, f"cannot reach the NOMYO router: {exc}", "api_connection_error", code="bad_gateway"
        )
    if isinstance(exc, SecureMemoryError):
        # Not the router's fault: this host cannot lock the memory the request needs. The
        # message holds sizes and the fix only.
        return error_reply(
            503, str(exc), "service_unavailable_error", code="secure_memory", headers=_NO_RETRY
        )
    if isinstance(exc, SecurityError):
        return error_reply(
            502,
            f"security check failed: {exc}",
            "security_error",
            code="security_error",
            headers=_NO_RETRY,
        )
    if isinstance(exc, (EnvelopeError, KeyFormatError)):
        return error_reply(
            502,
            f"the router's reply was refused: {exc}",
            "security_error",
            code="invalid_envelope",
            headers=_NO_RETRY,
        )
    if isinstance(exc, ConfigurationError):
        return error_reply(400, str(exc), code="configuration_error", headers=_NO_RETRY)
    return error_reply(502, str(exc), headers=_NO_RETRY)


def _router_error_fields(details: object) -> tuple[str | None, str | None, str | None]:
    """``type``, ``param`` and ``code`` of a router error in OpenAI's shape (strings only)."""
    error = details.get("error") if isinstance(details, dict) else None
    if not isinstance(error, dict):
        return None, None, None
    fields = (error.get("type"), error.get("param"), error.get("code"))
    kind, param, code = (value if isinstance(value, str) else None for value in fields)
    return kind, param, code


def reply_headers(reply: Mapping[str, Any]) -> dict[str, str]:
    """Headers of a successful reply: the payload id as ``x-request-id`` (the SDK's
    ``_request_id``)."""
    metadata = reply.get("_metadata")
    payload_id = metadata.get("payload_id") if isinstance(metadata, Mapping) else None
    return {"x-request-id": payload_id} if isinstance(payload_id, str) else {}


def event_stream(reply: Mapping[str, Any], *, include_usage: bool = False) -> bytearray:
    """The whole server-sent event stream OpenAI would send for ``reply``: ``data: {chunk}``
    events, then ``data: [DONE]`` (see :func:`sse_stream`)."""
    chunks = completion_chunks(reply, include_usage=include_usage)
    return sse_stream(((None, chunk) for chunk in chunks), done=True)


def sse_stream(
    events: Iterable[tuple[str | None, Mapping[str, Any]]], *, done: bool = False
) -> bytearray:
    """Server-sent events: per ``(name, value)`` an ``event: name`` line (when named) and a
    ``data: {value}`` line, a blank line after each; ``done`` ends with ``data: [DONE]``.

    Each value is serialised in native memory (compact JSON, as OpenAI's and Anthropic's) and
    the stream is assembled in one ``bytearray`` of its final size (growing one would leave
    copies in freed memory), which the caller can wipe; the per-event copies are wiped here.
    """
    pieces: list[tuple[bytes | None, bytearray]] = []
    try:
        for name, value in events:
            with dumps(value) as serialised:
                head = _NAME + name.encode("ascii") + b"\n" if name is not None else None
                pieces.append((head, serialised.to_bytearray()))
        size = sum(len(h or b"") + len(_EVENT) + len(p) + len(_EVENT_END) for h, p in pieces)
        stream = bytearray(size + (len(_DONE) if done else 0))
        at = 0
        for head, piece in pieces:
            for part in (head or b"", _EVENT, piece, _EVENT_END):
                stream[at : at + len(part)] = part
                at += len(part)
        if done:
            stream[at:] = _DONE
        return stream
    finally:
        for _, piece in pieces:
            piece[:] = bytes(len(piece))


def reply_body(reply: Mapping[str, Any]) -> bytearray:
    """The reply as compact JSON, serialised in native memory and copied once into a
    ``bytearray`` the caller can wipe."""
    with dumps(reply) as serialised:
        return serialised.to_bytearray()


def openai_error_body(reply: ErrorReply) -> bytes:
    """``reply`` in OpenAI's shape (the chat completions and Responses APIs)."""
    return reply.body


def _chat_answer(call: ChatCall, reply: Mapping[str, Any]) -> tuple[bytearray, str]:
    if call.stream:
        return event_stream(reply, include_usage=call.include_usage), EVENT_STREAM
    return reply_body(reply), JSON


#: The content type of a JSON reply.
JSON = "application/json"


@dataclass(frozen=True)
class Api:
    """One API the front ends serve, answered by one sealed chat completion.

    Attributes:
        name: what the logs call it (``chat``, ``responses``, ``messages``).
        parse: ``(body, *, default_model, security_tier)`` -> the chat call, or the error.
        answer: ``(call, completion)`` -> the reply body (wipeable) and its content type.
        error_body: an error reply in this API's shape.
    """

    name: str
    parse: Callable[..., ChatCall | ErrorReply]
    answer: Callable[[ChatCall, Mapping[str, Any]], tuple[bytearray, str]]
    error_body: Callable[[ErrorReply], bytes] = openai_error_body


#: OpenAI's chat completions, as they are.
CHAT = Api("chat", parse_chat_body, _chat_answer)

_SERVED = "chat completions, responses and Anthropic messages"


def refusal(method: str, path: str) -> ErrorReply:
    """The answer to a route the NOMYO protocol does not encrypt (embeddings, files, ...).

    501 (not 404, which an SDK may take for a wrong model or URL), never retried, and a
    message that says nothing was sent.
    """
    return error_reply(
        501,
        f"{method} {path} is not end-to-end encrypted by the NOMYO protocol, so it is not "
        f"served here (only {_SERVED} are); nothing was sent",
        "not_implemented_error",
        code="not_encrypted",
        headers=NO_RETRY,
    )
