#!/usr/bin/env bash
# Sets up and runs every test: formatting, lints, unit, integration (real MQTT clients over TCP,
# a real Kafka-protocol broker over TCP), crash and recovery tests.
#   bash scripts/test.sh            # everything
#   FERRY_CRASH_CYCLES=50 bash scripts/test.sh   # longer crash loops
# In CI (CI=true, as root) or with FERRY_TEST_DEB=1 it also builds the .deb, installs it on
# this machine, runs the daemon from it, publishes with mosquitto_pub, and purges it
# (scripts/deb-smoke.sh) — that really installs a package, so it is off on a developer box.
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

if [ "$(id -u)" = 0 ] && { [ "${CI:-}" = true ] || [ "${FERRY_TEST_DEB:-0}" = 1 ]; }; then
  echo "== package: build the .deb, install, run, publish, purge"
  command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked --quiet
  deb="$(bash scripts/build-deb.sh --lintian | tail -n 1)"
  bash scripts/deb-smoke.sh "$deb"
fi
