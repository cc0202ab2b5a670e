#!/usr/bin/env bash
# HTTP event ingest: wrk POSTs batches of BATCH events to the release notifier's
# POST /api/events/orders for DURATION seconds, into the orders table with the 3 KPIs
# of write_overhead.sh. Prints events/s sustained (counted from the table, not from
# wrk), request p50/p99 from wrk --latency, and checks that kpi.totals counts every row.
# Target: >= 50,000 events/s. Measures, never asserts.
#
#   DURATION=30   seconds of load      BATCH=500    events per request
#   CONNECTIONS=4 wrk connections (= the notifier's ingest.max_connections)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DURATION="${DURATION:-30}"
BATCH="${BATCH:-500}"
CONNECTIONS="${CONNECTIONS:-4}"
command -v wrk >/dev/null || { echo "wrk is not installed: run scripts/setup.sh" >&2; exit 1; }

NOTIFIER="$REPO_DIR/target/release/notifier"
log "building the release notifier"
(cd "$REPO_DIR" && cargo build --release -p notifier --bin notifier 2>&1 | tail -1) >&2

start_cluster
create_orders_table orders
create_three_kpis orders ""

TOKEN="bench-ingest-token-0123456789"
HTTP_PORT="$(free_port)"
cat >"$PGDIR/notifier.toml" <<TOML
listen = "127.0.0.1:$HTTP_PORT"
database_url = "host=127.0.0.1 port=$PORT user=postgres dbname=$DB"
[[auth.tokens]]
name = "bench"
token = "$TOKEN"
ingest = ["orders"]
[ingest]
max_connections = $CONNECTIONS
[[ingest.sources]]
name = "orders"
table = "orders"
max_events = $BATCH
max_body_bytes = 16777216
[ingest.sources.columns]
created_at = { required = true }
region = {}
channel = {}
status = {}
amount = {}
quantity = {}
latency_ms = {}
user_id = {}
TOML
"$NOTIFIER" serve --config "$PGDIR/notifier.toml" >"$PGDIR/notifier.log" 2>&1 &
NOTIFIER_PID=$!
trap 'kill "$NOTIFIER_PID" 2>/dev/null || true; wait "$NOTIFIER_PID" 2>/dev/null || true; stop_cluster' EXIT
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null && break
    sleep 0.1
done

# One batch of events like write_overhead.sh's rows, timestamped now.
export INGEST_BODY="$PGDIR/body.json" INGEST_TOKEN="$TOKEN"
python3 - "$BATCH" >"$INGEST_BODY" <<'PY'
import datetime, json, random, sys
random.seed(1)
now = datetime.datetime.now(datetime.timezone.utc).isoformat()
print(json.dumps([{
    "created_at": now, "region": random.choice(["eu", "us", "apac", "latam"]),
    "channel": random.choice(["web", "app", "store"]),
    "status": "cancelled" if random.random() < 0.1 else "paid",
    "amount": f"{random.randint(100, 100000) / 100:.2f}", "quantity": random.randint(1, 10),
    "latency_ms": random.random() * 1000, "user_id": random.randint(1, 100000)}
    for _ in range(int(sys.argv[1]))]))
PY
check="$(curl -s -X POST -H "Authorization: Bearer $TOKEN" --data-binary "@$INGEST_BODY" \
    "http://127.0.0.1:$HTTP_PORT/api/events/orders")"
[ "$check" = "{\"accepted\":$BATCH}" ] || { echo "ingest refused the batch: $check" >&2; exit 1; }
truncate_tables orders

echo "== HTTP ingest: POST /api/events, $BATCH events per request, $CONNECTIONS connections, ${DURATION}s =="
echo "   into a table with 3 KPIs (write_overhead.sh's checkout, totals, by_status)"
echo "   body: $(wc -c <"$INGEST_BODY") bytes; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
before="$(sql "SELECT count(*) FROM orders")"
t0="$(date +%s.%N)"
wrk -t 1 -c "$CONNECTIONS" -d "${DURATION}s" --latency -s "$BENCH_DIR/ingest.lua" \
    "http://127.0.0.1:$HTTP_PORT/api/events/orders" >"$PGDIR/wrk.txt"
t1="$(date +%s.%N)"
after="$(sql "SELECT count(*) FROM orders")"
rows=$((after - before))
p50="$(awk '$1 == "50%" { print $2 }' "$PGDIR/wrk.txt")"
p99="$(awk '$1 == "99%" { print $2 }' "$PGDIR/wrk.txt")"
requests="$(awk '/requests in/ { print $1 }' "$PGDIR/wrk.txt")"
non2xx="$(awk '/Non-2xx/ { print $NF }' "$PGDIR/wrk.txt")"
rate="$(python3 -c "import sys; print(f'{int(sys.argv[1]) / (float(sys.argv[3]) - float(sys.argv[2])):,.0f}')" "$rows" "$t0" "$t1")"
printf '%-28s %s\n' "events written (table)" "$rows" "requests (wrk)" "$requests" \
    "non-200 answers" "${non2xx:-0}" "events/s sustained" "$rate" \
    "request latency p50" "$p50" "request latency p99" "$p99" "batch size" "$BATCH"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
counted="$(sql "SELECT coalesce(sum(orders), 0) FROM kpi.totals")"
[ "$counted" = "$after" ] || log "WARNING: $after rows in orders but kpi.totals counts $counted"
echo "kpi.totals counts $counted of $after rows"
echo "target: >= 50,000 events/s"
