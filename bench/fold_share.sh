#!/usr/bin/env bash
# How the write overhead of 3 KPIs splits between capture and fold: one-row INSERTs
# through pgbench into
#   bare   a table without KPIs,
#   kpi    the same table with the 3 KPIs of write_overhead.sh, folding as usual,
#   paused the same, with folding paused (another session holds the fold lock, so the
#          fold worker waits on it), so only the capture runs and deltas pile up,
# alternating round by round in one cluster. kpi/bare is the whole overhead, paused/bare
# the capture's share; the difference is what the fold costs writers. Measures, never
# asserts.
#
#   DURATION=15   seconds per run      CLIENTS="4 8"   client counts
#   ROUNDS=3      runs per variant; the median TPS is reported
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DURATION="${DURATION:-15}"
CLIENTS="${CLIENTS:-4 8}"
ROUNDS="${ROUNDS:-3}"

start_cluster
create_orders_table orders_bare
create_orders_table orders_kpi
create_three_kpis orders_kpi ""
scripts="$PGDIR/scripts"
mkdir -p "$scripts"
for t in orders_bare orders_kpi; do
    write_insert_script "$t" "$scripts/$t.sql"
done

# The advisory lock that serializes folds (pg_kpi/src/fold.rs, FOLD_LOCK).
FOLD_LOCK=123589284819049  # 0x70675f6b7069, "pg_kpi"

# Pauses folding: a session holds the fold lock until resume_folds terminates it.
pause_folds() {
    psql_db "$DB" -c "SET application_name = 'pg_kpi_bench_pause'" \
        -c "SELECT pg_advisory_lock($FOLD_LOCK)" -c "SELECT pg_sleep(3600)" \
        >/dev/null 2>&1 &
    PAUSE_PID=$!
    local tries
    for tries in $(seq 100); do
        [ "$(sql "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                   WHERE l.locktype = 'advisory' AND l.granted
                     AND a.application_name = 'pg_kpi_bench_pause'")" = 1 ] && return
        sleep 0.1
    done
    log "could not take the fold lock after $tries tries"
    exit 1
}

resume_folds() {
    sql "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE application_name = 'pg_kpi_bench_pause'" >/dev/null
    wait "$PAUSE_PID" 2>/dev/null || true
}

echo "== capture and fold shares: one-row INSERTs, ${DURATION}s per run, median of $ROUNDS round(s) =="
echo "   bare: no KPIs; kpi: 3 KPIs, folding; paused: 3 KPIs, folding paused (capture only)"
printf '%-8s %10s %10s %10s %10s %12s\n' clients "bare tps" "kpi tps" "paused tps" "kpi/bare" "paused/bare"
for clients in $CLIENTS; do
    declare -A runs=()
    for _ in $(seq "$ROUNDS"); do
        for variant in bare kpi paused; do
            truncate_tables orders_bare orders_kpi
            if [ "$variant" = paused ]; then pause_folds; fi
            table=orders_kpi
            [ "$variant" != bare ] || table=orders_bare
            runs[$variant]+=" $(run_pgbench "$scripts/$table.sql" "$clients")"
            if [ "$variant" = paused ]; then
                # Sanity: nothing may have been folded while paused.
                pending="$(sql "SELECT count(*) FROM kpi.deltas")"
                [ "$pending" -gt 1000 ] ||
                    log "WARNING: only $pending delta rows pending: did folding pause?"
                resume_folds
            fi
        done
    done
    # shellcheck disable=SC2086 # the runs are a space-separated list
    bare="$(median ${runs[bare]})" kpi="$(median ${runs[kpi]})" paused="$(median ${runs[paused]})"
    printf '%-8s %10.0f %10.0f %10.0f %10s %12s\n' "$clients" "$bare" "$kpi" "$paused" \
        "$(ratio "$kpi" "$bare")" "$(ratio "$paused" "$bare")"
    unset runs
done
