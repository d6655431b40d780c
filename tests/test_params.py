"""``nomyo._params``: the OpenAI parameters of ``create``, listed once, and the per-call
``RequestOptions``; every keyword ``create`` takes reaches the request body or its options,
none is dropped (the second list of parameters once dropped one silently)."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest
from chat_support import HELLO, async_chat, sync_chat

import nomyo
from nomyo import _core
from nomyo._params import (
    NOT_GIVEN,
    OPENAI_PARAMETERS,
    REQUEST_OPTIONS,
    OpenAIParameters,
    RequestArguments,
    RequestOptions,
    split_arguments,
)
from nomyo.testing import Fault, RouterThread

CHATS = [nomyo.SecureChatCompletion, nomyo.SyncSecureChatCompletion]
USER = [{"role": "user", "content": "hello"}]


def keywords(create: Any) -> list[str]:
    """The keyword-only parameters ``create`` shows (``help()``, ``inspect``)."""
    parameters = inspect.signature(create).parameters.values()
    return [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]


def test_the_openai_list_is_the_typed_dict_plus_stream() -> None:
    assert list(OPENAI_PARAMETERS) == sorted([*OpenAIParameters.__annotations__, "stream"])
    assert len(OPENAI_PARAMETERS) == 19


def test_request_arguments_are_the_request_options() -> None:
    """The typed keywords of the options and the options object list the same names."""
    assert list(RequestArguments.__annotations__) == list(REQUEST_OPTIONS)
    assert not set(OPENAI_PARAMETERS) & set(REQUEST_OPTIONS)


@pytest.mark.parametrize("chat", CHATS)
def test_create_shows_every_parameter_once(chat: Any) -> None:
    assert keywords(chat.create) == [*OPENAI_PARAMETERS, *REQUEST_OPTIONS]
    defaults = {f.name: f.default for f in dataclasses.fields(RequestOptions)}
    for name, parameter in inspect.signature(chat.create).parameters.items():
        if name in OPENAI_PARAMETERS:
            assert parameter.default is NOT_GIVEN, name
        elif name in REQUEST_OPTIONS:
            assert parameter.default == defaults[name], name


@pytest.mark.parametrize(
    ("given", "parameters", "options", "other"),
    [
        ({}, {}, RequestOptions(), {}),
        ({"temperature": 0.5, "seed": NOT_GIVEN}, {"temperature": 0.5}, RequestOptions(), {}),
        ({"temperature": None}, {"temperature": None}, RequestOptions(), {}),
        ({"timeout": 3.0, "max_retries": 0}, {}, RequestOptions(timeout=3.0, max_retries=0), {}),
        ({"top_k": 40}, {}, RequestOptions(), {"top_k": 40}),
        (
            {"api_key": "k", "stop": ["\n"], "custom": 1, "extra_body": {"a": 1}},
            {"stop": ["\n"]},
            RequestOptions(api_key="k", extra_body={"a": 1}),
            {"custom": 1},
        ),
    ],
    ids=["nothing", "not-given-left-out", "none-sent", "options", "other", "all-three"],
)
def test_split_arguments(
    given: dict[str, Any], parameters: dict[str, Any], options: RequestOptions, other: Any
) -> None:
    assert split_arguments(given) == (parameters, options, other)


def test_every_parameter_create_shows_reaches_the_body_or_the_options(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    """Walks the signature, not the list: a parameter ``create`` takes but does not route
    would be missing from the router's decrypted body here."""
    with nomyo.SyncSecureChatCompletion(base_url=router.url, allow_http=True) as client:
        client.client._set_key(client_key)
        body_names = [n for n in keywords(client.create) if n not in REQUEST_OPTIONS]
        given = {name: None for name in body_names if name != "stream"}
        client.create("m", USER, stream=False, **given)
        body = router.router.requests[-1].body
        assert body == {"model": "m", "messages": USER, **given, "stream": False}
        option_names = [n for n in keywords(client.create) if n in REQUEST_OPTIONS]
    split = split_arguments({name: f"<{name}>" for name in option_names})
    assert split.parameters == split.other == {}
    for name in option_names:
        assert getattr(split.options, name) == f"<{name}>", name


