#!/usr/bin/env bash
# Runs the write-path and sketch benchmarks and writes what they print to
# bench/results/latest.txt as well as stdout (see bench/README.md). Assumes
# `cargo pgrx install --release` was run in pg_kpi/, or PG_KPI_PACKAGE=DIR pointing at
# `cargo pgrx package --out-dir DIR` output.
#   DURATION=30 (write_overhead, sketch_overhead: seconds per run)   ROWS=1000000 (copy)
#   ROUNDS=1   READ_ROWS=500000 READ_SECONDS=10 (sketch_overhead's read latency)
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p results
out=results/latest.txt
{
    echo "pg_kpi write-path benchmarks, $(date -u '+%Y-%m-%d %H:%M:%SZ')"
    echo "host: $(nproc) cores, $(uname -sr), $(/usr/lib/postgresql/15/bin/postgres --version)"
    echo "pg_kpi from: ${PG_KPI_PACKAGE:-the system installation}"
    echo "settings: DURATION=${DURATION:-30} ROWS=${ROWS:-1000000} ROUNDS=${ROUNDS:-1}" \
        "READ_ROWS=${READ_ROWS:-500000} READ_SECONDS=${READ_SECONDS:-10}" \
        "BENCH_PG_OPTS='${BENCH_PG_OPTS:--c synchronous_commit=off}'"
    # Other work on the machine skews every figure: record how busy it was.
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    ./write_overhead.sh
    echo
    ./copy.sh
    echo
    ./sketch_overhead.sh
    echo
    echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
} 2>&1 | tee "$out.partial"
mv "$out.partial" "$out"
echo "results written to bench/$out"
