#!/usr/bin/env bash
# notifier pull: copy throughput (rows/s of ROWS=200000 pre-existing remote rows, per
# batch size in BATCHES=1000,10000) and lag under RATE=1000 remote inserts/s for
# SECS=20 s (commit-to-visible-locally p50/p99, and the pull's lag gauge), between a
# remote cluster without pg_kpi and a local one with it. notifier/benches/pull_bench.rs;
# prints, asserts nothing.
#
# Needs pg_kpi installed into the system Postgres (cargo pgrx install --release).
# Run it under /work/notes/ext-lock.sh (or any lock keeping extension installs away).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/results
out="bench/results/pull_$(date +%F).txt"
# The bench profile is the release profile (fat LTO): the first build takes minutes.
cargo bench -p notifier --bench pull_bench 2>&1 | tee "$out.log"
grep -v '^\s*\(Compiling\|Finished\|Running\|Blocking\)' "$out.log" > "$out" || true
rm -f "$out.log"
echo "written to $out"
