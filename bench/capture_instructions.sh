#!/usr/bin/env bash
# Instructions the capture adds to a one-row INSERT transaction, counted by valgrind's
# callgrind rather than timed: the count is the same from run to run whatever else the
# machine is doing, so it shows changes to the capture path that the noisy TPS ratios
# of write_overhead.sh (±0.05–0.1 between runs) cannot.
#
# A cluster with the bare table and the 3-KPI table of write_overhead.sh is prepared
# and stopped; then `postgres --single` (one backend, no fold worker, the same capture
# trigger and pre-commit flush) runs N one-row INSERTs, each its own transaction, under
# callgrind, once per table. Prints instructions per transaction for both, the
# difference, and where the difference goes (capture trigger, commit-time flush). The
# single-user backend parses and plans every statement (pgbench's prepared statements
# do not), so the bare figure is higher than a pgbench transaction's.
#
#   N=5000   INSERTs per table
#   SKETCH=1 also give the checkout KPI the sketch benchmark's measures
#            (users = count_distinct(user_id), p95 = percentile(latency_ms, 0.95))
set -euo pipefail
source "$(dirname "$0")/lib.sh"

N="${N:-5000}"
command -v valgrind >/dev/null || {
    echo "valgrind is needed (apt-get install valgrind)" >&2
    exit 1
}

start_cluster
create_orders_table orders_bare
create_orders_table orders_kpi
extra=""
if [ -n "${SKETCH:-}" ]; then
    extra="users = count_distinct(user_id), p95 = percentile(latency_ms, 0.95)"
fi
create_three_kpis orders_kpi "" "$extra"
sql "CHECKPOINT" >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$PGDIR/data" -m fast -w stop >/dev/null

work="$PGDIR/callgrind"
mkdir -p "$work"
python3 - "$N" "$work" <<'PY'
import random, sys
n, work = int(sys.argv[1]), sys.argv[2]
for table in ("orders_bare", "orders_kpi"):
    rnd = random.Random(1)  # the same rows for both tables
    with open(f"{work}/{table}.sql", "w") as f:
        for _ in range(n):
            q = rnd.randint(1, 10)
            f.write(
                f"INSERT INTO {table} (created_at, region, channel, status, amount, quantity,"
                f" latency_ms, user_id) VALUES (now(), '{rnd.choice(['eu', 'us', 'apac', 'latam'])}',"
                f" '{rnd.choice(['web', 'app', 'store'])}', '{'cancelled' if q == 10 else 'paid'}',"
                f" {rnd.randint(100, 100000) / 100.0}, {q}, {rnd.random() * 1000}, {rnd.randint(1, 100000)})\n"
            )
PY
if [ "$(id -u)" = 0 ]; then chown -R postgres:postgres "$work"; fi

# instructions TABLE -> writes $work/TABLE.cg and prints the total instruction count.
instructions() {
    as_pg valgrind --tool=callgrind --callgrind-out-file="$work/$1.cg" \
        "$PG_BIN/postgres" --single -D "$PGDIR/data" -c shared_preload_libraries=pg_kpi \
        -c synchronous_commit=off "$DB" <"$work/$1.sql" >"$work/$1.log" 2>&1
    if grep -q 'ERROR' "$work/$1.log"; then
        grep -m3 'ERROR' "$work/$1.log" >&2
        exit 1
    fi
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$work/$1.log"
}

# inclusive COUNT_FILE FUNCTION -> the function's inclusive instruction count.
inclusive() {
    # awk reads to the end (no early exit), so callgrind_annotate never gets SIGPIPE.
    callgrind_annotate --inclusive=yes "$1" 2>/dev/null |
        awk -v f="$2" '!found && $0 ~ ":" f " " { gsub(",", "", $1); found = $1 } END { print found }'
}

bare="$(instructions orders_bare)"
kpi="$(instructions orders_kpi)"
trigger="$(inclusive "$work/orders_kpi.cg" "pg_kpi_capture")"
flush="$(inclusive "$work/orders_kpi.cg" "pg_kpi::capture::flush")"
python3 - "$N" "$bare" "$kpi" "${trigger:-0}" "${flush:-0}" "${SKETCH:-}" <<'PY'
import sys
n, bare, kpi, trigger, flush = (int(x) for x in sys.argv[1:6])
print(f"== instructions per one-row INSERT transaction (callgrind, {n} transactions, postgres --single) ==")
print(f"bare table                       {bare / n:>10,.0f}")
label = "3 KPIs + sketches" if len(sys.argv) > 6 and sys.argv[6] else "3 KPIs"
print(f"{label:<33}{kpi / n:>10,.0f}   ({kpi / bare:.3f} x bare)")
print(f"added by the KPIs                {(kpi - bare) / n:>10,.0f}")
print(f"  in the capture trigger         {trigger / n:>10,.0f}")
print(f"  in the pre-commit flush        {flush / n:>10,.0f}   (encode + one heap insert into kpi.deltas)")
print(f"  elsewhere (trigger queue, locks, commit)  {(kpi - bare - trigger - flush) / n:>6,.0f}")
PY
