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

import openai
import pytest

import nomyo
from nomyo import _config
from nomyo.testing import DevRouter, RouterThread

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
