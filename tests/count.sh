# Sourced by tests/run.sh and tests/gpu/run.sh: the runner's counters and the run of
# one test program, so that both suites count and report alike.
#
#   count_run NAME LOG COMMAND...   runs COMMAND with its output in LOG; echoes its
#                                   `ok` / `FAIL` / `SKIP` / `# ` lines, adds its ok and
#                                   FAIL lines to $passed and $failed (a non-zero exit
#                                   without a FAIL line counts as one failure), shows
#                                   the end of LOG when something failed
passed=0
failed=0

count_run() {
    local name=$1 log=$2 t0 rc np nf
    shift 2
    t0=$(date +%s)
    "$@" >"$log" 2>&1
    rc=$?
    grep -E '^(ok|FAIL|SKIP|#) ' "$log"
    np=$(grep -c '^ok ' "$log")
    nf=$(grep -c '^FAIL ' "$log")
    if [ "$rc" -ne 0 ] && [ "$nf" -eq 0 ]; then
        echo "FAIL $name: exited with status $rc without reporting a failed check"
        nf=1
    fi
    if [ "$nf" -gt 0 ]; then
        echo "---- last lines of $log ----"
        tail -n 25 "$log"
        echo "----"
    fi
    passed=$((passed + np))
    failed=$((failed + nf))
    echo "# $name: $np passed, $nf failed, $(( $(date +%s) - t0 )) s"
}
