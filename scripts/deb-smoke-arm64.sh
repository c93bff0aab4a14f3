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
passed=0
failed=0
check() {
    local what="$1"; shift
    if "$@" >"$tmp/out" 2>&1; then
        passed=$((passed + 1)); echo "ok   - $what"
    else
        failed=$((failed + 1)); echo "FAIL - $what"; sed 's/^/       /' "$tmp/out"
    fi
}
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
# (A short ingest into a temp data dir under qemu goes here once `ferry run` is wired.)

echo "deb-smoke-arm64: $passed passed, $failed failed"
[ "$failed" = 0 ]
