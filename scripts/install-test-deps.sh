#!/usr/bin/env bash
# Installs what the integration tests need: system tools (espeak-ng, sox, tmux, Debian's
# chromium for the browser caller), the official LiveKit Python peers in a venv at
# <repo>/.venv-peers (pinned in tests/peers/requirements.txt) and the page's npm packages in
# web/node_modules (livekit-client, playwright-core; pinned in web/package-lock.json).
# Idempotent: run it again any time.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# postgresql: the server binaries (initdb, postgres) the PostgreSQL store tests start a throwaway server with.
APT_PACKAGES="espeak-ng sox tmux python3-venv cmake chromium postgresql"
# Node may come from elsewhere (e.g. NodeSource); Debian's only when there is none.
if ! command -v npm >/dev/null 2>&1; then APT_PACKAGES="$APT_PACKAGES nodejs npm"; fi
missing=""
for p in $APT_PACKAGES; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $p"
  fi
done
if [ -n "$missing" ]; then
  # apt-get update only when something is missing.
  $SUDO apt-get update
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y $missing
fi

VENV="$ROOT/.venv-peers"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/tests/peers/requirements.txt"
(cd "$ROOT/web" && npm ci --no-audit --no-fund --loglevel=error)
echo "test deps ready; peers python: $VENV/bin/python; browser packages in web/node_modules"
