#!/usr/bin/env bash
# release-check.sh: the release pipeline (.github/workflows/release.yml) rehearsed on this
# machine, and the steps that workflow runs itself, so the two cannot drift.
#
#   bash scripts/release-check.sh            (make release-check) on Linux x86_64/aarch64:
#     1. builds what the workflow builds for this platform into dist/: the abi3 wheel for
#        manylinux2014 with `maturin build --zig` (zig from PyPI's ziglang), the free-threaded
#        3.14t wheel when a python3.14t is on PATH, and the sdist
#     2. check-dist: each wheel's tags, highest glibc symbol version and libraries
#        (scripts/check_wheel.py; auditwheel show beside it)
#     3. sdist-install: the sdist builds from source (with Rust) and imports
#     4. for every CPython 3.10+ found (pyenv's versions, python3.1x on PATH, or the
#        interpreters in RELEASE_CHECK_PYTHONS): stage + test-staged, the wheel test job
#   bash scripts/release-check.sh --short    one Python (the first found), the tests in
#        RELEASE_CHECK_SHORT_TESTS, no sdist install
#
# Steps (the workflow calls these):
#   check-dist DIR [--free-threaded]   exactly one abi3 wheel (and one cp314t wheel), each
#                                      passing scripts/check_wheel.py
#   sdist-install DIR                  pip install DIR/*.tar.gz in a fresh venv, import it
#   stage WHEEL DIR                    the wheel and what the tests read (tests/, scripts/,
#                                      benches/, docs/, the top-level .md files, pyproject.toml,
#                                      requirements-dev.txt, .github/) copied to DIR, never python/
#   test-staged DIR PYTHON [ARGS...]   the wheel test job: a fresh venv DIR/.venv of PYTHON,
#                                      no Rust on PATH, the wheel + tests/requirements.txt
#                                      (tests/constraints.txt) from binary wheels only, then
#                                      pytest on DIR/tests with ARGS
#
# Environment: PYTHON (the build interpreter, default python3), DIST (default dist/),
# RELEASE_CHECK_PYTHONS, RELEASE_CHECK_SDK=required|optional (optional: when the SDK stack has
# no binary wheels for this interpreter, its tests skip with pip's reason instead of failing),
# PYTEST_ARGS (extra pytest arguments for the full run).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
DIST="${DIST:-$ROOT/dist}"
TOOLS="$ROOT/.cache/release-tools"
WORKFLOW="$ROOT/.github/workflows/release.yml"
SHORT_TESTS="${RELEASE_CHECK_SHORT_TESTS:-tests/test_exports.py tests/test_client.py tests/test_openai_sdk.py tests/test_readme.py tests/test_release.py}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUTF8=1

log() { printf '\n==> %s\n' "$*"; }
die() { printf 'release-check: error: %s\n' "$*" >&2; exit 1; }
now() { date +%s; }

# PATH without any Rust toolchain (~/.cargo/bin, $CARGO_HOME/bin, rustup's directories).
path_without_rust() {
    local cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin" out="" dir IFS=':'
    for dir in $PATH; do
        case "$dir" in
            "$cargo_bin" | "$cargo_bin/" | */.cargo/bin | */.cargo/bin/ | *.rustup*) continue ;;
        esac
        out="${out:+$out:}$dir"
    done
    printf '%s' "$out"
}

venv_python() {
    if [ -x "$1/bin/python" ]; then echo "$1/bin/python"; else echo "$1/Scripts/python.exe"; fi
}

# The build tools, pinned as the workflow pins maturin: maturin, ziglang, auditwheel.
tools() {
    local version
    version="$(sed -n 's/^  MATURIN_VERSION: v//p' "$WORKFLOW")"
    [ -n "$version" ] || die "no MATURIN_VERSION in $WORKFLOW"
    if ! "$TOOLS/bin/maturin" --version 2>/dev/null | grep -qx "maturin $version"; then
        "$PYTHON" -m venv "$TOOLS"
        "$TOOLS/bin/python" -m pip install -q "maturin==$version" ziglang auditwheel
    fi
    export PATH="$TOOLS/bin:$PATH"
}

build() {
    local triple
    case "$(uname -s)-$(uname -m)" in
        Linux-x86_64) triple=x86_64-unknown-linux-gnu ;;
        Linux-aarch64) triple=aarch64-unknown-linux-gnu ;;
        *) die "the local build covers Linux x86_64/aarch64; elsewhere the workflow's maturin-action builds" ;;
    esac
    command -v cargo >/dev/null || die "cargo not found: building needs a Rust toolchain"
    mkdir -p "$DIST"
    rm -f "$DIST"/nomyo_rs-*.whl "$DIST"/nomyo_rs-*.tar.gz
    log "abi3 wheel for manylinux2014 (glibc 2.17), built with zig"
    (cd "$ROOT" && maturin build --release --locked --zig --compatibility manylinux2014 \
        --target "$triple" --out "$DIST")
    if command -v python3.14t >/dev/null; then
        log "free-threaded wheel (python3.14t)"
        (cd "$ROOT" && maturin build --release --locked --zig --compatibility manylinux2014 \
            --target "$triple" --out "$DIST" --interpreter python3.14t)
    else
        log "no python3.14t on this machine: the free-threaded wheel is built by the workflow only"
    fi
    log "sdist"
    (cd "$ROOT" && maturin sdist --out "$DIST")
}

