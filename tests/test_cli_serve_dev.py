"""``nomyo serve-dev`` (``nomyo.cli.serve_dev``): the reference client against it, a busy port,
and its loopback-only default."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cli_support import API_KEY, RunReference, Server, nomyo
from cli_support import auth_router as auth_router
from cli_support import certs as certs
from cli_support import router as router
from cli_support import tls_router as tls_router

from nomyo.testing import DevCertificates


@pytest.mark.reference
def test_serve_dev_serves_the_reference_client_over_http(
    run_reference: RunReference, router: Server
) -> None:
    code, out = run_reference(
        "chat",
        router.url,
        "--model",
        "ref-model",
        "--message",
        "hello reference",
        "--allow-http",
    )
    assert code == 0, out
    response = out["responses"][0]
    assert response["choices"][0]["message"]["content"] == "hello reference"
    assert response["_metadata"]["payload_id"]


@pytest.mark.reference
def test_serve_dev_serves_the_reference_client_over_https(
    run_reference: RunReference, tls_router: Server, certs: DevCertificates
) -> None:
    code, out = run_reference(
        "chat",
        tls_router.url,
        "--model",
        "ref-model",
        "--message",
        "hello over tls",
        "--ca-file",
        certs.ca_cert,
    )
    assert code == 0, out
    assert out["responses"][0]["choices"][0]["message"]["content"] == "hello over tls"


@pytest.mark.reference
def test_serve_dev_api_key_with_the_reference_client(
    run_reference: RunReference, auth_router: Server
) -> None:
    args = ["chat", auth_router.url, "--model", "m", "--message", "x", "--allow-http"]
    code, out = run_reference(*args, "--max-retries", "0")
    assert code == 3, out
    assert out["status_code"] == 401
    code, out = run_reference(*args, "--api-key", API_KEY)
    assert code == 0, out


def test_serve_dev_reports_a_busy_port(router: Server) -> None:
    port = router.url.rsplit(":", 1)[1]
    result = nomyo("serve-dev", "--port", port, "--key-bits", "2048", timeout=60)
    assert result.returncode == 1
    assert "cannot start the dev router" in result.stderr


def test_serve_dev_refuses_non_loopback_without_flag() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nomyo", "serve-dev", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "--allow-remote" in proc.stderr
