#!/usr/bin/env bash
# test_mpi.sh <darknet build folder>: training across processes (mpirun) on the MPI
# build, $KFAC_MPI_DK (`make test` builds build/darknet-cpu-mpi when Open MPI is
# installed; without it every test here says SKIP).
#
#  - tests/mpi/test_dist.c under mpirun: N ranks at batch 4 equal one process at 4N
#    (SGD, the KL-clipped and the adaptive K-FAC step; N = 2 and 4; the factors after
#    one update, every rank's weights bit for bit the same, the tolerance measured
#    against a one-ulp run, a control that must fail it); the same over Open MPI's TCP
#    transport (`--mca btl self,tcp`: the network path, not shared memory); save on 2
#    ranks, resume on 2 (bit for bit the uninterrupted run), on 4 and on 1; the same
#    with [kfac] dist_precondition=owner, which must also be the default run bit for
#    bit (with batch-norm blocks and EKFAC too), saves included; a rank whose weights
#    drift stops every rank at the next save;
#  - tools/kfac_compare under mpirun: 2 ranks at batch 4 against one process at 8;
#  - tools/batch_study.py --ranks 2 against the same study in one process;
#  - the MPI build run without mpirun trains bit for bit as the plain build;
#  - `darknet detector train` under mpirun, with K-FAC, saving every 4 updates;
#  - `darknet classifier train` under mpirun: ranks started with another cfg,
#    other [kfac] options or other weights stop before training, naming it, and so
#    does a cfg with a recurrent layer; a rank
#    killed mid-run ends the job, and a restart from the last save continues from
#    its update to the end; K-FAC's auto schedule keeps the ranks in step.
#
# Every mpirun keeps its stdout (rank 0's check lines; the other ranks' stdout is
# silenced) apart from its stderr, in build/tests/mpi/*.out and *.err.
set -u
DK=${1:?usage: tests/test_mpi.sh <darknet build folder>}
MDK=${KFAC_MPI_DK:-}
W=build/tests/mpi
. tests/shlib.sh

if [ -z "$MDK" ] || [ ! -f "$MDK/libdarknet.a" ] || [ ! -x "$MDK/darknet" ]; then
    echo "SKIP mpi: no MPI build ('${MDK}'): make test builds build/darknet-cpu-mpi when Open MPI is installed (tools/setup.sh mpi)"
    exit 0
fi
for tool in mpirun mpicc; do
    if ! command -v $tool >/dev/null 2>&1; then
        echo "SKIP mpi: $tool not found (tools/setup.sh mpi installs Open MPI)"
        exit 0
    fi
