#!/usr/bin/env bash
# wheel-check.sh: build the release wheel and sdist the way users get them and
# check that they work.
#
#   1. maturin build --release  -> dist/ (abi3, manylinux-tagged wheel)
#   2. auditwheel show on it (auditwheel lives in a throwaway venv)
#   3. fresh venv, NO Rust toolchain on PATH: install the wheel + test deps
#      (binary wheels only), copy tests/ (plus the pytest config and scripts/)
#      to a temp dir and run pytest there with -p no:cacheprovider, so the
#      source tree's python/ is never imported
#   4. maturin sdist -> dist/, pip install it in another fresh venv WITH Rust
#      on PATH and import nomyo._core
#   5. print the wheel's file name, tags and size
#
# Usage: scripts/wheel-check.sh [extra pytest args...]
#
# Environment:
#   PYTHON                  interpreter to build and test with (default: python3)
#   WHEEL_CHECK_TEST_DEPS   test dependencies (default: -r requirements-dev.txt)
#   WHEEL_CHECK_SKIP_SDIST  set to 1 to skip step 4 (it compiles the crate again)
#   WHEEL_CHECK_KEEP        set to 1 to keep the temporary directory
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
TEST_DEPS="${WHEEL_CHECK_TEST_DEPS:--r $ROOT/requirements-dev.txt}"
DIST="$ROOT/dist"

log() { printf '\n==> %s\n' "$*"; }
die() { printf 'wheel-check: error: %s\n' "$*" >&2; exit 1; }

