#!/usr/bin/env bash
# make bench (after make build): the criterion micro-benchmark of the pure hot path, then
# wrk against NGINX with and without the module (bench/bench.py). Prints one Markdown
# report and writes it to bench/results/latest.md. Scratch files go to a temp directory
# that is removed at the end (kept when something fails, for a look at the error logs).
#
# Quick trial run: BENCH_DURATION=2 BENCH_WARMUP=1 BENCH_ROUNDS=1 bash bench/run.sh
# Skip criterion:  BENCH_NO_CRITERION=1 bash bench/run.sh
set -euo pipefail

cd "$(dirname "$0")/.."
started=$(date +%s.%N)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ngx-sessions-bench.XXXXXX")
keep_tmp=1
cleanup() {
    if [ "$keep_tmp" = 0 ]; then rm -rf "$tmp"; else echo "bench: scratch files kept in $tmp" >&2; fi
}
trap cleanup EXIT

for tool in wrk taskset python3 cargo; do
    command -v "$tool" >/dev/null || { echo "bench: $tool not found (make deps installs wrk)" >&2; exit 1; }
done

# 1. The pure hot path. Compiled first (unpinned, may take a while the first time), then
#    run pinned to core 1 with short settings; criterion's JSON goes to the temp dir.
if [ "${BENCH_NO_CRITERION:-0}" != 1 ]; then
    echo "[bench] criterion: cargo bench -p sessions-core --bench hot_path"
    cargo bench -p sessions-core --bench hot_path --no-run
    CRITERION_HOME="$tmp/criterion" taskset -c 1 \
        cargo bench -p sessions-core --bench hot_path -- --warm-up-time 1 --measurement-time 3 \
        2>&1 | grep -E '^[a-z_]+ +time:' || { echo "bench: criterion failed" >&2; exit 1; }
fi

# 2. NGINX scenarios, zone capacity, the report.
PYTHONDONTWRITEBYTECODE=1 python3 bench/bench.py --tmp "$tmp" --criterion "$tmp/criterion" \
    --out bench/results/latest.md --started "$started"
keep_tmp=0
