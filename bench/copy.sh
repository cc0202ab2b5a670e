#!/usr/bin/env bash
# COPY throughput with and without pg_kpi: COPY of ROWS (default 1,000,000) generated
# rows into a bare table and into the same table with 3 KPIs. Prints rows per second and
# the ratio kpi/bare (target >= 0.6), and how long folding the COPY's deltas took.
# Server-side COPY from a file, so the client is not part of the measurement.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROWS="${ROWS:-1000000}"
ROUNDS="${ROUNDS:-1}"

start_cluster
create_orders_table orders_bare
create_orders_table orders_kpi
create_three_kpis orders_kpi ""

# Rows spread over the last day: many 1-minute buckets, every region/channel/status.
data="$PGDIR/orders.copy"
sql "COPY (SELECT now() - g * interval '83 milliseconds',
                  (ARRAY['eu', 'us', 'apac', 'latam'])[1 + g % 4],
                  (ARRAY['web', 'app', 'store'])[1 + g % 3],
                  CASE WHEN g % 10 = 0 THEN 'cancelled' ELSE 'paid' END,
                  (g % 100000) / 100.0, 1 + g % 9, (g % 5000) * 0.25
             FROM generate_series(1, $ROWS) g) TO '$data'" >/dev/null

now_s() { date +%s.%N; }

# copy_rate TABLE -> prints rows per second of one COPY into an emptied table
copy_rate() {
    drain
    # Retried: a TRUNCATE racing a fold can deadlock (a pg_kpi bug the e2e tests report).
    local attempt
    for attempt in 1 2 3 4 5; do
        sql "TRUNCATE $1" >/dev/null 2>&1 && break
        [ "$attempt" -lt 5 ] || { log "TRUNCATE $1 keeps failing"; exit 1; }
        sleep 1
    done
    drain
    local t0 t1
    t0="$(now_s)"
    sql "COPY $1 (created_at, region, channel, status, amount, quantity, latency_ms) FROM '$data'" >/dev/null
    t1="$(now_s)"
    python3 -c "import sys; print(f'{int(sys.argv[1]) / (float(sys.argv[3]) - float(sys.argv[2])):.0f}')" "$ROWS" "$t0" "$t1"
}

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# Warm-up, untimed: the first COPY pays for reading the file and extending the relation
# files, which would otherwise count against whichever table goes first.
copy_rate orders_bare >/dev/null

bare=()
kpi=()
fold_seconds=()
for _ in $(seq "$ROUNDS"); do
    bare+=("$(copy_rate orders_bare)")
    kpi+=("$(copy_rate orders_kpi)")
    # The fold worker may already be folding; time an explicit fold of what is left.
    t0="$(now_s)"
    sql "SELECT kpi.fold()" >/dev/null
    t1="$(now_s)"
    fold_seconds+=("$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$t0" "$t1")")
    counted="$(sql "SELECT coalesce(sum(orders), 0) FROM kpi.totals")"
    [ "$counted" = "$ROWS" ] || log "WARNING: COPY of $ROWS rows but kpi.totals counts $counted"
done
b="$(median "${bare[@]}")"
k="$(median "${kpi[@]}")"
echo "== COPY of $ROWS rows, median of $ROUNDS round(s) =="
printf '%-10s %14s\n' table "rows/s"
printf '%-10s %14.0f\n' bare "$b" "3 KPIs" "$k"
echo "ratio kpi/bare: $(ratio "$k" "$b")   (target >= 0.60)"
echo "kpi.fold() right after the COPY: $(median "${fold_seconds[@]}") s"
