"""``nomyo proxy`` (``nomyo.cli.proxy``): OpenAI requests and errors, the caller's token, its
access checks and the trust options it shares with ``chat``."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cli_support import API_KEY, NOMYO, Server, assert_openai_error, chat_body, nomyo
from cli_support import auth_router as auth_router
from cli_support import router as router
from cli_support import unused_port as unused_port

from nomyo.testing import DevRouter


@pytest.fixture(scope="module")
def proxy(router: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``nomyo proxy`` in front of the plain-HTTP dev router."""
    log = tmp_path_factory.mktemp("proxy") / "stderr.log"
    server = Server(
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--base-url",
        router.url,
        "--allow-http",
        "--model",
        "test-model",
        log=log,
    )
    yield server
    assert server.stop(signal.SIGINT) == 130, log.read_text()  # Ctrl-C: "130 interrupted"


def test_proxy_answers_openai_requests(proxy: Server) -> None:
    with httpx.Client(base_url=proxy.url, timeout=30) as http:
        reply = http.post("/v1/chat/completions", json=chat_body("hello proxy"))
        assert reply.status_code == 200, reply.text
        completion = reply.json()
        assert completion["object"] == "chat.completion"
        assert completion["model"] == "test-model"
        assert completion["choices"][0]["message"]["content"] == "hello proxy"
        assert completion["_metadata"]["is_encrypted"] is True

        models = http.get("/v1/models")
        assert models.status_code == 200
        assert models.json() == {
            "object": "list",
            "data": [{"id": "test-model", "object": "model", "created": 0, "owned_by": "nomyo"}],
        }
        health = http.get("/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"

        no_model = http.post("/v1/chat/completions", json={"messages": chat_body()["messages"]})
        assert no_model.status_code == 200
        assert no_model.json()["model"] == "test-model"


def test_proxy_errors_have_openai_shape(proxy: Server) -> None:
    with httpx.Client(base_url=proxy.url, timeout=30) as http:
        options = http.post(
            "/v1/chat/completions", json=chat_body(stream_options={"include_usage": True})
        )
        assert_openai_error(options, 400, "invalid_request_error")
        assert options.json()["error"]["param"] == "stream_options"
        empty = http.post("/v1/chat/completions", json={"model": "m", "messages": []})
        assert_openai_error(empty, 400)
        assert empty.json()["error"]["param"] == "messages"
        assert_openai_error(http.get("/v1/models/other-model"), 404)
        assert http.get("/v1/models/test-model").json()["id"] == "test-model"
        assert_openai_error(http.post("/v1/chat/completions", content=b"{nope"), 400)
        assert_openai_error(http.post("/v1/chat/completions", json={"model": "m"}), 400)
        redirect = http.post("/v1/chat/completions", json=chat_body(base_url="http://evil"))
        assert_openai_error(redirect, 400)
        assert_openai_error(http.get("/v1/chat/completions"), 405)
        assert_openai_error(http.get("/v2/unknown"), 404)
        browser = http.post(
            "/v1/chat/completions", json=chat_body(), headers={"Origin": "https://evil.example"}
        )
        assert_openai_error(browser, 403)
        rebinding = http.get("/v1/models", headers={"Host": "evil.example"})
        assert_openai_error(rebinding, 403)


def test_proxy_with_the_openai_package(proxy: Server) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0)
    try:
        completion = client.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "hi from openai"}]
        )
        assert completion.choices[0].message.content == "hi from openai"
        assert [m.id for m in client.models.list()] == ["test-model"]
        stream = client.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "streamed"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "streamed"
    finally:
        client.close()


def test_proxy_forwards_the_callers_bearer_token_only_when_asked(
    auth_router: Server, tmp_path: Path
) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    by_default = Server(
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--base-url",
        auth_router.url,
        "--allow-http",
        log=tmp_path / "default.log",
    )
    try:
        # A tool's own key (OPENAI_API_KEY) stays local unless --forward-api-key is given.
        kept = httpx.post(
            by_default.url + "/v1/chat/completions", json=chat_body(), headers=auth, timeout=30
        )
        assert_openai_error(kept, 401, "authentication_error")
    finally:
        assert by_default.stop() == 0
    server = Server(
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--base-url",
        auth_router.url,
        "--allow-http",
        "--forward-api-key",
        log=tmp_path / "proxy.log",
    )
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            missing = http.post("/v1/chat/completions", json=chat_body())
            assert_openai_error(missing, 401, "authentication_error")
            good = http.post("/v1/chat/completions", json=chat_body("authed"), headers=auth)
            assert good.status_code == 200, good.text
            assert good.json()["choices"][0]["message"]["content"] == "authed"
    finally:
        assert server.stop() == 0
    assert API_KEY not in (tmp_path / "proxy.log").read_text()
    help_text = nomyo("proxy", "--help").stdout
    assert "--forward-api-key" in help_text and "--auth-token" in help_text


