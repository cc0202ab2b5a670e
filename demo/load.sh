#!/usr/bin/env bash
# demo/load.sh DATABASE_URL — the demo shop's live traffic, until stopped.
#
# Visitors arrive at random (pgbench's Poisson schedule) at the rate shop.traffic(now())
# gives for the time of day, re-read every few seconds, each one a shop.visit(): a
# session, page views and API calls, and for some a checkout attempt and an order.
# After DEMO_INCIDENT_AFTER seconds (default 180) the payment gateway has an incident
# for DEMO_INCIDENT_FOR seconds (default 180; 0 = none): DEMO_INCIDENT_ERROR_RATE
# (default 0.4) of checkout attempts fail and the checkout API is slow, which sets off
# the checkout_error_rate and api_p95_latency alerts. DEMO_DURATION > 0 stops after that
# many seconds. The database needs demo/shop.sql (scripts/demo.sh loads it).
set -euo pipefail
URL="${1:?usage: demo/load.sh DATABASE_URL}"
HERE="$(cd "$(dirname "$0")" && pwd)"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
PGBENCH="$PG_BIN/pgbench"; [ -x "$PGBENCH" ] || PGBENCH=pgbench
PSQL="$PG_BIN/psql"; [ -x "$PSQL" ] || PSQL=psql
DURATION="${DEMO_DURATION:-0}"
INCIDENT_AFTER="${DEMO_INCIDENT_AFTER:-180}"
INCIDENT_FOR="${DEMO_INCIDENT_FOR:-180}"
INCIDENT_ERROR_RATE="${DEMO_INCIDENT_ERROR_RATE:-0.4}"
INCIDENT_SLOW_RATE="${DEMO_INCIDENT_SLOW_RATE:-0.3}"
# pgbench's own reports go here (DEMO_LOAD_LOG); this script's lines go to stderr.
LOAD_LOG="${DEMO_LOAD_LOG:-/dev/null}"
STEP=5   # seconds per pgbench run: how often the rate follows the clock

say() { printf '[load] %s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

child=""
stop() {
    [ -n "$child" ] && kill "$child" 2>/dev/null
    exit 0
}
trap stop INT TERM

start=$(date +%s)
phase=""
while :; do
    elapsed=$(( $(date +%s) - start ))
    if [ "$DURATION" -gt 0 ] && [ "$elapsed" -ge "$DURATION" ]; then
        say "done after ${elapsed}s"
        break
    fi
    # The rate of the moment and the normal failure shares, from the database, so the
    # live traffic has the shape the history was drawn with.
    if ! read -r rate peak error_rate slow_rate < <("$PSQL" "$URL" -X -At -F ' ' -v ON_ERROR_STOP=1 -c \
        "SELECT round(shop.traffic(now())::numeric, 3), rate, error_rate, slow_rate FROM shop.settings"); then
        say "cannot read shop.settings (database down, or demo/shop.sql not loaded); retrying"
        sleep 2
        continue
    fi
    if [ "$INCIDENT_FOR" -gt 0 ] && [ "$elapsed" -ge "$INCIDENT_AFTER" ] &&
        [ "$elapsed" -lt $((INCIDENT_AFTER + INCIDENT_FOR)) ]; then
        error_rate="$INCIDENT_ERROR_RATE"; slow_rate="$INCIDENT_SLOW_RATE"
        # The incident plays at the evening peak's traffic whatever the hour: at night a
        # handful of checkouts a minute would not carry the error rate over the alert's
        # floor (greatest(attempts, 20)), and the demo would show no alert.
        rate="$(awk -v r="$rate" -v p="$peak" 'BEGIN { print (r > p ? r : p) }')"
        now_phase="incident"
    else
        now_phase="normal"
    fi
    if [ "$now_phase" != "$phase" ]; then
        case "$now_phase" in
            incident) say "INCIDENT: the payment gateway fails $(awk "BEGIN{print $error_rate*100}") % of checkouts for ${INCIDENT_FOR}s" ;;
            normal) if [ -n "$phase" ]; then say "incident over: checkouts back to normal"; else
                say "$rate visitors/s now (the rate follows the time of day)"; fi ;;
        esac
        phase="$now_phase"
    fi
    "$PGBENCH" "$URL" -n -c 1 -R "$rate" -T "$STEP" -f "$HERE/load.sql" \
        -D error_rate="$error_rate" -D slow_rate="$slow_rate" >>"$LOAD_LOG" 2>&1 &
    child=$!
    if ! wait "$child"; then
        say "pgbench failed (see ${LOAD_LOG}); retrying"
        sleep 1
    fi
    child=""
done
