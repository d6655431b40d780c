"""Configuration from the environment, and logs that never hold secrets."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from chat_support import HELLO, sync_chat

import nomyo
from nomyo import _config, _core
from nomyo.testing import DevRouter, Fault, RouterThread

API_KEY = "sk-planted-apikey-5b3f1e"
PASSWORD = "planted-password-9d2c7a"
CONTENT = "planted-message-content-4e8a0b"


@pytest.fixture(scope="module")
def router() -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048, api_keys=[API_KEY]).run_in_thread() as handle:
        yield handle


@pytest.fixture(autouse=True)
def _no_nomyo_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("NOMYO_"):
            monkeypatch.delenv(name)


# -- NOMYO_BASE_URL, NOMYO_API_KEY ---------------------------------------------------------------


@pytest.mark.parametrize(
    "cls",
    [
        nomyo.SecureChatCompletion,
        nomyo.SyncSecureChatCompletion,
        nomyo.SecureCompletionClient,
        nomyo.SyncSecureCompletionClient,
    ],
)
def test_base_url_default_env_and_explicit(
    cls: type, monkeypatch: pytest.MonkeyPatch, router: RouterThread
) -> None:
    def url(client: object) -> str:
        inner = getattr(client, "client", client)
        return str(inner.router_url)  # type: ignore[attr-defined]

    assert url(cls()) == "https://api.nomyo.ai"
    monkeypatch.setenv("NOMYO_BASE_URL", "https://router.example/")
    assert url(cls()) == "https://router.example"
    assert url(cls("https://explicit.example")) == "https://explicit.example"
    monkeypatch.setenv("NOMYO_BASE_URL", router.url)
    with pytest.raises(nomyo.SecurityError, match="HTTP"):
        cls()  # the environment gets no exemption from the HTTPS rule


def test_api_key_from_env(router: RouterThread, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOMYO_BASE_URL", router.url)
    monkeypatch.setenv("NOMYO_API_KEY", API_KEY)
    with nomyo.SyncSecureChatCompletion(allow_http=True) as client:
        assert client.api_key == API_KEY
        client.client.key_size = 2048
        reply = client.create("m", [{"role": "user", "content": "env"}])
    assert reply.choices[0].message.content == "env"
    assert router.router.requests[-1].headers["authorization"] == f"Bearer {API_KEY}"
    explicit = nomyo.SecureChatCompletion(allow_http=True, api_key="sk-explicit")
    assert explicit.api_key == "sk-explicit"
    monkeypatch.setenv("NOMYO_API_KEY", "")
    assert nomyo.SecureChatCompletion(allow_http=True).api_key is None


def test_openai_transport_uses_the_environment(
    router: RouterThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOMYO_BASE_URL", router.url)
    monkeypatch.setenv("NOMYO_API_KEY", API_KEY)
    http = nomyo.openai_http_client(allow_http=True)
    http._transport.chat.client.key_size = 2048  # type: ignore[attr-defined]
    with openai.OpenAI(api_key="unused", max_retries=0, http_client=http) as client:
        out = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "env sdk"}]
        )
    assert out.choices[0].message.content == "env sdk"


# -- NOMYO_LOG -----------------------------------------------------------------------------------


def test_configure_logging_levels_and_idempotence(monkeypatch: pytest.MonkeyPatch) -> None:
    logger = logging.getLogger("nomyo")
    saved = (logger.level, list(logger.handlers))
    try:
        monkeypatch.setenv("NOMYO_LOG", "nonsense")
        with pytest.raises(nomyo.ConfigurationError, match="NOMYO_LOG='nonsense'"):
            _config.configure_logging()
        assert not any(isinstance(h, _config._NomyoHandler) for h in logger.handlers)
        monkeypatch.setenv("NOMYO_LOG", "")
        _config.configure_logging()
        assert not any(isinstance(h, _config._NomyoHandler) for h in logger.handlers)
        for name, level in (("debug", 10), ("INFO", 20), ("warning", 30)):
            monkeypatch.setenv("NOMYO_LOG", name)
            _config.configure_logging()
            assert logger.level == level
        assert sum(isinstance(h, _config._NomyoHandler) for h in logger.handlers) == 1
    finally:
        logger.setLevel(saved[0])
        logger.handlers[:] = saved[1]


def exercise(url: str, key_dir: Path) -> None:
    """Requests through the async, the sync and the official-SDK path, plus a failure."""
    kwargs = {"allow_http": True, "api_key": API_KEY, "key_dir": key_dir, "key_password": PASSWORD}
    messages = [{"role": "user", "content": CONTENT}]
    with nomyo.SyncSecureChatCompletion(url, **kwargs) as sync:  # type: ignore[arg-type]
        sync.client.key_size = 2048
        assert sync.create("m", messages).choices[0].message.content == CONTENT

    async def go() -> None:
        async with nomyo.SecureChatCompletion(url, **kwargs) as client:  # type: ignore[arg-type]
            await client.create("m", messages, security_tier="high")
            with pytest.raises(nomyo.AuthenticationError):
                await client.create("m", messages, api_key=API_KEY + "-wrong")

    asyncio.run(go())
    http = nomyo.openai_http_client(url, **kwargs)  # type: ignore[arg-type]
    with openai.OpenAI(api_key="unused", max_retries=0, http_client=http) as client:
        client.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type, misc]


def assert_clean(text: str) -> None:
    for secret in (API_KEY, PASSWORD, CONTENT, "PRIVATE KEY", "BEGIN PUBLIC KEY"):
        assert secret not in text, f"{secret!r} leaked into the log"


def test_debug_log_never_holds_secrets(
    router: RouterThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    exercise(router.url, tmp_path / "keys")
    ours = [
        r
        for r in caplog.records
        if r.name.split(".")[0] in ("nomyo", "httpx", "httpcore", "asyncio")
    ]
    text = "\n".join(f"{r.name} {r.getMessage()}" for r in ours)
    assert_clean(text)
    nomyo_lines = [r.getMessage() for r in ours if r.name.startswith("nomyo")]
    # ... and the debug log is useful: payload id, attempt, sizes, status, timings
    last = router.router.requests[-1].payload_id
    assert last is not None
    assert any(last in line and "HTTP 200" in line and "bytes" in line for line in nomyo_lines)
    assert any("HTTP 401" in line for line in nomyo_lines)
    assert any("ms" in line and "opened" in line for line in nomyo_lines)


def test_nomyo_log_env_writes_stderr_without_secrets(router: RouterThread, tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from test_config import exercise
        exercise({router.url!r}, Path({str(tmp_path / "keys")!r}))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOMYO_")}
    env["NOMYO_LOG"] = "debug"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "nomyo DEBUG request " in proc.stderr
    assert "HTTP 200" in proc.stderr
    assert_clean(proc.stderr + proc.stdout)


@pytest.fixture(scope="module")
def open_router() -> Iterator[RouterThread]:
    """A development router that asks for no API key."""
    with DevRouter(key_bits=2048, api_keys=None).run_in_thread() as handle:
        yield handle


@pytest.fixture
def _clean(open_router: RouterThread, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("NOMYO_"):
            monkeypatch.delenv(name)
    open_router.router.faults.clear()
    yield
    open_router.router.faults.clear()


@pytest.mark.usefixtures("_clean")
@pytest.mark.parametrize("suffix", ["/v1", "/v1/", "/V1"])
def test_base_url_with_v1_is_accepted(
    open_router: RouterThread, client_key: _core.PrivateKey, suffix: str
) -> None:
    with sync_chat(open_router.url + suffix, client_key) as client:
        assert client.client.router_url == open_router.url
        assert client.create("m", HELLO).choices[0].message.content == "hello"
        # a per-call base_url in the same spelling is this client, not another one
        assert client.create("m", HELLO, base_url=open_router.url + suffix).choices
        assert client._other_clients == {}


@pytest.mark.usefixtures("_clean")
def test_base_url_with_v1_from_the_environment(
    open_router: RouterThread, client_key: _core.PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOMYO_BASE_URL", open_router.url + "/v1")
    with nomyo.SyncSecureChatCompletion(allow_http=True) as client:
        client.client._set_key(client_key)
        assert client.create("m", HELLO).choices[0].message.content == "hello"
    assert nomyo.SecureCompletionClient(open_router.url + "/v1/", allow_http=True).router_url == (
        open_router.url
    )


@pytest.mark.usefixtures("_clean")
def test_a_wrong_base_url_path_says_what_base_url_should_be(
    open_router: RouterThread, client_key: _core.PrivateKey, transport: str
) -> None:
    with (
        sync_chat(open_router.url + "/api", client_key) as client,
        pytest.raises(nomyo.APIError) as info,
    ):
        client.create("m", HELLO)
    assert info.value.status_code == 404
    message = str(info.value)
    assert f"{open_router.url}/api/pki/public_key" in message
    assert "base_url must be the router's root URL" in message


@pytest.mark.usefixtures("_clean")
def test_one_base_url_resolver_and_loopback_check() -> None:
    from nomyo import _config

    assert _config.normalise_base_url("https://h.example/v1/") == "https://h.example"
    assert _config.normalise_base_url("https://h.example/nomyo/v1") == "https://h.example/nomyo"
    assert _config.normalise_base_url("https://h.example/v10") == "https://h.example/v10"
    for host in ("localhost", "a.localhost", "127.0.0.2", "::1", "[::1]"):
        assert _config.is_loopback_host(host), host
    for host in ("example.com", "10.0.0.1", "localhost.example"):
        assert not _config.is_loopback_host(host), host


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


@pytest.mark.usefixtures("_clean")
def test_silent_in_an_application_without_logging(tmp_path: Path) -> None:
    proc = run_program(_QUIET_PROGRAM, str(tmp_path / "keys"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "quiet\n"
    assert proc.stderr == "", "nothing reaches stderr through Python's last-resort handler"


@pytest.mark.usefixtures("_clean")
def test_nomyo_log_turns_output_on(tmp_path: Path) -> None:
    proc = run_program(_QUIET_PROGRAM, str(tmp_path / "keys"), env={"NOMYO_LOG": "info"})
    assert proc.returncode == 0, proc.stderr
    assert "nomyo INFO request " in proc.stderr and "retry 1/2" in proc.stderr, proc.stderr
    assert "saved without a password" in proc.stderr, proc.stderr  # a warning, shown at info


@pytest.mark.usefixtures("_clean")
def test_retries_are_logged_at_info(
    open_router: RouterThread,
    client_key: _core.PrivateKey,
    fast_retries: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="nomyo")
    open_router.router.faults.push(Fault(status=429, times=1))
    with sync_chat(open_router.url, client_key) as client:
        client.create("m", HELLO)
    retries = [r for r in caplog.records if "retry 1/2" in r.getMessage()]
    assert [r.levelno for r in retries] == [logging.INFO]


@pytest.mark.usefixtures("_clean")
def test_unknown_nomyo_log_is_refused() -> None:
    proc = run_program("import nomyo", env={"NOMYO_LOG": "verbose"})
    assert proc.returncode != 0
    assert "ConfigurationError" in proc.stderr
    assert "NOMYO_LOG='verbose'" in proc.stderr and "debug, info, warning, error" in proc.stderr
    assert run_program("import nomyo", env={"NOMYO_LOG": "WARNING"}).returncode == 0
    with pytest.raises(nomyo.ConfigurationError, match="'loud'"):
        nomyo.configure_logging("loud")


def test_credentials_in_base_url_are_refused() -> None:
    with pytest.raises(nomyo.ConfigurationError, match="credentials") as info:
        nomyo.SecureChatCompletion(base_url="https://user:hunter2@router.example")
    assert "hunter2" not in str(info.value)


def test_receipts_pcrs_and_rotation_are_client_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``receipts``, ``known_pcrs``/``expected_pcrs="tofu"`` and ``key_rotation_interval``
    are checked once, by ``ClientOptions``, and survive a per-call router."""
    monkeypatch.delenv("NOMYO_RECEIPTS", raising=False)
    monkeypatch.delenv("NOMYO_KEY_ROTATION", raising=False)
    refused: list[dict[str, Any]] = [
        {"expected_pcrs": "tofu"},  # tofu needs attestation
        {"known_pcrs": tmp_path / "pcrs", "attestation": "off"},
        {"known_pcrs": tmp_path / "pcrs", "attestation": "require", "expected_pcrs": {}},
        {"receipts": True},  # True needs $NOMYO_RECEIPTS
        {"receipts": ""},
        {"key_rotation_interval": 0},
        {"key_rotation_interval": float("inf")},
        {"key_rotation_interval": True},
    ]
    for given in refused:
        with pytest.raises(nomyo.ConfigurationError):
            _config.ClientOptions(**given)
    monkeypatch.setenv("NOMYO_KEY_ROTATION", "soon")
    with pytest.raises(nomyo.ConfigurationError):
        _config.ClientOptions()
    monkeypatch.setenv("NOMYO_KEY_ROTATION", "never")
    assert _config.ClientOptions().rotation_interval is None

    receipts, pcrs = tmp_path / "receipts.jsonl", tmp_path / "pcrs"
    options = _config.ClientOptions(
        "https://a.example",
        attestation="require",
        expected_pcrs="tofu",
        known_pcrs=pcrs,
        receipts=receipts,
        key_rotation_interval=60,
    )
    other = options.for_router("https://b.example")
    for each in (options, other):
        assert each.pcr_policy is None  # remembered, not fixed
        assert each.remembered_pcrs is not None and each.remembered_pcrs.path == pcrs
        assert each.receipt_writer is not None and each.receipt_writer.path == receipts
        assert each.rotation_interval == 60.0
    client = nomyo.SyncSecureCompletionClient.from_options(other)
    try:
        assert client.router_url == "https://b.example"
        assert client._known_pcrs is other.remembered_pcrs
        assert client._receipts is other.receipt_writer
        assert client.key_rotation_interval == 60.0
        assert client.expected_pcrs is None
    finally:
        client.close()

    fixed = {"sha256": {0: "00" * 32}}
    pinned = _config.ClientOptions(attestation="require", expected_pcrs=fixed, receipts=False)
    assert pinned.pcr_policy == fixed and pinned.remembered_pcrs is None
    assert pinned.receipt_writer is None
    monkeypatch.setenv("NOMYO_RECEIPTS", str(receipts))
    assert _config.ClientOptions(receipts=True).receipt_writer is not None
    assert _config.ClientOptions().receipt_writer is not None  # None: the environment's
