#!/usr/bin/env bash
# Install the system packages the test suite and the benchmarks need: the software TPM for
# tests/test_swtpm.py (swtpm swtpm-tools tpm2-tools), curl for the raw event-stream test, and
# the wrk load generator for benches/proxy.py; gdb (gcore) and util-linux (setpriv, prlimit)
# for tests/test_secure_memory.py; tinyproxy (a real forward proxy) and nginx (a real HTTP/2
# server) for tests/test_engine.py, and squid (a second forward proxy) for
# benches/engine.py.
# Idempotent: packages already installed are skipped, and nothing runs when all are there.
# Does nothing (exit 0, with a note) when not root or not on Debian/Ubuntu.
# Usage: bash scripts/install-system-deps.sh
set -euo pipefail

PACKAGES=(swtpm swtpm-tools tpm2-tools curl wrk gdb util-linux tinyproxy nginx-light squid)

note() { echo "install-system-deps: $*" >&2; }

os_id=""
os_like=""
if [[ -r /etc/os-release ]]; then
    # shellcheck disable=SC1091
    os_id="$(. /etc/os-release && echo "${ID:-}")"
    # shellcheck disable=SC1091
    os_like="$(. /etc/os-release && echo "${ID_LIKE:-}")"
fi
case " $os_id $os_like " in
    *" debian "* | *" ubuntu "*) ;;
    *)
        note "not Debian/Ubuntu (ID=${os_id:-unknown}); install ${PACKAGES[*]} yourself. Nothing done."
        exit 0
        ;;
esac
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-query >/dev/null 2>&1; then
    note "apt-get/dpkg-query not found; install ${PACKAGES[*]} yourself. Nothing done."
    exit 0
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
    if [[ "$status" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
    note "already installed: ${PACKAGES[*]}"
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    note "not root; run: sudo apt-get install -y ${missing[*]}  (missing). Nothing done."
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
note "installing: ${missing[*]}"
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
note "installed: ${missing[*]}"
