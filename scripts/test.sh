#!/usr/bin/env bash
# Runs the whole test suite: formatting and lints, unit tests, #[pg_test]s inside a
# Postgres run by pgrx, and end-to-end tests against real throwaway clusters (with the
# notifier and real WebSocket/SSE clients). Installs what it needs first; safe to re-run.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LOG_TAG=test
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
cd "$ROOT"

"$ROOT/scripts/setup.sh"

log "packaging: Dockerfile lint, docker-compose.yml, setup.sh --build-only"
"$ROOT/scripts/check-packaging.sh"
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

log "unit tests (sketches)"
cargo test -p pg_kpi_sketches

log "#[pg_test]s (pgrx-managed Postgres)"
PGDATA_TEST="$ROOT/target/pgrx-test-data"
if [ "$(id -u)" = 0 ]; then
    install -d -o postgres -g postgres "$PGDATA_TEST"
    chmod a+rx "$ROOT/target"
    (cd pg_kpi && cargo pgrx test pg15 --runas postgres --pgdata "$PGDATA_TEST")
else
    (cd pg_kpi && cargo pgrx test pg15)
fi

# `cargo pgrx test` installed its test build; the end-to-end tests use the real one.
install_extension

log "end-to-end tests (real clusters)"
cargo test -p pg_kpi_e2e -p notifier --tests -- --test-threads=2
log "the demo (scripts/demo.sh, with a short incident)"
cargo build --release -p notifier
"$ROOT/scripts/test-demo.sh"
log "all tests passed"
