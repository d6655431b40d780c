#!/usr/bin/env bash
# Install the reference client (PyPI nomyo==0.2.9 with its own pinned dependencies) into the
# isolated folder .cache/reference-nomyo under the repo root, with `pip install --target`, so
# no venv is ever touched. Idempotent: a marker file makes re-runs instant.
# Usage: [PYTHON=python3] bash scripts/install-reference.sh   (prints the folder path last)
set -euo pipefail

REF_VERSION="0.2.9"
PYTHON="${PYTHON:-python3}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache"
TARGET="$CACHE/reference-nomyo"
PY_TAG="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
MARKER="$TARGET/.installed-nomyo-$REF_VERSION-py$PY_TAG"

if [[ -f "$MARKER" ]]; then
    echo "$TARGET"
    exit 0
fi

mkdir -p "$CACHE"
# Serialise concurrent runs (e.g. parallel test workers); re-check after getting the lock.
exec 9>"$CACHE/reference-nomyo.lock"
flock 9
if [[ -f "$MARKER" ]]; then
    echo "$TARGET"
    exit 0
fi

if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    echo "install-reference: '$PYTHON -m pip' is not available; set PYTHON to a python with pip" >&2
    exit 1
fi

# Install into a staging folder and swap it in only once it imports, so a failed or
# interrupted run never leaves a half-installed folder behind a marker.
STAGE="$(mktemp -d "$CACHE/reference-nomyo.tmp.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
env -u PIP_USER -u PIP_PREFIX -u PIP_TARGET -u PIP_REQUIRE_VIRTUALENV \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
    "$PYTHON" -m pip install --quiet --no-input --target "$STAGE" "nomyo==$REF_VERSION" >&2

PYTHONPATH="$STAGE" "$PYTHON" -s - "$STAGE" "$REF_VERSION" >&2 <<'PY'
import os, sys
stage, version = sys.argv[1], sys.argv[2]
import nomyo
assert nomyo.__version__ == version, nomyo.__version__
assert os.path.realpath(nomyo.__file__).startswith(os.path.realpath(stage) + os.sep), nomyo.__file__
PY

rm -rf "$TARGET"
mv "$STAGE" "$TARGET"
trap - EXIT
touch "$MARKER"
echo "$TARGET"