check_dist() {
    local dir="$1" free_threaded="${2:-}" wheels abi3 ft
    abi3="$(find "$dir" -maxdepth 1 -name 'nomyo_rs-*-cp310-abi3-*.whl' | wc -l)"
    ft="$(find "$dir" -maxdepth 1 -name 'nomyo_rs-*-cp314-cp314t-*.whl' | wc -l)"
    ls -l "$dir"
    [ "$abi3" -eq 1 ] || die "expected one cp310-abi3 wheel in $dir, found $abi3"
    if [ "$free_threaded" = "--free-threaded" ] && [ "$ft" -ne 1 ]; then
        die "expected one cp314-cp314t wheel in $dir, found $ft"
    fi
    wheels=("$dir"/nomyo_rs-*.whl)
    "$PYTHON" "$ROOT/scripts/check_wheel.py" "${wheels[@]}"
    if [ "$(uname -s)" = Linux ]; then
        [ -x "$TOOLS/bin/auditwheel" ] || { "$PYTHON" -m venv "$TOOLS" && "$TOOLS/bin/python" -m pip install -q auditwheel; }
        for wheel in "${wheels[@]}"; do
            case "$wheel" in *linux*) "$TOOLS/bin/auditwheel" show "$wheel" ;; esac
        done
    fi
}

sdist_install() {
    local dir="$1" work sdists
    sdists=("$dir"/nomyo_rs-*.tar.gz)
    [ -f "${sdists[0]}" ] || die "no sdist in $dir"
    work="$(mktemp -d "${TMPDIR:-/tmp}/release-sdist.XXXXXX")"
    "$PYTHON" -m venv "$work/venv"
    "$work/venv/bin/python" -m pip install -q "${sdists[0]}"
    (cd "$work" && "$work/venv/bin/python" -c 'import nomyo, nomyo._core; print("sdist install OK:", nomyo.__file__)')
    rm -rf "$work"
}

stage() {
    local wheel="$1" dir="$2" item
    [ -f "$wheel" ] || die "no wheel $wheel"
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$wheel" "$dir/"
    for item in tests scripts benches docs README.md RELEASING.md CHANGELOG.md pyproject.toml \
        requirements-dev.txt .github; do
        [ -e "$ROOT/$item" ] && cp -R "$ROOT/$item" "$dir/$item"
    done
    find "$dir" -name __pycache__ -type d -prune -exec rm -rf {} +
    echo "staged $(basename "$wheel") in $dir"
}

test_staged() {
    local dir="$1" python="$2" venv vpy wheel reqs
    shift 2
    wheel="$(find "$dir" -maxdepth 1 -name 'nomyo_rs-*.whl' | head -n 1)"
    [ -n "$wheel" ] || die "no wheel staged in $dir"
    # Hide Rust so that nothing can be compiled: every dependency comes as a binary wheel.
    PATH="$(path_without_rust)"
    export PATH
    unset CARGO_HOME RUSTUP_HOME RUSTUP_TOOLCHAIN VIRTUAL_ENV PYTHONPATH
    if command -v cargo || command -v rustc; then die "a Rust toolchain is still on PATH"; fi
    venv="$dir/.venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    vpy="$(venv_python "$venv")"
    cd "$dir"
    "$vpy" -m pip install -q --upgrade pip
    if ! "$vpy" -m pip install --only-binary=:all: "./$(basename "$wheel")" \
        -r tests/requirements.txt -c tests/constraints.txt >"$dir/pip.log" 2>&1; then
        cat "$dir/pip.log"
        [ "${RELEASE_CHECK_SDK:-required}" = optional ] || die "the test dependencies do not install from binary wheels"
        # The SDK stack alone may lack wheels here: install the rest, skip the SDK's tests.
        reqs="$dir/requirements-without-sdk.txt"
        grep -v -E '^(openai|langchain-openai)\b' tests/requirements.txt >"$reqs"
        "$vpy" -m pip install --only-binary=:all: "./$(basename "$wheel")" -r "$reqs" -c tests/constraints.txt
        NOMYO_TESTS_WITHOUT_SDK="no binary wheels of the openai SDK stack for $("$vpy" -c 'import sys, sysconfig; print(sys.version.split()[0], sysconfig.get_platform(), "free-threaded" if sysconfig.get_config_var("Py_GIL_DISABLED") else "")'): $(grep -m1 -E '^ERROR' "$dir/pip.log" | cut -c1-200)"
        export NOMYO_TESTS_WITHOUT_SDK
        echo "::warning::$NOMYO_TESTS_WITHOUT_SDK"
    fi
    "$vpy" - "$venv" <<'EOF'
import os
import sys
import sysconfig

import nomyo
import nomyo._core

venv = os.path.realpath(sys.argv[1])
location = os.path.realpath(nomyo.__file__)
print(f"nomyo {nomyo.__version__} from {location} on Python {sys.version.split()[0]}")
if not location.startswith(venv + os.sep) or "site-packages" not in location:
    sys.exit(f"nomyo was not imported from the wheel's venv {venv}")
if sysconfig.get_config_var("Py_GIL_DISABLED") and sys._is_gil_enabled():
    sys.exit("importing nomyo._core re-enabled the GIL")
EOF
    "$vpy" -m pytest -p no:cacheprovider -ra --timeout=600 "$@"
}

