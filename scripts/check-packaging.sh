#!/usr/bin/env bash
# Tests what can be tested of the packaging without building an image (no container
# registry here): the Dockerfile's lint and references, docker-compose.yml's validation
# and references (tools/packaging/check.mjs, from its committed lockfile), the compose
# file through docker-compose itself when installed, and the build-dependency step the
# Dockerfile runs (scripts/setup.sh --build-only: idempotent, seconds when done).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LOG_TAG=packaging
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

log "npm ci (tools/packaging)"
(cd "$ROOT/tools/packaging" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
node "$ROOT/tools/packaging/check.mjs" "$ROOT"
if command -v docker-compose >/dev/null; then
    log "docker-compose config"
    (cd "$ROOT" && docker-compose -f docker-compose.yml config -q)
else
    log "docker-compose not installed: compose checked by check.mjs only"
fi
log "scripts/setup.sh --build-only (the Dockerfile's build-dependency step)"
"$ROOT/scripts/setup.sh" --build-only
log "packaging checks passed"
