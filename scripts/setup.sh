#!/usr/bin/env bash
# Installs everything pg_kpi needs to build, test and demo on Debian/Ubuntu.
# Safe to re-run: every step checks whether it is already done.
#   - apt packages, with the Postgres headers pinned to the installed server's
#     version (unpinned, apt would upgrade the server and libpq along with them)
#   - cargo-pgrx at exactly the workspace's pgrx version
#   - `cargo pgrx init` against the system pg_config (never a downloaded Postgres)
#   --build-only: only what building pg_kpi and the notifier needs (the Dockerfile's
#   builder): no test or demo tools, and the dashboard is built later, with the sources
set -euo pipefail
BUILD_ONLY=0
[ "${1:-}" = --build-only ] && BUILD_ONLY=1

PG_MAJOR="${PG_MAJOR:-15}"
PGRX_VERSION="0.18.1"
PG_CONFIG="/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

# Run as root directly, otherwise through sudo.
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

need_apt=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

if ! have_pkg "postgresql-${PG_MAJOR}"; then
    need_apt+=("postgresql-${PG_MAJOR}")
fi
# prometheus: its promtool validates the notifier's /metrics in the tests.
# prometheus-alertmanager and python3-aiosmtpd: the real Alertmanager and SMTP
# server the alert tests deliver to.
# wrk: the HTTP load generator of bench/ingest.sh.
# chromium: the headless browser the dashboard's test drives (DevTools Protocol).
for pkg in libclang-dev clang sudo pkg-config libssl-dev libpq-dev postgresql-contrib prometheus \
    prometheus-alertmanager python3-aiosmtpd wrk chromium; do
    have_pkg "$pkg" || need_apt+=("$pkg")
done
# Node builds the dashboard's front end (scripts/build-dashboard.sh); any node/npm on
# the PATH will do, Debian's otherwise.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    need_apt+=(nodejs npm)
fi
# docker-compose: validates docker-compose.yml (scripts/check-packaging.sh).
have_pkg docker-compose || need_apt+=(docker-compose)
if [ "$BUILD_ONLY" = 1 ]; then
    # postgresql-contrib is a meta-package that would pull in the newest server.
    build_apt=()
    for pkg in "${need_apt[@]}"; do
        case "$pkg" in
        sudo | postgresql-contrib | prometheus | prometheus-alertmanager | python3-aiosmtpd | wrk | chromium | docker-compose) ;;
        *) build_apt+=("$pkg") ;;
        esac
    done
    need_apt=("${build_apt[@]}")
fi
# The headers must match the server exactly, or apt upgrades the server too.
if ! have_pkg "postgresql-server-dev-${PG_MAJOR}"; then
    if have_pkg "postgresql-${PG_MAJOR}"; then
        server_version="$(dpkg-query -W -f='${Version}' "postgresql-${PG_MAJOR}")"
        need_apt+=("postgresql-server-dev-${PG_MAJOR}=${server_version}")
    else
        need_apt+=("postgresql-server-dev-${PG_MAJOR}")
    fi
fi
if [ "${#need_apt[@]}" -gt 0 ]; then
    log "installing apt packages: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
else
    log "apt packages already installed"
fi

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust 1.95 with rustup first" >&2
    exit 1
fi
if cargo pgrx --version 2>/dev/null | grep -q " ${PGRX_VERSION}\$"; then
    log "cargo-pgrx ${PGRX_VERSION} already installed"
else
    log "installing cargo-pgrx ${PGRX_VERSION} (about 6 minutes on 2 cores)"
    cargo install cargo-pgrx --version "=${PGRX_VERSION}" --locked
fi

if grep -qs "pg${PG_MAJOR} = \"${PG_CONFIG}\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
    log "cargo pgrx already initialised for pg${PG_MAJOR}"
else
    log "cargo pgrx init --pg${PG_MAJOR} ${PG_CONFIG}"
    cargo pgrx init "--pg${PG_MAJOR}" "${PG_CONFIG}"
fi
if [ "$BUILD_ONLY" = 1 ]; then
    log "done (build dependencies only)"
    exit 0
fi
# The notifier embeds the built dashboard; this is a no-op when it is up to date.
"$(dirname "$0")/build-dashboard.sh"
log "done"
