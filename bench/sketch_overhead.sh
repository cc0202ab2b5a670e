#!/usr/bin/env bash
# Cost of the sketch measures (count_distinct: HyperLogLog; percentile: DDSketch).
#
# 1. Write overhead, as write_overhead.sh measures it (pgbench one-row INSERTs, 4 and 8
#    clients, DURATION seconds each), with a variant that adds the sketches:
#      bare    the table alone
#      kpi     the same 3 KPIs as write_overhead.sh
#      sketch  those 3 KPIs, checkout also with users = count_distinct(user_id) and
#              p95 = percentile(latency_ms, 0.95)
#      naive   (only if listed in VARIANTS) write_overhead.sh's PL/pgSQL trigger
#    Prints TPS and each variant's ratio to bare (target for sketch: >= 0.75).
# 2. Read latency, one client: a KPI holding 24 hours of 1-minute buckets (READ_ROWS rows
#    over 4 regions x 3 channels, inserted with INSERT ... SELECT and folded), and
#      kpi.value(k, m, '1 hour')                         target < 2 ms
#      SELECT * FROM kpi.series(k, m, now() - 24 hours)  target < 10 ms
#    for a sum, a count_distinct and a percentile measure, each run by pgbench for
#    READ_SECONDS; prints the average and p95 latency in ms.
# Measures, never asserts: timings depend on the machine.
#
#   DURATION=30  seconds per write run     CLIENTS="4 8"   ROUNDS=1 (median of ROUNDS)
#   VARIANTS="bare kpi sketch"             add naive: write_overhead.sh's PL/pgSQL trigger
#   READ_ROWS=500000  rows behind the 24 h of buckets     READ_SECONDS=10 per read query
#   SKIP_WRITES=1 / SKIP_READS=1           run one half only
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DURATION="${DURATION:-30}"
CLIENTS="${CLIENTS:-4 8}"
ROUNDS="${ROUNDS:-1}"
VARIANTS="${VARIANTS:-bare kpi sketch}"
READ_ROWS="${READ_ROWS:-500000}"
READ_SECONDS="${READ_SECONDS:-10}"
SKETCH_MEASURES="users = count_distinct(user_id), p95 = percentile(latency_ms, 0.95)"

start_cluster
scripts="$PGDIR/scripts"
mkdir -p "$scripts"

write_overhead() {
    local t variant clients
    for t in orders_bare orders_kpi orders_sketch orders_naive; do
        create_orders_table "$t"
        write_insert_script "$t" "$scripts/$t.sql"
    done
    create_three_kpis orders_kpi ""
    create_three_kpis orders_sketch "s_" "$SKETCH_MEASURES"
    create_naive_trigger

    echo "== sketch write overhead: one-row INSERTs, ${DURATION}s per run, median of $ROUNDS round(s) =="
    echo "   bare: table alone; kpi: 3 KPIs; sketch: 3 KPIs + $SKETCH_MEASURES"
    local header=(clients) v
    for v in $VARIANTS; do header+=("$v tps"); done
    for v in $VARIANTS; do [ "$v" = bare ] || header+=("$v/bare"); done
    printf '%-8s' "${header[0]}"
    printf ' %12s' "${header[@]:1}"
    echo
    for clients in $CLIENTS; do
        declare -A tps=() runs=()
        # Rounds alternate the variants, so that the machine's drift hits them alike.
        for _ in $(seq "$ROUNDS"); do
            for variant in $VARIANTS; do
                truncate_tables orders_bare orders_kpi orders_sketch orders_naive \
                    naive_checkout naive_totals naive_by_status
                runs[$variant]+=" $(run_pgbench "$scripts/orders_$variant.sql" "$clients")"
                sanity_check "$variant"
            done
        done
        for variant in $VARIANTS; do
            # shellcheck disable=SC2086 # the runs are a space-separated list
            tps[$variant]="$(median ${runs[$variant]})"
        done
        printf '%-8s' "$clients"
        for v in $VARIANTS; do printf ' %12.0f' "${tps[$v]}"; done
        for v in $VARIANTS; do [ "$v" = bare ] || printf ' %12s' "$(ratio "${tps[$v]}" "${tps[bare]}")"; done
        echo
        unset tps runs
    done
    echo "target: sketch/bare >= 0.75 (kpi/bare >= 0.80, as in write_overhead.sh)"
}

# Warns (never fails) when a variant's views do not account for what was inserted: a
# benchmark of a capture that loses rows would be meaningless.
sanity_check() {
    local prefix inserted counted
    case "$1" in
    kpi) prefix="" ;;
    sketch) prefix="s_" ;;
    *) return 0 ;;
    esac
    inserted="$(sql "SELECT count(*) FROM orders_$1")"
    counted="$(sql "SELECT coalesce(sum(orders), 0) FROM kpi.${prefix}totals")"
    [ "$inserted" = "$counted" ] ||
        log "WARNING: $inserted rows inserted into orders_$1 but kpi.${prefix}totals counts $counted"
    if [ "$1" = sketch ]; then
        # The distinct users of the last hour, against the exact count (2 % bound).
        local got want
        got="$(sql "SELECT kpi.value('s_checkout', 'users', '1 hour')")"
        want="$(sql "SELECT count(DISTINCT user_id) FROM orders_sketch
                      WHERE status <> 'cancelled'
                        AND created_at >= date_bin('1 minute', now() - interval '1 hour', '2000-01-01 00:00:00+00')")"
        python3 -c "import sys; g, w = float(sys.argv[1] or 0), float(sys.argv[2]); sys.exit(abs(g - w) > max(1, 0.02 * w))" \
            "$got" "$want" ||
            log "WARNING: kpi.value(s_checkout, users, 1 hour) = $got, exact count(DISTINCT user_id) = $want"
    fi
}

