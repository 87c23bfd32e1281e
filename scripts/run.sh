#!/usr/bin/env bash
# Runs the worker: builds it (release) and starts `consultant dev` (or the subcommand given,
# e.g. `start`). Needs only the Rust toolchain; configuration comes from config.toml, .env
# and the environment (see README.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --locked --bin consultant
if [ "$#" -eq 0 ]; then set -- dev; fi
exec ./target/release/consultant "$@"
