"""The ``nomyo`` command's help and usage errors (``nomyo.cli``'s parser), and its console
script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import nomyo


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["chat"],
        ["proxy"],
        ["serve-dev"],
        ["keys"],
        ["keys", "generate"],
        ["keys", "show"],
        ["keys", "server-fingerprint"],
    ],
)
def test_help_on_every_subcommand(command: list[str]) -> None:
    result = nomyo(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: nomyo")


def test_usage_errors_exit_2() -> None:
    assert nomyo().returncode == 2
    assert nomyo("chat", "--bogus").returncode == 2
    assert nomyo("keys").returncode == 2
    empty = nomyo("chat", "--local", stdin="  \n")
    assert empty.returncode == 2
    assert "prompt is empty" in empty.stderr
    both = nomyo("chat", "--local", "--base-url", "https://example.invalid", "hi")
    assert both.returncode == 2
    assert nomyo("serve-dev", "--tls-cert", "x.pem").returncode == 2


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "nomyo"
    if not script.exists():
        pytest.skip("the nomyo console script is not installed next to this python")
    result = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, check=False, timeout=30
    )
    assert result.returncode == 0
    assert result.stdout.startswith("nomyo-rs ")
