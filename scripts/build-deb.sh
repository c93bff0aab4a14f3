#!/usr/bin/env bash
# Builds the ferry .deb with cargo-deb and checks the unit with `systemd-analyze verify`.
#
#   scripts/build-deb.sh                  # amd64 (the host)
#   scripts/build-deb.sh --arch arm64     # cross-build with Debian's gcc-aarch64-linux-gnu
#   scripts/build-deb.sh --lintian        # also run lintian on the result
#
# Prints the path of the .deb on the last line. Needs: cargo-deb
# (`cargo install cargo-deb --locked`, ~1.5 min), systemd (for systemd-analyze), and for
# arm64: `rustup target add aarch64-unknown-linux-gnu`, apt packages gcc-aarch64-linux-gnu
# g++-aarch64-linux-gnu (librdkafka's build links its C++ wrapper too) libc6-dev-arm64-cross,
# and libssl-dev:arm64 (`dpkg --add-architecture arm64`), because rdkafka's TLS links the
# target's OpenSSL.
set -euo pipefail

arch=amd64
run_lintian=0
while [ $# -gt 0 ]; do
    case "$1" in
    --arch) arch="${2:?--arch needs amd64 or arm64}"; shift 2 ;;
    --lintian) run_lintian=1; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "build-deb: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
jobs="${CARGO_BUILD_JOBS:-2}"

die() { echo "build-deb: $*" >&2; exit 1; }

command -v cargo-deb >/dev/null \
    || die "cargo-deb is not installed: run 'cargo install cargo-deb --locked'"
command -v systemd-analyze >/dev/null \
    || die "systemd-analyze is missing (needed to verify the unit): apt-get install systemd"
[ -f config/ferry.toml ] \
    || die "config/ferry.toml is missing: the package ships it as /etc/ferry/ferry.toml (it comes from the config work; merge it first)"

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
changelog_version="$(sed -n '1s/^ferry (\([^)-]*\)-[^)]*).*/\1/p' packaging/debian/changelog)"
[ "$changelog_version" = "$version" ] \
    || die "packaging/debian/changelog starts with version '$changelog_version' but Cargo.toml says '$version': add a changelog entry (dch -v $version-1, or by hand)"

case "$arch" in
amd64)
    triple=x86_64-unknown-linux-gnu
    cargo deb --locked -o "$target_dir/debian" -- -j "$jobs" >&2
    bin="$target_dir/release/ferry"
    ;;
arm64)
    triple=aarch64-unknown-linux-gnu
    command -v aarch64-linux-gnu-g++ >/dev/null \
        || die "aarch64 cross compilers missing: apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross"
    rustup target list --installed 2>/dev/null | grep -qx "$triple" \
        || die "Rust target $triple missing: rustup target add $triple"
    [ -f /usr/lib/aarch64-linux-gnu/pkgconfig/openssl.pc ] \
        || die "arm64 OpenSSL headers missing: dpkg --add-architecture arm64 && apt-get update && apt-get install libssl-dev:arm64"
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
    export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
    export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
    # librdkafka's own ./configure (rdkafka-sys, non-cmake build) reads the plain CC/CXX/AR/...
    # variables, not cc-rs's per-target ones; the per-host ones keep build scripts that
    # compile C for the build machine on the native gcc.
    export CC=aarch64-linux-gnu-gcc CXX=aarch64-linux-gnu-g++ AR=aarch64-linux-gnu-ar
    export NM=aarch64-linux-gnu-nm RANLIB=aarch64-linux-gnu-ranlib STRIP=aarch64-linux-gnu-strip
    export LD=aarch64-linux-gnu-ld OBJDUMP=aarch64-linux-gnu-objdump
    export HOST_CC=gcc HOST_CXX=g++ CC_x86_64_unknown_linux_gnu=gcc CXX_x86_64_unknown_linux_gnu=g++
    export AR_x86_64_unknown_linux_gnu=ar
    export PKG_CONFIG_ALLOW_CROSS=1
    # jemalloc (ferry's allocator) fixes the page size when it is built and refuses to start
    # on a kernel with larger pages ("<jemalloc>: Unsupported system page size"). arm64
    # kernels use 4, 16 or 64 KiB pages (Raspberry Pi 5: 16 KiB), so build for 64 KiB, which
    # runs on all three (the Rust toolchain's own aarch64 builds do the same).
    export JEMALLOC_SYS_WITH_LG_PAGE=16
    export PKG_CONFIG_PATH=/usr/lib/aarch64-linux-gnu/pkgconfig
    export PKG_CONFIG_LIBDIR=/usr/lib/aarch64-linux-gnu/pkgconfig
    cargo deb --locked --target "$triple" -o "$target_dir/debian" -- -j "$jobs" >&2
    bin="$target_dir/$triple/release/ferry"
    ;;
*) die "unsupported --arch '$arch' (amd64 or arm64)" ;;
esac

# `systemd-analyze verify` insists that ExecStart's binary exists, so check a copy of the unit
# that points at the binary just built (same content otherwise).
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
sed "s#/usr/bin/ferry#$bin#g" systemd/ferry.service > "$tmp/ferry.service"
(cd "$tmp" && systemd-analyze verify ./ferry.service) >&2 \
    || die "systemd-analyze verify failed for systemd/ferry.service"

deb="$(ls -t "$target_dir/debian/ferry_${version}"*"_${arch}.deb" | head -n1)"
[ -f "$deb" ] || die "cargo-deb did not produce a .deb for $arch in $target_dir/debian"

if [ "$run_lintian" = 1 ]; then
    command -v lintian >/dev/null || die "lintian missing: apt-get install lintian"
    # --fail-on error: warnings are reviewed and either fixed or overridden with a reason in
    # packaging/lintian/ferry.
    lintian --fail-on error --info "$deb" >&2
fi

echo "$deb"