def test_the_options_of_a_call_reach_the_router(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    with nomyo.SyncSecureChatCompletion(base_url=router.url, allow_http=True) as client:
        client.client._set_key(client_key)
        client.create(
            "m",
            USER,
            api_key="sk-call",
            security_tier="high",
            extra_headers={"X-Trace": "t1"},
            extra_query={"debug": True},
            extra_body={"top_k": 40},
            max_retries=0,
            timeout=30.0,
        )
    recorded = router.router.requests[-1]
    assert recorded.body == {"model": "m", "messages": USER, "top_k": 40}
    assert recorded.headers["authorization"] == "Bearer sk-call"
    assert recorded.headers["x-security-tier"] == "high"
    assert recorded.headers["x-trace"] == "t1"
    assert recorded.query == "debug=true"


TYPED_CALLS = """
import nomyo
from typing_extensions import assert_type

async def calls(a: nomyo.SecureChatCompletion, s: nomyo.SyncSecureChatCompletion) -> None:
    assert_type(await a.chat.completions.create("m", [], stream=True), nomyo.AsyncStream)
    assert_type(await a.chat.completions.create(model="m", messages=[]), nomyo.ChatCompletion)
    assert_type(s.chat.completions.create("m", [], stream=True, timeout=3.0), nomyo.Stream)
    assert_type(s.chat.completions.create("m", [], temperature=0.2), nomyo.ChatCompletion)
    assert_type(s.create("m", [], seed=1, extra_headers={"X-A": "b"}), nomyo.ChatCompletion)
    s.chat.completions.create("m", [], temperature="hot")  # E: no overload
    s.create("m", [], max_retries="two")  # E: arg-type
"""


def test_create_is_typed_on_both_clients(tmp_path: Path) -> None:
    """mypy reads ``stream=True`` as a stream, the rest as a completion, and refuses a
    parameter of the wrong type (on the official SDK's call shape and ``create``)."""
    api = pytest.importorskip("mypy.api")
    source = tmp_path / "calls.py"
    source.write_text(TYPED_CALLS)
    out, _, status = api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(source)]
    )
    errors = [line for line in out.splitlines() if ": error:" in line]
    lines = TYPED_CALLS.splitlines()
    flagged = sorted(int(line.split(":")[1]) for line in errors)
    expected = sorted(i + 1 for i, line in enumerate(lines) if "# E:" in line)
    assert flagged == expected, out
    assert status == 1


@pytest.mark.usefixtures("_clean")
def test_per_call_options_never_reach_the_payload(
    router: RouterThread, client_key: _core.PrivateKey, transport: str
) -> None:
    with sync_chat(router.url, client_key) as client:
        reply = client.create(
            "m",
            HELLO,
            timeout=30,
            max_retries=0,
            extra_headers={"X-Trace-Id": "trace-19", "X-Security-Tier": "high"},
            extra_query={"route": "eu", "tag": ["a", "b"], "fast": True, "skip": None},
            extra_body={"vendor_option": {"k": 1}},
            temperature=0.5,
            my_vendor_parameter="passes through",
        )
    assert reply.choices[0].message.content == "hello"
    recorded = router.router.requests[-1]
    # The decrypted body holds the request, the typed and the unknown parameters, and
    # extra_body; none of the per-call options.
    assert recorded.body == {
        "model": "m",
        "messages": HELLO,
        "temperature": 0.5,
        "my_vendor_parameter": "passes through",
        "vendor_option": {"k": 1},
    }
    assert recorded.headers["x-trace-id"] == "trace-19"
    assert recorded.headers["x-security-tier"] == "high"
    assert recorded.query == "route=eu&tag=a&tag=b&fast=true"


@pytest.mark.usefixtures("_clean")
def test_async_per_call_options_too(router: RouterThread, client_key: _core.PrivateKey) -> None:
    async def go() -> nomyo.ChatCompletion:
        async with async_chat(router.url, client_key, api_key="sk-client") as client:
            return await client.chat.completions.create(
                model="m",
                messages=HELLO,
                timeout=30.0,
                max_retries=1,
                extra_headers={"Authorization": "Bearer sk-per-call"},
                extra_query={"q": "1"},
            )

    assert asyncio.run(go()).choices[0].message.content == "hello"
    recorded = router.router.requests[-1]
    assert recorded.body == {"model": "m", "messages": HELLO}
    assert recorded.headers["authorization"] == "Bearer sk-per-call"
    assert recorded.query == "q=1"