def test_proxy_auth_token(router: Server, tmp_path: Path) -> None:
    token = "s3cret-proxy-token"
    server = Server(
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--base-url",
        router.url,
        "--allow-http",
        "--auth-token",
        token,
        "-v",
        log=tmp_path / "proxy.log",
    )
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            missing = http.post("/v1/chat/completions", json=chat_body())
            assert_openai_error(missing, 401, "authentication_error")
            wrong = http.post(
                "/v1/chat/completions", json=chat_body(), headers={"Authorization": "Bearer x"}
            )
            assert_openai_error(wrong, 401, "authentication_error")
            assert_openai_error(http.get("/v1/models"), 401)
            auth = {"Authorization": f"Bearer {token}"}
            good = http.post("/v1/chat/completions", json=chat_body("with token"), headers=auth)
            assert good.status_code == 200, good.text
            assert good.json()["choices"][0]["message"]["content"] == "with token"
    finally:
        assert server.stop() == 0
    assert token not in (tmp_path / "proxy.log").read_text()
    assert token not in router.log.read_text()
    empty = nomyo("proxy", "--listen", "127.0.0.1:0", "--auth-token", "")
    assert empty.returncode == 2


def test_proxy_reports_an_unreachable_router_as_502(unused_port: int, tmp_path: Path) -> None:
    server = Server(
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--base-url",
        f"http://127.0.0.1:{unused_port}",
        "--allow-http",
        log=tmp_path / "proxy.log",
    )
    try:
        reply = httpx.post(server.url + "/v1/chat/completions", json=chat_body(), timeout=60)
        assert_openai_error(reply, 502, "api_connection_error")
    finally:
        assert server.stop() == 0


def test_proxy_refuses_a_non_loopback_listen_address() -> None:
    result = nomyo("proxy", "--listen", "0.0.0.0:0")
    assert result.returncode == 2
    assert "--allow-remote" in result.stderr
    assert nomyo("proxy", "--listen", "not-a-port").returncode == 2


def test_proxy_refuses_plain_http_without_allow_http(router: Server) -> None:
    result = nomyo("proxy", "--listen", "127.0.0.1:0", "--base-url", router.url)
    assert result.returncode == 4


def test_cli_trust_options_reach_the_proxy_client() -> None:
    """proxy and run share one option set with chat (the lead wires it into the proxy)."""
    from nomyo.cli import build_parser
    from nomyo.cli._args import trust_kwargs as _trust_kwargs

    parser = build_parser()
    fp = "sha256:" + "ab" * 32
    for command in (["chat", "x"], ["proxy"]):
        args = parser.parse_args(
            [*command, "--pin", fp, "--known-hosts", "/tmp/kh", "--trusted-aik", fp,
             "--reply-binding", "require"]
        )  # fmt: skip
        assert _trust_kwargs(args) == {
            "server_key_fingerprint": [fp],
            "known_hosts": "/tmp/kh",
            "attestation": "require",
            "trusted_aik": [fp],
            "expected_pcrs": None,
            "known_pcrs": None,
            "receipts": None,
            "reply_binding": "require",
        }
    args = parser.parse_args(["proxy"])
    assert _trust_kwargs(args) == {
        "server_key_fingerprint": None,
        "known_hosts": None,
        "attestation": "off",
        "trusted_aik": None,
        "expected_pcrs": None,
        "known_pcrs": None,
        "receipts": None,
        "reply_binding": "off",
    }


class Proxy:
    """``nomyo proxy`` as a subprocess on a free loopback port."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "NO_PROXY": "*"}
        env.pop("NOMYO_BASE_URL", None)
        self.proc = subprocess.Popen(
            [*NOMYO, "proxy", "--listen", "127.0.0.1:0", "--allow-http", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "listening on " in line:
                self.url = line.split("listening on ", 1)[1].split()[0]
                break
        else:
            raise AssertionError(f"the proxy exited with {self.proc.wait(10)}")

    def complete(self) -> httpx.Response:
        body = {"model": "m", "messages": [{"role": "user", "content": "through the proxy"}]}
        with httpx.Client(base_url=self.url, timeout=60, trust_env=False) as http:
            return http.post("/v1/chat/completions", json=body)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def test_cli_proxy_applies_the_trust_options() -> None:
    with DevRouter(key_bits=2048, reply_binding=False).run_in_thread() as plain:
        wrong = "sha256:" + "ab" * 32
        cases = [
            (["--pin", plain.router.public_key.fingerprint()], 200),
            (["--pin", wrong], None),
            (["--reply-binding", "require"], None),
            (["--trusted-aik", wrong], None),
        ]
        for options, status in cases:
            proxy = Proxy("--base-url", plain.url, *options)
            try:
                reply = proxy.complete()
            finally:
                proxy.stop()
            if status is None:
                assert reply.status_code >= 400, (options, reply.text)
                assert "error" in reply.json(), (options, reply.text)
            else:
                assert reply.status_code == status, (options, reply.text)
                assert reply.json()["choices"][0]["message"]["content"] == "through the proxy"
