# Shared by scripts/deb-smoke.sh and scripts/deb-smoke-arm64.sh (sourced, not run).

passed=0
failed=0
# check "description" command...: runs the command, counts it as passed or failed, and prints
# its output when it failed.
check() {
    local what="$1"; shift
    local out="${SMOKE_OUT:-/tmp/ferry-smoke.out}"
    if "$@" >"$out" 2>&1; then
        passed=$((passed + 1)); echo "ok   - $what"
    else
        failed=$((failed + 1)); echo "FAIL - $what"; sed 's/^/       /' "$out"
    fi
}

# stop_daemon PID: SIGTERM, then wait up to 30 s for it to exit. Sets `stopped` (1 if it
# exited in time) and `rc` (its exit status).
stop_daemon() {
    local pid="$1"
    kill -TERM "$pid"
    stopped=0
    for _ in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || { stopped=1; break; }
        sleep 0.1
    done
    wait "$pid"; rc=$?
}
