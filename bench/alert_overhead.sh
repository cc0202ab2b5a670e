#!/usr/bin/env bash
# Write overhead of alert rules: one-row INSERTs through pgbench into
#   (a) a bare table,
#   (b) the same table with the 3 KPIs of write_overhead.sh,
#   (c) the same again with 10 alert rules on its checkout KPI (thresholds, a ratio,
#       two grouped by region, an anomaly and an absence),
# at 4 and 8 clients. Rules are evaluated by the fold worker, never by writers, so c/b
# should stay near 1 (the issue's bar: rules must not lower the write ratio). Also
# prints how many transitions the rules made and how long one evaluation of all of
# them takes. Measures, never asserts.
#
#   DURATION=30   seconds per run        CLIENTS="4 8"   client counts
#   ROUNDS=1      runs per variant; the median TPS is reported
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DURATION="${DURATION:-30}"
CLIENTS="${CLIENTS:-4 8}"
ROUNDS="${ROUNDS:-1}"

start_cluster

create_orders_table orders_bare
create_orders_table orders_kpi
create_orders_table orders_rules
create_three_kpis orders_kpi ""
create_three_kpis orders_rules "r_"

# Ten rules on r_checkout, of every kind, some crossing under this load and some not.
psql_db "$DB" >/dev/null <<'SQL'
SELECT kpi.create_alert('busy', 'r_checkout', 'orders > 1000', '1 minute');
SELECT kpi.create_alert('quiet', 'r_checkout', 'orders < 10', '1 minute', "for" => '5 seconds');
SELECT kpi.create_alert('big_basket', 'r_checkout', 'revenue / nullif(orders, 0) > 5000', '5 minutes');
SELECT kpi.create_alert('cheap', 'r_checkout', 'aov < 1', '5 minutes', severity => 'info');
SELECT kpi.create_alert('region_busy', 'r_checkout', 'orders > 500', '1 minute', group_by => 'region');
SELECT kpi.create_alert('channel_revenue', 'r_checkout', 'revenue > 1000000', '10 minutes', group_by => 'channel');
SELECT kpi.create_alert('hot', 'r_checkout', 'revenue > 10000', '1 minute', keep_firing_for => '10 seconds', recover => 5000);
SELECT kpi.create_alert('spike', 'r_checkout', 'anomaly(orders, 3)', '10 minutes');
SELECT kpi.create_alert('silent', 'r_checkout', 'absent(1 minute)');
SELECT kpi.create_alert('slow_revenue', 'r_checkout', 'revenue < 100', '1 minute', "for" => '30 seconds', severity => 'critical');
SQL

scripts="$PGDIR/scripts"
mkdir -p "$scripts"
for t in orders_bare orders_kpi orders_rules; do
    write_insert_script "$t" "$scripts/$t.sql"
done

echo "== alert rules' write overhead: one-row INSERTs, ${DURATION}s per run, median of $ROUNDS round(s) =="
echo "   (a) bare table  (b) 3 KPIs  (c) 3 KPIs + 10 alert rules"
printf '%-8s %12s %12s %12s %8s %8s\n' clients "a bare tps" "b kpi tps" "c rules tps" "b/a" "c/b"
for clients in $CLIENTS; do
    declare -A tps=() runs=()
    for _ in $(seq "$ROUNDS"); do
        for variant in bare kpi rules; do
            truncate_tables orders_bare orders_kpi orders_rules
            runs[$variant]+=" $(run_pgbench "$scripts/orders_$variant.sql" "$clients")"
        done
    done
    for variant in bare kpi rules; do
        # shellcheck disable=SC2086 # the runs are a space-separated list
        tps[$variant]="$(median ${runs[$variant]})"
    done
    printf '%-8s %12.0f %12.0f %12.0f %8s %8s\n' "$clients" "${tps[bare]}" "${tps[kpi]}" \
        "${tps[rules]}" "$(ratio "${tps[kpi]}" "${tps[bare]}")" "$(ratio "${tps[rules]}" "${tps[kpi]}")"
    unset tps runs
done
echo "target: c/b about 1.00 (rules cost the fold, not the writers)"

transitions="$(sql "SELECT count(*) FROM kpi.alert_history")"
errors="$(sql "SELECT count(*) FROM kpi.alert_rules WHERE last_error IS NOT NULL")"
# One evaluation of all ten rules, as the fold worker runs it once a second, after the
# last run's deltas are folded (so it waits for no fold), in a session whose plans are
# already made (as the worker's are): the first call of a new session also plans.
drain
eval_ms="$(psql_db "$DB" -At <<'SQL' | tail -1
SELECT kpi.evaluate_alerts();
BEGIN;
SELECT round(extract(epoch FROM clock_timestamp() - now()) * 1000, 1) FROM (SELECT kpi.evaluate_alerts()) e;
COMMIT;
SQL
)"
echo "alert transitions recorded: $transitions; rules with errors: $errors; one evaluation of all 10 rules: ${eval_ms} ms"
