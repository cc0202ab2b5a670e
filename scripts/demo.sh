#!/usr/bin/env bash
# The pg_kpi demo: a small shop with a week of history, live traffic shaped like a real
# day, and a payment-gateway incident a few minutes in that sets off an alert.
#
# It starts a throwaway Postgres with pg_kpi preloaded, loads the shop (demo/shop.sql,
# demo/history.sql) and its KPIs and alerts (demo/kpis.sql), starts the alert receiver
# (demo/receiver.py, which prints the alerts here), the notifier with the demo's
# dashboards (demo/notifier.toml) and the load (demo/load.sh), and prints where to look.
# Ctrl-C stops everything it started. Installs what it needs first; safe to re-run.
#
# Settings (environment):
#   DEMO_HTTP=127.0.0.1:8080       the notifier: dashboard, API, WebSocket/SSE
#   DEMO_PG_PORT=5499              the demo cluster
#   DEMO_RECEIVER=127.0.0.1:9095   the alert receiver
#   DEMO_DURATION=0                stop after this many seconds of load (0: at Ctrl-C)
#   DEMO_INCIDENT_AFTER=180        the incident starts this many seconds into the load
#   DEMO_INCIDENT_FOR=180          and lasts this long (0: no incident)
#   DEMO_HISTORY_DAYS=8            days of history (8: last week's comparisons work)
#   DEMO_RATE=2                    visitors per second at the evening peak
#   DEMO_ALERT_WINDOW='1 minute'   window of the checkout error-rate alert
#   DEMO_DIR=.demo                 cluster, logs and the effective notifier config
#   DEMO_SKIP_BUILD=1              skip setup and builds (scripts/test.sh has done them)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LOG_TAG=demo
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
cd "$ROOT"

HTTP="${DEMO_HTTP:-127.0.0.1:8080}"
PG_PORT="${DEMO_PG_PORT:-5499}"
RECEIVER="${DEMO_RECEIVER:-127.0.0.1:9095}"
DURATION="${DEMO_DURATION:-0}"
HISTORY_DAYS="${DEMO_HISTORY_DAYS:-8}"
RATE="${DEMO_RATE:-2}"
ALERT_WINDOW="${DEMO_ALERT_WINDOW:-1 minute}"
STATE="${DEMO_DIR:-$ROOT/.demo}"
DIR="$STATE/pgdata"
URL="postgresql://postgres@127.0.0.1:$PG_PORT/demo"
NOTIFIER="$ROOT/target/release/notifier"
started=$(date +%s)

for n in DURATION HISTORY_DAYS; do
    [[ "${!n}" =~ ^[0-9]+$ ]] || { log "DEMO_$n must be a whole number of seconds/days, not '${!n}'"; exit 2; }
done

# A port taken by something else is said now, not as a failure halfway through
# (SO_REUSEADDR: a listener blocks the bind, connections of a run just ended do not).
port_free() {
    python3 -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], int(sys.argv[2])))' "$1" "$2" 2>/dev/null
}

# The processes this run started, by name and PID; the PID file lets a test (or a
# person) check that nothing is left once the demo has stopped.
PIDS=()
NAMES=()
started_pid() {
    NAMES+=("$1"); PIDS+=("$2")
    echo "$1 $2" >>"$STATE/pids"
}

