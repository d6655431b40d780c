"""Issue 19, the library's rough edges, each as a new user meets it: the public API against
the development router (items 1, 2, 4, 5, 6, 7, 11 and 12)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nomyo
from nomyo import _core, _pipeline, _retry
from nomyo.testing import DevRouter, Fault, RouterThread, make_test_certificates

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
HELLO = [{"role": "user", "content": "hello"}]

#: Both transports: the native one (default) and httpx.
TRANSPORTS = ["native", "httpx"]


@pytest.fixture(scope="module")
def client_key() -> _core.PrivateKey:
    return _core.PrivateKey.generate(2048)


@pytest.fixture(scope="module")
def router() -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048, api_keys=None).run_in_thread() as handle:
        yield handle


@pytest.fixture(autouse=True)
def _clean(router: RouterThread, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("NOMYO_"):
            monkeypatch.delenv(name)
    router.router.faults.clear()
    yield
    router.router.faults.clear()


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("NOMYO_TRANSPORT", request.param)
    return str(request.param)


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Retry after 10 ms instead of the backoff; records the delays asked for."""
    asked: list[float] = []

    def fast(attempt: int, retry_after: float | None = None) -> float:
        asked.append(attempt)
        return 0.01

    monkeypatch.setattr(_pipeline, "retry_delay", fast)
    return asked


def sync_chat(url: str, key: _core.PrivateKey, **kwargs: Any) -> nomyo.SyncSecureChatCompletion:
    client = nomyo.SyncSecureChatCompletion(base_url=url, allow_http=True, **kwargs)
    client.client._set_key(key)
    return client


def async_chat(url: str, key: _core.PrivateKey, **kwargs: Any) -> nomyo.SecureChatCompletion:
    client = nomyo.SecureChatCompletion(base_url=url, allow_http=True, **kwargs)
    client.client._set_key(key)
    return client


# -- 1. messages of the wrong shape are refused, not mangled -------------------------------------


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ("hello", r"messages must be a list of messages .* not a str"),
        (b"hello", r"not a bytes"),
        ({"role": "user", "content": "hi"}, r"not a dict"),
        (["hello"], r"messages\[0\] must be a message mapping .* not a str"),
        ([{"role": "user", "content": "a"}, ("role", "user")], r"messages\[1\] .* not a tuple"),
        (42, r"not a int"),
        (None, r"not a NoneType"),
    ],
)
def test_1_wrong_messages_refused_before_anything_is_encrypted(
    router: RouterThread, client_key: _core.PrivateKey, messages: Any, match: str
) -> None:
    before = (router.router.secure_requests, router.router.key_fetches)
    with sync_chat(router.url, client_key) as client:
        with pytest.raises(TypeError, match=match):
            client.create("m", messages)
        with pytest.raises(TypeError, match=match):
            client.chat.completions.create(model="m", messages=messages)

    async def go() -> None:
        async with async_chat(router.url, client_key) as client:
            with pytest.raises(TypeError, match=match):
                await client.create("m", messages)
            with pytest.raises(TypeError, match=match):
                await client.chat.completions.create(model="m", messages=messages)

    asyncio.run(go())
    # Not even the server key was fetched: nothing was encrypted or sent.
    assert (router.router.secure_requests, router.router.key_fetches) == before


