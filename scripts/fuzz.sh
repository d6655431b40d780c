#!/usr/bin/env bash
# Fuzz every nomyo-core target for a bounded time and print the executions per target.
#
# Usage: bash scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
# Env:   FUZZ_ENGINE=auto|libfuzzer|replay   (default auto: libfuzzer when cargo-fuzz works)
#        FUZZ_TARGETS="envelope_open tpm_verify pem_keys"
#        FUZZ_TIMEOUT=10   seconds one input may take before it counts as a finding
#
# libfuzzer: `cargo fuzz run` (coverage guided, AddressSanitizer). cargo-fuzz needs nightly
#   flags; on a stable toolchain RUSTC_BOOTSTRAP=1 is set for the fuzz build only.
# replay: the stable, libFuzzer-free harness fuzz/src/bin/replay.rs (mutation without coverage,
#   behaviour-guided), for machines without cargo-fuzz or a C++ compiler.
# Corpora: fuzz/seeds/<target> (committed, read only) + fuzz/corpus/<target> (grown, ignored).
# Findings: fuzz/artifacts/<target>/ ; each is printed in hex. Exit 1 if anything was found.
set -euo pipefail

SECONDS_PER_TARGET="${1:-60}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ="$ROOT/fuzz"
TARGETS="${FUZZ_TARGETS:-envelope_open tpm_verify pem_keys}"
ENGINE="${FUZZ_ENGINE:-auto}"
TIMEOUT="${FUZZ_TIMEOUT:-10}"
export PATH="$HOME/.cargo/bin:$PATH"

if ! [[ "$SECONDS_PER_TARGET" =~ ^[0-9]+$ ]] || [[ "$SECONDS_PER_TARGET" -lt 1 ]]; then
    echo "usage: $0 [SECONDS_PER_TARGET]" >&2
    exit 2
fi

cd "$FUZZ"

nightly_env=()
if ! rustc --version | grep -q nightly; then
    nightly_env=(env RUSTC_BOOTSTRAP=1)
fi

if [[ "$ENGINE" == auto ]]; then
    ENGINE=replay
    if cargo fuzz --version >/dev/null 2>&1 && command -v c++ >/dev/null 2>&1; then
        if "${nightly_env[@]}" cargo fuzz build -O >/dev/null 2>"$FUZZ/target-build.log"; then
            ENGINE=libfuzzer
        else
            echo "fuzz.sh: cargo fuzz build failed (see fuzz/target-build.log); using replay" >&2
        fi
    else
        echo "fuzz.sh: cargo-fuzz not installed (cargo install cargo-fuzz); using replay" >&2
    fi
    rm -f "$FUZZ/target-build.log"
fi

if [[ "$ENGINE" == replay ]]; then
    cargo build --release --no-default-features --bin replay -q
fi

found=0
declare -A EXECS
for target in $TARGETS; do
    mkdir -p "corpus/$target" "artifacts/$target"
    before="$(find "artifacts/$target" -type f \( -name 'crash-*' -o -name 'leak-*' \
        -o -name 'timeout-*' -o -name 'oom-*' -o -name 'slow-unit-*' \) | sort)"
    log="$(mktemp)"
    echo "== $target: $ENGINE for ${SECONDS_PER_TARGET}s"
    rc=0
    if [[ "$ENGINE" == libfuzzer ]]; then
        "${nightly_env[@]}" cargo fuzz run -O "$target" "corpus/$target" "seeds/$target" -- \
            -max_total_time="$SECONDS_PER_TARGET" -timeout="$TIMEOUT" -rss_limit_mb=4096 \
            -max_len=65536 -print_final_stats=1 -artifact_prefix="artifacts/$target/" \
            >"$log" 2>&1 || rc=$?
        runs="$(grep -Eo '^Done [0-9]+ runs' "$log" | grep -Eo '[0-9]+' | tail -1 || true)"
        if [[ -z "$runs" ]]; then
            runs="$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" \
                | grep -Eo '[0-9]+$' | tail -1 || true)"
        fi
        grep -E '^(#[0-9]+.*DONE|Done|==[0-9]+==ERROR|SUMMARY|.*panicked at)' "$log" | tail -5 || true
    else
        "$FUZZ/target/release/replay" --seconds "$SECONDS_PER_TARGET" --timeout "$TIMEOUT" \
            --corpus "seeds/$target" --corpus "corpus/$target" "$target" >"$log" 2>&1 || rc=$?
        runs="$(grep -Eo 'execs=[0-9]+' "$log" | grep -Eo '[0-9]+' | tail -1 || true)"
        grep -E '^(target=|CRASH|SLOW|TIMEOUT)' "$log" | cut -c1-600 || true
    fi
    EXECS[$target]="${runs:-?}"
    after="$(find "artifacts/$target" -type f \( -name 'crash-*' -o -name 'leak-*' \
        -o -name 'timeout-*' -o -name 'oom-*' -o -name 'slow-unit-*' \) | sort)"
    new="$(comm -13 <(echo "$before") <(echo "$after") | sed '/^$/d')"
    if [[ $rc -ne 0 || -n "$new" ]]; then
        found=1
        echo "!! $target: exit $rc; findings:"
        grep -Ev '^\s*$|^\s*\[' "$log" | grep -E 'panicked|ERROR|SUMMARY|CRASH|SLOW|TIMEOUT|artifact|==[0-9]+==' \
            | cut -c1-400 | head -20 | sed 's/^/   /' || true
        for f in $new; do
            echo "   $f ($(wc -c <"$f") bytes): $(head -c 2048 "$f" | od -An -v -tx1 | tr -d ' \n')"
        done
    fi
    rm -f "$log"
done

echo "== executions per target ($ENGINE, ${SECONDS_PER_TARGET}s each)"
for target in $TARGETS; do
    printf '%-16s %s\n' "$target" "${EXECS[$target]}"
done
exit "$found"
