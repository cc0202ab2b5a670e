#!/usr/bin/env bash
# Builds the dashboard's front end (dashboard/ → dashboard/dist/), which the notifier
# embeds at compile time. Node is needed only when the front end changed: a hash of the
# sources, the lockfile and the build script is kept in dist/.stamp, and a run whose
# hash matches does nothing. `npm ci` installs exactly the committed package-lock.json.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="$ROOT/dashboard"
STAMP="$DIR/dist/.stamp"
LOG_TAG=dashboard
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

hash="$(cd "$DIR" && find package.json package-lock.json build.mjs src -type f -print0 \
    | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$hash" ] && [ -f "$DIR/dist/index.html" ]; then
    log "dashboard/dist is up to date"
    exit 0
fi
if ! command -v npm >/dev/null; then
    echo "npm not found: run scripts/setup.sh (it installs nodejs and npm)" >&2
    exit 1
fi
log "npm ci"
(cd "$DIR" && npm ci --no-audit --no-fund --loglevel=error)
log "building dashboard/dist"
(cd "$DIR" && node build.mjs)
echo "$hash" >"$STAMP"