done
rm -rf "$W"
mkdir -p "$W"
# Open MPI refuses to run as root unless told twice (CI runs as root)
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
# one OpenBLAS thread per rank: up to 4 ranks share 2 cores
export OPENBLAS_NUM_THREADS=1
# more ranks than cores
MPIRUN="mpirun --oversubscribe"
MCOMPARE=$(dirname "$MDK")/kfac_compare-${MDK##*/darknet-}

if ! mpicc -O2 -g -Wall -std=gnu99 -I"$MDK/include" -I"$MDK/src" -Idarknet-kfac -Itests tests/mpi/test_dist.c \
        "$MDK/libdarknet.a" -lopenblas -lm -pthread -o "$W/test_dist" >"$W/test_dist.build.log" 2>&1; then
    cat "$W/test_dist.build.log"
    fail mpi_test_dist_compiles "tests/mpi/test_dist.c does not compile against $MDK"
    exit 1
fi

# dist LOG NP [MPIRUN OPTIONS...] -- TEST_DIST ARGS...: test_dist's check lines on
# stdout; a failed run without a FAIL line is one
dist() {
    local log=$1 np=$2 opts=() rc
    shift 2
    while [ "$1" != -- ]; do opts+=("$1"); shift; done
    shift
    timeout 300 $MPIRUN "${opts[@]}" -np "$np" "$W/test_dist" "$@" >"$W/$log.out" 2>"$W/$log.err"
    rc=$?
    grep -E '^(ok|FAIL|#) ' "$W/$log.out"
    if [ $rc -ne 0 ] && ! grep -q '^FAIL ' "$W/$log.out"; then
        fail "mpi_$log" "mpirun exited with status $rc (see $W/$log.err)"
    fi
    nfail=$((nfail + $(grep -c '^FAIL ' "$W/$log.out")))
}

SGD=none
KL='[kfac]\nstep=kl_clip\nstats_interval=1\ninverse_interval=3'
AD='[kfac]\nstep=adaptive\nstats_interval=2\ninverse_interval=5'
CFG=tests/cfg/dist.cfg
for n in 2 4; do
    dist sgd$n $n -- equal sgd_${n}ranks $CFG $SGD 50 "$W"
    dist kl$n $n -- equal kfac_kl_clip_${n}ranks $CFG "$KL" 50 "$W"
    # 12 updates: the adaptive step turns rounding into macroscopic differences later
    # (tests/mpi/test_dist.c, "Tolerances")
    dist ad$n $n -- equal kfac_adaptive_${n}ranks $CFG "$AD" 12 "$W"
done
# the network path: TCP over the loopback interface instead of shared memory
dist tcp_sgd 2 --mca btl self,tcp -- equal tcp_sgd_2ranks $CFG $SGD 50 "$W"
dist tcp_kl 2 --mca btl self,tcp -- equal tcp_kfac_kl_clip_2ranks $CFG "$KL" 50 "$W"

# a lag the auto schedule shortens: two jobs due at one update, each shared from its
# owners (the second was not: rank 1's weights parted from rank 0's, now and then, in
# the auto-schedule run below)
mkdir -p "$W/relag"
dist relag 2 -- relag kfac_relag_2ranks $CFG '[kfac]\nstep=kl_clip\nstats_interval=1\ninverse_interval=4\ninverse_lag=2' 5 6 "$W/relag"

# save on 2 ranks, resume on 2, 4 and 1 (the KL-clipped step: its figures are
# continuous in the weights, so the one-process chain is a tight reference)
RS='[kfac]\nstep=kl_clip\nstats_interval=2\ninverse_interval=4'
mkdir -p "$W/resume"
dist save 2 -- save $CFG "$RS" 6 6 "$W/resume"
for m in 2 4 1; do dist resume$m $m -- resume $CFG "$RS" 6 6 "$W/resume" 2; done

# dist_precondition=owner (KAISA's trade: each layer's owner preconditions it and
# broadcasts the preconditioned gradient instead of the decomposition): N ranks equal
# one process as with everyone (the KL-clipped step on 2 and 4 ranks, the adaptive
# step on 2), once over TCP; the run is the everyone run bit for bit, saves included
# (a job in flight at the first: tests/mpi/test_dist.c, modes), with batch-norm blocks
# and the adaptive step too, and with scaling=ekfac (where owner falls back to
# everyone); save on 2 ranks, resume on 2 (bit for bit) and on 1; save alone, resume
# on 2
OW='\ndist_precondition=owner'
dist kl_owner2 2 -- equal kfac_kl_clip_owner_2ranks $CFG "$KL$OW" 50 "$W"
dist kl_owner4 4 -- equal kfac_kl_clip_owner_4ranks $CFG "$KL$OW" 50 "$W"
dist ad_owner2 2 -- equal kfac_adaptive_owner_2ranks $CFG "$AD$OW" 12 "$W"
dist tcp_kl_owner 2 --mca btl self,tcp -- equal tcp_kfac_kl_clip_owner_2ranks $CFG "$KL$OW" 50 "$W"
sed 's/^activation=leaky$/activation=leaky\nbatch_normalize=1/' $CFG >"$W/dist-bn.cfg"
mkdir -p "$W/modes-kl" "$W/modes-bn" "$W/modes-ekfac"
dist modes_kl 2 -- modes kl_clip $CFG "$KL" 49 50 "$W/modes-kl"
dist modes_bn 2 -- modes bn_adaptive "$W/dist-bn.cfg" "$AD" 6 12 "$W/modes-bn"
dist modes_ekfac 2 -- modes ekfac $CFG "$RS\nscaling=ekfac" 5 12 "$W/modes-ekfac"
mkdir -p "$W/resume-owner" "$W/resume-owner1"
dist save_owner 2 -- save $CFG "$RS$OW" 6 6 "$W/resume-owner"
for m in 2 1; do dist resume_owner$m $m -- resume $CFG "$RS$OW" 6 6 "$W/resume-owner" 2; done
dist save_owner_alone 1 -- save $CFG "$RS$OW" 6 6 "$W/resume-owner1"
dist resume_owner_alone_on2 2 -- resume $CFG "$RS$OW" 6 6 "$W/resume-owner1" 1

# a rank whose weights drifted: the next save stops every rank, names it, writes nothing
timeout 120 $MPIRUN -np 2 "$W/test_dist" diverge $CFG "$W" >"$W/diverge.out" 2>"$W/diverge.err"
rc=$?
check mpi_diverged_rank_stops_job "mpirun exited with status $rc (see $W/diverge.err)" [ $rc -ne 0 ]
check mpi_diverged_rank_named "no \"rank 1's weights differ from rank 0's\" in $W/diverge.err" \
    has "$W/diverge.err" "rank 1's weights differ from rank 0's"
check mpi_diverged_nothing_written "$W/diverged.weights was written" test ! -e "$W/diverged.weights"

# ---- kfac_compare and the MPI build alone -------------------------------------------
python3 tests/cli_data.py "$W/cli" >/dev/null
DATA=$W/cli/cli.data
sed 's/^batch=4$/batch=8/' tests/cfg/cli.cfg >"$W/cli8.cfg"
# kfac_compare's deterministic run: 2 ranks at batch 4 against one process at 8, 20
# updates with K-FAC's KL-clipped step (the cli cfg's [kfac] with step=kl_clip).  The
# tolerance: test_dist.c's one-ulp drift of this step is 1e-6 of the largest weight
# after 50 updates on a like net, 1e-4 is a hundred times that; dropping the other
# rank's images moves the weights by a tenth and more
printf '%s\nstep=kl_clip\n' "$(cat tests/cfg/cli.cfg)" | sed 's/^max_batches=3$/max_batches=20/' >"$W/cli4k.cfg"
sed 's/^batch=4$/batch=8/' "$W/cli4k.cfg" >"$W/cli8k.cfg"
timeout 120 $MPIRUN -np 2 "$MCOMPARE" -data "$DATA" -cfg "$W/cli4k.cfg" -iters 20 -eval 10 \
    -weights-out "$W/compare2.weights" >"$W/compare2.out" 2>"$W/compare2.err"
rc2=$?
timeout 120 "$MCOMPARE" -data "$DATA" -cfg "$W/cli8k.cfg" -iters 20 -eval 10 -weights-out "$W/compare1.weights" \
    >"$W/compare1.out" 2>"$W/compare1.err"
rc1=$?
if [ $rc2 -ne 0 ] || [ $rc1 -ne 0 ]; then
    fail mpi_compare_runs "kfac_compare exited with $rc2 (2 ranks) and $rc1 (one process): see $W/compare*.err"
else
    read -r diff mag n < <(python3 tests/mpi/weights_diff.py "$W/compare2.weights" "$W/compare1.weights")
    echo "# mpi_compare_2ranks_equals_one_process: max |difference| $diff, largest weight $mag ($n values)"
    check mpi_compare_2ranks_equals_one_process "max |difference| $diff > 1e-4 x $mag" \
        python3 -c "import sys; sys.exit(not $diff <= 1e-4 * $mag)"
    check mpi_compare_prints_collectives "no 'collectives seconds per update (2 ranks)' line in $W/compare2.out" \
        has "$W/compare2.out" "collectives seconds per update (2 ranks): waiting"
    check mpi_compare_rank0_only "the 2-rank run printed its evaluation lines more than once" \
        [ "$(grep -c '^iter ' "$W/compare2.out")" -eq 3 ]
fi

# tools/batch_study.py --ranks 2 (the seed's figures b and c on N ranks x B/N): each
# run must be the one-process run of the same global batch.  Tiny autoencoder,
# batches 32 and 64, 10 updates, SGD and K-FAC; the final objectives (whole training
# set, printed to 6 digits) may differ only by the summation order of the collectives,
# about 1e-6 relative after 10 updates (the kfac_compare case above); 1e-4 leaves a
# hundredfold margin, and a run that trained on one rank's half of each batch moves
# them by percents.  The intervals are fixed: `auto` chooses them from measured times,
# which differ between the two launches
if command -v gnuplot >/dev/null 2>&1 && [ -x "${KFAC_COMPARE:-}" ]; then
    sargs=(--cfg tests/cfg/autoencoder.cfg --batches 32,64 --seeds 1 --updates 10 --grid 1 --evals 2
           --kfac 'stats_interval=2 inverse_interval=4')
    python3 tools/batch_study.py "${sargs[@]}" --pass-images 32 --out "$W/study1" --compare "$KFAC_COMPARE" \
        >"$W/study1.log" 2>&1
    rc1=$?
    python3 tools/batch_study.py "${sargs[@]}" --pass-images 16 --ranks 2 --out "$W/study2" --compare "$MCOMPARE" \
        >"$W/study2.log" 2>&1
    rc2=$?
    if [ $rc1 -ne 0 ] || [ $rc2 -ne 0 ]; then
        fail mpi_batch_study_runs "tools/batch_study.py exited with $rc1 (one process) and $rc2 (--ranks 2): see $W/study*.log"
    else
        check mpi_batch_study_per_rank_cfg "$W/study2/autoencoder/cfg/sgd-b64.cfg does not hold batch=32 (64 over 2 ranks)" \
            grep -qx 'batch=32' "$W/study2/autoencoder/cfg/sgd-b64.cfg"
        check mpi_batch_study_2ranks_equals_one_process \
            "final objectives of $W/study2/autoencoder/runs.csv differ from $W/study1/autoencoder/runs.csv by more than 1e-4 relative" \
            python3 - "$W/study1/autoencoder/runs.csv" "$W/study2/autoencoder/runs.csv" <<'EOF'
import csv, sys
rows = [{(r["batch"], r["optimizer"]): float(r["final_objective"]) for r in csv.DictReader(open(p))}
        for p in sys.argv[1:]]
assert len(rows[0]) == 4 and rows[0].keys() == rows[1].keys(), rows
worst = max(abs(rows[0][k] - rows[1][k]) / abs(rows[0][k]) for k in rows[0])
print("# mpi_batch_study: largest relative difference of the final objectives %.3g" % worst)
sys.exit(not worst <= 1e-4)
EOF
    fi
else
    echo "SKIP mpi_batch_study: needs gnuplot and \$KFAC_COMPARE"
fi

# the MPI build without mpirun: the plain build's bits (20 updates of the same run)
if [ -x "${KFAC_COMPARE:-}" ]; then
    timeout 120 "$KFAC_COMPARE" -data "$DATA" -cfg "$W/cli8k.cfg" -iters 20 -eval 10 -weights-out "$W/plain.weights" \
        >"$W/plain.out" 2>&1
    check mpi_build_alone_is_plain_build "the MPI build's kfac_compare alone ends with other weights than $KFAC_COMPARE" \
        cmp -s "$W/plain.weights" "$W/compare1.weights"
fi

# ---- darknet classifier train under mpirun -----------------------------------------
BIN=$MDK/darknet
# two ranks, each with its own command line: refused before training?
# mismatch NAME WHAT ARGS0 -- ARGS1
mismatch() {
    local name=$1 what=$2 a0=() a1=() rc
    shift 2
    while [ "$1" != -- ]; do a0+=("$1"); shift; done
    shift
    a1=("$@")
    timeout 120 $MPIRUN -np 1 "$BIN" classifier train "${a0[@]}" : -np 1 "$BIN" classifier train "${a1[@]}" \
        >"$W/$name.out" 2>"$W/$name.err"
    rc=$?
    check "mpi_${name}_refused" "mpirun exited with status $rc (see $W/$name.err)" [ $rc -ne 0 ]
    check "mpi_${name}_named" "no 'rank 1 ... differs from rank 0 ... in ...$what' in $W/$name.err" \
        grep -q "rank 1 .* differs from rank 0 .* in .*$what" "$W/$name.err"
    check "mpi_${name}_before_training" "a progress line in $W/$name.out" bash -c "! grep -q '^1, ' '$W/$name.out'"
}
sed 's/^learning_rate=0.01$/learning_rate=0.02/' tests/cfg/cli.cfg >"$W/cli-lr.cfg"
printf '%s\ndamping=0.02\n' "$(cat tests/cfg/cli.cfg)" >"$W/cli-damping.cfg"
mismatch mismatch_cfg "the cfg text" "$DATA" tests/cfg/cli.cfg -- "$DATA" "$W/cli-lr.cfg"
mismatch mismatch_kfac "the \\[kfac\\] options" "$DATA" tests/cfg/cli.cfg -- "$DATA" "$W/cli-damping.cfg"
# a recurrent layer (its weights in sub-layers the averaging does not reach): refused
# with several ranks, before training
python3 - "$W/rnn.cfg" <<'EOF'
import sys
s = open("tests/cfg/cli.cfg").read()
s = s[:s.index("# 8x8x3 -> 8x8x4")] + "[rnn]\noutput=8\nhidden=8\nactivation=leaky\n\n[connected]\noutput=2\n\n[softmax]\n"
open(sys.argv[1], "w").write(s)
EOF
timeout 120 $MPIRUN -np 2 "$BIN" classifier train "$DATA" "$W/rnn.cfg" >"$W/rnn.out" 2>"$W/rnn.err"
rc=$?
check mpi_recurrent_refused "mpirun exited with status $rc (see $W/rnn.err)" [ $rc -ne 0 ]
check mpi_recurrent_named "no 'layer 0: training across ranks averages ... sub-layers' in $W/rnn.err" \
    grep -q "rnn.cfg layer 0: training across ranks averages the gradients of .*sub-layers" "$W/rnn.err"

# two weights files: the cli cfg trained alone for 3 updates, and a copy with one byte changed
timeout 120 "$BIN" classifier train "$DATA" tests/cfg/cli.cfg >"$W/alone.out" 2>"$W/alone.err"
cp "$W/cli/backup/cli.weights" "$W/w0.weights"
cp "$W/cli/backup/cli.weights" "$W/w1.weights"
printf '\x01' | dd of="$W/w1.weights" bs=1 seek=$(( $(stat -c %s "$W/w1.weights") - 2 )) conv=notrunc 2>/dev/null
mismatch mismatch_weights "the weights loaded from" "$DATA" tests/cfg/cli.cfg "$W/w0.weights" -- \
    "$DATA" tests/cfg/cli.cfg "$W/w1.weights"

# a rank killed mid-run: mpirun ends the job; a restart from the last save continues
# (64 images, 4 per rank: an epoch, and a save, every 8 updates)
python3 - "$W/kill" <<'EOF'
import os, random, sys
w = sys.argv[1]
os.makedirs(w + "/img", exist_ok=True)
os.makedirs(w + "/backup", exist_ok=True)
rnd = random.Random(2)
paths = []
for i in range(64):
    label = ("lbzero", "lbone")[i % 2]
    px = bytes(min(255, (200 if (x < 4) == (label == "lbzero") else 40) + rnd.randrange(40))
               for y in range(8) for x in range(8))
    p = "%s/img/%02d_%s.pgm" % (w, i, label)
    open(p, "wb").write(b"P5\n8 8\n255\n" + px)
    paths.append(p)
open(w + "/train.list", "w").write("\n".join(paths) + "\n")
open(w + "/labels.txt", "w").write("lbzero\nlbone\n")
open(w + "/kill.data", "w").write("classes=2\ntrain=%s/train.list\nvalid=%s/train.list\nlabels=%s/labels.txt\n"
                                  "backup=%s/backup\ntop=1\n" % (w, w, w, w))
EOF
KD=$W/kill/kill.data
sed 's/^max_batches=3$/max_batches=1000000/' tests/cfg/cli.cfg >"$W/kill/kill.cfg"
$MPIRUN -np 2 "$BIN" classifier train "$KD" "$W/kill/kill.cfg" >"$W/kill/run.out" 2>"$W/kill/run.err" &
job=$!
killed=0
for _ in $(seq 1 600); do
    if [ -e "$W/kill/backup/kill_3.weights.kfac" ]; then
        for p in $(pgrep -P $job); do
            if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=1'; then
                kill -9 "$p" && killed=1
            fi
        done
        break
    fi
    sleep 0.1
done
ended=0
for _ in $(seq 1 300); do
    if ! kill -0 $job 2>/dev/null; then ended=1; break; fi
    sleep 0.1
done
[ $ended = 1 ] || kill -9 $job 2>/dev/null
wait $job
rc=$?
check mpi_kill_rank1_killed "rank 1 was not found or not killed after the third save" [ $killed = 1 ]
check mpi_kill_ends_job "mpirun still ran 30 s after rank 1 was killed" [ $ended = 1 ]
check mpi_kill_job_fails "mpirun exited with status $rc" [ $rc -ne 0 ]
# the last whole save: the highest epoch with its state beside it
last=$(ls "$W/kill/backup" | sed -n 's/^kill_\([0-9]*\)\.weights\.kfac$/\1/p' | sort -n | tail -1)
upd=$(python3 -c "import struct,sys; d=open(sys.argv[1],'rb').read(20); print(struct.unpack('<q', d[12:20])[0] // 4)" \
    "$W/kill/backup/kill_$last.weights")
sed "s/^max_batches=3$/max_batches=$((upd + 6))/" tests/cfg/cli.cfg >"$W/kill/kill.cfg"
timeout 120 $MPIRUN -np 2 "$BIN" classifier train "$KD" "$W/kill/kill.cfg" "$W/kill/backup/kill_$last.weights" \
    >"$W/kill/resume.out" 2>"$W/kill/resume.err"
rc=$?
check mpi_kill_resume_exits_0 "the restart exited with status $rc (see $W/kill/resume.err)" [ $rc -eq 0 ]
check mpi_kill_resume_loads_state "no 'resumed from ...kill_$last.weights.kfac' in $W/kill/resume.err" \
    has "$W/kill/resume.err" "resumed from $W/kill/backup/kill_$last.weights.kfac"
check mpi_kill_resume_continues "the restart's first update is not $((upd + 1)) or its last not $((upd + 6)) ($W/kill/resume.out)" \
    bash -c "[ \"\$(grep -E '^[0-9]+, ' '$W/kill/resume.out' | head -1 | cut -d, -f1)\" = $((upd + 1)) ] &&
             [ \"\$(grep -E '^[0-9]+, ' '$W/kill/resume.out' | tail -1 | cut -d, -f1)\" = $((upd + 6)) ]"
check mpi_kill_resume_saves "no $W/kill/backup/kill.weights after the restart" test -s "$W/kill/backup/kill.weights"

# detector train: the same hooks in Darknet's other trainer, with K-FAC on [yolo] heads
# (tests/test_detect_train.sh's four images, made by its helper against the plain build)
mkdir -p "$W/det/backup"
if ${CC:-cc} -O1 -I"$DK/include" -I"$DK/src" -Idarknet-kfac tests/dk_train_detector.c "$DK/examples/detector.c" \
        "$DK/libdarknet.a" -Wl,--wrap=train_network -lopenblas -lm -pthread -o "$W/det/helper" >"$W/det/helper.log" 2>&1 &&
        "$W/det/helper" make "$W/det/set" >>"$W/det/helper.log" 2>&1; then
    sed "s|^backup=.*|backup=$W/det/backup|" "$W/det/set/det.data" >"$W/det/det.data"
    printf '%s\n\n[kfac]\nstats_interval=2\ninverse_interval=4\n' "$(cat tests/cfg/detect-train.cfg)" >"$W/det/det.cfg"
    timeout 300 $MPIRUN -np 2 "$BIN" detector train "$W/det/det.data" "$W/det/det.cfg" -save_interval 4 \
        >"$W/det/train.out" 2>"$W/det/train.err"
    rc=$?
    check mpi_detector_train_exits_0 "exit status $rc (see $W/det/train.err)" [ $rc -eq 0 ]
    check mpi_detector_train_saves "no det_4, det_8 and det_final.weights (with their states) in $W/det/backup" \
        test -s "$W/det/backup/det_4.weights.kfac" -a -s "$W/det/backup/det_8.weights.kfac" -a -s "$W/det/backup/det_final.weights"
    check mpi_detector_train_rank0_prints "not one progress line per update in $W/det/train.out" \
        [ "$(grep -cE '^[0-9]+: ' "$W/det/train.out")" -eq 8 ]
else
    fail mpi_detector_set "tests/dk_train_detector.c failed (see $W/det/helper.log)"
fi

# the auto schedule (no intervals in [kfac]): each rank measures its own times and rank
# 0's choice holds on all (kfac_dist_agree_schedule); otherwise the ranks would reach
# statistics steps, launches or installs at different updates, hang in a collective
# or drift apart, which the saves' checksums (one per 8 updates) would report
sed -e 's/^max_batches=3$/max_batches=40/' -e '/^stats_interval=/d' -e '/^inverse_interval=/d' tests/cfg/cli.cfg \
    >"$W/kill/auto.cfg"
timeout 300 $MPIRUN -np 2 "$BIN" classifier train "$KD" "$W/kill/auto.cfg" >"$W/kill/auto.out" 2>"$W/kill/auto.err"
rc=$?
check mpi_auto_schedule_exits_0 "exit status $rc (see $W/kill/auto.err)" [ $rc -eq 0 ]
check mpi_auto_schedule_all_updates "no progress line of update 40 in $W/kill/auto.out" grep -q '^40, ' "$W/kill/auto.out"
check mpi_auto_schedule_saves_agree "no final $W/kill/backup/auto.weights" test -s "$W/kill/backup/auto.weights"
[ $nfail -eq 0 ]
