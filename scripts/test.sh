#!/usr/bin/env bash
# Runs every test: installs what the tests need (espeak-ng, sox, tmux, the official LiveKit
# Python peers in .venv-peers), then the whole workspace's tests, then checks that the
# benchmarks still build. Every test binary runs even after one fails, so one run shows all
# that fail.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/install-test-deps.sh
cargo test --workspace --locked --no-fail-fast "$@"
cargo build --benches --locked
