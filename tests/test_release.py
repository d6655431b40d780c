"""The release pipeline's own checks (scripts/release-check.sh, scripts/check_wheel.py) and the
files that keep the wheel test job in step with the tests: tests/requirements.txt must cover
what the tests import, and the workflow must run the same script as `make release-check`."""

from __future__ import annotations

import ast
import itertools
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import nomyo._core

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
SCRIPTS = ROOT / "scripts"
BENCHES = ROOT / "benches"
if not (SCRIPTS / "check_wheel.py").is_file():
    pytest.skip(f"no scripts/check_wheel.py beside tests/ in {ROOT}", allow_module_level=True)
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import check_wheel  # noqa: E402

#: import name -> distribution name, where they differ
DISTRIBUTIONS = {"langchain_openai": "langchain-openai"}
#: the package's own dependencies (pyproject.toml) and theirs that tests import
RUNTIME = {"httpx", "h11", "anyio", "certifi"}
#: CPython's own test module, which tests/test_native.py imports with importorskip
CPYTHON_TEST_MODULES = {"_testcapi"}


def requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0].lower())
    return names


def imports(path: Path, *, top_level_only: bool) -> set[str]:
    """The modules a file imports, and those it runs as ``[..., "-m", "module", ...]``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
        elif isinstance(node, (ast.List, ast.Tuple)):
            values = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            names |= {
                str(module).split(".")[0]
                for flag, module in itertools.pairwise(values)
                if flag == "-m" and isinstance(module, str)
            }
    return names


def test_tests_requirements_cover_every_import_of_the_tests() -> None:
    """Every test module's imports, anywhere in it, and those at the top of each benches/ or
    scripts/ module a test loads (transitively): what the wheel test job must install."""
    local = {p.stem: p for d in (TESTS, BENCHES, SCRIPTS) for p in d.glob("*.py")}
    seen: set[str] = set()
    third_party: dict[str, set[str]] = {}
    queue = [(p, False) for p in TESTS.glob("*.py")]
    while queue:
        path, top_only = queue.pop()
        for name in imports(path, top_level_only=top_only):
            if name in local:
                if name not in seen:
                    seen.add(name)
                    queue.append((local[name], local[name].parent != TESTS))
            elif name not in sys.stdlib_module_names and name != "nomyo":
                third_party.setdefault(name, set()).add(path.name)
    assert {"openai", "uvloop", "trio", "mypy"} <= third_party.keys()  # the scan works
    listed = requirement_names(TESTS / "requirements.txt")
    missing = {
        name: sorted(files)
        for name, files in third_party.items()
        if DISTRIBUTIONS.get(name, name) not in listed | RUNTIME | CPYTHON_TEST_MODULES
    }
    assert not missing, f"add these to tests/requirements.txt (and requirements-dev.txt): {missing}"


def test_requirements_dev_holds_every_test_requirement() -> None:
    tests_only = requirement_names(TESTS / "requirements.txt")
    dev = requirement_names(ROOT / "requirements-dev.txt")
    assert "pytest-timeout" in tests_only  # tests use its marker, pytest --strict-markers
    assert tests_only <= dev, sorted(tests_only - dev)


def test_constraints_keep_the_sdk_current() -> None:
    constraints = (TESTS / "constraints.txt").read_text()
    assert re.search(r"^pydantic>=2", constraints, flags=re.M)
    assert re.search(r"^openai>=1\.5\d", constraints, flags=re.M)


def test_the_workflow_runs_the_release_check_steps() -> None:
    workflow = ROOT / ".github" / "workflows" / "release.yml"
    if not workflow.is_file():
        pytest.skip(f"no .github/workflows/release.yml in {ROOT}")
    text = workflow.read_text()
    runs = re.findall(r'scripts/release-check\.sh"? ([\w-]+)', text)
    assert sorted(runs) == sorted(
        ["check-dist"] * 3 + ["sdist-install", "stage", "test-staged", "test-staged"]
    ), runs  # every build job, the sdist job, the test job's two runners
    assert "TEST_DEPS" not in text  # the test dependencies live in tests/requirements.txt
    assert "pytest" not in text.replace("test-staged", "")  # only the script runs pytest
    platforms = re.findall(r"\{ libc: (\w+), manylinux: ([\w\"]+), target: (\w+) \}", text)
    assert sorted(platforms) == sorted(
        [
            ("manylinux", '"2014"', "x86_64"),
            ("manylinux", '"2014"', "aarch64"),
            ("musllinux", "musllinux_1_2", "x86_64"),
            ("musllinux", "musllinux_1_2", "aarch64"),
        ]
    )


# --- scripts/check_wheel.py ---------------------------------------------------------------------


def make_wheel(directory: Path, name: str, tags: list[str], library: Path | None = None) -> Path:
    path = directory / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("nomyo/__init__.py", "")
        wheel = "Wheel-Version: 1.0\nRoot-Is-Purelib: false\n" + "".join(
            f"Tag: {tag}\n" for tag in tags
        )
        zf.writestr("nomyo_rs-0.1.0.dist-info/WHEEL", wheel)
        if library is not None:
            zf.write(library, "nomyo/_core.abi3.so")
    return path


@pytest.mark.parametrize(
    ("platform", "python_abi", "accepted"),
    [
        ("macosx_11_0_arm64", "cp310-abi3", True),
        ("win_amd64", "cp314-cp314t", True),
        ("macosx_11_0_arm64", "cp311-cp311", False),  # neither abi3 nor free-threaded
        ("linux_x86_64", "cp310-abi3", False),  # not a manylinux tag: PyPI refuses it
        ("manylinux_2_34_x86_64", "cp310-abi3", False),  # newer than manylinux2014
        ("musllinux_1_1_x86_64", "cp310-abi3", False),  # the release's musl wheels are 1_2
    ],
)
def test_check_wheel_tags(tmp_path: Path, platform: str, python_abi: str, accepted: bool) -> None:
    tag = f"{python_abi}-{platform}"
    report = check_wheel.check_wheel(
        make_wheel(tmp_path, f"nomyo_rs-0.1.0-{tag}.whl", [tag], library=None)
    )
    assert report.tags == [tag]
    assert (not report.problems) == accepted, report.problems


def test_check_wheel_refuses_file_name_tags_that_differ_from_the_metadata(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "nomyo_rs-0.1.0-cp310-abi3-win_amd64.whl", ["cp310-abi3-win32"])
    assert check_wheel.check_wheel(wheel).problems


def readelf_facts(library: Path) -> tuple[tuple[int, int] | None, list[str]]:
    """The highest GLIBC_x.y version and the NEEDED libraries, read by readelf (an oracle
    independent of the objdump parsing under test)."""
    versions = subprocess.run(
        ["readelf", "-V", "--wide", str(library)], capture_output=True, text=True, check=True
    ).stdout
    dynamic = subprocess.run(
        ["readelf", "-d", "--wide", str(library)], capture_output=True, text=True, check=True
    ).stdout
    found = {(int(a), int(b)) for a, b in re.findall(r"GLIBC_(\d+)\.(\d+)", versions)}
    needed = sorted(set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)))
    return (max(found) if found else None), needed


needs_binutils = pytest.mark.skipif(
    sys.platform != "linux" or not (shutil.which("objdump") and shutil.which("readelf")),
    reason="reads Linux ELF files with binutils' objdump and readelf",
)


@needs_binutils
def test_check_wheel_reads_the_installed_extension(tmp_path: Path) -> None:
    """The extension this suite runs on, tagged manylinux2014: a release wheel's passes, a
    plain local build's (glibc 2.3x symbols, libgcc_s) is refused, for the reasons readelf
    sees."""
    library = Path(nomyo._core.__file__)
    tag = f"cp310-abi3-manylinux_2_17_{'x86_64' if sys.maxsize > 2**32 else 'i686'}"
    wheel = make_wheel(tmp_path, f"nomyo_rs-0.1.0-{tag}.whl", [tag], library)
    report = check_wheel.check_wheel(wheel)
    glibc, needed = readelf_facts(library)
    assert (report.glibc, report.needed) == (glibc, needed)
    assert glibc is not None and "libc.so.6" in needed
    too_new = glibc > (2, 17) or any(lib.startswith("libgcc_s") for lib in needed)
    assert bool(report.problems) == too_new, report.problems


@needs_binutils
def test_check_wheel_refuses_libgcc_s_and_new_glibc(tmp_path: Path) -> None:
    candidates = [
        Path(d) / "libstdc++.so.6"
        for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu")
    ]
    library = next((path for path in candidates if path.is_file()), None)
    if library is None:
        pytest.skip("no libstdc++.so.6 here to stand for a library that needs libgcc_s")
    glibc, needed = readelf_facts(library)
    assert "libgcc_s.so.1" in needed and glibc is not None and glibc > (2, 17)
    arch = "x86_64" if "x86_64" in str(library) else "aarch64"
    for tag in (f"cp310-abi3-manylinux_2_17_{arch}", f"cp310-abi3-musllinux_1_2_{arch}"):
        wheel = make_wheel(tmp_path, f"nomyo_rs-0.1.0-{tag}.whl", [tag], library)
        report = check_wheel.check_wheel(wheel)
        assert report.needed == needed and report.glibc == glibc
        assert len(report.problems) == 2, report.problems  # libgcc_s; glibc too new or present
