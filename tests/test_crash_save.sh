#!/usr/bin/env bash
# test_crash_save.sh <darknet build folder>: `darknet classifier train` with [kfac]
# killed (SIGKILL) in the middle of its saves, then resumed.
#
# tests/crash/killshim.c, preloaded, kills the process at a chosen point of a chosen
# file's write.  On the tiny data set of tests/cli_data.py (8 images, batch 4: an
# epoch every 2 updates) classifier train saves <backup>/cli_<epoch>.weights each
# epoch and cli.weights at the end, each followed by its .kfac state.
#
#   mid_weights   killed inside the second epoch's weights write: the previous
#                 epoch's files are intact, no truncated cli_2.weights exists
#                 (patches/0014 writes .tmp and renames; before it, a truncated file
#                 was left that load_weights reads without complaint), and training
#                 resumes from cli_1.weights with its state;
#   between       a resumed run killed after writing cli.weights over the old one but
#                 before its state: the old state sits next to new weights, and the
#                 resume says so and starts K-FAC fresh instead of resuming factors and
#                 momentum of another point (kfac_state.c);
#   mid_state     the same, killed inside the state write: a partial .kfac.tmp is left
#                 and ignored, the resume starts K-FAC fresh;
#   old_epoch     the state of epoch 1 next to the weights of epoch 3 (files copied by
#                 hand): not resumed, a notice instead.
set -u
DK=${1:?usage: tests/test_crash_save.sh <darknet build folder>}
BIN=$DK/darknet
W=build/tests/crash
rm -rf "$W"
mkdir -p "$W"
. tests/shlib.sh

if [ ! -x "$BIN" ]; then
    fail crash_binary "no executable $BIN: build it with make"
    exit 1
fi
CC=${CC:-cc}
if ! $CC -shared -fPIC -O1 -o "$W/killshim.so" tests/crash/killshim.c -ldl 2>"$W/killshim.build.log"; then
    cat "$W/killshim.build.log"
    fail crash_shim_builds "tests/crash/killshim.c does not compile"
    exit 1
fi
# a sanitized darknet wants its runtime first among the preloaded libraries
PRELOAD=$PWD/$W/killshim.so
if ldd "$BIN" 2>/dev/null | grep -q libasan; then
    PRELOAD="$($CC -print-file-name=libasan.so) $PRELOAD"
fi

python3 tests/cli_data.py "$W"
DATA=$W/cli.data
B=$W/backup
cfg() { sed "s/^max_batches=3\$/max_batches=$1/" tests/cfg/cli.cfg >"$W/cli$1.cfg"; echo "$W/cli$1.cfg"; }
# run LOG ARGS...: darknet, output in LOG; returns its exit status
run() {
    local log=$1
    shift
    timeout 300 "$BIN" "$@" >"$log" 2>&1
}
# killed LOG SUFFIX OPEN WRITES ARGS...: darknet under the shim
killed() {
    local log=$1 suffix=$2 open=$3 writes=$4
    shift 4
    KFAC_KILL_SUFFIX=$suffix KFAC_KILL_OPEN=$open KFAC_KILL_WRITES=$writes LD_PRELOAD="$PRELOAD" \
        timeout 300 "$BIN" "$@" >"$log" 2>&1
}
C6=$(cfg 6)
C8=$(cfg 8)

# ---- mid_weights ------------------------------------------------------------------
# the weights file under either name: Darknet's own in-place write is caught as well
killed "$W/mid_weights.log" .weights.tmp:.weights 2 3 classifier train "$DATA" "$C6"
rc=$?
check crash_mid_weights_killed "exit status $rc, expected 137 from SIGKILL (see $W/mid_weights.log)" [ $rc -eq 137 ]
check crash_mid_weights_epoch1_intact "cli6_1.weights and its state should be complete" \
    test -s "$B/cli6_1.weights" -a -s "$B/cli6_1.weights.kfac"
full=$(stat -c %s "$B/cli6_1.weights")
check crash_mid_weights_no_truncated_file "a cli6_2.weights exists with $(stat -c %s "$B/cli6_2.weights" 2>/dev/null) bytes (a complete one has $full)" \
    test ! -e "$B/cli6_2.weights"
