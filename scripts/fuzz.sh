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
set -euo pipefail

secs="${1:-30}"
targets="${FUZZ_TARGETS:-store_segments config mqtt_conn}"
sanitizer="${FUZZ_SANITIZER:-none}"
rss_mb="${FUZZ_RSS_LIMIT_MB:-2048}"
cd "$(dirname "$0")/../fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

cargo fuzz build --sanitizer "$sanitizer"

for t in $targets; do
    mkdir -p "corpus/$t" "artifacts/$t"
    if compgen -G "regressions/$t/*" >/dev/null; then
        echo "== $t: replaying fuzz/regressions/$t"
        cargo fuzz run --sanitizer "$sanitizer" "$t" regressions/"$t"/* -- \
            -rss_limit_mb="$rss_mb" -timeout=30
    fi
    echo "== $t: fuzzing for ${secs}s"
    # -timeout: one input taking 30 s is a hang (the mqtt target bounds each exchange at 2 s).
    cargo fuzz run --sanitizer "$sanitizer" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -rss_limit_mb="$rss_mb" -timeout=30 -max_len=65536 \
        -print_final_stats=1
done
echo "fuzz.sh: all targets ran ${secs}s without a finding"
