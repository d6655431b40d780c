"""Check release wheels: their tags, and on Linux the glibc symbols and libraries they need.

Usage: python scripts/check_wheel.py WHEEL... (standard library only, plus binutils' objdump
for Linux wheels). Prints one summary line per wheel and exits 1 if any wheel breaks the
release policy:

- the interpreter tags are ``cp310-abi3`` (every CPython 3.10+) or ``cp314-cp314t``
  (free-threaded 3.14, which has no stable ABI);
- the tag in the file name is the tag in the wheel's ``WHEEL`` file;
- a glibc Linux wheel is tagged ``manylinux_2_17`` (manylinux2014) and its extension needs no
  glibc symbol version above 2.17; a musl wheel is ``musllinux_1_2`` and needs no glibc at all;
- a Linux extension links only the C library and its parts (``libgcc_s``, for one, is absent
  from many minimal images, and its presence means the build did not use the manylinux
  toolchain's static runtime).

Used by scripts/release-check.sh, which the release workflow runs on every wheel it builds.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["WheelReport", "check_wheel", "main"]

MAX_GLIBC = (2, 17)
INTERPRETER_TAGS = {("cp310", "abi3"), ("cp314", "cp314t")}
#: The C library and its parts: present on every glibc (or musl) system.
ALLOWED_LIBS = re.compile(
    r"^(libc\.so\.6|libm\.so\.6|libdl\.so\.2|libpthread\.so\.0|librt\.so\.1"
    r"|ld-linux(-x86-64|-aarch64)?\.so\.[12]|libc\.musl-(x86_64|aarch64)\.so\.1)$"
)
LINUX_PLATFORM = re.compile(r"^(manylinux|musllinux)_(\d+)_(\d+)_(x86_64|aarch64)$")
#: PEP 600's names for the older manylinux tags
LEGACY = {
    "manylinux2014": "manylinux_2_17",
    "manylinux2010": "manylinux_2_12",
    "manylinux1": "manylinux_2_5",
}


def _glibc(version: tuple[int, int]) -> str:
    return f"GLIBC_{version[0]}.{version[1]}"


@dataclass
class WheelReport:
    name: str
    tags: list[str] = field(default_factory=list)
    glibc: tuple[int, int] | None = None
    needed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        glibc = "none" if self.glibc is None else _glibc(self.glibc)
        libs = ", ".join(self.needed) or "-"
        status = "OK" if not self.problems else "FAIL"
        tags = " ".join(self.tags)
        return f"{status} {self.name}: tags {tags}; highest glibc symbol {glibc}; needs {libs}"


def _wheel_file_tags(zf: zipfile.ZipFile) -> list[str]:
    name = next(n for n in zf.namelist() if n.endswith(".dist-info/WHEEL"))
    lines = zf.read(name).decode().splitlines()
    return sorted(line.split(":", 1)[1].strip() for line in lines if line.startswith("Tag:"))


def _filename_tags(name: str) -> list[str]:
    # name-version(-build)?-python-abi-platform.whl; each part may hold dotted alternatives
    python, abi, platforms = name.removesuffix(".whl").split("-")[-3:]
    return sorted(
        f"{p}-{a}-{plat}"
        for p in python.split(".")
        for a in abi.split(".")
        for plat in platforms.split(".")
    )


def _objdump(args: list[str], path: Path) -> str:
    objdump = shutil.which("objdump")
    if objdump is None:
        raise SystemExit("check_wheel: objdump not found (install binutils)")
    return subprocess.run(
        [objdump, *args, str(path)], capture_output=True, text=True, check=True
    ).stdout


def _check_elf(report: WheelReport, zf: zipfile.ZipFile, libc: str) -> None:
    libraries = [n for n in zf.namelist() if re.search(r"\.so(\.|$)", n)]
    if not libraries:
        report.problems.append("no shared library in a Linux wheel")
    with tempfile.TemporaryDirectory() as tmp:
        for member in libraries:
            path = Path(zf.extract(member, tmp))
            versions = {
                (int(m[1]), int(m[2]))
                for m in re.finditer(r"GLIBC_(\d+)\.(\d+)", _objdump(["-T"], path))
            }
            if versions:
                top = max(versions)
                report.glibc = top if report.glibc is None else max(report.glibc, top)
            needed = re.findall(r"^\s*NEEDED\s+(\S+)", _objdump(["-p"], path), flags=re.M)
            report.needed = sorted(set(report.needed) | set(needed))
            for lib in needed:
                if not ALLOWED_LIBS.match(lib):
                    report.problems.append(f"{member} needs {lib}: not part of the C library")
    if libc == "musllinux" and report.glibc is not None:
        report.problems.append(f"a musl wheel needs glibc symbols ({_glibc(report.glibc)})")
    if libc == "manylinux" and report.glibc is not None and report.glibc > MAX_GLIBC:
        report.problems.append(
            f"needs {_glibc(report.glibc)}, newer than manylinux2014 allows (2.17)"
        )


def _pep600(platform: str) -> str:
    legacy, _, arch = platform.partition("_")
    return f"{LEGACY[legacy]}_{arch}" if legacy in LEGACY else platform


def check_wheel(path: Path) -> WheelReport:
    report = WheelReport(path.name)
    with zipfile.ZipFile(path) as zf:
        report.tags = _wheel_file_tags(zf)
        if report.tags != _filename_tags(path.name):
            report.problems.append(
                f"file name tags {_filename_tags(path.name)} differ from WHEEL tags {report.tags}"
            )
        platforms = set()
        for tag in report.tags:
            python, abi, platform = tag.split("-")
            platforms.add(platform)
            if (python, abi) not in INTERPRETER_TAGS:
                report.problems.append(f"{python}-{abi}: neither cp310-abi3 nor cp314-cp314t")
        linux = [LINUX_PLATFORM.match(_pep600(p)) for p in platforms if "linux" in p]
        if any(m is None for m in linux) or any(p.startswith("linux_") for p in platforms):
            report.problems.append(f"platform tags {sorted(platforms)} are not manylinux/musllinux")
            return report
        matches = [m for m in linux if m is not None]
        for m in matches:
            version = (int(m[2]), int(m[3]))
            if m[1] == "manylinux" and version != MAX_GLIBC:
                report.problems.append(f"{m[0]}: release Linux wheels are manylinux_2_17")
            if m[1] == "musllinux" and version != (1, 2):
                report.problems.append(f"{m[0]}: release musl wheels are musllinux_1_2")
        if matches:
            _check_elf(report, zf, matches[0][1])
    return report


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    failed = False
    for arg in argv:
        report = check_wheel(Path(arg))
        print(report.summary())
        for problem in report.problems:
            print(f"  problem: {problem}")
        failed = failed or bool(report.problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