stopping=""
cleanup() {
    [ -n "$stopping" ] && return
    stopping=1
    log "stopping"
    local i p
    # Newest first: the load, then the notifier (so it says goodbye to its clients),
    # then the receiver.
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${PIDS[$i]}" 2>/dev/null || true
    done
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        p="${PIDS[$i]}"
        for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$p" 2>/dev/null; then
            log "${NAMES[$i]} (pid $p) did not stop in 10 s: killing it"
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
    cluster_stop "$DIR"
    log "stopped"
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

if [ "${DEMO_SKIP_BUILD:-}" != 1 ]; then
    "$ROOT/scripts/setup.sh"
    install_extension
    log "building the notifier (release)"
    cargo build --release -p notifier >/dev/null
fi
[ -x "$NOTIFIER" ] || { log "$NOTIFIER is missing: cargo build --release -p notifier"; exit 1; }

mkdir -p "$STATE"
# A cluster left by a run that was killed (kill -9, a crash) is stopped first.
cluster_stop "$DIR"
for hp in "$HTTP" "127.0.0.1:$PG_PORT" "$RECEIVER"; do
    if ! port_free "${hp%:*}" "${hp##*:}"; then
        log "$hp is in use (another demo?): stop it, or choose another DEMO_HTTP / DEMO_PG_PORT / DEMO_RECEIVER"
        exit 1
    fi
done
: >"$STATE/pids"
# Throwaway: a fresh cluster every run, so a cluster left by an older pg_kpi build (whose
# KPI tables may predate the current layout) never meets the new one.
rm -rf "$DIR"
log "starting Postgres with pg_kpi preloaded on port $PG_PORT"
cluster_start "$DIR" "$PG_PORT" demo
# The postmaster is listed for the record; cluster_stop stops it.
echo "postgres $(head -1 "$DIR/postmaster.pid")" >>"$STATE/pids"

sql() { PGOPTIONS="-c client_min_messages=warning" "$PG_BIN/psql" "$URL" -X -q -v ON_ERROR_STOP=1 "$@" >/dev/null; }
log "loading the shop and ${HISTORY_DAYS} days of history (about $RATE visitors/s at the peak)"
sql -f demo/shop.sql -c "UPDATE shop.settings SET rate = $RATE"
sql -v days="$HISTORY_DAYS" -f demo/history.sql
log "defining the KPIs (backfilled from the history) and the alerts"
sql -v alert_window="$ALERT_WINDOW" -f demo/kpis.sql

# The demo's notifier config, pointed at this run's addresses.
sed -e "s#127.0.0.1:9095#$RECEIVER#g" -e "s#127.0.0.1:8080#$HTTP#g" \
    -e "s#127.0.0.1:5499/demo#127.0.0.1:$PG_PORT/demo#g" demo/notifier.toml >"$STATE/notifier.toml"

python3 demo/receiver.py --listen "$RECEIVER" --log "$STATE/alerts.jsonl" &
started_pid receiver $!
# wait_http WHAT URL — bounded (30 s); gives up early if the process just started dies.
wait_http() {
    for _ in $(seq 1 300); do
        kill -0 "${PIDS[-1]}" 2>/dev/null || break
        if curl -sf -o /dev/null "$2"; then return 0; fi
        sleep 0.1
    done
    log "$1 did not answer on $2"
    return 1
}
wait_http "the alert receiver" "http://$RECEIVER/"
RUST_LOG="${RUST_LOG:-info}" "$NOTIFIER" serve --config "$STATE/notifier.toml" \
    >"$STATE/notifier.log" 2>&1 &
started_pid notifier $!

if ! wait_http "the notifier" "http://$HTTP/readyz"; then
    log "its log ($STATE/notifier.log) ends with:"
    tail -20 "$STATE/notifier.log" >&2
    exit 1
fi

DEMO_DURATION=0 DEMO_LOAD_LOG="$STATE/load.log" PG_BIN="$PG_BIN" demo/load.sh "$URL" &
started_pid load $!
load_started=$(date +%s)

incident="in ${DEMO_INCIDENT_AFTER:-180} s the payment gateway starts failing checkouts, for ${DEMO_INCIDENT_FOR:-180} s:
                 the alerts it sets off print below as [alert] lines, then their resolves"
[ "${DEMO_INCIDENT_FOR:-180}" = 0 ] && incident="none (DEMO_INCIDENT_FOR=0)"
cat <<MSG

  pg_kpi demo is running (ready in $((load_started - started)) s).
    Dashboard:   http://$HTTP/          (also http://$HTTP/d/shop and http://$HTTP/d/ops)
    API:         http://$HTTP/api/kpis  http://$HTTP/api/alerts  http://$HTTP/metrics
    Live feed:   curl -N 'http://$HTTP/sse?kpi=orders,checkout'
    Incident:    $incident
    SQL:         psql $URL
      SELECT kpi.value('orders', 'revenue', '1 hour');
      SELECT * FROM kpi.top('order_lines', 'revenue', 'product', '1 day', 5);
      SELECT kpi.value('checkout', 'errors', '5 minutes') / nullif(kpi.value('checkout', 'attempts', '5 minutes'), 0);
      SELECT * FROM kpi.series('orders', 'orders', now() - interval '1 day', step => '1 hour', compare => true);
      SELECT kpi.value('api', 'p95_latency', '5 minutes', '{"endpoint": "/api/checkout"}');
      SELECT kpi.snapshot('orders', '{"region": "eu"}');
      SELECT alert, state, value, threshold, summary FROM kpi.alerts;
  Logs in $STATE. Ctrl-C stops the load, the notifier, the receiver and the cluster.

MSG

while :; do
    for i in "${!PIDS[@]}"; do
        if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
            log "${NAMES[$i]} stopped unexpectedly (logs in $STATE)"
            exit 1
        fi
    done
    if [ "$DURATION" -gt 0 ] && [ $(($(date +%s) - load_started)) -ge "$DURATION" ]; then
        log "DEMO_DURATION=${DURATION}s reached"
        exit 0
    fi
    sleep 1
done
