#!/usr/bin/env bash
# Alert delivery: commit-to-webhook latency of threshold crossings (for = 0,
# group_wait = 0) against the same commits' commit-to-WebSocket KPI latency as the
# baseline, and a storm of instances crossing in one commit, delivered to a receiver
# grouping by alert name and one grouping by every label (lost and duplicated
# instances counted). notifier/benches/alert_bench.rs; prints, asserts nothing.
#
# Needs pg_kpi installed into the system Postgres (cargo pgrx install --release).
#   CROSSINGS=200   threshold crossings timed      STORM=1000   instances in the storm
# The write ratio with 10 rules against none is bench/alert_overhead.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/results
out="bench/results/alert_delivery_$(date +%F).txt"
# The bench profile is the release profile (fat LTO): the first build takes minutes.
cargo bench -p notifier --bench alert_bench 2>&1 | tee "$out.log"
grep -v '^\s*\(Compiling\|Finished\|Running\)' "$out.log" > "$out" || true
rm -f "$out.log"
echo "written to $out"
