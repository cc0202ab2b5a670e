#!/usr/bin/env bash
# Notifier benchmarks: freshness (commit-to-client latency under 2,000 single-row
# INSERTs/s) and fan-out (10,000 WebSocket clients on a KPI updated 10x/s: delivery
# latency and notifier RSS), with a bare-server baseline of the fan-out before and after
# the notifier's run (the same clients and frames; notifier/benches/notifier_bench/
# baseline.rs) and the notifier's figures as ratios over it. Prints; asserts nothing.
#
# Needs pg_kpi installed into the system Postgres (cargo pgrx install --release).
# Knobs (environment): FRESH_RATE, FRESH_SECS, FANOUT_CLIENTS, FANOUT_HZ, FANOUT_SECS,
# SKIP_FRESHNESS=1, SKIP_FANOUT=1.
set -euo pipefail
cd "$(dirname "$0")/.."

# 10,000 client sockets in the benchmark process and 10,000 in the notifier (which
# inherits this limit): raise the open-files limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# The bench profile is the release profile (fat LTO): the first build takes minutes.
cargo bench -p notifier --bench notifier_bench