@pytest.mark.usefixtures("_clean")
def test_per_call_max_retries_is_honoured(
    router: RouterThread, client_key: _core.PrivateKey, transport: str, fast_retries: list[float]
) -> None:
    with sync_chat(router.url, client_key, max_retries=2) as client:
        router.router.faults.push(Fault(status=503, times=5))
        before = router.router.secure_requests
        with pytest.raises(nomyo.ServiceUnavailableError):
            client.create("m", HELLO, max_retries=0)
        assert router.router.secure_requests - before == 1, "max_retries=0: one try"
        router.router.faults.clear()
        router.router.faults.push(Fault(status=503, times=1))
        before = router.router.secure_requests
        assert client.create("m", HELLO, max_retries=1).choices[0].message.content == "hello"
        assert router.router.secure_requests - before == 2
        router.router.faults.push(Fault(status=503, times=5))
        before = router.router.secure_requests
        with pytest.raises(nomyo.ServiceUnavailableError):
            client.create("m", HELLO)  # the client's own max_retries=2
        assert router.router.secure_requests - before == 3


@pytest.mark.usefixtures("_clean")
def test_per_call_timeout_is_honoured(
    router: RouterThread, client_key: _core.PrivateKey, transport: str
) -> None:
    router.router.faults.push(Fault(delay=3.0))
    before = router.router.secure_requests
    with (
        sync_chat(router.url, client_key, max_retries=2) as client,
        pytest.raises(nomyo.APITimeoutError) as info,
    ):
        client.create("m", HELLO, timeout=0.3, max_retries=0)
    assert info.value.payload_id is not None
    assert router.router.secure_requests - before == 1


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"max_retries": -1}, nomyo.ConfigurationError, "max_retries"),
        ({"max_retries": "2"}, nomyo.ConfigurationError, "max_retries"),
        ({"extra_headers": {"X-Public-Key": "x"}}, nomyo.ConfigurationError, "may not set"),
        ({"extra_headers": {"X-Payload-ID": "x"}}, nomyo.ConfigurationError, "may not set"),
        ({"extra_headers": {"X-A": 1}}, nomyo.ConfigurationError, "must be a string"),
        ({"extra_headers": {"X-Security-Tier": "ultra"}}, nomyo.ConfigurationError, "tier"),
        ({"extra_body": ["not", "a", "mapping"]}, TypeError, "extra_body"),
    ],
)
@pytest.mark.usefixtures("_clean")
def test_invalid_per_call_options_refused_before_sending(
    router: RouterThread,
    client_key: _core.PrivateKey,
    options: dict[str, Any],
    error: type[Exception],
    match: str,
) -> None:
    before = router.router.secure_requests
    with sync_chat(router.url, client_key) as client, pytest.raises(error, match=match):
        client.create("m", HELLO, **options)
    assert router.router.secure_requests == before


def test_a_call_may_name_its_payload_id(router: RouterThread, client_key: _core.PrivateKey) -> None:
    """``payload_id=`` (a per-call option added in two files: ``_params`` declares it,
    ``_chat`` uses it): the router sees it, the reply carries it; bad ones are refused."""
    with nomyo.SyncSecureChatCompletion(base_url=router.url, allow_http=True) as client:
        client.client._set_key(client_key)
        reply = client.create("m", USER, payload_id="trace-4711")
        assert router.router.requests[-1].payload_id == "trace-4711"
        assert reply._metadata.payload_id == "trace-4711"
        assert client.create("m", USER)._metadata.payload_id != "trace-4711"  # a fresh one
        sent = len(router.router.requests)
        with pytest.raises(nomyo.ConfigurationError, match="payload_id"):
            client.create("m", USER, payload_id="no\nnewlines")
        assert len(router.router.requests) == sent  # refused before sending
