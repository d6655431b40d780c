"""Locked memory near the payload for any script, and a doctor whose figure is what ``require``
serves: each request runs in a subprocess without CAP_IPC_LOCK under ``ulimit -l 64`` (see
``test_secure_memory.py`` for how), against the development router in this process."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import pytest
from test_secure_memory import SMALL, run_limited

from nomyo.testing import RouterThread

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="memlock limits and capabilities are Linux's"
)

TARGET = 48 << 10  # UTF-8 bytes of text the issue asks `require` to serve under 64 KiB

# One request of exactly `json_size` JSON bytes (or `text_bytes` of `char`) with
# secure_memory="require"; prints the outcome and the memory report as JSON.
CLIENT = r"""
import json, sys
import nomyo
from nomyo import _core
from nomyo._exceptions import SecureMemoryError

url, char, how, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
info = nomyo.get_memory_protection_info()
def payload(text):
    return {"model": "m", "messages": [{"role": "user", "content": text}]}
def json_size(value):
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
if how == "text":
    text = char * (size // len(char.encode()))
else:  # a request of exactly `size` JSON bytes
    text = char * ((size - json_size(payload(""))) // len(char.encode()))
out = {"before": info, "json_size": json_size(payload(text)), "text_bytes": len(text.encode())}
try:
    with nomyo.SyncSecureCompletionClient(url, allow_http=True, secure_memory="require") as c:
        c.key_size = 2048
        reply = c.send_secure_request(payload(text), "scripts")
    out["ok"] = reply["choices"][0]["message"]["content"] == text
except SecureMemoryError as exc:
    out.update(ok=False, needed=exc.needed)
out["after"] = nomyo.get_memory_protection_info()
print(json.dumps(out))
"""

SCRIPTS = [
    pytest.param("x", id="ascii"),
    pytest.param("\u00e9", id="latin1-accent"),
    pytest.param("\u4e2d", id="cjk"),
    pytest.param("\U0001f600", id="emoji"),
]


def limited_request(router: RouterThread, char: str, how: str, size: int) -> dict[str, Any]:
    proc = run_limited([sys.executable, "-c", CLIENT, router.url, char, how, str(size)], SMALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["before"]["has_ipc_lock"] is False
    assert result["before"]["memlock_limit"] == SMALL
    return result


@pytest.mark.parametrize("char", SCRIPTS)
def test_require_serves_48_kib_of_any_script_under_64_kib(router: RouterThread, char: str) -> None:
    sent = router.router.secure_requests
    result = limited_request(router, char, "text", TARGET)
    assert TARGET - 4 < result["text_bytes"] <= TARGET
    assert result["ok"] is True, result  # sealed, sent, echoed back and opened
    assert router.router.secure_requests == sent + 1
    after = result["after"]
    assert after["secret_buffers_not_locked"] == 0 and after["require_refusals"] == 0
    assert after["protection_level"] == "full"


def test_the_doctors_figure_is_what_require_serves(router: RouterThread) -> None:
    figure = limited_request(router, "x", "text", 10)["before"]["largest_lockable_request"]
    assert isinstance(figure, int) and figure > 0
    # At the figure: served (request and its echoed reply).
    at = limited_request(router, "\u4e2d", "json", figure)
    at_ascii = limited_request(router, "x", "json", figure)
    assert at_ascii["json_size"] == figure and figure - 3 < at["json_size"] <= figure
    assert at["ok"] is True and at_ascii["ok"] is True, (at, at_ascii)
    # Above 4/3 of it: refused, so the figure is at least three quarters of what is served.
    above = math.ceil(figure * 4 / 3) + 1
    refused = limited_request(router, "x", "json", above)
    assert refused["ok"] is False and refused["needed"] > 0, refused
    # `nomyo doctor --json` reports the same figure.
    proc = run_limited([sys.executable, "-m", "nomyo", "doctor", "--json"], SMALL)
    report = json.loads(proc.stdout)
    assert report["memory"]["largest_lockable_request"] == figure
    # And where client private keys are: on aws-lc's heap (docs/security.md says why).
    keys = report["client_keys"]
    assert (keys["locked"], keys["dump_excluded"], keys["zeroed_when_freed"]) == (
        False,
        False,
        True,
    )
