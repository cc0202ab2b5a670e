#!/usr/bin/env bash
# The overdue tick's cost (docs/current-state.md, "Deadlines passing without writes"):
# an overdue KPI over OPEN (1,000,000) open rows whose deadlines lie a day and more
# ahead. Each step makes N of them due DUE_IN seconds ahead (an UPDATE of due_at, then a
# fold that merges it), waits until they passed, and times in one session:
#   tick  the first kpi.fold() after the deadlines passed: what the fold worker runs
#         when it wakes at a deadline (no delta to merge; it finds the deadline gone,
#         bumps the KPI's version and probes the queue for the next one);
#   idle  the kpi.fold() right after it: nothing to merge, no deadline passed (the
#         baseline of a fold's fixed cost, measured in the same run);
#   read  kpi.value('late', 'overdue'): the count now (it sums the queue below now, so
#         it grows with every row overdue so far, not with N).
# N = 10 and 10,000, alternating round by round (ROUNDS, medians reported). The tick
# must cost O(rows due), here about the same for both; a tick that scanned the open rows
# would cost about what the scan printed first costs. Then CLOSED rows closed ahead of
# the next deadline: the fold deletes the queue rows they leave at zero count, so the
# tick's probe for the next deadline has nothing to walk over and costs what it did
# before (it walked them, 25x the tick, until 0.3.0's fold deleted them). Prints, never
# asserts.
#
#   OPEN=1000000   open rows       DUE_COUNTS="10 10000"   N values
#   ROUNDS=5       steps per N     DUE_IN=3                seconds from the UPDATE to due
#   CLOSED=100000  rows closed ahead for the last case (0: skip it)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

OPEN="${OPEN:-1000000}"
DUE_COUNTS="${DUE_COUNTS:-10 10000}"
ROUNDS="${ROUNDS:-5}"
DUE_IN="${DUE_IN:-3}"
CLOSED="${CLOSED:-100000}"

now_s() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }

start_cluster
# The fold worker off: the timed kpi.fold() is the tick (a running worker would take it
# first). kpi.fold() folds on demand whatever the setting.
sql "ALTER SYSTEM SET pg_kpi.fold_workers = off" >/dev/null
sql "SELECT pg_reload_conf()" >/dev/null
sql "CREATE TABLE tasks (id bigserial PRIMARY KEY, due_at timestamptz NOT NULL,
                         done boolean NOT NULL DEFAULT false)"
sql "INSERT INTO tasks (due_at)
     SELECT now() + interval '1 day' + g * interval '1 second' FROM generate_series(1, $OPEN) g" >/dev/null
sql "VACUUM ANALYZE tasks" >/dev/null
t0=$(now_s)
sql "SELECT kpi.create_overdue(name => 'late', source => 'tasks', due => 'due_at',
                               open_filter => 'NOT done')" >/dev/null
t1=$(now_s)
drain
for _ in $(seq 10); do
    state="$(sql "SELECT worker_state FROM kpi.status()")"
    [ "$state" != running ] && break
    sleep 0.5
done
[ "$state" != running ] || log "WARNING: the fold worker still runs; the tick timed may be its leftover"

# What a tick that looked at every open row would cost: one scan of the source.
scan_out="$(psql_db "$DB" -At <<'SQL'
\timing on
SELECT count(*) FROM tasks WHERE due_at < now() AND NOT done;
SELECT count(*) FROM tasks WHERE due_at < now() AND NOT done;
SELECT count(*) FROM tasks WHERE due_at < now() AND NOT done;
SQL
)"
# shellcheck disable=SC2046 # the three timings
scan_ms="$(median $(echo "$scan_out" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p'))"

