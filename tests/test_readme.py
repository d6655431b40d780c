"""Every usage example in README.md runs as written (against a local HTTPS dev router), and so
does its "Try it locally" path."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nomyo.testing import DevRouter, RouterThread, make_test_certificates

REPO = Path(__file__).resolve().parents[1]
if not (REPO / "README.md").is_file():
    pytest.skip(f"no README.md beside tests/ in {REPO}", allow_module_level=True)
README = (REPO / "README.md").read_text()


def blocks(lang: str, text: str = README) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, flags=re.S | re.M)
    assert match is not None, title
    return match.group(1)


@pytest.fixture(scope="module")
def https_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RouterThread, str]]:
    certs = make_test_certificates(tmp_path_factory.mktemp("certs"))
    router = DevRouter(key_bits=2048, tls_cert=certs.cert, tls_key=certs.key)
    with router.run_in_thread() as handle:
        yield handle, certs.ca_cert


def clean_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NOMYO_") and k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")
    }


def env_for(url: str, ca: str) -> dict[str, str]:
    return {**clean_env(), "NOMYO_BASE_URL": url, "SSL_CERT_FILE": ca}


def test_readme_has_the_two_commands() -> None:
    bash = blocks("bash")
    assert bash[:2] == ["make demo\n", "make test\n"]


def test_readme_is_for_users_and_short() -> None:
    assert len(README.splitlines()) <= 300
    assert blocks("sh")[0] == "pip install nomyo-rs\n"  # the first command a user sees
    for page in ("docs/migration.md", "docs/security.md", "docs/benchmarks.md", "RELEASING.md"):
        assert f"]({page}" in README, page
        assert (REPO / page).is_file(), page
    assert "![latency vs payload size](docs/latency_vs_size.png)" in README


def test_readme_platform_table_matches_the_release_workflow() -> None:
    """The wheels the README promises are the ones the release workflow builds."""
    install = section("Install")
    table = [line for line in install.splitlines() if line.startswith("| Linux")]
    for tag in ("manylinux_2_17", "musllinux_1_2"):
        row = next(line for line in table if tag in line)
        assert "x86_64" in row and "aarch64" in row and "3.10+" in row and "3.14t" in row
    workflow = REPO / ".github" / "workflows" / "release.yml"
    if not workflow.is_file():
        pytest.skip(f"no .github/workflows/release.yml in {REPO}")
    text = workflow.read_text()
    built = set(re.findall(r"\{ libc: (\w+), manylinux: ([\w\"]+), target: (\w+) \}", text))
    names = {'"2014"': "manylinux_2_17", "musllinux_1_2": "musllinux_1_2"}
    assert {(names[m], t) for _, m, t in built} == {
        (tag, arch) for tag in ("manylinux_2_17", "musllinux_1_2") for arch in ("x86_64", "aarch64")
    }
    assert 'python: ["3.10", "3.14", "3.14t"]' in text  # the abi3 wheel's oldest, newest, 3.14t


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_examples(
    index: int, https_router: tuple[RouterThread, str], tmp_path: Path
) -> None:
    handle, ca = https_router
    code = blocks("python")[index]
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
    if "capital of France" in code:
        assert proc.stdout.splitlines() == ["What is the capital of France?", "True"]
        assert handle.router.secure_requests == before + 1
    if "SyncSecureChatCompletion" in code:
        assert proc.stdout.splitlines() == ["ping"]
    if "openai_http_client" in code:
        assert proc.stdout.splitlines() == ["pong"]
    if "attestation=" in code:
        assert proc.stdout.splitlines() == ["not_available"]
    if "generate_keys" in code:
        assert "<PrivateKey rsa-4096 sha256:" in proc.stdout


def commands() -> list[str]:
    return [
        line.removeprefix("$ ").strip()
        for block in blocks("console")
        for line in block.splitlines()
        if line.startswith("$ ")
    ]


def run_cli(line: str, url: str, ca: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    stdin = None
    if "|" in line:
        producer, line = (part.strip() for part in line.split("|", 1))
        stdin = " ".join(shlex.split(producer)[1:]) + "\n"
    argv = shlex.split(line)
    assert argv[0] == "nomyo"
    env = env_for(url, ca)
    # As in the README's shell, with .venv/bin/activate: `python` is the venv's.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return subprocess.run(
        [sys.executable, "-m", "nomyo", *argv[1:]],
        input=stdin,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def wait_for(url: str, timeout: float = 20.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return httpx.get(url, timeout=2.0)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def run_server(line: str, url: str, ca: str, cwd: Path, probe: str) -> httpx.Response:
    argv = shlex.split(line)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nomyo", *argv[1:]],
        env=env_for(url, ca),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        return wait_for(probe)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_console_examples(https_router: tuple[RouterThread, str], tmp_path: Path) -> None:
    handle, ca = https_router
    seen = set()
    for line in commands():
        sub = shlex.split(line.split("|")[-1])[1]
        if line.startswith("nomyo serve-dev"):
            port = re.search(r"--port (\d+)", line)
            assert port is not None
            response = run_server(
                line, handle.url, ca, tmp_path, f"http://127.0.0.1:{port[1]}/pki/public_key"
            )
            assert "BEGIN PUBLIC KEY" in response.text
        elif line.startswith("nomyo proxy"):
            listen = re.search(r"--listen ([\d.]+:\d+)", line)
            assert listen is not None
            response = run_server(line, handle.url, ca, tmp_path, f"http://{listen[1]}/healthz")
            assert response.status_code == 200
        else:
            proc = run_cli(line, handle.url, ca, tmp_path)
            assert proc.returncode == 0, (line, proc.stderr)
            if "chat" in line:
                assert "hello" in proc.stdout
            if "keys trust" in line:
                assert handle.router.public_key.fingerprint() in proc.stdout
            if line.startswith("nomyo run"):
                assert proc.stdout.strip() == "Qwen/Qwen3-0.6B"
            if "server-fingerprint" in line:
                assert proc.stdout.strip() == handle.router.public_key.fingerprint()
        seen.add(sub)
    assert seen == {"chat", "keys", "serve-dev", "proxy", "run"}


def test_try_it_locally_works_as_written(tmp_path: Path) -> None:
    """The README's local path, run literally in two shells with a fresh home directory."""
    if not (REPO / ".venv" / "bin" / "activate").is_file():
        pytest.skip("no .venv/ in the checkout (made by `make demo`)")
    server_block, client_block = blocks("bash", section("Try it locally"))
    assert "nomyo serve-dev --tls" in server_block
    home = tmp_path / "home"
    home.mkdir()
    env = {**clean_env(), "HOME": str(home)}
    env.pop("XDG_CONFIG_HOME", None)
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(REPO / ".venv"))
    )
    shell = subprocess.Popen(
        ["bash", "-c", server_block],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert shell.stdout is not None
        printed = []
        for line in shell.stdout:
            if line.startswith("export "):
                printed.append(line.rstrip("\n"))
            if len(printed) == 2:
                break
        # the two lines it prints are the README's (with $HOME as this home directory)
        readme_exports = [
            line.replace("$HOME", str(home))
            for line in client_block.splitlines()
            if line.startswith("export ")
        ]
        assert printed == readme_exports, shell.stderr.read() if shell.stderr else ""

        second = subprocess.run(
            ["bash", "-e", "-c", client_block],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert second.returncode == 0, second.stderr
        assert second.stdout == "Hello over local HTTPS\n"
        assert "https://127.0.0.1:12434" in second.stderr  # the summary line names the router

        # "every example below runs unchanged: save one as example.py, python example.py"
        (tmp_path / "example.py").write_text(blocks("python")[0])
        example = subprocess.run(
            ["bash", "-e", "-c", f"{client_block}\npython {tmp_path / 'example.py'}\n"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert example.returncode == 0, example.stderr
        assert example.stdout.splitlines()[-2:] == ["What is the capital of France?", "True"]
    finally:
        os.killpg(shell.pid, signal.SIGINT)  # Ctrl-C in the first shell
        _, stderr = shell.communicate(timeout=30)
    assert shell.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert (home / ".config" / "nomyo" / "dev-tls" / "ca.pem").is_file()
