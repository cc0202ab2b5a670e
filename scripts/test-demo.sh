#!/usr/bin/env bash
# The demo, tested as a newcomer runs it: scripts/demo.sh on its own ports with a short
# incident, then checks that it printed the dashboard's address, that the notifier was
# ready and serving the shop's KPIs with data, that the scripted incident fired the
# checkout alert to the demo's webhook receiver and resolved it, and that the demo ended
# by itself after DEMO_DURATION with everything it started stopped. A second run is
# interrupted early (SIGINT, as Ctrl-C) and must stop everything too.
# Called by scripts/test.sh after the builds (DEMO_SKIP_BUILD=1); bounded waits only.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LOG_TAG=test-demo
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
cd "$ROOT"

STATE="$ROOT/.test/demo"
HTTP=127.0.0.1:18481
PG_PORT=15481
RECEIVER=127.0.0.1:19481
rm -rf "$STATE"
mkdir -p "$STATE"
OUT="$STATE/../demo-output.log"

demo=""
fail() {
    log "FAILED: $*"
    # The demo stops what it started on SIGTERM; a failed check must not leave it running.
    if [ -n "$demo" ] && kill -0 "$demo" 2>/dev/null; then
        kill -TERM "$demo"
        for _ in $(seq 1 300); do kill -0 "$demo" 2>/dev/null || break; sleep 0.1; done
    fi
    log "the demo printed:"
    sed 's/^/    /' "$OUT" >&2 || true
    [ -f "$STATE/notifier.log" ] && { log "notifier.log ends with:"; tail -20 "$STATE/notifier.log" >&2; }
    exit 1
}

# DURATION — starts the demo in the background, its PID in $demo. A background job of a
# script starts with SIGINT ignored (and bash cannot trap a signal ignored at entry):
# env restores its default so the demo's Ctrl-C trap works as in a terminal.
run_demo() {
    DEMO_SKIP_BUILD=1 DEMO_DIR="$STATE" DEMO_HTTP="$HTTP" DEMO_PG_PORT="$PG_PORT" \
        DEMO_RECEIVER="$RECEIVER" DEMO_DURATION="$1" DEMO_INCIDENT_AFTER=10 \
        DEMO_INCIDENT_FOR=40 DEMO_HISTORY_DAYS=8 \
        env --default-signal=INT "$ROOT/scripts/demo.sh" >"$OUT" 2>&1 &
    demo=$!
}

wait_printed() { # TEXT SECONDS
    for _ in $(seq 1 $(($2 * 10))); do
        grep -qF "$1" "$OUT" && return 0
        kill -0 "$demo" 2>/dev/null || fail "the demo exited before printing '$1'"
        sleep 0.1
    done
    fail "'$1' was not printed within $2 s"
}

# Everything the demo listed in its PID file has stopped, and its ports are free.
all_stopped() {
    local name pid
    while read -r name pid; do
        # pg_ctl stop returns once the postmaster has removed its PID file, a moment
        # before the process itself is gone.
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && fail "$name (pid $pid) is still running after the demo ended"
    done <"$STATE/pids"
    for hp in "$HTTP" "127.0.0.1:$PG_PORT" "$RECEIVER"; do
        python3 -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], int(sys.argv[2])))' \
            "${hp%:*}" "${hp##*:}" 2>/dev/null || fail "$hp is still taken after the demo ended"
    done
}

# Webhook bodies the receiver got, as "alertname status" lines.
received() {
    python3 - "$STATE/alerts.jsonl" <<'PY'
import json, sys
try:
    lines = open(sys.argv[1]).read().splitlines()
except FileNotFoundError:
    lines = []
for line in lines:
    for a in json.loads(line)["alerts"]:
        print(a["labels"].get("alertname"), a["status"])
PY
}

log "run 1: DEMO_DURATION=150 with an incident 10 s in, lasting 40 s"
run_demo 150
wait_printed "Dashboard:   http://$HTTP/" 120
curl -sf "http://$HTTP/readyz" | grep -q '"ready":true' || fail "/readyz is not ready"
curl -sf "http://$HTTP/" | grep -qi "<html" || fail "/ does not serve the dashboard"
curl -sf "http://$HTTP/api/dashboards/shop" >/dev/null || fail "the shop dashboard is not configured"
for kpi in orders order_lines checkout api; do
    curl -sf "http://$HTTP/api/kpis/$kpi" | grep -q '"type":"snapshot"' || fail "no snapshot of KPI $kpi"
done
orders=$("$PG_BIN/psql" "postgresql://postgres@127.0.0.1:$PG_PORT/demo" -XAtc \
    "SELECT kpi.value('orders', 'orders', '1 day') > 0")
[ "$orders" = t ] || fail "the orders KPI has no orders in the last day"

for _ in $(seq 1 1800); do
    kill -0 "$demo" 2>/dev/null || break
    sleep 0.1
done
kill -0 "$demo" 2>/dev/null && fail "the demo did not stop by itself after DEMO_DURATION"
rc=0
wait "$demo" || rc=$?
[ "$rc" = 0 ] || fail "the demo exited with $rc after DEMO_DURATION"
all_stopped
got="$(received)"
grep -qx "checkout_error_rate firing" <<<"$got" || fail "the receiver got no firing checkout_error_rate; got: $got"
grep -qx "checkout_error_rate resolved" <<<"$got" || fail "the receiver got no resolved checkout_error_rate; got: $got"
grep -q "\[alert\].*checkout_error_rate" "$OUT" || fail "the demo did not print the alert"
log "run 1 passed: $(grep -c . <<<"$got") alert notifications received"

log "run 2: interrupted with SIGINT once it is running"
run_demo 0
wait_printed "Dashboard:   http://$HTTP/" 120
kill -INT "$demo"
for _ in $(seq 1 300); do
    kill -0 "$demo" 2>/dev/null || break
    sleep 0.1
done
kill -0 "$demo" 2>/dev/null && fail "the demo did not stop within 30 s of SIGINT"
wait "$demo" || true
grep -q "stopped" "$OUT" || fail "the demo did not say it stopped"
all_stopped
log "demo tests passed"
