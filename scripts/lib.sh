# Shared helpers for the scripts: a throwaway Postgres cluster run by the `postgres`
# OS user when we are root (Postgres refuses to run as root), by the caller otherwise.
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
PG_CONFIG="$PG_BIN/pg_config"

# Bold tag on a terminal, plain text in logs and result files.
log() {
    if [ -t 2 ]; then
        printf '\033[1m[%s]\033[0m %s\n' "${LOG_TAG:-pg_kpi}" "$*" >&2
    else
        printf '[%s] %s\n' "${LOG_TAG:-pg_kpi}" "$*" >&2
    fi
}

as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# cluster_start DIR PORT DBNAME  — initdb (if needed) and start with pg_kpi preloaded.
cluster_start() {
    local dir="$1" port="$2" db="$3"
    mkdir -p "$(dirname "$dir")"
    if [ "$(id -u)" = 0 ]; then
        install -d -o postgres -g postgres "$dir"
        install -o postgres -g postgres -m 644 /dev/null "$dir.log"
        chmod a+rx "$(dirname "$dir")"
    else
        mkdir -p "$dir"; : > "$dir.log"
    fi
    if [ ! -f "$dir/PG_VERSION" ]; then
        as_pg "$PG_BIN/initdb" -A trust -U postgres -E UTF8 -D "$dir" >/dev/null
        # Before the server starts, so that the fold worker finds its database at once
        # (otherwise it exits and the postmaster restarts it a second later).
        create_database_offline "$dir" "$db"
    fi
    as_pg "$PG_BIN/pg_ctl" -D "$dir" -l "$dir.log" -w -o \
        "-p $port -k /tmp -c listen_addresses=127.0.0.1 -c shared_preload_libraries=pg_kpi -c pg_kpi.databases=$db -c max_connections=200" \
        start >/dev/null
}

# create_database_offline DATADIR DBNAME — CREATE DATABASE in single-user mode, with the
# server stopped.
create_database_offline() {
    local out
    if ! out="$(echo "CREATE DATABASE $2" | as_pg "$PG_BIN/postgres" --single -D "$1" postgres 2>&1)" ||
        grep -q 'ERROR:' <<<"$out"; then
        printf '%s\n' "$out" >&2
        log "could not create database $2 in $1"
        return 1
    fi
}

cluster_stop() {
    local dir="$1"
    [ -f "$dir/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null 2>&1 || true
}

# Installs the extension into the system Postgres (release build; seconds when built).
install_extension() {
    log "building and installing pg_kpi (release)"
    (cd "$ROOT/pg_kpi" && cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null)
    # Older releases' frozen install scripts and the upgrade scripts, for CREATE EXTENSION
    # pg_kpi VERSION '…' and ALTER EXTENSION pg_kpi UPDATE (docs/releasing.md). The current
    # version's script is the one pgrx just generated: an existing script is kept.
    local extdir f
    extdir="$("$PG_CONFIG" --sharedir)/extension"
    for f in "$ROOT"/pg_kpi/sql/releases/pg_kpi--*.sql "$ROOT"/pg_kpi/sql/upgrades/pg_kpi--*--*.sql; do
        [ -f "$f" ] || continue
        case "$f" in */releases/*) [ -e "$extdir/${f##*/}" ] && continue ;; esac
        install -m 644 "$f" "$extdir/"
    done
}
