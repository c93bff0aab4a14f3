#!/usr/bin/env bash
# Sets up and runs ferry in the foreground with its default config (config/ferry.toml):
# MQTT on 0.0.0.0:1883, data in /var/lib/ferry, Kafka at the config's bootstrap servers
# (ferry buffers on disk while Kafka is unreachable). Ctrl-C stops it gracefully.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-deps.sh --build-only
cargo build --release --locked
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO mkdir -p /var/lib/ferry /run/ferry
exec $SUDO ./target/release/ferry run --config config/ferry.toml "$@"