# step N: N open rows (the last ones in the queue, so the rows they leave behind sit at
# its far end) made due DUE_IN seconds ahead, each at its own microsecond; prints
# "tick_ms idle_ms read_ms bumped value exact".
step() {
    local n="$1" out
    out="$(psql_db "$DB" -At <<SQL
UPDATE tasks t SET due_at = now() + interval '$DUE_IN seconds' + p.rn * interval '1 microsecond'
  FROM (SELECT id, row_number() OVER (ORDER BY id) AS rn FROM tasks
         WHERE NOT done AND due_at > now() + interval '1 hour' ORDER BY id DESC LIMIT $n) p
 WHERE t.id = p.id;
SELECT kpi.fold();
SELECT pg_sleep(greatest(0, extract(epoch FROM (SELECT max(due_at) FROM tasks WHERE due_at < now() + interval '1 hour') - clock_timestamp())) + 0.2);
SELECT version FROM kpi.definitions WHERE name = 'late';
\\timing on
SELECT kpi.fold();
SELECT kpi.fold();
SELECT kpi.value('late', 'overdue');
\\timing off
SELECT version FROM kpi.definitions WHERE name = 'late';
SELECT count(*) FROM tasks WHERE due_at < now() AND NOT done;
SQL
)"
    local -a times vals
    mapfile -t times < <(echo "$out" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p')
    mapfile -t vals < <(echo "$out" | grep -v '^Time' | tail -6)
    # vals: version before, tick fold, idle fold, value, version after, exact count
    local bumped=no exact=no
    [ "${vals[4]}" -gt "${vals[0]}" ] && bumped=yes
    [ "${vals[3]}" = "${vals[5]}" ] && exact=yes
    echo "${times[0]} ${times[1]} ${times[2]} $bumped ${vals[3]} $exact"
}

echo "== overdue tick: KPI 'late' over $OPEN open rows (backfill by kpi.create_overdue: $(secs "$t0" "$t1") s), fold worker off =="
echo "   scan of the open rows (what a tick looking at every open row would cost): $scan_ms ms"
declare -A ticks=() idles=() reads=()
log_lines=()
for r in $(seq "$ROUNDS"); do
    for n in $DUE_COUNTS; do
        read -r tick idle read bumped value exact <<<"$(step "$n")"
        ticks[$n]+=" $tick" idles[$n]+=" $idle" reads[$n]+=" $read"
        log_lines+=("round $r N=$n: tick $tick ms, idle $idle ms, read $read ms, version bumped: $bumped, overdue now $value (equals count(*): $exact)")
        [ "$bumped" = yes ] || log "WARNING: round $r N=$n: the tick did not bump the KPI's version"
        [ "$exact" = yes ] || log "WARNING: round $r N=$n: kpi.value $value differs from count(*)"
    done
done
printf '%-8s %12s %12s %12s %12s %14s\n' N "tick ms" "idle ms" "tick/idle" "read ms" "tick/scan"
first=""
for n in $DUE_COUNTS; do
    # shellcheck disable=SC2086 # space-separated lists
    tick="$(median ${ticks[$n]})" idle="$(median ${idles[$n]})" read="$(median ${reads[$n]})"
    printf '%-8s %12s %12s %12s %12s %14s\n' "$n" "$tick" "$idle" "$(ratio "$tick" "$idle")" \
        "$read" "$(ratio "$tick" "$scan_ms")"
    if [ -z "$first" ]; then
        first="$n" first_tick="$tick"
    else
        last="$n" last_tick="$tick"
    fi
done
if [ -n "${last:-}" ]; then
    echo "tick(N=$last) / tick(N=$first): $(ratio "$last_tick" "$first_tick")" \
        "(rows due x$((last / first)); O(rows due) or better: at most about that)"
fi
echo "rounds (medians of $ROUNDS above; 'read' counts every row overdue so far):"
printf '  %s\n' "${log_lines[@]}"

if [ "$CLOSED" -gt 0 ]; then
    # Rows closed before their deadline, ahead of the next live deadline: the fold that
    # merges the closes deletes their zero-count queue rows, so the probe after a tick
    # does not walk them (it did before: 40 ms per tick with 100,000 of them).
    sql "UPDATE tasks SET done = true WHERE id IN (SELECT id FROM tasks WHERE NOT done
                                                     AND due_at > now() + interval '1 hour'
                                                   ORDER BY due_at LIMIT $CLOSED)" >/dev/null
    drain
    sql "VACUUM ANALYZE" >/dev/null
    read -r tick idle read bumped value exact <<<"$(step 10)"
    echo "after closing the $CLOSED open rows due next (their queue rows deleted by the fold):"
    echo "  N=10: tick $tick ms (x$(ratio "$tick" "$first_tick") the N=$first tick above), idle $idle ms," \
        "read $read ms, version bumped: $bumped, overdue $value (exact: $exact)"
fi
