# Shared helpers for the benchmark scripts: a throwaway cluster with pg_kpi preloaded,
# started on a free loopback port under target/bench-cluster and stopped on exit.
# Source it; it defines PORT, PGDIR and the functions below.
# shellcheck shell=bash

PG_BIN="${PG_BIN_DIR:-/usr/lib/postgresql/15/bin}"
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
# log, as_pg, free_port and create_database_offline.
LOG_TAG=bench
# shellcheck source=scripts/lib.sh
source "$REPO_DIR/scripts/lib.sh"
CLUSTER_ROOT="$REPO_DIR/target/bench-cluster"
DB=bench

# Server settings for every benchmark. synchronous_commit=off keeps the WAL flush of
# each commit out of the measurement, so the ratios show the CPU cost of capturing
# changes (what the extension controls) rather than the disk's fsync latency.
# Override with BENCH_PG_OPTS (e.g. "-c synchronous_commit=on").
BENCH_PG_OPTS="${BENCH_PG_OPTS:--c synchronous_commit=off}"

# Where pg_kpi's files come from: the system installation, or the output of
# `cargo pgrx package --out-dir DIR` when PG_KPI_PACKAGE=DIR (a release build that
# `cargo pgrx test`, which installs a debug build, cannot overwrite).
PG_KPI_PACKAGE="${PG_KPI_PACKAGE:-}"

require_extension() {
    local sharedir pkglibdir
    sharedir="$PG_KPI_PACKAGE$("$PG_BIN/pg_config" --sharedir)"
    pkglibdir="$PG_KPI_PACKAGE$("$PG_BIN/pg_config" --pkglibdir)"
    if [ ! -f "$sharedir/extension/pg_kpi.control" ]; then
        echo "pg_kpi is not installed in ${PG_KPI_PACKAGE:-the system}:" \
            "run 'cargo pgrx install --release' in pg_kpi/ first" >&2
        exit 1
    fi
    # `cargo pgrx test` installs a debug build; measuring that would be meaningless.
    if readelf -S "$pkglibdir/pg_kpi.so" 2>/dev/null | grep -q '\.debug_info'; then
        log "WARNING: the installed pg_kpi.so has debug info: is it a debug build?" \
            "Run 'cargo pgrx install --release' in pg_kpi/ for meaningful figures."
    fi
}

