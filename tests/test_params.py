"""``nomyo._params``: the OpenAI parameters of ``create``, listed once, and the per-call
``RequestOptions``; every keyword ``create`` takes reaches the request body or its options,
none is dropped (the second list of parameters once dropped one silently)."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
from nomyo.testing import DevRouter, RouterThread

CHATS = [nomyo.SecureChatCompletion, nomyo.SyncSecureChatCompletion]
USER = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def client_key() -> _core.PrivateKey:
    return _core.PrivateKey.generate(2048)


@pytest.fixture(scope="module")
def router() -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048, api_keys=None).run_in_thread() as handle:
        yield handle


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
