#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 30), on stable Rust.
#
#   scripts/fuzz.sh [SECONDS]          all targets (CI calls this with a short bound)
#   FUZZ_TARGETS="config" scripts/fuzz.sh 300
#
# Each target starts from fuzz/seeds/<target> plus the corpus it grew before
# (fuzz/corpus/<target>, not committed), first replays every input kept in
# fuzz/regressions/<target>/, and fails on any crash, panic, timeout or memory-limit hit;
# libFuzzer then leaves the input in fuzz/artifacts/<target>/ (keep it in fuzz/regressions/).
#
# Stable Rust: `--sanitizer none` makes cargo-fuzz pass only stable rustc flags
# (sancov instrumentation, no -Z). The targets check memory with libFuzzer's RSS limit, not ASan.
# With a nightly toolchain, FUZZ_SANITIZER=address adds ASan.
#
# FUZZ_KEEP_GOING=1 (survey runs): libFuzzer's fork mode keeps fuzzing after a crash, timeout
# or OOM and writes every one to fuzz/artifacts/<target>/; the script still fails at the end
# if any was found. Without it, the first finding stops that target (the CI gate); the other
# targets still run, and the script exits 1.
set -euo pipefail

secs="${1:-30}"
targets="${FUZZ_TARGETS:-store_segments config mqtt_conn}"
sanitizer="${FUZZ_SANITIZER:-none}"
rss_mb="${FUZZ_RSS_LIMIT_MB:-2048}"
keep_going=()
if [ "${FUZZ_KEEP_GOING:-0}" = 1 ]; then
    keep_going=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
fi
found=0
cd "$(dirname "$0")/../fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    install_start=$(date +%s)
    cargo install cargo-fuzz --locked
    echo "fuzz.sh: cargo-fuzz installed in $(( $(date +%s) - install_start )) s" >&2
fi

build_start=$(date +%s)
cargo fuzz build --sanitizer "$sanitizer"
echo "== fuzz targets built in $(( $(date +%s) - build_start )) s"

for t in $targets; do
    mkdir -p "corpus/$t" "artifacts/$t"
    if compgen -G "regressions/$t/*" >/dev/null; then
        echo "== $t: replaying fuzz/regressions/$t"
        if ! cargo fuzz run --sanitizer "$sanitizer" "$t" regressions/"$t"/* -- \
            -rss_limit_mb="$rss_mb" -timeout=30; then
            echo "== $t: a kept regression input still fails" >&2
            found=1
        fi
    fi
    echo "== $t: fuzzing for ${secs}s"
    # -timeout: one input taking 30 s is a hang (the mqtt target bounds each exchange at 2 s).
    args=(-max_total_time="$secs" -rss_limit_mb="$rss_mb" -timeout=30 -max_len=65536
        -print_final_stats=1 -artifact_prefix="artifacts/$t/")
    if [ ${#keep_going[@]} -gt 0 ]; then
        # Straight to the built binary: on failure `cargo fuzz run` re-runs every artifact
        # through `cargo run` to print it, minutes for a survey that found hundreds.
        host="$(rustc -vV | sed -n 's/^host: //p')"
        "${CARGO_TARGET_DIR:-target}/$host/release/$t" "${args[@]}" "${keep_going[@]}" \
            "corpus/$t" "seeds/$t" || found=1
    else
        cargo fuzz run --sanitizer "$sanitizer" "$t" "corpus/$t" "seeds/$t" -- "${args[@]}" \
            || found=1
    fi
    if compgen -G "artifacts/$t/*" >/dev/null; then
        echo "== $t: FUZZ FINDING: crashing inputs kept in fuzz/artifacts/$t:" >&2
        ls -l "artifacts/$t" >&2
        # CI workspaces are thrown away: print each input (up to 8) so the log alone
        # reproduces it (`base64 -d > fuzz/regressions/$t/NAME`).
        for a in $(ls "artifacts/$t" | head -n 8); do
            echo "-- base64 of fuzz/artifacts/$t/$a:" >&2
            base64 -w 76 "artifacts/$t/$a" | head -n 1200 >&2
        done
        echo "   reproduce: cd fuzz && cargo fuzz run --sanitizer $sanitizer $t artifacts/$t/<file>" >&2
        found=1
    fi
done
if [ "$found" = 1 ]; then
    echo "fuzz.sh: findings above (move each to fuzz/regressions/<target>/ once understood)" >&2
    exit 1
fi
echo "fuzz.sh: all targets ran ${secs}s without a finding"
