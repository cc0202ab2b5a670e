#!/usr/bin/env bash
# Write overhead of pg_kpi's capture: one-row INSERTs through pgbench into
#   (a) a bare table,
#   (b) the same table with 3 KPIs (one whose every row lands in the same bucket row),
#   (c) the same table with a naive PL/pgSQL trigger maintaining the same 3 aggregates
#       (an UPSERT per aggregate row) and calling pg_notify per row,
# at 4 and 8 clients. Prints TPS and the ratios b/a (target >= 0.8) and c/a (about 0.5
# expected). Measures, never asserts: timings depend on the machine.
#
#   DURATION=30   seconds per run        CLIENTS="4 8"   client counts
#   ROUNDS=1      runs per variant; the median TPS is reported
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DURATION="${DURATION:-30}"
CLIENTS="${CLIENTS:-4 8}"
ROUNDS="${ROUNDS:-1}"

start_cluster

create_orders_table orders_bare
create_orders_table orders_kpi
create_orders_table orders_naive
create_three_kpis orders_kpi ""
create_naive_trigger

scripts="$PGDIR/scripts"
mkdir -p "$scripts"
for t in orders_bare orders_kpi orders_naive; do
    write_insert_script "$t" "$scripts/$t.sql"
done

reset_tables() {
    truncate_tables orders_bare orders_kpi orders_naive naive_checkout naive_totals naive_by_status
}

echo "== write overhead: one-row INSERTs, ${DURATION}s per run, median of $ROUNDS round(s) =="
echo "   (a) bare table  (b) 3 KPIs with pg_kpi  (c) naive PL/pgSQL UPSERT + pg_notify trigger"
printf '%-8s %12s %12s %12s %8s %8s\n' clients "a bare tps" "b kpi tps" "c naive tps" "b/a" "c/a"
for clients in $CLIENTS; do
    declare -A tps=() runs=()
    # Rounds alternate the variants (bare, kpi, naive, bare, …), so that the machine's
    # drift over minutes hits every variant alike instead of favouring one.
    for _ in $(seq "$ROUNDS"); do
        for variant in bare kpi naive; do
            reset_tables
            runs[$variant]+=" $(run_pgbench "$scripts/orders_$variant.sql" "$clients")"
            if [ "$variant" = kpi ]; then
                # Sanity: the views must account for every inserted row.
                inserted="$(sql "SELECT count(*) FROM orders_kpi")"
                counted="$(sql "SELECT coalesce(sum(orders), 0) FROM kpi.totals")"
                [ "$inserted" = "$counted" ] ||
                    log "WARNING: $inserted rows inserted but kpi.totals counts $counted"
            fi
        done
    done
    for variant in bare kpi naive; do
        # shellcheck disable=SC2086 # the runs are a space-separated list
        tps[$variant]="$(median ${runs[$variant]})"
    done
    printf '%-8s %12.0f %12.0f %12.0f %8s %8s\n' "$clients" "${tps[bare]}" "${tps[kpi]}" \
        "${tps[naive]}" "$(ratio "${tps[kpi]}" "${tps[bare]}")" "$(ratio "${tps[naive]}" "${tps[bare]}")"
    unset tps runs
done
echo "target: b/a >= 0.80 (c/a about 0.5 expected)"
