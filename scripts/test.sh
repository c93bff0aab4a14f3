#!/usr/bin/env bash
# Sets up and runs every test: formatting, lints, unit, integration (real MQTT clients over TCP,
# a real Kafka-protocol broker over TCP), crash and recovery tests.
#   bash scripts/test.sh            # everything
#   FERRY_CRASH_CYCLES=50 bash scripts/test.sh   # longer crash loops
#   FERRY_FUZZ_SECONDS=0 bash scripts/test.sh     # skip the fuzz gate (default 60 s per target)
#   FERRY_TEST_ARM64=1 bash scripts/test.sh       # also cross-build the arm64 .deb and run it
#                                                 # under qemu (as root; ~15 min more on 2 cores)
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

# Fuzz gate (docs/reliability-fuzz.md): builds the cargo-fuzz targets on stable (installs
# cargo-fuzz if missing), replays fuzz/regressions and the seeds, then fuzzes each target for
# FERRY_FUZZ_SECONDS (default 60; 0 skips). A finding fails the run; the input is kept in
# fuzz/artifacts/<target>/ and printed as base64 in the log.
fuzz_secs="${FERRY_FUZZ_SECONDS:-60}"
if [ "$fuzz_secs" != 0 ]; then
  echo "== fuzz: ${fuzz_secs}s per target (scripts/fuzz.sh)"
  fuzz_start=$(date +%s)
  bash scripts/fuzz.sh "$fuzz_secs"
  echo "== fuzz: done in $(( $(date +%s) - fuzz_start )) s"
fi

if [ "$(id -u)" = 0 ] && { [ "${CI:-}" = true ] || [ "${FERRY_TEST_DEB:-0}" = 1 ]; }; then
  echo "== package: build the .deb, install, run, publish, purge"
  command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked --quiet
  deb="$(bash scripts/build-deb.sh --lintian | tail -n 1)"
  bash scripts/deb-smoke.sh "$deb"
fi

if [ "${FERRY_TEST_ARM64:-0}" = 1 ]; then
  echo "== package arm64: cross-build the .deb, run it under qemu-aarch64"
  if [ "$(id -u)" = 0 ]; then
    dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu \
      g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user libssl-dev:arm64 mosquitto-clients
  fi
  rustup target list --installed | grep -qx aarch64-unknown-linux-gnu \
    || rustup target add aarch64-unknown-linux-gnu
  command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked --quiet
  deb_arm64="$(bash scripts/build-deb.sh --arch arm64 | tail -n 1)"
  bash scripts/deb-smoke-arm64.sh "$deb_arm64"
fi
