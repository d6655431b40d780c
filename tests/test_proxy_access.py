"""Who may use ``nomyo proxy`` (second security review, findings 3 and 4; issue 24).

3. ``--auth-token VALUE`` is readable by every local user (``ps``, ``/proc/PID/cmdline``):
   it now draws a warning naming ``NOMYO_PROXY_TOKEN``, and ``--auth-token-file PATH`` reads
   the token from a file of one's own that no one else can read (never through a symlink).
4. ``--allow-remote`` needed no token and dropped the Origin check: a cross-site
   ``text/plain`` POST with ``Origin: http://evil.example`` and a rebinding ``Host`` got 200.
   Now ``--allow-remote`` without a token refuses to start (exit 2) unless ``--no-auth``, and
   browser requests stay refused unless ``--allow-origin`` names their origin.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cli_support import Server, assert_openai_error, chat_body, nomyo

from nomyo.testing import DevRouter, RouterThread

TOKEN = "file-token-4711"


@pytest.fixture(scope="module")
def router() -> Iterator[RouterThread]:
    with DevRouter(key_bits=2048).run_in_thread() as handle:
        yield handle


def proxy(router: RouterThread, tmp_path: Path, *args: str) -> Server:
    return Server(
        "proxy", "--listen", "127.0.0.1:0", "--base-url", router.url, "--allow-http", *args,
        log=tmp_path / "proxy.log",
    )  # fmt: skip


def token_file(tmp_path: Path, mode: int = 0o600) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(mode)
    return path


# -- 3. the token ----------------------------------------------------------------------------


def test_a_token_on_the_command_line_draws_a_warning(router: RouterThread, tmp_path: Path) -> None:
    server = proxy(router, tmp_path, "--auth-token", TOKEN)
    try:
        reply = httpx.post(
            server.url + "/v1/chat/completions",
            json=chat_body("with token"),
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
    finally:
        assert server.stop() == 0
    log = (tmp_path / "proxy.log").read_text()
    assert "WARNING" in log and "NOMYO_PROXY_TOKEN" in log and "--auth-token-file" in log
    assert TOKEN not in log


def test_a_token_file_makes_the_proxy_private(router: RouterThread, tmp_path: Path) -> None:
    server = proxy(router, tmp_path, "--auth-token-file", str(token_file(tmp_path)))
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert_openai_error(http.post("/v1/chat/completions", json=chat_body()), 401)
            good = http.post(
                "/v1/chat/completions",
                json=chat_body("from the file"),
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert good.status_code == 200, good.text
    finally:
        assert server.stop() == 0
    log = (tmp_path / "proxy.log").read_text()
    assert "WARNING" not in log and TOKEN not in log


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_a_token_file_others_could_read_or_swap_is_refused(tmp_path: Path) -> None:
    listen = ("proxy", "--listen", "127.0.0.1:0", "--auth-token-file")
    readable = token_file(tmp_path, 0o640)
    done = nomyo(*listen, str(readable))
    assert done.returncode == 2 and "chmod 600" in done.stderr, done.stderr
    readable.chmod(0o600)
    link = tmp_path / "link"
    link.symlink_to(readable)
    done = nomyo(*listen, str(link))
    assert done.returncode == 2 and "symbolic link" in done.stderr, done.stderr
    if os.geteuid() == 0:  # give it to another user
        os.chown(readable, 65534, 65534)
        done = nomyo(*listen, str(readable))
        assert done.returncode == 2 and "another user" in done.stderr, done.stderr
    for bad in ("", "two tokens\n"):
        readable.write_text(bad)
        done = nomyo(*listen, str(readable))
        assert done.returncode == 2, done.stderr
    assert nomyo(*listen, str(tmp_path / "missing")).returncode == 2
    both = nomyo(*listen, str(readable), "--auth-token", "x")
    assert both.returncode == 2 and "not both" in both.stderr
    assert TOKEN not in done.stderr


# -- 4. --allow-remote and browsers ----------------------------------------------------------


def test_allow_remote_without_a_token_refuses_to_start() -> None:
    done = nomyo("proxy", "--listen", "127.0.0.1:0", "--allow-remote")
    assert done.returncode == 2
    assert "--allow-remote without a token" in done.stderr
    assert "NOMYO_PROXY_TOKEN" in done.stderr and "--no-auth" in done.stderr
    conflicting = nomyo("proxy", "--listen", "127.0.0.1:0", "--no-auth", "--auth-token", "x")
    assert conflicting.returncode == 2
    bad_origin = nomyo("proxy", "--listen", "127.0.0.1:0", "--allow-origin", "evil.example")
    assert bad_origin.returncode == 2 and "origin" in bad_origin.stderr


def test_browser_requests_stay_refused_with_allow_remote(
    router: RouterThread, tmp_path: Path
) -> None:
    """The review's request: cross-site text/plain POST, foreign Origin, rebinding Host."""
    server = proxy(router, tmp_path, "--allow-remote", "--no-auth")
    try:
        attack = httpx.post(
            server.url + "/v1/chat/completions",
            content=json.dumps(chat_body("cross-site")),
            headers={
                "Content-Type": "text/plain",
                "Origin": "http://evil.example",
                "Host": "rebound.evil.example:8080",
            },
            timeout=30,
        )
        assert_openai_error(attack, 403, "permission_error")
        assert "access-control-allow-origin" not in attack.headers
        # Without a browser, a remote caller is served (the operator chose --no-auth).
        remote = httpx.post(
            server.url + "/v1/chat/completions",
            json=chat_body("remote"),
            headers={"Host": "proxy.lan:8080"},
            timeout=30,
        )
        assert remote.status_code == 200, remote.text
    finally:
        assert server.stop() == 0


def test_an_allowed_origin_may_call_the_proxy(router: RouterThread, tmp_path: Path) -> None:
    app = "http://app.example:3000"
    server = proxy(
        router, tmp_path, "--auth-token-file", str(token_file(tmp_path)), "--allow-origin", app
    )
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            preflight = http.request(
                "OPTIONS",
                "/v1/chat/completions",
                headers={
                    "Origin": app,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization, content-type",
                },
            )
            assert preflight.status_code == 204, preflight.text
            assert preflight.headers["access-control-allow-origin"] == app
            assert "authorization" in preflight.headers["access-control-allow-headers"]
            auth = {"Authorization": f"Bearer {TOKEN}"}
            good = http.post(
                "/v1/chat/completions",
                json=chat_body("from the app"),
                headers={**auth, "Origin": app},
            )
            assert good.status_code == 200, good.text
            assert good.headers["access-control-allow-origin"] == app
            # The token is still required from the allowed origin, and other origins are not.
            assert_openai_error(
                http.post("/v1/chat/completions", json=chat_body(), headers={"Origin": app}), 401
            )
            evil = http.post(
                "/v1/chat/completions",
                json=chat_body(),
                headers={**auth, "Origin": "http://evil.example"},
            )
            assert_openai_error(evil, 403)
            evil_preflight = http.request(
                "OPTIONS", "/v1/chat/completions", headers={"Origin": "http://evil.example"}
            )
            assert evil_preflight.status_code == 403
    finally:
        assert server.stop() == 0


def test_help_leads_with_the_environment_and_the_file() -> None:
    text = nomyo("proxy", "--help").stdout
    assert text.index("--auth-token-file") < text.index("--auth-token TOKEN")
    for option in ("--no-auth", "--allow-origin", "NOMYO_PROXY_TOKEN"):
        assert option in text
