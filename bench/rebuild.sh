#!/usr/bin/env bash
# Rebuild rate: kpi.rebuild of a 3-measure KPI (count, sum, avg; by region) over ROWS
# (default 1,000,000) source rows, against the same backfill done by kpi.create, in the
# same run. Prints rows per second of each and their ratio (issue #16: >= 100,000 rows/s,
# i.e. 1M rows in 10 s). Once more with 4 writers running during the rebuild.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROWS="${ROWS:-1000000}"

start_cluster
create_orders_table orders
sql "INSERT INTO orders (created_at, region, channel, status, amount, quantity, latency_ms)
     SELECT now() - g * interval '83 milliseconds',
            (ARRAY['eu', 'us', 'apac', 'latam'])[1 + g % 4],
            (ARRAY['web', 'app', 'store'])[1 + g % 3],
            CASE WHEN g % 10 = 0 THEN 'cancelled' ELSE 'paid' END,
            (g % 100000) / 100.0, 1 + g % 9, (g % 5000) * 0.25
       FROM generate_series(1, $ROWS) g" >/dev/null
sql "VACUUM ANALYZE orders" >/dev/null

now_s() { date +%s.%N; }
rate() { python3 -c "import sys; print(int(float(sys.argv[1]) / (float(sys.argv[3]) - float(sys.argv[2]))))" "$ROWS" "$1" "$2"; }

t0=$(now_s)
sql "SELECT kpi.create(name => 'orders_kpi', source => 'orders', time_column => 'created_at',
       measures => 'orders = count(*), revenue = sum(amount * quantity), aov = avg(amount)',
       dimensions => '{region}', bucket => '1 minute')" >/dev/null
t1=$(now_s)
create_rate=$(rate "$t0" "$t1")

t0=$(now_s)
psql_db "$DB" -q -c "CALL kpi.rebuild('orders_kpi')" 2>"$PGDIR/rebuild.notices"
t1=$(now_s)
rebuild_rate=$(rate "$t0" "$t1")

# The same with writers inserting throughout the rebuild.
cat >"$PGDIR/writer.sql" <<'SQL'
INSERT INTO orders (created_at, region, channel, status, amount, quantity, latency_ms)
VALUES (now(), 'eu', 'web', 'paid', 12.5, 2, 30);
SQL

pgbench -n -h 127.0.0.1 -p "$PORT" -U postgres -c 4 -j 2 -T 30 -f "$PGDIR/writer.sql" "$DB" >"$PGDIR/pgbench.out" 2>&1 &
writers=$!
sleep 1
t0=$(now_s)
psql_db "$DB" -q -c "CALL kpi.rebuild('orders_kpi')" 2>>"$PGDIR/rebuild.notices"
t1=$(now_s)
busy_rate=$(rate "$t0" "$t1")
kill "$writers" 2>/dev/null || true
wait "$writers" 2>/dev/null || true
sql "SELECT kpi.fold()" >/dev/null
exact=$(sql "SELECT (SELECT sum(orders) FROM kpi.orders_kpi) = (SELECT count(*) FROM orders)")

echo "rows: $ROWS (3 measures, 1 dimension, 1-minute buckets)"
echo "kpi.create backfill: $create_rate rows/s"
echo "kpi.rebuild:         $rebuild_rate rows/s (ratio to create $(ratio "$rebuild_rate" "$create_rate"))"
echo "kpi.rebuild, 4 writers inserting: $busy_rate rows/s (exact after: $exact)"
echo "notices of the first rebuild:"
head -n 20 "$PGDIR/rebuild.notices" | sed 's/^/  /'
stop_cluster
