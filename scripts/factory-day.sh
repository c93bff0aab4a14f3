#!/usr/bin/env bash
# "A factory day" (issue 7): outage, catch-up window, priorities, throttle, measured end to end
# against the release `ferry` binary, a real tansu Kafka-protocol broker and 500 simulated MQTT
# devices on 50 connections. Prints a Markdown table (see BENCHMARKS.md, "A factory day").
#
#   bash scripts/factory-day.sh                 # default run, about 3 minutes
#
# Everything is tunable through the environment (defaults in brackets):
#   FACTORY_DEVICES [500]  FACTORY_CONNS [50]     devices, multiplexed over MQTT connections
#   FACTORY_OUTAGE_SECS [60]                      phase 1: ferry runs with its window closed
#   FACTORY_RATE [512KiB/s]                       phase 2: [forward] rate while the window is open
#   FACTORY_TELEMETRY_MS [2000]                   process telemetry period per device (QoS1)
#   FACTORY_ALARM_PCT [1.0]                       chance of an alarm per telemetry tick (QoS1)
#   FACTORY_BULK_SECS [30]  FACTORY_BULK_BYTES [8192]   bulk diagnostics per device (QoS1/QoS0)
#   FACTORY_TAIL_SECS [10]                        keep publishing this long after catch-up
#   FACTORY_MAX_CATCHUP_SECS [600]                give up on the catch-up after this
#   FACTORY_ETA_AT_SECS [12]                      when the "settled" `ferry status` ETA is taken
#   FACTORY_SEED [7]  FACTORY_DIR [$TMPDIR]       payload seed, where the scenario's files live
#   FACTORY_OUT                                   also write the report to this file
#   FACTORY_ALT [1]                               then run the same devices and outage against
#                                                 Mosquitto + a plain librdkafka bridge (needs
#                                                 `mosquitto`: apt-get install mosquitto); 0 skips
#   FACTORY_ALT_RESTART [0]                       1: kill and restart the bridge halfway through
#                                                 the outage (what it had in memory is lost)
#   FERRY_BIN                                     a different ferry binary (default: this build)
#
# Long run (BENCHMARKS.md, "Long run": a 30-minute outage, ~28 MB/min of payload, 2 MiB/s
# window; ~42 minutes):
#   FACTORY_OUTAGE_SECS=1800 FACTORY_BULK_SECS=10 FACTORY_RATE=2MiB/s \
#     FACTORY_MAX_CATCHUP_SECS=5400 FACTORY_ALT=0 bash scripts/factory-day.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${FERRY_TANSU:-}" ] && [ ! -x "${HOME}/.local/share/ferry-test/bin/tansu" ]; then
    sh scripts/install-tansu.sh >/dev/null
fi
# Benchmarks share the machine with builds: stay out of their way, the figures are ratios
# and latencies that a nice level does not distort much (machine load goes into the report).
exec nice -n "${FACTORY_NICE:-10}" cargo bench -j "${CARGO_JOBS:-1}" --bench factory_day "$@"
