#!/usr/bin/env bash
# Write overhead of a current-state KPI with 5 hot stage rows (docs/current-state.md):
# every transaction moves one of ROWS orders to a random one of 5 stages (an UPDATE, 3
# in 4 transactions) or adds a new order (an INSERT, 1 in 4; INSERTS sets the share),
# into
#   (a) a bare table,
#   (b) the same table with a current-state KPI: count(*) and sum(quantity) by status,
#       so every write changes one or two of the same 5 aggregate rows,
# at 4 and 8 clients. Prints TPS and b/a (issue #16: target >= 0.8, as for bucketed
# KPIs in write_overhead.sh). Measures, never asserts.
#
#   DURATION=30   seconds per run        CLIENTS="4 8"   client counts
#   ROUNDS=1      runs per variant; the median TPS is reported
#   ROWS=100000   orders in the table at the start of each run
#   INSERTS=25    percent of transactions that insert (0: moves only, 100: inserts only)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DURATION="${DURATION:-30}"
CLIENTS="${CLIENTS:-4 8}"
ROUNDS="${ROUNDS:-1}"
ROWS="${ROWS:-100000}"
INSERTS="${INSERTS:-25}"
STAGES="ARRAY['new', 'picking', 'packed', 'shipped', 'delivered']"

start_cluster
for t in pipe_bare pipe_kpi; do
    sql "CREATE TABLE $t (id bigserial PRIMARY KEY, status text NOT NULL, quantity int NOT NULL,
                          created_at timestamptz NOT NULL DEFAULT now())"
done
sql "SELECT kpi.create_state(name => 'stages', source => 'pipe_kpi',
        measures => 'orders = count(*), units = sum(quantity)', dimensions => '{status}')" >/dev/null

scripts="$PGDIR/scripts"
mkdir -p "$scripts"
for t in pipe_bare pipe_kpi; do
    # One write per transaction: \if picks the statement, so neither variant pays for an
    # empty second statement's commit.
    cat >"$scripts/$t.sql" <<SQL
\set s random(1, 5)
\set id random(1, $ROWS)
\set q random(1, 10)
\set op random(1, 100)
\if :op <= $INSERTS
INSERT INTO $t (status, quantity) VALUES ('new', :q);
\else
UPDATE $t SET status = ($STAGES)[:s] WHERE id = :id;
\endif
SQL
done

# Both tables back to ROWS orders spread over the 5 stages, folded, vacuumed.
reset_tables() {
    truncate_tables pipe_bare pipe_kpi
    for t in pipe_bare pipe_kpi; do
        sql "INSERT INTO $t (id, status, quantity)
             SELECT g, ($STAGES)[1 + g % 5], 1 + g % 10 FROM generate_series(1, $ROWS) g" >/dev/null
        sql "SELECT setval(pg_get_serial_sequence('$t', 'id'), $ROWS)" >/dev/null
    done
    drain
    sql "VACUUM ANALYZE" >/dev/null
}

# Sanity: the KPI equals a recomputation over the table (both directions of EXCEPT).
check_exact() {
    drain
    local diff
    diff="$(sql "WITH k AS (SELECT status, orders, units FROM kpi.stages WHERE orders <> 0),
                      t AS (SELECT status, count(*)::numeric, sum(quantity)::numeric FROM pipe_kpi GROUP BY 1)
                 SELECT (SELECT count(*) FROM (TABLE k EXCEPT TABLE t) x)
                      + (SELECT count(*) FROM (TABLE t EXCEPT TABLE k) y)")"
    [ "$diff" = 0 ] || log "WARNING: kpi.stages differs from pipe_kpi in $diff stage rows"
}

echo "== current-state write overhead: one write per transaction, moving one of $ROWS orders"
echo "   between 5 stages ($((100 - INSERTS)) %) or adding one ($INSERTS %), ${DURATION}s per run, median of $ROUNDS round(s) =="
echo "   (a) bare table  (b) current-state KPI: orders = count(*), units = sum(quantity) by status"
printf '%-8s %12s %12s %8s\n' clients "a bare tps" "b state tps" "b/a"
for clients in $CLIENTS; do
    declare -A runs=()
    # Rounds alternate the variants (bare, kpi, bare, …) so that the machine's drift over
    # minutes (2 cores shared with other work) hits both alike.
    for _ in $(seq "$ROUNDS"); do
        for variant in bare kpi; do
            reset_tables
            runs[$variant]+=" $(run_pgbench "$scripts/pipe_$variant.sql" "$clients")"
        done
        check_exact
    done
    # shellcheck disable=SC2086 # space-separated lists
    bare="$(median ${runs[bare]})" kpi="$(median ${runs[kpi]})"
    printf '%-8s %12.0f %12.0f %8s   (runs: bare%s; kpi%s)\n' "$clients" "$bare" "$kpi" \
        "$(ratio "$kpi" "$bare")" "${runs[bare]}" "${runs[kpi]}"
    unset runs
done
echo "target: b/a >= 0.80"
