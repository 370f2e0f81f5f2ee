#!/usr/bin/env bash
# test_cli.sh <darknet build folder>: the real `darknet` binary, end to end.
#
#  - `darknet classifier train` with a [kfac] cfg (tests/cfg/cli.cfg) on eight
#    generated 8x8 PGM images: runs its max_batches=3 updates, prints the K-FAC
#    summary, saves <backup>/cli.weights with cli.weights.kfac next to it;
#  - resuming from those weights loads the state file (and says so); weights without
#    a state file: a notice, and training proceeds;
#  - a corrupt or foreign state file (truncated, wrong magic, wrong version, flipped
#    byte, trailing bytes, saved from other nets): exit status 1 and a message naming
#    the file and the fault, before any training, the files left as they were;
#  - bad cfgs: exit status 1 and a message naming the file, the section and the key.
#
# Prints `ok NAME` / `FAIL NAME: reason` lines (counted by tests/run.sh); every
# darknet run's output is kept in build/tests/cli/*.log.
set -u
DK=${1:?usage: tests/test_cli.sh <darknet build folder>}
BIN=$DK/darknet
W=build/tests/cli
rm -rf "$W"
mkdir -p "$W/img" "$W/backup" "$W/bad"
. tests/shlib.sh

# dk LOG ARGS...: runs darknet, all its output in LOG; returns its exit status
dk() {
    local log=$1
    shift
    timeout 300 "$BIN" "$@" >"$log" 2>&1
}

if [ ! -x "$BIN" ]; then
    fail cli_binary "no executable $BIN: build it with make"
    exit 1
fi

# ---- the tiny data set (tests/cli_data.py) --------------------------------------
python3 tests/cli_data.py "$W"
DATA=$W/cli.data

# ---- train, resume --------------------------------------------------------------
dk "$W/train.log" classifier train "$DATA" tests/cfg/cli.cfg
rc=$?
check cli_train_exits_0 "exit status $rc (see $W/train.log)" [ $rc -eq 0 ]
check cli_prints_kfac_summary "no 'K-FAC: 2 layers: 0 conv ..., 2 conn ...; ... Fisher: true' line in $W/train.log" \
    grep -qE '^K-FAC: 2 layers: 0 conv A 28 G 4, 2 conn A 65 G 2;.*Fisher: true' "$W/train.log"
# inverse_interval=2: a progress line after updates 2 (of 3), with the KL clip's
# decisions on both updates (each is preconditioned: update 0 decomposes the factors
# of its own batch first)
check cli_prints_kfac_progress "no 'K-FAC: update 2: seconds per update over the last 2: ...' line in $W/train.log" \
    grep -qE '^K-FAC: update 2: seconds per update over the last 2: statistics [0-9.]+, decompositions [0-9.]+( \(of it waiting for the background [0-9.]+; background busy [0-9.]+\))?, preconditioning and step [0-9.]+; statistics every [0-9]+( \(auto\))?, decompositions every [0-9]+( \(auto\))? used [0-9]+ later( \(auto\))?; (KL clip scaled [0-2] of 2 steps|adaptive steps: mean alpha [-0-9.e+]+, median mu [-0-9.e+]+; lambda [0-9.e+-]+, last rho)' "$W/train.log"
check cli_trains_max_batches_updates "expected Darknet's progress lines for updates 1 to 3 and no 4th" \
    bash -c "grep -q '^1, ' '$W/train.log' && grep -q '^3, ' '$W/train.log' && ! grep -q '^4, ' '$W/train.log'"
check cli_saves_weights_and_state "no $W/backup/cli.weights and cli.weights.kfac" \
    test -s "$W/backup/cli.weights" -a -s "$W/backup/cli.weights.kfac"
check cli_no_temporary_state_file_left "$W/backup/cli.weights.kfac.tmp exists" test ! -e "$W/backup/cli.weights.kfac.tmp"

# the same net trained to 5 updates, resumed from the 3 above
sed 's/^max_batches=3$/max_batches=5/' tests/cfg/cli.cfg >"$W/cli5.cfg"
dk "$W/resume.log" classifier train "$DATA" "$W/cli5.cfg" "$W/backup/cli.weights"
rc=$?
check cli_resume_exits_0 "exit status $rc (see $W/resume.log)" [ $rc -eq 0 ]
check cli_resume_loads_state "no 'resumed from $W/backup/cli.weights.kfac at K-FAC step 3' in $W/resume.log" \
    has "$W/resume.log" "resumed from $W/backup/cli.weights.kfac at K-FAC step 3"
