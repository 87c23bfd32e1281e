#!/usr/bin/env bash
# Installs what the integration tests need: system tools (espeak-ng, sox, tmux) and the
# official LiveKit Python peers in a venv at <repo>/.venv-peers (pinned in
# tests/peers/requirements.txt). Idempotent: run it again any time.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

APT_PACKAGES="espeak-ng sox tmux python3-venv cmake"
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
echo "test deps ready; peers python: $VENV/bin/python"
