"""The harness of ``compare.py`` and the other benches: paths, logging, the reference
install, the trust store, helper processes (router, proxy) and the worker subprocesses of
either client."""

from __future__ import annotations

import compileall
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from _plan import Plan

__all__ = [
    "BENCHES",
    "CLIENTS",
    "ROOT",
    "WORKER",
    "BenchError",
    "Workers",
    "_package_folder",
    "_parse_result",
    "_readline",
    "helper_process",
    "install_reference",
    "log",
    "make_trust_store",
    "monotonic",
    "precompile",
]

BENCHES = Path(__file__).resolve().parent
ROOT = BENCHES.parent
CLIENTS = ("reference", "ours")
WORKER = {"ours": BENCHES / "_worker_ours.py", "reference": BENCHES / "_worker_reference.py"}


class BenchError(RuntimeError):
    """A worker or helper process failed."""


def log(message: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def monotonic() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


# -- environment ---------------------------------------------------------------------------


def install_reference() -> Path:
    """Run scripts/install-reference.sh (idempotent) and return the reference folder."""
    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-reference.sh")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise BenchError(f"install-reference.sh failed:\n{out.stderr[-2000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def precompile(*folders: Path) -> None:
    """Write the bytecode caches a ``pip install`` writes, so that no cold start compiles.

    The reference comes from pip and has them; ours is an editable build, which has none,
    and machines that set ``PYTHONDONTWRITEBYTECODE`` (as CI images do) never write them,
    so every new worker would compile our modules from source (~50 ms) and the reference's
    not. compileall writes them whatever that variable says.
    """
    for folder in folders:
        if not compileall.compile_dir(folder, quiet=1):
            raise BenchError(f"compileall failed for {folder}")


def _package_folder(name: str) -> Path:
    """Where ``name`` is imported from by this interpreter (the workers' for ours)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise BenchError(f"package {name} not found")
    return Path(next(iter(spec.submodule_search_locations)))


def make_trust_store(directory: Path) -> tuple[str, str, str]:
    """Test certificates, and a CA bundle = certifi's bundle + the test CA."""
    import certifi

    from nomyo.testing import make_test_certificates

    certs = make_test_certificates(directory / "certs")
    bundle = directory / "ca-bundle.pem"
    text = Path(certifi.where()).read_text()
    bundle.write_text(text.rstrip("\n") + "\n" + Path(certs.ca_cert).read_text())
    return str(bundle), certs.cert, certs.key


@contextlib.contextmanager
def helper_process(args: list[str], what: str, timeout: float = 60.0) -> Iterator[dict[str, Any]]:
    """Start a helper that prints one JSON line when ready; stop it on exit.

    The helper's stdin is a pipe we never write to: it exits when the pipe closes, so it
    cannot outlive this process.
    """
    with tempfile.TemporaryFile(mode="w+") as stderr:
        proc = subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=BENCHES,
        )
        try:
            assert proc.stdout is not None
            line = _readline(proc.stdout, timeout)
            if not line:
                stderr.seek(0)
                raise BenchError(f"{what} did not start:\n{stderr.read()[-2000:]}")
            yield json.loads(line)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


def _readline(stream: IO[str], timeout: float) -> str:
    """readline() with a deadline (the helpers print their line within seconds)."""
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return stream.readline()


# -- workers -------------------------------------------------------------------------------


@dataclass
class Workers:
    """Runs worker subprocesses for either client."""

    reference_dir: Path
    bundle: str
    url: str
    key_dirs: dict[str, str]
    plan: Plan
    raw: dict[str, Any] = field(default_factory=dict)

    def env(self, client: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SSL_CERT_DIR")}
        env.pop("SSL_CERT_FILE", None)
        env["PYTHONUNBUFFERED"] = "1"
        if client == "reference":
            env["PYTHONPATH"] = str(self.reference_dir)
            env["SSL_CERT_FILE"] = self.bundle
        return env

    def spec(self, client: str, workload: str, **extra: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "workload": workload,
            "url": self.url,
            "ca_file": self.bundle,
            "key_dir": self.key_dirs.get(client),
        }
        spec.update(extra)
        return spec

    def popen(self, client: str, spec: dict[str, Any], stderr: IO[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(WORKER[client]), json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=BENCHES,
            env=self.env(client),
        )

    def run(self, client: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Run one worker to completion and return its JSON result."""
        with tempfile.TemporaryFile(mode="w+") as stderr:
            proc = self.popen(client, spec, stderr)
            try:
                out, _ = proc.communicate(timeout=self.plan.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise BenchError(f"{client} {spec['workload']} timed out") from None
            stderr.seek(0)
            return _parse_result(client, spec, out, stderr.read(), proc.returncode)


def _parse_result(
    client: str, spec: dict[str, Any], out: str, err: str, code: int | None
) -> dict[str, Any]:
    lines = [line for line in out.splitlines() if line.strip()]
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise BenchError(
            f"{client} {spec['workload']} gave no result (exit {code}):\n{err[-3000:]}"
        ) from None
    if "error" in result or code != 0:
        raise BenchError(
            f"{client} {spec['workload']} failed: {result.get('error')}\n"
            f"{result.get('traceback', '')}\n{err[-2000:]}"
        )
    return result