def test_1_any_iterable_of_message_mappings_is_sent_as_a_list(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    from types import MappingProxyType

    with sync_chat(router.url, client_key) as client:
        messages = (m for m in [MappingProxyType({"role": "user", "content": "from a generator"})])
        reply = client.create("m", messages)
    assert reply.choices[0].message.content == "from a generator"
    assert router.router.requests[-1].body["messages"] == [
        {"role": "user", "content": "from a generator"}
    ]


# -- 2. per-call options are honoured, never sent in the payload ---------------------------------


def test_2_per_call_options_never_reach_the_payload(
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


def test_2_async_per_call_options_too(router: RouterThread, client_key: _core.PrivateKey) -> None:
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


def test_2_per_call_max_retries_is_honoured(
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


def test_2_per_call_timeout_is_honoured(
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
def test_2_invalid_per_call_options_refused_before_sending(
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


# -- 4. failures that cannot succeed are not retried ---------------------------------------------


@pytest.fixture(scope="module")
def tls_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterThread]:
    certs = make_test_certificates(tmp_path_factory.mktemp("certs"))
    router = DevRouter(key_bits=2048, tls_cert=certs.cert, tls_key=certs.key)
    with router.run_in_thread() as handle:
        yield handle


def test_4_untrusted_certificate_is_not_retried(
    tls_router: RouterThread,
    client_key: _core.PrivateKey,
    transport: str,
    fast_retries: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="nomyo")
    # No verify=: the system/certifi store does not hold the test CA.
    with nomyo.SyncSecureChatCompletion(tls_router.url, max_retries=2) as client:
        client.client._set_key(client_key)
        with pytest.raises(nomyo.APIConnectionError) as info:
            client.create("m", HELLO)
    assert fast_retries == [], "no retry was scheduled"
    assert not [r for r in caplog.records if "retry" in r.getMessage()]
    text = str(info.value).lower()
    assert "certificate" in text or "verify" in text
    assert _retry.is_certificate_failure(info.value)  # what the CLI's exit code 4 needs
    assert tls_router.router.key_fetches == 0


def test_4_failed_tls_handshake_is_not_retried(
    router: RouterThread, client_key: _core.PrivateKey, transport: str, fast_retries: list[float]
) -> None:
    """https:// to a server that speaks plain HTTP: the handshake cannot succeed."""
    url = router.url.replace("http://", "https://")
    before = router.router.connections
    with nomyo.SyncSecureChatCompletion(url, max_retries=2) as client:
        client.client._set_key(client_key)
        with pytest.raises(nomyo.APIConnectionError) as info:
            client.create("m", HELLO)
    assert router.router.connections - before == 1
    assert fast_retries == []
    assert not _retry.is_certificate_failure(info.value)


def test_4_unresolvable_host_is_not_retried(
    client_key: _core.PrivateKey, transport: str, fast_retries: list[float]
) -> None:
    # RFC 6761: .invalid names never resolve ("no such name"). A machine whose resolver
    # cannot be reached answers EAI_AGAIN instead, which can change, and is retried.
    host = "nomyo-router.invalid"
    try:
        socket.getaddrinfo(host, 443)
    except socket.gaierror as exc:
        transient = exc.errno == socket.EAI_AGAIN
    else:
        pytest.fail(f"{host} resolved")
    with nomyo.SyncSecureChatCompletion(f"https://{host}", max_retries=2) as client:
        client.client._set_key(client_key)
        with pytest.raises(nomyo.APIConnectionError) as info:
            client.create("m", HELLO)
    assert fast_retries == ([0, 1] if transient else []), str(info.value)


def test_4_what_can_change_is_still_retried(
    router: RouterThread, client_key: _core.PrivateKey, transport: str, fast_retries: list[float]
) -> None:
    # A dropped connection, then a refused one (nothing listens on the port any more).
    router.router.faults.push(Fault(drop_connection=True))
    with sync_chat(router.url, client_key, max_retries=1) as client:
        assert client.create("m", HELLO).choices[0].message.content == "hello"
    assert fast_retries == [0]
    spare = DevRouter(key_bits=2048)
    with spare.run_in_thread() as handle:
        url = handle.url
    fast_retries.clear()
    with (
        sync_chat(url, client_key, max_retries=2) as client,
        pytest.raises(nomyo.APIConnectionError),
    ):
        client.create("m", HELLO)
    assert fast_retries == [0, 1], "connection refused is retried"


# -- 5. a base URL ending in /v1 ------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["/v1", "/v1/", "/V1"])
def test_5_base_url_with_v1_is_accepted(
    router: RouterThread, client_key: _core.PrivateKey, suffix: str
) -> None:
    with sync_chat(router.url + suffix, client_key) as client:
        assert client.client.router_url == router.url
        assert client.create("m", HELLO).choices[0].message.content == "hello"
        # a per-call base_url in the same spelling is this client, not another one
        assert client.create("m", HELLO, base_url=router.url + suffix).choices
        assert client._other_clients == {}


def test_5_base_url_with_v1_from_the_environment(
    router: RouterThread, client_key: _core.PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOMYO_BASE_URL", router.url + "/v1")
    with nomyo.SyncSecureChatCompletion(allow_http=True) as client:
        client.client._set_key(client_key)
        assert client.create("m", HELLO).choices[0].message.content == "hello"
    assert nomyo.SecureCompletionClient(router.url + "/v1/", allow_http=True).router_url == (
        router.url
    )


def test_5_a_wrong_base_url_path_says_what_base_url_should_be(
    router: RouterThread, client_key: _core.PrivateKey, transport: str
) -> None:
    with (
        sync_chat(router.url + "/api", client_key) as client,
        pytest.raises(nomyo.APIError) as info,
    ):
        client.create("m", HELLO)
    assert info.value.status_code == 404
    message = str(info.value)
    assert f"{router.url}/api/pki/public_key" in message
    assert "base_url must be the router's root URL" in message


def test_5_one_base_url_resolver_and_loopback_check() -> None:
    from nomyo import _config

    assert _config.normalise_base_url("https://h.example/v1/") == "https://h.example"
    assert _config.normalise_base_url("https://h.example/nomyo/v1") == "https://h.example/nomyo"
    assert _config.normalise_base_url("https://h.example/v10") == "https://h.example/v10"
    for host in ("localhost", "a.localhost", "127.0.0.2", "::1", "[::1]"):
        assert _config.is_loopback_host(host), host
    for host in ("example.com", "10.0.0.1", "localhost.example"):
        assert not _config.is_loopback_host(host), host


# -- 6. no output unless the application asks for it ----------------------------------------------

_QUIET_PROGRAM = """
import sys
from pathlib import Path
import nomyo
from nomyo import _pipeline
from nomyo.testing import DevRouter, Fault

_pipeline.retry_delay = lambda attempt, retry_after=None: 0.01
with DevRouter(key_bits=2048).run_in_thread() as handle:
    handle.router.faults.push(Fault(status=503, times=1))
    key_dir = Path(sys.argv[1])

    async def main():
        async with nomyo.SecureChatCompletion(handle.url, allow_http=True, key_dir=key_dir) as c:
            c.client.key_size = 2048
            reply = await c.create("m", [{"role": "user", "content": "quiet"}])
        print(reply.choices[0].message.content)

    import asyncio
    asyncio.run(main())
    assert handle.router.secure_requests == 2, "the request was retried once"
    assert (key_dir / "private_key.pem").exists(), "saved without a password"
"""


def run_program(code: str, *args: str, env: dict[str, str] | None = None) -> Any:
    base = {k: v for k, v in os.environ.items() if not k.startswith("NOMYO_")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_6_silent_in_an_application_without_logging(tmp_path: Path) -> None:
    proc = run_program(_QUIET_PROGRAM, str(tmp_path / "keys"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "quiet\n"
    assert proc.stderr == "", "nothing reaches stderr through Python's last-resort handler"


def test_6_nomyo_log_turns_output_on(tmp_path: Path) -> None:
    proc = run_program(_QUIET_PROGRAM, str(tmp_path / "keys"), env={"NOMYO_LOG": "info"})
    assert proc.returncode == 0, proc.stderr
    assert "nomyo INFO request " in proc.stderr and "retry 1/2" in proc.stderr, proc.stderr
    assert "saved without a password" in proc.stderr, proc.stderr  # a warning, shown at info


def test_6_retries_are_logged_at_info(
    router: RouterThread,
    client_key: _core.PrivateKey,
    fast_retries: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="nomyo")
    router.router.faults.push(Fault(status=429, times=1))
    with sync_chat(router.url, client_key) as client:
        client.create("m", HELLO)
    retries = [r for r in caplog.records if "retry 1/2" in r.getMessage()]
    assert [r.levelno for r in retries] == [logging.INFO]


def test_6_unknown_nomyo_log_is_refused() -> None:
    proc = run_program("import nomyo", env={"NOMYO_LOG": "verbose"})
    assert proc.returncode != 0
    assert "ConfigurationError" in proc.stderr
    assert "NOMYO_LOG='verbose'" in proc.stderr and "debug, info, warning, error" in proc.stderr
    assert run_program("import nomyo", env={"NOMYO_LOG": "WARNING"}).returncode == 0
    with pytest.raises(nomyo.ConfigurationError, match="'loud'"):
        nomyo.configure_logging("loud")


# -- 7. a request too large is refused before it is encrypted -------------------------------------


def test_7_too_large_refused_before_sealing(
    router: RouterThread, client_key: _core.PrivateKey, transport: str
) -> None:
    before = (router.router.secure_requests, router.router.key_fetches)
    big = [{"role": "user", "content": "x" * 4096}]
    with sync_chat(router.url, client_key, max_request_size=4000) as client:
        with pytest.raises(nomyo.RequestTooLargeError) as info:
            client.create("m", big)
        assert info.value.limit == 4000
        assert info.value.size is not None and info.value.size > 4000
        assert "max_request_size=4000" in str(info.value)
        assert isinstance(info.value, nomyo.InvalidRequestError)
        # the default limit (32 MiB) lets it through
    with sync_chat(router.url, client_key) as client:
        assert client.client.max_request_size == 32 * 1024 * 1024
        assert client.create("m", big).choices[0].message.content == "x" * 4096
    assert router.router.secure_requests - before[0] == 1


def test_7_default_limit_refuses_a_60_mb_prompt_without_sealing(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    huge = [{"role": "user", "content": "y" * (60 * 1000 * 1000)}]
    before = (router.router.secure_requests, router.router.key_fetches)
    with (
        sync_chat(router.url, client_key) as client,
        pytest.raises(nomyo.RequestTooLargeError, match="max_request_size=33554432"),
    ):
        client.create("m", huge)
    assert (router.router.secure_requests, router.router.key_fetches) == before


def test_7_router_413_names_the_limit(
    client_key: _core.PrivateKey, transport: str, fast_retries: list[float]
) -> None:
    # The router takes 64 KiB bodies; the client allows 1 MiB of text.
    with (
        DevRouter(key_bits=2048, max_body=64 * 1024).run_in_thread() as handle,
        sync_chat(handle.url, client_key, max_request_size=1 << 20) as client,
        pytest.raises(nomyo.RequestTooLargeError) as info,
    ):
        client.create("m", [{"role": "user", "content": "z" * 100_000}])
    assert fast_retries == [], "413 is not retried"
    error = info.value
    assert error.status_code == 413
    assert error.limit == 1 << 20
    message = str(error)
    assert "HTTP 413" in message and "exceeds 65536 bytes" in message  # the router's limit
    assert "max_request_size=1048576" in message  # and the client's
    assert error.size is not None and error.size > 100_000
    assert "Unexpected status" not in message


def test_7_invalid_limit_refused() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(nomyo.ConfigurationError, match="max_request_size"):
            nomyo.SecureChatCompletion(max_request_size=bad)  # type: ignore[arg-type]


# -- 11. typed like the SDK under mypy --strict ---------------------------------------------------

_TYPED_PROGRAM = """
from __future__ import annotations

from typing import Literal

import openai
from openai.types.chat import ChatCompletion as SDKCompletion

import nomyo
from nomyo import (
    ChatCompletion,
    ChatCompletionMessage,
    ChatCompletionMessageToolCall,
    Choice,
    CompletionUsage,
    FinishReason,
)


# -- SDK --
def with_the_sdk() -> str | None:
    http = nomyo.openai_http_client("https://router.example", api_key="k")
    client = openai.OpenAI(api_key="unused", http_client=http)
    reply: SDKCompletion = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    return reply.choices[0].message.content


async def with_the_async_sdk() -> str | None:
    http = nomyo.openai_async_http_client("https://router.example")
    client = openai.AsyncOpenAI(api_key="unused", http_client=http)
    reply = await client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    return reply.choices[0].message.content
# -- end SDK --


def with_nomyo() -> list[str]:
    with nomyo.SyncSecureChatCompletion() as client:
        reply: ChatCompletion = client.create(
            "m", [{"role": "user", "content": "hi"}], timeout=5, max_retries=0,
            extra_headers={"X-Trace": "1"}, extra_query={"a": "b"},
        )
    choice: Choice = reply.choices[0]
    reason: FinishReason = choice.finish_reason
    stop: Literal["stop", "length", "tool_calls", "content_filter", "function_call"] = reason
    message: ChatCompletionMessage = choice.message
    calls: list[ChatCompletionMessageToolCall] = list(message.tool_calls or [])
    names = [call.function.name for call in calls]
    kind: Literal["function"] | None = calls[0].type if calls else None
    usage: CompletionUsage | None = reply.usage
    total: int = usage.total_tokens if usage is not None else 0
    dumped: dict[str, object] = reply.model_dump()
    text: str = reply.model_dump_json() + reply.to_json()
    again: ChatCompletion = ChatCompletion.model_validate(dumped)
    return [*names, stop, str(kind), str(total), text, again.id]
"""


def mypy_strict(program: Path) -> subprocess.CompletedProcess[str]:
    """``mypy --strict`` on one file, with no project configuration and no cache."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            os.devnull,
            "--config-file",
            os.devnull,
            str(program),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=program.parent,
    )


def without_sdk(program: str) -> str:
    head, _, rest = program.partition("# -- SDK --")
    return head + rest.partition("# -- end SDK --")[2]


def test_11_user_program_type_checks_under_mypy_strict(tmp_path: Path) -> None:
    program = tmp_path / "user_program.py"
    program.write_text(without_sdk(_TYPED_PROGRAM))
    proc = mypy_strict(program)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # ... and mypy does check it: a wrong type is reported.
    wrong = "\nwrong: int = ChatCompletion({}).choices[0].finish_reason\n"
    program.write_text(without_sdk(_TYPED_PROGRAM) + wrong)
    proc = mypy_strict(program)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert 'expression has type "Literal' in proc.stdout


def test_11_openai_sdk_with_nomyo_http_client_type_checks(tmp_path: Path) -> None:
    program = tmp_path / "sdk_program.py"
    program.write_text(_TYPED_PROGRAM)
    proc = mypy_strict(program)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_11_nested_reply_types_are_exported(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    with sync_chat(router.url, client_key) as client:
        reply = client.create("m", HELLO, tools=tools, tool_choice="required")
    choice = reply.choices[0]
    assert isinstance(choice, nomyo.Choice)
    assert isinstance(choice.message, nomyo.ChatCompletionMessage)
    assert choice.message.tool_calls
    assert isinstance(choice.message.tool_calls[0], nomyo.ChatCompletionMessageToolCall)
    assert isinstance(choice.message.tool_calls[0].function, nomyo.Function)
    assert choice.finish_reason == "tool_calls"
    assert isinstance(reply.usage, nomyo.CompletionUsage)


# -- 12. replies, errors, a closed client ---------------------------------------------------------


def test_12_model_dump_and_json_like_the_sdk(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    import openai.types.chat as sdk

    with sync_chat(router.url, client_key) as client:
        reply = client.create("m", [{"role": "user", "content": "grüße"}])
    dumped = reply.model_dump()
    assert type(dumped) is dict and type(dumped["choices"][0]) is dict
    assert dumped == reply.to_dict()
    compact = reply.model_dump_json()
    assert json.loads(compact) == dumped
    assert compact == json.dumps(dumped, separators=(",", ":"), ensure_ascii=False)
    assert "grüße" in compact
    assert reply.to_json() == json.dumps(dumped, indent=2, ensure_ascii=False)
    assert json.loads(reply.model_dump_json(indent=4)) == dumped
    assert "null" not in reply.model_dump_json(exclude_none=True)
    # the SDK's own model reads what we dump
    parsed = sdk.ChatCompletion.model_validate(dumped)
    assert parsed.choices[0].message.content == "grüße"


def test_12_a_cached_reply_rebuilt_from_plain_data(
    router: RouterThread, client_key: _core.PrivateKey
) -> None:
    with sync_chat(router.url, client_key) as client:
        reply = client.create("m", HELLO)
    cached = json.loads(reply.model_dump_json())
    for rebuilt in (
        nomyo.ChatCompletion(cached),
        nomyo.ChatCompletion(**cached),
        nomyo.ChatCompletion.model_validate(cached),
        pickle.loads(pickle.dumps(nomyo.ChatCompletion(cached))),
    ):
        assert rebuilt == reply
        assert rebuilt.choices[0].message.content == "hello"
        assert isinstance(rebuilt.choices[0], nomyo.Choice)
        assert isinstance(rebuilt.choices, nomyo.ResponseList)
        assert rebuilt.usage is not None and rebuilt.usage.total_tokens > 0
        assert rebuilt._metadata.payload_id == reply._metadata.payload_id
        assert "hello" not in repr(rebuilt), "content stays hidden"
    with pytest.raises(TypeError):
        nomyo.ChatCompletion.model_validate([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault(tamper_reply=True), nomyo.SecurityError),
        (Fault(garbage_reply=b'{"version": "1.0"}'), nomyo.EnvelopeError),
    ],
)
def test_12_security_and_envelope_errors_carry_the_payload_id(
    router: RouterThread,
    client_key: _core.PrivateKey,
    transport: str,
    fault: Fault,
    error: type[Exception],
) -> None:
    router.router.faults.push(fault)
    with sync_chat(router.url, client_key) as client, pytest.raises(error) as info:
        client.create("m", HELLO)
    sent = router.router.requests[-1].payload_id
    assert sent is not None
    assert info.value.payload_id == sent  # type: ignore[attr-defined]
    assert sent not in str(info.value), "the message stays as it was"

    async def go() -> None:
        router.router.faults.push(fault)
        async with async_chat(router.url, client_key) as client:
            with pytest.raises(error) as info:
                await client.create("m", HELLO)
        assert info.value.payload_id == router.router.requests[-1].payload_id  # type: ignore[attr-defined]

    asyncio.run(go())


def test_12_closed_client_raises_a_nomyo_error(
    router: RouterThread, client_key: _core.PrivateKey, transport: str
) -> None:
    client = sync_chat(router.url, client_key)
    client.close()
    with pytest.raises(nomyo.ClientClosedError, match="closed") as info:
        client.create("m", HELLO)
    assert isinstance(info.value, nomyo.NomyoError)
    assert isinstance(info.value, RuntimeError)  # what httpx (and earlier nomyo) raised

    async def go() -> None:
        client = async_chat(router.url, client_key)
        await client.aclose()
        with pytest.raises(nomyo.ClientClosedError):
            await client.create("m", HELLO)

    asyncio.run(go())
