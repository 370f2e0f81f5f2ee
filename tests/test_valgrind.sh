#!/usr/bin/env bash
# test_valgrind.sh <darknet build folder>: the end-to-end run of test_cli.sh (train
# with [kfac], save weights and state, resume from them) under valgrind's memcheck:
# no error of any kind (invalid reads or writes, uses of uninitialised values, bad
# frees) and no definite leak, where Darknet's own leaks in its example program and
# data loaders are suppressed by name (tests/sanitize/valgrind.supp, the same list as
# LeakSanitizer's); a leak below any darknet-kfac function is never suppressed.
#
# Skips with SKIP when valgrind is missing (tools/setup.sh valgrind installs it; CI
# does) or the build is instrumented by a sanitizer (they do not run together).
set -u
DK=${1:?usage: tests/test_valgrind.sh <darknet build folder>}
BIN=$DK/darknet
W=build/tests/valgrind
rm -rf "$W"
mkdir -p "$W"
. tests/shlib.sh

if ! command -v valgrind >/dev/null 2>&1; then
    echo "SKIP valgrind: not installed (tools/setup.sh valgrind)"
    exit 0
fi
if ldd "$BIN" 2>/dev/null | grep -qE 'libasan|libubsan'; then
    echo "SKIP valgrind: $BIN is built with a sanitizer"
    exit 0
fi
python3 tests/cli_data.py "$W"
DATA=$W/cli.data
sed 's/^max_batches=3$/max_batches=5/' tests/cfg/cli.cfg >"$W/cli5.cfg"

# vg NAME ARGS...: darknet under memcheck; its log in $W/NAME.vg, output in $W/NAME.log
vg() {
    local name=$1 rc
    shift
    # one OpenBLAS thread: valgrind runs threads one at a time anyway, and the fewer
    # threads the fewer interleavings to report
    OPENBLAS_NUM_THREADS=1 timeout 900 valgrind --tool=memcheck --error-exitcode=99 --leak-check=full \
        --show-leak-kinds=definite --errors-for-leak-kinds=definite --track-origins=yes \
        --suppressions=tests/sanitize/valgrind.supp --log-file="$W/$name.vg" \
        "$BIN" "$@" >"$W/$name.log" 2>&1
    rc=$?
    local errors lost
    errors=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$W/$name.vg" | tail -1)
    lost=$(sed -n 's/.*definitely lost: \([0-9,]*\) bytes.*/\1/p' "$W/$name.vg" | tail -1)
    if [ "$rc" -eq 0 ] && [ "${errors:-x}" = 0 ]; then
        ok "valgrind_${name}_clean"
    else
        grep -E '^==[0-9]+== (Invalid|Conditional|Use of|Mismatched|[0-9,]+ bytes in)' "$W/$name.vg" | head -n 10
        fail "valgrind_${name}_clean" "exit status $rc, $errors errors, ${lost:-0} bytes definitely lost (see $W/$name.vg)"
    fi
    if grep -A30 'definitely lost in' "$W/$name.vg" | grep -q 'kfac_'; then
        fail "valgrind_${name}_no_kfac_leak" "a definite leak below a darknet-kfac function (see $W/$name.vg)"
    else
        ok "valgrind_${name}_no_kfac_leak"
    fi
}

vg train classifier train "$DATA" tests/cfg/cli.cfg
if grep -q 'K-FAC: 2 layers' "$W/train.log" && [ -s "$W/backup/cli.weights.kfac" ]; then
    ok valgrind_train_ran_kfac
else
    fail valgrind_train_ran_kfac "no K-FAC start line or no state file (see $W/train.log)"
fi
vg resume classifier train "$DATA" "$W/cli5.cfg" "$W/backup/cli.weights"
if grep -q "resumed from $W/backup/cli.weights.kfac at K-FAC step 3" "$W/resume.log"; then
    ok valgrind_resume_loaded_state
else
    fail valgrind_resume_loaded_state "no 'resumed from ... at K-FAC step 3' (see $W/resume.log)"
fi
[ $nfail -eq 0 ]
