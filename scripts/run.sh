#!/usr/bin/env bash
# Runs the worker: builds it (release) and starts `consultant dev` (or the subcommand given,
# e.g. `start`). Needs only the Rust toolchain; configuration comes from config.toml, .env
# and the environment (see README.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# libopus (room audio) is built from bundled source with cmake.
if ! command -v cmake >/dev/null 2>&1; then
  SUDO=""; if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y cmake
fi
cargo build --release --locked --bin consultant
# The caller page (`consultant web`) serves livekit-client from web/node_modules.
if [ ! -f web/node_modules/livekit-client/dist/livekit-client.umd.js ] && command -v npm >/dev/null 2>&1; then
  (cd web && npm ci --omit=dev --no-audit --no-fund --loglevel=error)
fi
if [ "$#" -eq 0 ]; then set -- dev; fi
exec ./target/release/consultant "$@"