# Runs the cluster from a private copy of the installation in $PGDIR/install, because
# `cargo pgrx install` rewrites pg_kpi.so in place and a server that has it mapped then
# crashes (SIGBUS). Postgres finds its lib and share directories relative to its own
# executable, so the binaries are copied, pg_kpi's files too, and the rest is symlinked.
snapshot_install() {
    local bindir pkglibdir sharedir root="$PGDIR/install" f
    bindir="$("$PG_BIN/pg_config" --bindir)"
    pkglibdir="$("$PG_BIN/pg_config" --pkglibdir)"
    sharedir="$("$PG_BIN/pg_config" --sharedir)"
    mkdir -p "$root$bindir" "$root$pkglibdir" "$root$sharedir/extension"
    cp -p "$bindir"/* "$root$bindir/"
    for f in "$pkglibdir"/*; do
        case "$(basename "$f")" in
        pg_kpi*) ;;
        *) ln -s "$f" "$root$pkglibdir/" ;;
        esac
    done
    cp -p "$PG_KPI_PACKAGE$pkglibdir"/pg_kpi* "$root$pkglibdir/"
    for f in "$sharedir"/*; do
        [ "$(basename "$f")" = extension ] || ln -s "$f" "$root$sharedir/"
    done
    for f in "$sharedir"/extension/*; do
        case "$(basename "$f")" in
        pg_kpi*) ;;
        *) ln -s "$f" "$root$sharedir/extension/" ;;
        esac
    done
    cp -p "$PG_KPI_PACKAGE$sharedir"/extension/pg_kpi* "$root$sharedir/extension/"
    PG_BIN="$root$bindir"
}

# Starts the cluster and creates database `bench` with the extension.
start_cluster() {
    require_extension
    mkdir -p "$CLUSTER_ROOT"
    PGDIR="$(mktemp -d "$CLUSTER_ROOT/c.XXXXXX")"
    if [ "$(id -u)" = 0 ]; then
        # The data directory and its parents must be reachable by postgres.
        chmod a+rx "$REPO_DIR/target" "$CLUSTER_ROOT"
    fi
    PORT="$(free_port)"
    trap stop_cluster EXIT
    snapshot_install
    chmod -R a+rX "$PGDIR"
    if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$PGDIR"; fi
    as_pg "$PG_BIN/initdb" -A trust -U postgres -E UTF8 --no-sync -D "$PGDIR/data" >/dev/null
    # One line: pg_ctl passes -o through a shell, where a newline would end the command.
    local opts="-p $PORT -k $PGDIR -c listen_addresses=127.0.0.1 -c max_connections=50"
    opts+=" -c shared_buffers=256MB -c max_wal_size=4GB -c checkpoint_timeout=30min"
    opts+=" -c shared_preload_libraries=pg_kpi -c pg_kpi.databases=$DB $BENCH_PG_OPTS"
    # Created before the server starts, so that the fold worker finds its database at once.
    create_database_offline "$PGDIR/data" "$DB"
    as_pg "$PG_BIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/server.log" -w -t 60 -o "$opts" start >/dev/null
    psql_db "$DB" -c "CREATE EXTENSION pg_kpi" >/dev/null
    log "cluster on port $PORT in $PGDIR"
}

stop_cluster() {
    if [ -n "${PGDIR:-}" ] && [ -d "$PGDIR/data" ]; then
        as_pg "$PG_BIN/pg_ctl" -D "$PGDIR/data" -m fast -w stop >/dev/null 2>&1 || true
        if [ -z "${KEEP_CLUSTER:-}" ]; then rm -rf "$PGDIR"; fi
    fi
}

# psql_db DB [psql args...]: quiet, stop on the first error.
psql_db() {
    local db="$1"
    shift
    psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d "$db" "$@"
}

# psql against `bench`, printing bare values.
sql() { psql_db "$DB" -At -c "$1"; }

# The orders schema used by every benchmark: $1 is the table name. `user_id` is what the
# sketch benchmark's count_distinct counts; every table has it (and every INSERT sets
# it) so that the variants compared write rows of the same size.
create_orders_table() {
    sql "CREATE TABLE $1 (
        id bigserial PRIMARY KEY,
        created_at timestamptz NOT NULL,
        region text, channel text, status text,
        amount numeric(12,2), quantity int, latency_ms double precision, user_id int)"
}

# Three KPIs on table $1 (prefix $2 for their names), as the write benchmarks measure:
# - ${2}checkout: two dimensions and a filter, 1-minute buckets;
# - ${2}totals: no dimensions, 1-day bucket: every row lands in the same aggregate row,
#   the case where a naive trigger makes all writers queue on one row lock;
# - ${2}by_status: one dimension, min/max.
# $3, optional, is appended to ${2}checkout's measures (the sketch benchmark adds its
# sketch measures there, so the variants differ only by those measures).
create_three_kpis() {
    local t="$1" p="$2" extra="${3:+, $3}"
    sql "SELECT kpi.create(name => '${p}checkout', source => '$t', time_column => 'created_at',
            measures => 'revenue = sum(amount * quantity), orders = count(*), aov = avg(amount)$extra',
            dimensions => '{region, channel}', filter => \$\$status <> 'cancelled'\$\$,
            bucket => '1 minute')" >/dev/null
    sql "SELECT kpi.create(name => '${p}totals', source => '$t', time_column => 'created_at',
            measures => 'orders = count(*), revenue = sum(amount)', bucket => '1 day')" >/dev/null
    sql "SELECT kpi.create(name => '${p}by_status', source => '$t', time_column => 'created_at',
            measures => 'n = count(*), lo = min(amount), hi = max(amount)',
            dimensions => '{status}', bucket => '1 hour')" >/dev/null
}

# The naive baseline on table orders_naive: what a user writes without the extension.
# Same three aggregates as create_three_kpis (insert-only, so it does even less than
# pg_kpi: no deletes, no min/max rescans), each an UPSERT of a shared row, plus a
# NOTIFY per row. Its aggregate tables are naive_checkout, naive_totals, naive_by_status.
create_naive_trigger() {
    psql_db "$DB" <<'SQL'
CREATE TABLE naive_checkout (bucket timestamptz, region text, channel text,
    revenue numeric, orders bigint, amount_sum numeric, amount_n bigint,
    PRIMARY KEY (bucket, region, channel));
CREATE TABLE naive_totals (bucket timestamptz PRIMARY KEY, orders bigint, revenue numeric);
CREATE TABLE naive_by_status (bucket timestamptz, status text, n bigint, lo numeric, hi numeric,
    PRIMARY KEY (bucket, status));
CREATE FUNCTION naive_capture() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status <> 'cancelled' THEN
        INSERT INTO naive_checkout AS a
        VALUES (date_bin('1 minute', NEW.created_at, '2000-01-01 00:00:00+00'),
                NEW.region, NEW.channel, NEW.amount * NEW.quantity, 1, NEW.amount, 1)
        ON CONFLICT (bucket, region, channel) DO UPDATE
           SET revenue = a.revenue + EXCLUDED.revenue, orders = a.orders + 1,
               amount_sum = a.amount_sum + EXCLUDED.amount_sum, amount_n = a.amount_n + 1;
    END IF;
    INSERT INTO naive_totals AS a
    VALUES (date_bin('1 day', NEW.created_at, '2000-01-01 00:00:00+00'), 1, NEW.amount)
    ON CONFLICT (bucket) DO UPDATE
       SET orders = a.orders + 1, revenue = a.revenue + EXCLUDED.revenue;
    INSERT INTO naive_by_status AS a
    VALUES (date_bin('1 hour', NEW.created_at, '2000-01-01 00:00:00+00'), NEW.status, 1,
            NEW.amount, NEW.amount)
    ON CONFLICT (bucket, status) DO UPDATE
       SET n = a.n + 1, lo = least(a.lo, EXCLUDED.lo), hi = greatest(a.hi, EXCLUDED.hi);
    PERFORM pg_notify('naive_changes', json_build_object('id', NEW.id, 'bucket',
        date_bin('1 minute', NEW.created_at, '2000-01-01 00:00:00+00'))::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER naive_capture AFTER INSERT ON orders_naive
    FOR EACH ROW EXECUTE FUNCTION naive_capture();
SQL
}

# write_insert_script TABLE FILE: a pgbench script of one one-row INSERT into TABLE (one
# script per table: prepared statements cannot take the table as a parameter).
write_insert_script() {
    cat >"$2" <<SQL
\set r random(1, 4)
\set c random(1, 3)
\set cents random(100, 100000)
\set q random(1, 10)
\set u random(1, 100000)
INSERT INTO $1 (created_at, region, channel, status, amount, quantity, latency_ms, user_id)
VALUES (now(), (ARRAY['eu', 'us', 'apac', 'latam'])[:r], (ARRAY['web', 'app', 'store'])[:c],
        CASE WHEN :q = 10 THEN 'cancelled' ELSE 'paid' END, :cents / 100.0, :q, random() * 1000, :u);
SQL
}

# run_pgbench SCRIPT CLIENTS -> prints the TPS of DURATION seconds of SCRIPT.
run_pgbench() {
    local out
    out="$(pgbench -n -M prepared -h 127.0.0.1 -p "$PORT" -U postgres -c "$2" -j "$2" \
        -T "$DURATION" -f "$1" "$DB" 2>&1)" || {
        echo "$out" >&2
        return 1
    }
    echo "$out" | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | head -1
}

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# truncate_tables TABLE...: folds first so the fold worker is idle, and retries: a
# TRUNCATE racing a fold can fail with a deadlock (a pg_kpi bug reported by the e2e
# tests), which must not abort the benchmark. Folds, checkpoints and analyzes after.
truncate_tables() {
    drain
    local attempt
    for attempt in 1 2 3 4 5; do
        if sql "TRUNCATE $(IFS=,; echo "$*")" >/dev/null 2>"$PGDIR/truncate.err"; then
            break
        fi
        log "TRUNCATE attempt $attempt failed: $(head -1 "$PGDIR/truncate.err")"
        [ "$attempt" -lt 5 ] || exit 1
        sleep 1
    done
    drain
    sql "VACUUM ANALYZE" >/dev/null
}

# Folds whatever is pending so the next measurement does not pay for this one.
drain() {
    sql "SELECT kpi.fold()" >/dev/null
    sql "CHECKPOINT" >/dev/null
}

ratio() { python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print(f'{a / b:.2f}' if b else 'n/a')" "$1" "$2"; }