check crash_mid_weights_partial_tmp_left "the killed write should have left cli6_2.weights.tmp, shorter than $full bytes" \
    bash -c "[ -e '$B/cli6_2.weights.tmp' ] && [ \$(stat -c %s '$B/cli6_2.weights.tmp') -lt $full ]"
run "$W/mid_weights_resume.log" classifier train "$DATA" "$C6" "$B/cli6_1.weights"
rc=$?
check crash_mid_weights_resumes "exit status $rc (see $W/mid_weights_resume.log)" \
    bash -c "[ $rc -eq 0 ] && grep -q '^6, ' '$W/mid_weights_resume.log'"
check crash_mid_weights_resumes_state "no 'resumed from $B/cli6_1.weights.kfac at K-FAC step 2'" \
    has "$W/mid_weights_resume.log" "resumed from $B/cli6_1.weights.kfac at K-FAC step 2"

# ---- between and mid_state: a first run to 6 updates, resumed to 8 and killed -------
run "$W/first.log" classifier train "$DATA" "$C6"
check crash_first_run_saves "no $B/cli6.weights with its state" test -s "$B/cli6.weights" -a -s "$B/cli6.weights.kfac"
# the resumed run saves cli8_4.weights (epoch 4) and then cli8.weights: the final
# save is the 2nd opening of a *.kfac.tmp; the cfg is renamed so that the run writes
# over cli6's files, as Darknet's fixed names (.backup, the final weights) do
for case in between mid_state; do
    mkdir -p "$W/$case"
    cp "$B/cli6.weights" "$W/$case/cli.weights"
    cp "$B/cli6.weights.kfac" "$W/$case/cli.weights.kfac"
    sed "s#backup=.*#backup=$W/$case#" "$DATA" >"$W/$case.data"
    cp "$C8" "$W/$case/cli.cfg"
    writes=0
    [ $case = mid_state ] && writes=5
    killed "$W/$case.log" .kfac.tmp 2 $writes classifier train "$W/$case.data" "$W/$case/cli.cfg" "$W/$case/cli.weights"
    rc=$?
    check "crash_${case}_killed" "exit status $rc, expected 137 (see $W/$case.log)" [ $rc -eq 137 ]
    check "crash_${case}_new_weights_old_state" "cli.weights should be the new save, cli.weights.kfac the old one" \
        bash -c "! cmp -s '$B/cli6.weights' '$W/$case/cli.weights' && cmp -s '$B/cli6.weights.kfac' '$W/$case/cli.weights.kfac'"
    if [ $case = mid_state ]; then
        check crash_mid_state_partial_tmp_left "the killed state write should have left cli.weights.kfac.tmp" \
            test -e "$W/$case/cli.weights.kfac.tmp"
    fi
    run "$W/${case}_resume.log" classifier train "$W/$case.data" "$W/$case/cli.cfg" "$W/$case/cli.weights"
    rc=$?
    check "crash_${case}_resumes" "exit status $rc (see $W/${case}_resume.log)" [ $rc -eq 0 ]
    check "crash_${case}_state_not_resumed" "no 'was saved with other weights ... K-FAC starts fresh' notice, or a resume anyway" \
        bash -c "grep -q 'cli.weights.kfac was saved with other weights.*K-FAC starts fresh' '$W/${case}_resume.log' && ! grep -q 'resumed from' '$W/${case}_resume.log'"
done

# ---- old_epoch ------------------------------------------------------------------------
cp "$B/cli6_3.weights" "$W/old.weights"
cp "$B/cli6_1.weights.kfac" "$W/old.weights.kfac"
run "$W/old_epoch.log" classifier train "$DATA" "$C8" "$W/old.weights"
rc=$?
check crash_old_epoch_trains "exit status $rc (see $W/old_epoch.log)" [ $rc -eq 0 ]
check crash_old_epoch_not_resumed "the state of epoch 1 was resumed next to the weights of epoch 3" \
    bash -c "grep -q 'old.weights.kfac was saved with other weights (seen 8,' '$W/old_epoch.log' && ! grep -q 'resumed from' '$W/old_epoch.log'"
[ $nfail -eq 0 ]