check cli_resume_continues_to_update_5 "expected progress lines for updates 4 and 5 only" \
    bash -c "grep -q '^4, ' '$W/resume.log' && grep -q '^5, ' '$W/resume.log' && ! grep -q '^3, ' '$W/resume.log'"

# weights without a state file: a notice, then training
cp "$W/backup/cli.weights" "$W/nostate.weights"
dk "$W/nostate.log" classifier train "$DATA" "$W/cli5.cfg" "$W/nostate.weights"
rc=$?
check cli_missing_state_file_trains "exit status $rc (see $W/nostate.log)" \
    bash -c "[ $rc -eq 0 ] && grep -q '^5, ' '$W/nostate.log'"
check cli_missing_state_file_notice "no 'no state file $W/nostate.weights.kfac' notice" \
    has "$W/nostate.log" "no state file $W/nostate.weights.kfac: K-FAC starts fresh"

# ---- bad state files ------------------------------------------------------------
# a state file from another net: same layers, 6 filters instead of 4
sed 's/^filters=4$/filters=6/; s/^max_batches=3$/max_batches=1/' tests/cfg/cli.cfg >"$W/other.cfg"
dk "$W/other.log" classifier train "$DATA" "$W/other.cfg"
check cli_other_net_trains "exit status $? (see $W/other.log)" test -s "$W/backup/other.weights.kfac"
# and one from a net with one more layer (a second maxpool)
sed 's/^max_batches=3$/max_batches=1/; /^\[connected\]$/i [maxpool]\nsize=2\nstride=2\n' tests/cfg/cli.cfg >"$W/longer.cfg"
dk "$W/longer.log" classifier train "$DATA" "$W/longer.cfg"
check cli_longer_net_trains "exit status $? (see $W/longer.log)" test -s "$W/backup/longer.weights.kfac"

# corrupt NAME PYTHON-EXPR: bad/NAME.weights = cli.weights, bad/NAME.weights.kfac =
# cli.weights.kfac changed by the expression (on bytearray b)
corrupt() {
    cp "$W/backup/cli.weights" "$W/bad/$1.weights"
    python3 - "$W/backup/cli.weights.kfac" "$W/bad/$1.weights.kfac" "$2" <<'EOF'
import sys
b = bytearray(open(sys.argv[1], "rb").read())
exec(sys.argv[3])
open(sys.argv[2], "wb").write(bytes(b))
EOF
}
# header: u32 magic, u32 version, u32 layers, u32 covered, i32 step, u64 rng, u64
# seen, u64 weights hash (44 bytes), then layer 0's 9 ints (36 bytes) and its A: byte
# 80 is inside A[0]
corrupt truncated 'del b[len(b)//2:]'
corrupt magic 'b[0:4] = b"XXXX"'
corrupt version 'b[4] ^= 0x7f'
# a file of the version before the batch-norm blocks and EKFAC (issue 13)
corrupt old_version 'b[4:8] = (4).to_bytes(4, "little")'
corrupt flipped 'b[80] ^= 0x10'
corrupt trailing 'b += b"\0"'
cp "$W/backup/cli.weights" "$W/bad/foreign.weights"
cp "$W/backup/other.weights.kfac" "$W/bad/foreign.weights.kfac"
cp "$W/backup/cli.weights" "$W/bad/longer.weights"
cp "$W/backup/longer.weights.kfac" "$W/bad/longer.weights.kfac"

bad_state() { # bad_state NAME EXPECTED-MESSAGE
    local name=$1 msg=$2 log=$W/bad/$1.log f=$W/bad/$1.weights rc
    cp "$f" "$f.orig"
    cp "$f.kfac" "$f.kfac.orig"
    dk "$log" classifier train "$DATA" "$W/cli5.cfg" "$f"
    rc=$?
    check "state_${name}_exit_1" "exit status $rc, expected 1 (see $log)" [ $rc -eq 1 ]
    check "state_${name}_message" "no '$f.kfac: $msg' in $log" has "$log" "$f.kfac: $msg"
    check "state_${name}_stops_before_training" "a training iteration ran (see $log)" \
        bash -c "! grep -q '^Loaded: ' '$log' && ! grep -q '^[0-9]*, ' '$log'"
    check "state_${name}_files_unchanged" "$f or $f.kfac changed" \
        bash -c "cmp -s '$f' '$f.orig' && cmp -s '$f.kfac' '$f.kfac.orig'"
}
bad_state truncated "truncated K-FAC state file"
bad_state magic "not a K-FAC state file (bad magic number)"
bad_state version "K-FAC state file version"
bad_state old_version "K-FAC state file version 4, this build reads version 5 (delete it to start K-FAC fresh from these weights)"
bad_state flipped "K-FAC state file is corrupt (checksum mismatch)"
bad_state trailing "K-FAC state file has trailing bytes"
bad_state longer "saved for a network of 5 layers with 2 under K-FAC; this cfg has 4 and 2"
bad_state foreign "layer 0 was saved with factors A 28 in 1 blocks, G 6 (groups 1); this cfg gives layer 0 A 28 in 1 blocks, G 4 (groups 1): another net"

