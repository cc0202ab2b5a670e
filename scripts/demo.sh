#!/usr/bin/env bash
# The pg_kpi demo: a throwaway Postgres with pg_kpi preloaded, a demo shop with a week
# of orders and three KPIs, a steady stream of new orders, and the notifier serving
# live updates (and its dashboard) on http://127.0.0.1:8080. Ctrl-C stops everything.
# Installs what it needs first; safe to re-run.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LOG_TAG=demo
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
cd "$ROOT"

PORT="${DEMO_PG_PORT:-5499}"
HTTP="${DEMO_HTTP:-127.0.0.1:8080}"
RATE="${DEMO_RATE:-20}"            # orders per second
DURATION="${DEMO_DURATION:-3600}"  # the load stops by itself after this many seconds
DIR="$ROOT/.demo/pgdata"

"$ROOT/scripts/setup.sh"
install_extension
log "building the notifier"
cargo build --release -p notifier >/dev/null

cluster_stop "$DIR"
# Throwaway: a fresh cluster every run, so a cluster left by an older pg_kpi build (whose
# KPI tables may predate the current layout) never meets the new one.
rm -rf "$DIR"
cluster_start "$DIR" "$PORT" demo
PIDS=()
cleanup() {
    log "stopping"
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    cluster_stop "$DIR"
}
trap cleanup EXIT INT TERM

log "loading the demo shop (a week of orders) and its KPIs"
psql -h 127.0.0.1 -p "$PORT" -U postgres -d demo -q -v ON_ERROR_STOP=1 -f sql/demo.sql >/dev/null

log "streaming $RATE orders/s for ${DURATION}s"
"$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -n -c 2 -R "$RATE" -T "$DURATION" \
    -f sql/demo_load.sql demo >"$ROOT/.demo/load.log" 2>&1 &
PIDS+=($!)

DATABASE_URL="postgresql://postgres@127.0.0.1:$PORT/demo" \
    "$ROOT/target/release/notifier" serve --listen "$HTTP" &
PIDS+=($!)

cat <<MSG

  pg_kpi demo is running.
    Dashboard and API:  http://$HTTP/    (try /api/kpis, /sse?kpi=checkout, /metrics)
    One region only:    http://$HTTP/sse?kpi=checkout&dims=%7B%22region%22%3A%22eu%22%7D
    SQL:                psql -h 127.0.0.1 -p $PORT -U postgres demo
      SELECT * FROM kpi.checkout ORDER BY bucket DESC LIMIT 10;
      SELECT kpi.value('checkout', 'revenue', '5 minutes');
      SELECT kpi.value('checkout', 'buyers', '1 hour'), kpi.value('checkout', 'p95_latency', '1 hour');
      SELECT * FROM kpi.series('checkout', 'p95_latency', now() - interval '1 hour', compare => true);
      SELECT * FROM kpi.top('checkout', 'revenue', 'region', '1 hour', 3);
      SELECT kpi.snapshot('checkout');
      SELECT kpi.snapshot('checkout', '{"region": "eu"}');
      LISTEN kpi_changes;
  Ctrl-C stops the load, the notifier and the cluster.

MSG
wait "${PIDS[0]}"
