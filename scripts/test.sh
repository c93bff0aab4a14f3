#!/usr/bin/env bash
# Sets up and runs every test: formatting, lints, unit, integration (real MQTT clients over TCP,
# a real Kafka-protocol broker over TCP), crash and recovery tests.
#   bash scripts/test.sh            # everything
#   FERRY_CRASH_CYCLES=50 bash scripts/test.sh   # longer crash loops
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-deps.sh
export FERRY_TANSU="${FERRY_TANSU:-$HOME/.local/share/ferry-test/bin/tansu}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets -- -D warnings
echo "== cargo test"
cargo test -- --test-threads=2
