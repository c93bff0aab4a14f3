#!/usr/bin/env bash
# Checks a cross-built arm64 ferry .deb on an amd64 host: unpacks it (no install) and runs the
# binary under qemu-user with the Debian arm64 cross libraries.
#
#   scripts/deb-smoke-arm64.sh target/debian/ferry_0.1.0-1_arm64.deb
#
# Needs: qemu-user (qemu-aarch64), libc6-dev-arm64-cross (the arm64 loader and libc under
# /usr/aarch64-linux-gnu), and libssl3:arm64 once the binary links OpenSSL.
# FERRY_SMOKE_SKIP_CLI=1 skips the steps that need the CLI (only while it is not wired).
# Ends with "deb-smoke-arm64: N passed, M failed".
set -uo pipefail

deb="${1:?usage: deb-smoke-arm64.sh path/to/ferry_VERSION_arm64.deb}"
[ -f "$deb" ] || { echo "deb-smoke-arm64: no such file: $deb" >&2; exit 2; }
command -v qemu-aarch64 >/dev/null \
    || { echo "deb-smoke-arm64: qemu-aarch64 missing: apt-get install qemu-user" >&2; exit 2; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# check, stop_daemon, and the passed/failed counters.
SMOKE_OUT="$tmp/out"
. "$(dirname "$0")/smoke-lib.sh"
# The arm64 loader and libraries: the cross libc, plus multiarch arm64 libraries (libssl3:arm64)
# which live under /usr/lib/aarch64-linux-gnu on the host.
run_arm64() {
    QEMU_LD_PREFIX=/usr/aarch64-linux-gnu \
        LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib:/usr/lib/aarch64-linux-gnu \
        qemu-aarch64 "$@"
}

version="$(dpkg-deb -f "$deb" Version)"
upstream="${version%%-*}"
check "control says Architecture: arm64" sh -c "[ \"\$(dpkg-deb -f '$deb' Architecture)\" = arm64 ]"
check "package unpacks" dpkg-deb -x "$deb" "$tmp/root"
bin="$tmp/root/usr/bin/ferry"
check "usr/bin/ferry is an AArch64 ELF" sh -c "od -An -tx1 -j18 -N2 '$bin' | grep -q 'b7 00'"
check "binary runs under qemu-aarch64 (--help)" run_arm64 "$bin" --help
if [ "${FERRY_SMOKE_SKIP_CLI:-0}" = 1 ]; then
    echo "SKIP - ferry version / config check under qemu (FERRY_SMOKE_SKIP_CLI=1)"
else
    check "ferry version prints $upstream under qemu" sh -c "$(declare -f run_arm64); run_arm64 '$bin' version | grep -qF '$upstream'"
    check "ferry config check accepts the shipped config under qemu" \
        run_arm64 "$bin" config check "$tmp/root/etc/ferry/ferry.toml"
fi
# A short ingest under qemu: the shipped config with a temp data dir, control socket and free
# ports, Kafka unreachable (messages wait in the store). Needs mosquitto-clients.
if [ "${FERRY_SMOKE_SKIP_CLI:-0}" != 1 ] && command -v mosquitto_pub >/dev/null; then
    free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
    mqtt_port="$(free_port)"; metrics_port="$(free_port)"; kafka_port="$(free_port)"
    mkdir -p -m 0750 "$tmp/data" "$tmp/run"
    sed -e "s#^data_dir = .*#data_dir = \"$tmp/data\"#" \
        -e "s#^listen = \"0.0.0.0:1883\"#listen = \"127.0.0.1:$mqtt_port\"#" \
        -e "s#^listen = \"127.0.0.1:9464\"#listen = \"127.0.0.1:$metrics_port\"#" \
        -e "s#^socket = .*#socket = \"$tmp/run/ferry.sock\"#" \
        -e "s#^bootstrap_servers = .*#bootstrap_servers = \"127.0.0.1:$kafka_port\"#" \
        "$tmp/root/etc/ferry/ferry.toml" > "$tmp/ferry.toml"
    check "the temp config checks under qemu" run_arm64 "$bin" config check "$tmp/ferry.toml"
    # Not through run_arm64: a backgrounded function is a subshell, and SIGTERM must reach qemu
    # (which passes it to ferry).
    QEMU_LD_PREFIX=/usr/aarch64-linux-gnu \
        LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib:/usr/lib/aarch64-linux-gnu \
        qemu-aarch64 "$bin" run --config "$tmp/ferry.toml" >"$tmp/daemon.log" 2>&1 &
    daemon_pid=$!
    up=0
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$mqtt_port") 2>/dev/null; then up=1; break; fi
        sleep 0.1
    done
    check "ferry run listens under qemu" test "$up" = 1
    for i in 1 2 3; do
        check "mosquitto_pub QoS 1 message $i gets its PUBACK under qemu" \
            mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -q 1 -i "arm64-smoke-$i" \
            -t site/line1/temp -m "{\"t\":21.$i,\"arm64smoke\":$i}"
    done
    check "ferry status over the control socket counts 3 telemetry records" sh -c \
        "$(declare -f run_arm64); run_arm64 '$bin' status --json --socket '$tmp/run/ferry.sock' \
         | python3 -c 'import json,sys; s=json.load(sys.stdin); c=[c for c in s[\"classes\"] if c[\"name\"]==\"telemetry\"][0]; sys.exit(0 if c[\"records\"]==3 else 1)'"
    stop_daemon "$daemon_pid"
    check "SIGTERM stops ferry under qemu" test "$stopped" = 1
    check "ferry exited 0 (log below on failure)" sh -c "[ $rc = 0 ] || { cat '$tmp/daemon.log'; exit 1; }"
    check "ferry peek --data-dir under qemu shows the 3 messages" sh -c \
        "$(declare -f run_arm64); [ \"\$(run_arm64 '$bin' peek --class telemetry --json --data-dir '$tmp/data' --config '$tmp/ferry.toml' | grep -o arm64smoke | wc -l)\" = 3 ]"
else
    echo "SKIP - short ingest under qemu (needs mosquitto-clients)"
fi

echo "deb-smoke-arm64: $passed passed, $failed failed"
[ "$failed" = 0 ]
