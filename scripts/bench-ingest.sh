#!/usr/bin/env bash
# MQTT ingest benchmark (issue 3): ferry (durable acks) vs rumqttd in memory vs Debian's
# Mosquitto, one run, same load generator. Prints the machine, its load, the command, and the
# Markdown tables (benches/mqtt_ingest.rs explains the method); a copy goes to $OUT.
#   bash scripts/bench-ingest.sh
#   FERRY_BENCH_DIR=/data/on/the/disk FERRY_BENCH_SECS=8 bash scripts/bench-ingest.sh
#   FERRY_BENCH_VARIANT='storage.compression_level=0' bash scripts/bench-ingest.sh  # + a ferry row
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
    echo "mosquitto is missing: apt-get install -y mosquitto" >&2
    exit 1
fi
export FERRY_BENCH_DIR="${FERRY_BENCH_DIR:-${TMPDIR:-/tmp}}"
OUT="${OUT:-${FERRY_BENCH_DIR}/bench-ingest-$(date -u +%Y%m%dT%H%M%SZ).md}"
# Build first, so compiling does not overlap (and slow) the measurement.
cargo bench --bench mqtt_ingest --no-run -j 2
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr), $(df -T "$FERRY_BENCH_DIR" | awk 'NR==2{print $2}') on $(df "$FERRY_BENCH_DIR" | awk 'NR==2{print $1}')"
    echo "load before: $(uptime)"
    echo "command: FERRY_BENCH_DIR=$FERRY_BENCH_DIR${FERRY_BENCH_SECS:+ FERRY_BENCH_SECS=$FERRY_BENCH_SECS}${FERRY_BENCH_CONNS:+ FERRY_BENCH_CONNS=$FERRY_BENCH_CONNS}${FERRY_BENCH_VARIANT:+ FERRY_BENCH_VARIANT='$FERRY_BENCH_VARIANT'} cargo bench --bench mqtt_ingest"
    cargo bench --bench mqtt_ingest -j 2 2>&1
    echo "load after: $(uptime)"
} | tee "$OUT"
echo "(saved to $OUT)"