# latency QUERY -> prints "avg p95" in ms of QUERY run by one pgbench client for
# READ_SECONDS, from pgbench's per-transaction log (its summary has no percentiles).
latency() {
    local name="q$RANDOM" out stats
    printf '%s;\n' "$1" >"$scripts/$name.sql"
    out="$(cd "$scripts" && pgbench -n -M prepared -h 127.0.0.1 -p "$PORT" -U postgres -c 1 -j 1 \
        -T "$READ_SECONDS" -l --log-prefix="$name.log" -f "$name.sql" "$DB" 2>&1)" || {
        echo "$out" >&2
        return 1
    }
    # Log lines: client_id transaction_no latency_us script_no epoch_s epoch_us.
    stats="$(cat "$scripts/$name".log.* | python3 -c '
import sys
lat = sorted(int(line.split()[2]) / 1000 for line in sys.stdin if line.strip())
p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
print(f"{sum(lat) / len(lat):.3f} {p95:.3f} {len(lat)}")')"
    rm -f "$scripts/$name".*
    echo "$stats"
}

read_latency() {
    create_orders_table traffic
    sql "SELECT kpi.create(name => 'traffic', source => 'traffic', time_column => 'created_at',
            measures => 'revenue = sum(amount), orders = count(*),
                         users = count_distinct(user_id), p95 = percentile(latency_ms, 0.95)',
            dimensions => '{region, channel}', bucket => '1 minute')" >/dev/null
    # Inserted after kpi.create, so the rows go through the capture and the fold like
    # live traffic. user_id drawn from 50,000 users: each 1-minute group sees a few dozen
    # (sparse HLL), an hour or a day of them thousands to all 50,000.
    log "inserting $READ_ROWS rows over the last 24 hours"
    sql "INSERT INTO traffic (created_at, region, channel, status, amount, quantity, latency_ms, user_id)
         SELECT now() - random() * interval '24 hours',
                (ARRAY['eu', 'us', 'apac', 'latam'])[1 + g % 4],
                (ARRAY['web', 'app', 'store'])[1 + g % 3],
                'paid', (g % 100000) / 100.0, 1 + g % 9, exp(random() * 7), (random() * 50000)::int
           FROM generate_series(1, $READ_ROWS) g" >/dev/null
    drain
    sql "VACUUM ANALYZE" >/dev/null
    local groups
    groups="$(sql "SELECT count(*) FROM kpi.traffic")"

    echo
    echo "== read latency: KPI 'traffic', 24 h of 1-minute buckets x 4 regions x 3 channels" \
        "($groups view rows from $READ_ROWS rows), 1 client, ${READ_SECONDS}s per query =="
    printf '%-58s %9s %9s %8s %10s\n' query "avg ms" "p95 ms" runs target
    local measure kind q stats
    for measure in revenue users p95; do
        case "$measure" in
        revenue) kind="sum" ;;
        users) kind="count_distinct" ;;
        p95) kind="percentile" ;;
        esac
        q="SELECT kpi.value('traffic', '$measure', '1 hour')"
        stats="$(latency "$q")"
        # shellcheck disable=SC2086 # stats is "avg p95 runs"
        printf '%-58s %9s %9s %8s %10s\n' "value($measure: $kind, 1 hour)" $stats "< 2 ms"
        q="SELECT * FROM kpi.series('traffic', '$measure', now() - interval '24 hours')"
        stats="$(latency "$q")"
        # shellcheck disable=SC2086
        printf '%-58s %9s %9s %8s %10s\n' "series($measure: $kind, 24 h, 1-minute steps)" $stats "< 10 ms"
    done
    # What the reads return, against the exact values: the timings are of correct answers.
    sql "SELECT format('value check (last hour): revenue %s (exact %s), users %s (exact %s), p95 %s (exact %s)',
                kpi.value('traffic', 'revenue', '1 hour'), sum(amount),
                kpi.value('traffic', 'users', '1 hour'), count(DISTINCT user_id),
                round(kpi.value('traffic', 'p95', '1 hour'), 3),
                round((percentile_disc(0.95) WITHIN GROUP (ORDER BY latency_ms))::numeric, 3))
           FROM traffic
          WHERE created_at >= date_bin('1 minute', now() - interval '1 hour', '2000-01-01 00:00:00+00')"
    echo "series rows: $(sql "SELECT count(*) FROM kpi.series('traffic', 'revenue', now() - interval '24 hours')")"
}

[ -n "${SKIP_WRITES:-}" ] || write_overhead
[ -n "${SKIP_READS:-}" ] || read_latency
