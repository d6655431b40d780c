"""The development router's backends (``nomyo.testing._backend``) over real sockets: its
public key, the echo (completions, content parts, tool calls) and forwarding to an upstream
server."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import httpx
import pytest
from router_support import (
    KEY_PATH,
    PAYLOAD,
    SECURE_PATH,
    detail,
    open_reply,
    post_sealed,
    secure_headers,
    serve,
)
from router_support import server_key as server_key

from nomyo import _core
from nomyo.testing import DevRouter


def test_public_key_endpoint(server_key: _core.PrivateKey) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        response = await http.get(KEY_PATH)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert response.headers["content-length"] == str(len(response.content))
        assert _core.PublicKey.from_pem(response.text) == server_key.public_key()
        assert response.text == router.public_key_pem
        assert router.key_fetches == 1
        assert router.secure_requests == 0

    serve(scenario, server_key)


def test_echo_round_trip(server_key: _core.PrivateKey, client_key: _core.PrivateKey) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        headers = secure_headers(client_key)
        body = _core.seal_json(PAYLOAD, router.public_key)
        response = await http.post(SECURE_PATH, content=body, headers=headers)
        assert response.headers["content-type"] == "application/octet-stream"
        reply = open_reply(response, client_key)
        assert reply["object"] == "chat.completion"
        assert reply["id"].startswith("chatcmpl-")
        assert reply["model"] == "test-model"
        assert isinstance(reply["created"], int)
        (choice,) = reply["choices"]
        assert choice["index"] == 0
        assert choice["message"] == {"role": "assistant", "content": "hello secure world"}
        assert choice["finish_reason"] == "stop"
        assert reply["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        meta = reply["_metadata"]
        assert meta["payload_id"] == headers["X-Payload-ID"]
        assert meta["security_tier"] == "standard"
        assert meta["response_status"] == "success"
        # What the platform grants (the counters move with every request of this process).
        granted = ("backend", "platform", "has_memory_locking", "has_dump_exclusion", "page_size")
        info = _core.memory_protection_info()
        assert {k: meta["memory_protection"][k] for k in granted} == {k: info[k] for k in granted}
        assert meta["cuda_device"] == {"available": False}
        assert meta["tpm_attestation"] == {"is_available": False}
        recorded = router.requests[-1]
        assert recorded.body == PAYLOAD
        assert recorded.status == 200
        assert recorded.payload_id == headers["X-Payload-ID"]
        assert recorded.headers["content-type"] == "application/octet-stream"
        assert router.secure_requests == 1

        # Deterministic: the same payload id gives the same completion id.
        again = await http.post(
            SECURE_PATH, content=_core.seal_json(PAYLOAD, router.public_key), headers=headers
        )
        assert open_reply(again, client_key)["id"] == reply["id"]

    serve(scenario, server_key)


def test_echo_content_parts(server_key: _core.PrivateKey, client_key: _core.PrivateKey) -> None:
    payload = {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "part one"}]}],
    }

    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        reply = open_reply(await post_sealed(http, router, client_key, payload), client_key)
        assert reply["choices"][0]["message"]["content"] == "part one"

    serve(scenario, server_key)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city", "days"],
            },
        },
    },
    {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}},
]


def test_echo_tool_calls(server_key: _core.PrivateKey, client_key: _core.PrivateKey) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        payload = {"model": "m", "messages": [{"role": "user", "content": "Paris"}]}
        reply = open_reply(
            await post_sealed(http, router, client_key, {**payload, "tools": TOOLS}), client_key
        )
        choice = reply["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        (call,) = choice["message"]["tool_calls"]
        assert call["type"] == "function"
        assert call["id"].startswith("call_")
        assert call["function"]["name"] == "get_weather"
        assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "days": 0}

        named = {**payload, "tools": TOOLS, "tool_choice": {"function": {"name": "other"}}}
        reply = open_reply(await post_sealed(http, router, client_key, named), client_key)
        call = reply["choices"][0]["message"]["tool_calls"][0]
        assert call["function"] == {"name": "other", "arguments": "{}"}

        none = {**payload, "tools": TOOLS, "tool_choice": "none"}
        reply = open_reply(await post_sealed(http, router, client_key, none), client_key)
        assert reply["choices"][0]["finish_reason"] == "stop"

        # A tool result ends the loop: its content is echoed.
        result = {
            "model": "m",
            "tools": TOOLS,
            "messages": [
                *payload["messages"],
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
            ],
        }
        reply = open_reply(await post_sealed(http, router, client_key, result), client_key)
        assert reply["choices"][0]["message"]["content"] == "sunny"
        assert reply["choices"][0]["finish_reason"] == "stop"

    serve(scenario, server_key)


# -- upstream forwarding ----------------------------------------------------------------------


UPSTREAM_REPLY = {
    "id": "chatcmpl-upstream",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "llama",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "fixed"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Stay quiet."""


class FakeUpstream:
    """A tiny OpenAI-compatible server (a stand-in for llama.cpp) in a thread."""

    def __init__(self) -> None:
        self.received: list[tuple[str, Any]] = []
        self.status = 200
        self.httpd = make_server("127.0.0.1", 0, self.app, handler_class=_QuietHandler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"

    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        self.received.append((environ["PATH_INFO"], json.loads(environ["wsgi.input"].read(length))))
        reply = UPSTREAM_REPLY if self.status == 200 else {"error": "upstream failure"}
        data = json.dumps(reply).encode()
        start_response(
            f"{self.status} X",
            [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
        )
        return [data]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def fake_upstream() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream()
    yield upstream
    upstream.close()


def test_upstream_forwarding(
    server_key: _core.PrivateKey, client_key: _core.PrivateKey, fake_upstream: FakeUpstream
) -> None:
    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        headers = secure_headers(client_key, **{"X-Security-Tier": "high"})
        body = _core.seal_json(PAYLOAD, router.public_key)
        reply = open_reply(await http.post(SECURE_PATH, content=body, headers=headers), client_key)
        assert reply["choices"][0]["message"]["content"] == "fixed"
        assert reply["id"] == "chatcmpl-upstream"
        assert reply["_metadata"]["payload_id"] == headers["X-Payload-ID"]
        assert reply["_metadata"]["security_tier"] == "high"
        assert fake_upstream.received == [("/v1/chat/completions", PAYLOAD)]

        fake_upstream.status = 500
        failed = await post_sealed(http, router, client_key)
        assert failed.status_code == 502
        assert "500" in detail(failed)

    serve(scenario, server_key, upstream=fake_upstream.url)


def test_upstream_unreachable(server_key: _core.PrivateKey, client_key: _core.PrivateKey) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def scenario(router: DevRouter, http: httpx.AsyncClient) -> None:
        response = await post_sealed(http, router, client_key)
        assert response.status_code == 502
        assert "upstream" in detail(response)

    serve(scenario, server_key, upstream=f"http://127.0.0.1:{port}/v1")
