"""Every Python example in docs/*.md runs as written (against a local HTTPS dev router)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nomyo.testing import DevRouter, RouterThread, make_test_certificates

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = ["migration.md", "security.md"]
if not DOCS.is_dir():
    pytest.skip(f"no docs/ beside tests/ in {DOCS.parent}", allow_module_level=True)


def blocks(page: str, lang: str = "python") -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (DOCS / page).read_text(), flags=re.S)


EXAMPLES = [(page, i) for page in PAGES for i in range(len(blocks(page)))]


@pytest.fixture(scope="module")
def https_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RouterThread, str]]:
    certs = make_test_certificates(tmp_path_factory.mktemp("certs"))
    router = DevRouter(key_bits=2048, tls_cert=certs.cert, tls_key=certs.key)
    with router.run_in_thread() as handle:
        yield handle, certs.ca_cert


def env_for(url: str, ca: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NOMYO_", "OPENAI_")) and k not in ("SSL_CERT_DIR",)
    }
    return {**env, "NOMYO_BASE_URL": url, "SSL_CERT_FILE": ca}


def test_pages_exist_and_have_examples() -> None:
    for page in PAGES:
        assert blocks(page), page
    assert blocks("migration.md", "bash")[0].splitlines()[-1] == "pip install nomyo-rs"


@pytest.mark.parametrize(("page", "index"), EXAMPLES, ids=[f"{p}-{i}" for p, i in EXAMPLES])
def test_python_examples(
    page: str, index: int, https_router: tuple[RouterThread, str], tmp_path: Path
) -> None:
    handle, ca = https_router
    code = blocks(page)[index]  # exactly as written: the router comes from $NOMYO_BASE_URL
    before = handle.router.secure_requests
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env_for(handle.url, ca),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    if "create(" in code:
        assert handle.router.secure_requests > before, "the example sent encrypted requests"
    assert "Traceback" not in proc.stderr