# PATH without any Rust toolchain directory (~/.cargo/bin, $CARGO_HOME/bin).
path_without_rust() {
    local cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
    local out="" dir
    local IFS=':'
    for dir in $PATH; do
        case "$dir" in
            "$cargo_bin" | "$cargo_bin/" | "$HOME/.cargo/bin" | "$HOME/.cargo/bin/" | */.rustup/*) continue ;;
        esac
        out="${out:+$out:}$dir"
    done
    printf '%s' "$out"
}

# Print the tags recorded in a wheel's WHEEL metadata file, one per line.
wheel_tags() {
    "$PYTHON" - "$1" <<'EOF'
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as zf:
    name = next(n for n in zf.namelist() if n.endswith(".dist-info/WHEEL"))
    for line in zf.read(name).decode().splitlines():
        if line.startswith("Tag:"):
            print(line.split(":", 1)[1].strip())
EOF
}

# Run a command with no Rust toolchain on PATH and no inherited venv/cargo env.
norust() {
    env -u CARGO_HOME -u RUSTUP_HOME -u RUSTUP_TOOLCHAIN -u VIRTUAL_ENV -u PYTHONPATH \
        PATH="$NORUST_PATH" "$@"
}

human_size() {
    "$PYTHON" -c 'import sys; n = int(sys.argv[1]); print(f"{n} bytes ({n / 1048576:.2f} MiB)")' "$1"
}

command -v "$PYTHON" >/dev/null || die "python interpreter '$PYTHON' not found"
command -v maturin >/dev/null || die "maturin not found on PATH (pip install maturin)"
command -v cargo >/dev/null || die "cargo not found on PATH (the build needs a Rust toolchain)"
[ -d tests ] || die "no tests/ directory in $ROOT"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/wheel-check.XXXXXX")"
cleanup() {
    if [ "${WHEEL_CHECK_KEEP:-0}" = "1" ]; then
        echo "wheel-check: kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------
log "Building release wheel into dist/"
mkdir -p "$DIST"
rm -f "$DIST"/nomyo_rs-*.whl "$DIST"/nomyo_rs-*.tar.gz
maturin build --release --interpreter "$PYTHON" --out "$DIST"

shopt -s nullglob
wheels=("$DIST"/nomyo_rs-*.whl)
shopt -u nullglob
[ "${#wheels[@]}" -eq 1 ] || die "expected exactly one nomyo_rs wheel in dist/, found ${#wheels[@]}"
WHEEL="${wheels[0]}"
case "$(basename "$WHEEL")" in
    *-abi3-*) ;;
    *) die "$(basename "$WHEEL") is not an abi3 wheel" ;;
esac

# ---------------------------------------------------------------------------
log "auditwheel show"
"$PYTHON" -m venv "$WORK/auditwheel-venv"
"$WORK/auditwheel-venv/bin/python" -m pip install --quiet --disable-pip-version-check auditwheel
"$WORK/auditwheel-venv/bin/auditwheel" show "$WHEEL"

# ---------------------------------------------------------------------------
log "Installing the wheel into a fresh venv without Rust on PATH"
NORUST_PATH="$(path_without_rust)"
if norust sh -c 'command -v cargo || command -v rustc' >/dev/null 2>&1; then
    die "a Rust toolchain is still reachable without ~/.cargo/bin; cannot check the wheel in isolation"
fi
PY_EXE="$(command -v "$PYTHON")"
norust "$PY_EXE" -m venv "$WORK/wheel-venv"
# Binary wheels only: nothing may be compiled in this environment.
# shellcheck disable=SC2086 # TEST_DEPS is a word list
norust "$WORK/wheel-venv/bin/python" -m pip install --disable-pip-version-check --only-binary=:all: \
    "$WHEEL" $TEST_DEPS

log "Running pytest against the installed wheel"
RUN_DIR="$WORK/run"
mkdir -p "$RUN_DIR"
cp -R tests "$RUN_DIR/tests"
# Keep the pytest configuration (markers, asyncio mode, ...) and the helper
# scripts some tests call (they look for <tests>/../scripts), never python/.
for cfg in pyproject.toml pytest.ini README.md requirements-dev.txt; do
    if [ -f "$cfg" ]; then cp "$cfg" "$RUN_DIR/"; fi
done
if [ -d docs ]; then cp -R docs "$RUN_DIR/docs"; fi
if [ -d scripts ]; then cp -R scripts "$RUN_DIR/scripts"; fi
(
    cd "$RUN_DIR"
    norust "$WORK/wheel-venv/bin/python" - "$WORK/wheel-venv" <<'EOF'
import os
import sys

import nomyo
import nomyo._core

venv = os.path.realpath(sys.argv[1])
location = os.path.realpath(nomyo.__file__)
print(f"nomyo imported from {location}")
if not location.startswith(venv + os.sep):
    sys.exit(f"nomyo was not imported from the wheel venv ({venv})")
EOF
    norust "$WORK/wheel-venv/bin/python" -m pytest -p no:cacheprovider tests "$@"
)

# ---------------------------------------------------------------------------
if [ "${WHEEL_CHECK_SKIP_SDIST:-0}" = "1" ]; then
    log "Skipping the sdist check (WHEEL_CHECK_SKIP_SDIST=1)"
else
    log "Building sdist into dist/"
    maturin sdist --out "$DIST"
    shopt -s nullglob
    sdists=("$DIST"/nomyo_rs-*.tar.gz)
    shopt -u nullglob
    [ "${#sdists[@]}" -eq 1 ] || die "expected exactly one nomyo_rs sdist in dist/, found ${#sdists[@]}"
    SDIST="${sdists[0]}"

    log "Installing the sdist into a fresh venv with Rust on PATH"
    (
        unset VIRTUAL_ENV PYTHONPATH
        "$PY_EXE" -m venv "$WORK/sdist-venv"
        "$WORK/sdist-venv/bin/python" -m pip install --disable-pip-version-check "$SDIST"
        cd "$WORK"
        "$WORK/sdist-venv/bin/python" -c 'import nomyo._core, nomyo; print("sdist install OK:", nomyo.__file__)'
    )
fi

# ---------------------------------------------------------------------------
log "Wheel summary"
echo "file: $(basename "$WHEEL")"
echo "tags:"
wheel_tags "$WHEEL" | sed 's/^/  /'
echo "size: $(human_size "$(wc -c <"$WHEEL" | tr -d ' ')")"
if [ -n "${SDIST:-}" ]; then
    echo "sdist: $(basename "$SDIST") ($(human_size "$(wc -c <"$SDIST" | tr -d ' ')"))"
fi