# Every CPython 3.10+ on this machine, one per version, as interpreter paths.
find_pythons() {
    local candidates=() p seen=""
    if [ -n "${RELEASE_CHECK_PYTHONS:-}" ]; then
        read -r -a candidates <<<"$RELEASE_CHECK_PYTHONS"
    else
        if command -v pyenv >/dev/null; then
            for p in "$(pyenv root)"/versions/*/bin/python; do candidates+=("$p"); done
        fi
        for p in python3.10 python3.11 python3.12 python3.13 python3.14 python3.14t; do
            command -v "$p" >/dev/null && candidates+=("$(command -v "$p")")
        done
    fi
    for p in "${candidates[@]}"; do
        local id
        id="$("$p" -c 'import sys, sysconfig; v = sys.version_info; ok = sys.implementation.name == "cpython" and v >= (3, 10); print(f"{v[0]}.{v[1]}.{v[2]}" + ("t" if sysconfig.get_config_var("Py_GIL_DISABLED") else "") if ok else "")' 2>/dev/null || true)"
        [ -n "$id" ] || continue
        case " $seen " in *" $id "*) continue ;; esac
        seen="$seen $id"
        printf '%s %s\n' "$id" "$p"
    done
}

full() {
    local short="${1:-}" t0 t_build t_check t_sdist wheel pythons=() tests=() summary="" id py
    local failed=0
    cd "$ROOT"
    tools
    t0="$(now)"
    build
    t_build=$(($(now) - t0))
    t0="$(now)"
    check_dist "$DIST" | tee "$ROOT/.cache/release-check-wheels.txt"
    t_check=$(($(now) - t0))
    t_sdist="skipped (--short)"
    if [ "$short" != "--short" ]; then
        log "sdist-install: the sdist builds from source with Rust"
        t0="$(now)"
        sdist_install "$DIST"
        t_sdist="$(($(now) - t0)) s"
    fi
    mapfile -t pythons < <(find_pythons)
    [ "${#pythons[@]}" -gt 0 ] || die "no CPython 3.10+ found"
    if [ "$short" = "--short" ]; then pythons=("${pythons[0]}"); read -r -a tests <<<"$SHORT_TESTS"; else tests=(tests); fi
    wheel="$(find "$DIST" -maxdepth 1 -name 'nomyo_rs-*-cp310-abi3-*.whl')"
    for entry in "${pythons[@]}"; do
        id="${entry%% *}"
        py="${entry#* }"
        case "$id" in
            *t) wheel="$(find "$DIST" -maxdepth 1 -name 'nomyo_rs-*-cp314-cp314t-*.whl')" ;;
            *) wheel="$(find "$DIST" -maxdepth 1 -name 'nomyo_rs-*-cp310-abi3-*.whl')" ;;
        esac
        [ -n "$wheel" ] || { summary+="  Python $id: no wheel for it in dist/ (skipped)"$'\n'; continue; }
        log "wheel test job on Python $id ($py)"
        local stage_dir="$ROOT/.cache/release-check/py$id"
        t0="$(now)"
        stage "$wheel" "$stage_dir"
        # shellcheck disable=SC2086 # PYTEST_ARGS is a word list
        if (test_staged "$stage_dir" "$py" "${tests[@]}" ${PYTEST_ARGS:-}); then
            summary+="  Python $id: passed in $(($(now) - t0)) s"$'\n'
        else
            summary+="  Python $id: FAILED after $(($(now) - t0)) s"$'\n'
            failed=1
        fi
    done
    if [ "$failed" = 1 ]; then
        log "release-check FAILED"
    else
        log "release-check passed"
    fi
    sed -n 's/^OK /wheel: /p' "$ROOT/.cache/release-check-wheels.txt"
    echo "dist/: $(cd "$DIST" && ls nomyo_rs-* | tr '\n' ' ')"
    echo "times: build $t_build s; wheel check $t_check s; sdist install $t_sdist"
    printf '%s' "$summary"
    return "$failed"
}

case "${1:-}" in
    "" | --short) full "${1:-}" ;;
    check-dist) shift; check_dist "$@" ;;
    sdist-install) shift; sdist_install "$@" ;;
    stage) shift; stage "$@" ;;
    test-staged) shift; test_staged "$@" ;;
    *) die "unknown step '$1' (check-dist, sdist-install, stage, test-staged, --short, or none)" ;;
esac
