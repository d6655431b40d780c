"""Shared fixtures: hypothesis profiles, the reference client driver, small test keys, and
the chat-client tests' router, key, transport and retry fixtures (see ``chat_support``)."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from chat_support import TRANSPORTS
from hypothesis import HealthCheck, settings

from nomyo import _core, _pipeline
from nomyo.testing import DevRouter, RouterThread

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
DRIVER = TESTS / "reference_driver.py"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))  # `from oracle_server import ...` in every test module

# --- test dependencies a platform cannot have ------------------------------------------------


def _absent_dependencies() -> dict[str, str]:
    """Import names a test module may lack here, with the reason; only these skip, and only
    when they really are absent: any other missing import still fails collection."""
    allowed = {}
    if sys.platform == "win32":
        allowed["uvloop"] = "uvloop does not support Windows"
    # Set by scripts/release-check.sh where the openai SDK stack has no binary wheels.
    sdk_reason = os.environ.get("NOMYO_TESTS_WITHOUT_SDK")
    if sdk_reason:
        allowed["openai"] = allowed["langchain_openai"] = sdk_reason
    return {name: why for name, why in allowed.items() if importlib.util.find_spec(name) is None}


def _module_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


class _SkippedModule(pytest.Module):
    reason = ""

    def collect(self) -> Any:
        raise pytest.skip.Exception(self.reason, allow_module_level=True)


def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> Any:
    absent = _absent_dependencies()
    missing = sorted(_module_imports(module_path) & absent.keys()) if absent else []
    if not missing:
        return None
    module = _SkippedModule.from_parent(parent, path=module_path)
    module.reason = f"needs {', '.join(missing)}: {absent[missing[0]]}"
    return module


# --- hypothesis ------------------------------------------------------------------------------
# Select with HYPOTHESIS_PROFILE=ci (thorough) or dev (fast, the default).
settings.register_profile(
    "ci",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "dev",
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# --- the reference client (PyPI nomyo 0.2.9) ---------------------------------------------------

#: run_reference(*args, env=None) -> (exit code, JSON output of tests/reference_driver.py)
RunReference = Callable[..., tuple[int, dict[str, Any]]]


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """Install the reference client (fails, never skips, if that does not work)."""
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-reference.sh")],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        check=False,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"install-reference.sh failed:\n{proc.stderr}"
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert (path / "nomyo" / "__init__.py").is_file()
    return path


def run_driver(
    ref: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """Run tests/reference_driver.py with the reference on PYTHONPATH; return (code, JSON)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    full_env.update({"PYTHONPATH": str(ref), **(env or {})})
    proc = subprocess.run(
        [sys.executable, str(DRIVER), *args],
        env=full_env,
        capture_output=True,
        check=False,
        text=True,
        timeout=300,
    )
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout={proc.stdout!r} stderr={proc.stderr}"
    return proc.returncode, json.loads(lines[0])


@pytest.fixture(scope="session")
def run_reference(reference_dir: Path) -> RunReference:
    """``run_reference("load-keys", dir, env=...)``: drive the installed reference client."""

    def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        return run_driver(reference_dir, *args, env=env)

    return run


# --- the chat-client tests (test_chat, test_params, test_retry, test_config, test_exports) ----


@pytest.fixture(scope="module")
def client_key() -> _core.PrivateKey:
    """A small client key (2048 bits) for a module's requests."""
    return _core.PrivateKey.generate(2048)


@pytest.fixture(scope="module")
def router() -> Iterator[RouterThread]:
    """A development router over plain HTTP that asks for no API key (a module may override)."""
    with DevRouter(key_bits=2048, api_keys=None).run_in_thread() as handle:
        yield handle


@pytest.fixture
def _clean(router: RouterThread, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No NOMYO_* variable from the environment, and no router fault left from another test."""
    for name in list(os.environ):
        if name.startswith("NOMYO_"):
            monkeypatch.delenv(name)
    router.router.faults.clear()
    yield
    router.router.faults.clear()


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each transport in turn, chosen through NOMYO_TRANSPORT."""
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
