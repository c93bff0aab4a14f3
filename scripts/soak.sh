#!/usr/bin/env bash
# The long crash-loop soak (tests/soak.rs): the real ferry binary, a real tansu broker, three
# MQTT publishers on three classes, ferry SIGKILLed at random points and restarted on the same
# data directory, then every PUBACKed payload must be consumed back from Kafka.
# CI runs the short version (10 cycles) as part of `cargo test`; this runs the long one.
#
#   bash scripts/soak.sh                       # 50 cycles, debug build
#   FERRY_SOAK_CYCLES=200 bash scripts/soak.sh # more cycles
#   FERRY_SOAK_SEED=1234 bash scripts/soak.sh  # repeat the kill points of an earlier run
#   FERRY_SOAK_RELEASE=1 bash scripts/soak.sh  # release build (longer first build)
#   FERRY_SOAK_NICE=1 bash scripts/soak.sh     # nice -n 19, for a shared machine
#
# The result is the line starting with "SOAK SUMMARY:"; docs/reliability.md quotes it.
# Exits non-zero if any acknowledged message was not delivered.
set -euo pipefail
cd "$(dirname "$0")/.."
export FERRY_TANSU="${FERRY_TANSU:-$HOME/.local/share/ferry-test/bin/tansu}"
if [ ! -x "$FERRY_TANSU" ]; then
  echo "soak: the tansu test broker is missing at $FERRY_TANSU; run scripts/install-tansu.sh" >&2
  exit 1
fi
export FERRY_SOAK_CYCLES="${FERRY_SOAK_CYCLES:-50}"
profile=()
[ "${FERRY_SOAK_RELEASE:-0}" = 1 ] && profile=(--release)
nice=()
[ "${FERRY_SOAK_NICE:-0}" = 1 ] && nice=(nice -n 19)

log="$(mktemp -t ferry-soak.XXXXXX.log)"
echo "soak: $FERRY_SOAK_CYCLES cycles, started $(date -u +%Y-%m-%dT%H:%M:%SZ), log $log"
status=0
"${nice[@]}" cargo test "${profile[@]}" --test soak -- --nocapture 2>&1 | tee "$log" || status=$?
echo "soak: finished $(date -u +%Y-%m-%dT%H:%M:%SZ), exit $status"
grep -h "SOAK SUMMARY:" "$log" || echo "soak: no summary line (the run failed before the end)" >&2
exit "$status"
