"""``nomyo._relay``, what ``nomyo proxy`` and the SDK transports share: the body checks, the
error replies for each failure of the chat client, the event stream and the reply headers
(table-driven; the event stream is read back with the official SDK's SSE decoder)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

import nomyo
from nomyo._relay import (
    REFUSED_FIELDS,
    ChatCall,
    ErrorReply,
    error_reply,
    event_stream,
    failure_reply,
    parse_chat_body,
    reply_body,
    reply_headers,
)
from nomyo.testing import DevRouter

MESSAGES = [{"role": "user", "content": "hi"}]


def body(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "messages": MESSAGES, **fields}).encode()


@pytest.mark.parametrize(
    ("raw", "param", "words"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"\xff\xfe", None, "not valid JSON"),
        (b"[1, 2]", None, "JSON object"),
        (json.dumps({"messages": MESSAGES}).encode(), "model", "'model'"),
        (body(model=""), "model", "'model'"),
        (body(messages=[]), "messages", "'messages'"),
        (body(messages="hi"), "messages", "'messages'"),
        (body(messages=[{"content": "no role"}]), "messages.[0]", "'role'"),
        (body(stream="yes"), "stream", "'stream'"),
        (body(stream_options={"include_usage": True}), "stream_options", "only allowed"),
        (body(stream=True, stream_options=[1]), "stream_options", "object"),
        *[(body(**{name: "x"}), name, "not accepted") for name in REFUSED_FIELDS],
    ],
)
def test_bad_bodies_are_refused_as_openai_would(raw: bytes, param: str | None, words: str) -> None:
    refused = parse_chat_body(raw)
    assert isinstance(refused, ErrorReply)
    assert (refused.status, refused.type, refused.param) == (400, "invalid_request_error", param)
    assert words in refused.message
    error = json.loads(refused.body)["error"]
    assert error == {"message": refused.message, "type": refused.type, "param": param, "code": None}


@pytest.mark.parametrize(
    ("raw", "defaults", "expected"),
    [
        (body(), {}, ChatCall("m", MESSAGES, {})),
        (
            body(temperature=0.5, top_k=3),
            {},
            ChatCall("m", MESSAGES, {"temperature": 0.5, "top_k": 3}),
        ),
        (
            body(stream=True, stream_options={"include_usage": True}),
            {},
            ChatCall("m", MESSAGES, {}, stream=True, include_usage=True),
        ),
        (
            json.dumps({"messages": MESSAGES}).encode(),
            {"default_model": "d"},
            ChatCall("d", MESSAGES, {}),
        ),
        (body(), {"security_tier": "high"}, ChatCall("m", MESSAGES, {"security_tier": "high"})),
        (
            body(security_tier="maximum"),
            {"security_tier": "high"},
            ChatCall("m", MESSAGES, {"security_tier": "maximum"}),
        ),
    ],
    ids=["plain", "parameters", "stream", "default-model", "header-tier", "body-tier-wins"],
)
def test_good_bodies_become_calls(raw: bytes, defaults: dict[str, Any], expected: ChatCall) -> None:
    assert parse_chat_body(raw, **defaults) == expected


def api_error(status: int, **extra: Any) -> nomyo.APIError:
    return nomyo.APIError("router said no", status, payload_id="p-9", **extra)


@pytest.mark.parametrize(
    ("failure", "status", "kind", "code", "retry"),
    [
        (api_error(429, retry_after=2.0), 429, "rate_limit_error", None, None),
        (api_error(503), 503, "service_unavailable_error", None, None),
        (api_error(404), 404, "not_found_error", None, None),
        (nomyo.APIConnectionError("down"), 502, "api_connection_error", "bad_gateway", None),
        (nomyo.APITimeoutError("slow"), 502, "api_connection_error", "bad_gateway", None),
        (nomyo.SecurityError("bad"), 502, "security_error", "security_error", "false"),
        (nomyo.EnvelopeError("bad"), 502, "security_error", "invalid_envelope", "false"),
        (nomyo.KeyFormatError("bad"), 502, "security_error", "invalid_envelope", "false"),
        (
            nomyo.ConfigurationError("bad"),
            400,
            "invalid_request_error",
            "configuration_error",
            "false",
        ),
    ],
    ids=["429", "503", "404", "unreachable", "timeout", "security", "envelope", "key", "config"],
)
def test_failure_replies(
    failure: nomyo.NomyoError, status: int, kind: str, code: str | None, retry: str | None
) -> None:
    reply = failure_reply(failure)
    assert (reply.status, reply.type, reply.code) == (status, kind, code)
    assert reply.headers.get("x-should-retry") == retry


def test_a_router_status_keeps_its_payload_id_retry_after_and_error_fields() -> None:
    details = {"error": {"type": "tier_error", "param": "security_tier", "code": 7}}
    reply = failure_reply(api_error(429, retry_after=1.5, error_details=details))
    assert reply.headers == {"x-request-id": "p-9", "retry-after": "1.5"}
    assert (reply.type, reply.param, reply.code) == ("tier_error", "security_tier", None)


def test_error_reply_type_follows_the_status() -> None:
    assert error_reply(401, "x").type == "authentication_error"
    assert error_reply(418, "x").type == "api_error"
    assert error_reply(400, "x", "custom").type == "custom"


COMPLETION = {
    "id": "c1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "héllo"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    "_metadata": {"payload_id": "p-1"},
}


@pytest.mark.parametrize("include_usage", [False, True])
def test_event_stream_reads_back_with_the_sdk(include_usage: bool) -> None:
    stream = event_stream(COMPLETION, include_usage=include_usage)
    assert bytes(stream).endswith(b"data: [DONE]\n\n")
    response = httpx.Response(
        200, content=bytes(stream), headers={"content-type": "text/event-stream"}
    )
    decoder = openai._streaming.SSEDecoder()
    events = [e.data for e in decoder.iter_bytes(response.iter_bytes())]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(data) for data in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "héllo"
    assert chunks[-1]["_metadata"] == {"payload_id": "p-1"}
    assert (chunks[-1]["choices"] == []) is include_usage


def test_reply_body_and_headers() -> None:
    assert json.loads(reply_body(COMPLETION)) == COMPLETION
    assert reply_headers(COMPLETION) == {"x-request-id": "p-1"}
    assert reply_headers({"_metadata": {"payload_id": 5}}) == {}
    assert reply_headers({}) == {}


def test_relays_refuse_client_settings_in_the_body() -> None:

    with DevRouter(key_bits=2048).run_in_thread() as handle:
        http = nomyo.openai_http_client(handle.url, allow_http=True)
        for field in ("timeout", "extra_body", "api_key", "base_url"):
            body = {"model": "m", "messages": [{"role": "user", "content": "x"}], field: None}
            response = http.post("https://nomyo.invalid/v1/chat/completions", json=body)
            assert response.status_code == 400, field
            assert response.json()["error"]["param"] == field
        http.close()
        from nomyo._openai import sdk_http

        assert isinstance(http, sdk_http().Client)


def test_every_call_option_but_the_tier_is_refused_in_a_relayed_body() -> None:
    """Derived from the options of a call: an option added later is refused until a relay
    allows it on purpose."""
    from nomyo._params import REQUEST_OPTIONS

    assert set(REFUSED_FIELDS) == set(REQUEST_OPTIONS) - {"security_tier"}
    allowed = parse_chat_body(body(security_tier="high"))
    assert isinstance(allowed, ChatCall) and allowed.options == {"security_tier": "high"}
