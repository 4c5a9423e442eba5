#!/usr/bin/env bash
# `make fuzz`: builds the cargo-fuzz targets of sessions-core (sessions-core/fuzz) and runs
# each for FUZZ_SECONDS (default 60), one at a time, printing one line per target. Exits 1
# if any target crashed (the input is kept under sessions-core/fuzz/artifacts/<target>/;
# replay it with `cargo +nightly fuzz run <target> <file>` in sessions-core/fuzz).
#
# FUZZ_TARGETS="table resp" runs only those.
#
# Needs the nightly toolchain (libFuzzer and sanitizers) and cargo-fuzz; installs
# cargo-fuzz when nightly is there, otherwise prints a SKIP line and exits 0.
set -euo pipefail
cd "$(dirname "$0")/../sessions-core/fuzz"

seconds=${FUZZ_SECONDS:-60}
read -r -a targets <<<"${FUZZ_TARGETS:-cookie signer record resp table table_corrupt redis_url http data sentinel}"

skip() {
    echo "fuzz: SKIP: $*"
    exit 0
}

command -v rustup >/dev/null || skip "no rustup, so no nightly toolchain (cargo-fuzz needs nightly)"
cargo +nightly --version >/dev/null 2>&1 ||
    skip "no nightly toolchain (rustup toolchain install nightly); cargo-fuzz needs it"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz (cargo install cargo-fuzz --locked, about 1.5 min)"
    cargo install cargo-fuzz --locked >/dev/null 2>&1 || skip "cargo install cargo-fuzz failed (offline?)"
fi

cargo +nightly fuzz build

failed=0
for t in "${targets[@]}"; do
    artifacts="artifacts/$t"
    mkdir -p "$artifacts"
    before=$(find "$artifacts" -type f | wc -l)
    log=$(mktemp)
    # -timeout: an input that runs 10 s counts as a crash (a loop that does not end).
    rc=0
    cargo +nightly fuzz run "$t" -- -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
        >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    crashes=$(($(find "$artifacts" -type f | wc -l) - before))
    printf 'fuzz: %-14s %10s execs %8s execs/s %2d crashes %s\n' \
        "$t" "${execs:-?}" "${rate:-?}" "$crashes" "$([ $rc -eq 0 ] || echo "(exit $rc)")"
    if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        failed=1
        grep -E 'panicked at|^SUMMARY|Test unit written' "$log" | head -5 | sed 's/^/    /'
    fi
    rm -f "$log"
done
exit $failed