# ---- bad cfgs ----------------------------------------------------------------------
# bad_cfg NAME EXPECTED-MESSAGE: the cfg is cli.cfg edited by the sed script on stdin;
# the message must contain the cfg's path (a prefix "<path> " is added unless the
# expected text starts with "@", which stands for the path)
bad_cfg() {
    local name=$1 msg=$2 cfg=$W/bad/$1.cfg log=$W/bad/$1.log rc
    sed -f - tests/cfg/cli.cfg >"$cfg"
    case "$msg" in @*) msg="$cfg${msg#@}" ;; *) msg="$cfg $msg" ;; esac
    dk "$log" classifier train "$DATA" "$cfg"
    rc=$?
    check "cfg_${name}_exit_1" "exit status $rc, expected 1 (see $log)" [ $rc -eq 1 ]
    check "cfg_${name}_message" "no '$msg' in $log: $(tail -n 1 "$log")" has "$log" "$msg"
}
bad_cfg unknown_key "[kfac] dampin=1: unknown option" <<<'/^\[kfac\]$/a dampin=1'
bad_cfg damping_negative "[kfac] damping=-1: must be in (0, 1e+06]" <<<'/^\[kfac\]$/a damping=-1'
bad_cfg damping_zero "[kfac] damping=0: must be in (0, 1e+06]" <<<'/^\[kfac\]$/a damping=0'
bad_cfg damping_not_number "[kfac] damping=1e-3x: not a number" <<<'/^\[kfac\]$/a damping=1e-3x'
# (`damping=` with nothing after it never reaches K-FAC: Darknet's read_cfg drops it
# with "Config file error line N, could parse"; a key without "=" does reach it)
bad_cfg damping_no_value "[kfac] damping: has no value" <<<'/^\[kfac\]$/a damping'
bad_cfg decay_one "[kfac] decay=1: must be in [0, 1)" <<<'/^\[kfac\]$/a decay=1'
bad_cfg scaling_unknown "[kfac] scaling=eigen: must be kfac or ekfac" <<<'/^\[kfac\]$/a scaling=eigen'
bad_cfg dist_precondition_unknown "[kfac] dist_precondition=all: must be everyone or owner" \
    <<<'/^\[kfac\]$/a dist_precondition=all'
bad_cfg stats_interval_zero "[kfac] stats_interval=0: must be in [1, 1e+06]" <<<'s/^stats_interval=1$/stats_interval=0/'
bad_cfg stats_interval_word "[kfac] stats_interval=often: must be a whole number or auto" <<<'s/^stats_interval=1$/stats_interval=often/'
bad_cfg inverse_lag_negative "[kfac] inverse_lag=-1: must be in [0, 1e+06]" <<<'/^\[kfac\]$/a inverse_lag=-1'
bad_cfg inverse_interval_fraction "[kfac] inverse_interval=2.5: must be a whole number" <<<'s/^inverse_interval=2$/inverse_interval=2.5/'
bad_cfg fisher_maybe "[kfac] fisher=maybe: must be true or empirical" <<<'/^\[kfac\]$/a fisher=maybe'
bad_cfg two_kfac_sections "@: more than one [kfac] section" <<<'$a [kfac]'
bad_cfg kfac_first_section "@: [kfac] cannot be the first section" <<<'1i [kfac]'
bad_cfg kfac_off_on_maxpool "[maxpool] (layer 1) kfac=0: only convolutional, connected and batchnorm layers have K-FAC" \
    <<<'/^\[maxpool\]$/a kfac=0'
bad_cfg kfac_2 "[convolutional] (layer 0) kfac=2: must be 0 or 1" <<<'/^\[convolutional\]$/a kfac=2'
bad_cfg kfac_in_net "[net] kfac=1: kfac= belongs in a layer section" <<<'/^\[net\]$/a kfac=1'
bad_cfg adam "[net] adam=1: K-FAC preconditions Darknet's SGD update" <<<'/^\[net\]$/a adam=1'
bad_cfg conv_1x1_stride_2 "layer 0 [convolutional] size=1 stride=2" <<<'s/^size=3$/size=1/
s/^stride=1$/stride=2/'

[ $nfail -eq 0 ]
