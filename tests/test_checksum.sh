#!/usr/bin/env bash
# test_checksum.sh <darknet build folder>: fixed K-FAC runs on the CPU give the same
# final weights, bit for bit, as they did when the checksums below were recorded.
#
# The runs, each seed 1 and 200 updates on the demo data through build/kfac_compare
# (same initial weights and batches for a given seed):
#   demo_cnn  cfg/digits-kfac.cfg, every [kfac] default: two inverse intervals, twenty
#             statistics steps with the true-Fisher pass, the KL clip, the lr policy;
#   bn_cnn    cfg/digits-bn.cfg + an empty [kfac]: batch norm, an avgpool, poly policy;
#   mlp       cfg/digits-mlp.cfg + [kfac] fisher=empirical, statistics every 3 and
#             inverses every 25 updates: connected layers only, a 1201-wide factor;
# those three with step=kl_clip, the rule they were recorded with, and
#   demo_cnn_auto  cfg/digits-kfac.cfg with step=auto, the default since issue 7: the
#             adaptive step's probes, its quadratic model and lambda, the switch to
#             the KL clip; re-recorded in issue 11, whose adaptive step takes one-sided
#             probes, computes its losses itself and floors the factors' damping.
#
# Recorded at commit dead170 (before the backend split of issue 6), so that moving
# code keeps the arithmetic; bn_cnn re-recorded after patches/0009 and 0010 (batch
# norm's training forward now normalizes by the variance its backward differentiates,
# with the GPU's epsilon), which change that net's numbers on purpose: 200 updates
# reach test accuracy 0.904 (was 0.905) and loss 0.297 (was 0.303); bn_cnn re-recorded
# again when the batch-norm scales and shifts got their own Fisher block (issue 13,
# kfac_bn.c: they were on plain SGD): test accuracy 0.949 and loss 0.185 after 200
# updates.  The other three nets have no batch norm and keep their bits.  A change
# that is meant to change the numbers (a new
# default, a Darknet gradient fix) records a new value here and says why in its
# commit.
#
# OpenBLAS's results depend on its kernels and thread count (measured here: 2 threads
# and the Sandybridge or Nehalem kernels each give other weights), so the run pins one
# thread and the Haswell kernels (AVX2, which the CI and development machines have;
# on this project's AMD EPYC the Zen kernels gave the same bits).  On a CPU without
# AVX2 the test cannot pin them and says SKIP.
set -u
DK=${1:?usage: tests/test_checksum.sh <darknet build folder>}
W=build/tests/checksum
DATA=build/data/digits/digits.data
COMPARE=${KFAC_COMPARE:-build/kfac_compare}
# the release CPU build (build/darknet-cpu, or that variant under another BUILD=) pins
# the bits; other variants (make test-sanitize) only run
release=0
case "$DK" in */darknet-cpu | darknet-cpu) release=1 ;; esac
mkdir -p "$W"

if ! grep -qw avx2 /proc/cpuinfo 2>/dev/null; then
    echo "SKIP checksum: no AVX2 here, OpenBLAS's Haswell kernels cannot be pinned"
    exit 0
fi
if [ ! -f "$DATA" ]; then
    python3 tools/digits_prepare.py >"$W/prepare.log" 2>&1 || true
fi
if [ ! -f "$DATA" ]; then
    echo "FAIL checksum_data: no demo data ($DATA; tools/digits_prepare.py failed, see $W/prepare.log)"
    exit 1
fi
nfail=0
# run NAME CFG EXPECTED-SHA256
run() {
    local name=$1 cfg=$2 want=$3 got
    rm -f "$W/$name.weights"
    # another variant (make test-sanitize) cannot give the release build's bits (below):
    # a shorter run checks it runs clean, in a quarter of the instrumented time
    local iters=200
    [ $release = 1 ] || iters=50
    if ! OPENBLAS_NUM_THREADS=1 OPENBLAS_CORETYPE=Haswell "$COMPARE" -data "$DATA" -cfg "$cfg" \
            -seed 1 -iters $iters -eval $iters -weights-out "$W/$name.weights" >"$W/$name.log" 2>&1; then
        echo "FAIL checksum_$name: $COMPARE failed (see $W/$name.log)"
        nfail=$((nfail + 1))
        return
    fi
    got=$(sha256sum "$W/$name.weights" | cut -d' ' -f1)
    if [ $release = 0 ]; then
        # another variant (make test-sanitize): its instrumented code is vectorized
        # otherwise, so the bits differ from the release build's; the run itself,
        # clean under the sanitizers, is what is checked
        echo "ok checksum_${name}_runs ($COMPARE: weights not compared with the release build's)"
    elif [ "$got" = "$want" ]; then
        echo "ok checksum_$name"
    else
        echo "FAIL checksum_$name: final weights sha256 $got, recorded $want"
        nfail=$((nfail + 1))
    fi
}
# step=kl_clip pinned: the rule these runs were recorded with, before step=auto became
# the default (issue 7)
# and the schedule they were recorded with: statistics every 10 updates, decompositions
# every 100 (and at each statistics step of the first 100), used at once (the
# defaults until issue 11 made them auto and the decompositions a background job)
sched='stats_interval=10\ninverse_interval=100\ninverse_lag=0'
printf "%s\nstep=kl_clip\n$sched\n" "$(cat cfg/digits-kfac.cfg)" >"$W/demo-kfac.cfg"
printf "%s\n\n[kfac]\nstep=kl_clip\n$sched\n" "$(cat cfg/digits-bn.cfg)" >"$W/bn-kfac.cfg"
printf '%s\n\n[kfac]\nstep=kl_clip\nfisher=empirical\nstats_interval=3\ninverse_interval=25\ninverse_lag=0\n' "$(cat cfg/digits-mlp.cfg)" >"$W/mlp-kfac.cfg"
run demo_cnn "$W/demo-kfac.cfg" fe2236b700a478545c1c93617b7528d295bf5554b900f1494800cc9dc50f5f7c
run bn_cnn "$W/bn-kfac.cfg" 52f3c55d6fd7cba5ecace11ab4e8becf6c6f080ba199512163a4aa832c707580
run mlp "$W/mlp-kfac.cfg" d28bf38efc1c0bd3643ee4d5ecbf49b69de715525274f501943e7e24a41a5eeb
# the default since issue 7: step=auto (adaptive steps to update 26, then the KL clip)
printf "%s\n$sched\n" "$(cat cfg/digits-kfac.cfg)" >"$W/demo-kfac-auto.cfg"
run demo_cnn_auto "$W/demo-kfac-auto.cfg" a7133ba35fd4262b0e1fb1bb147896941cbb25439c6356f06d8e1f4cb6d09a68
[ $nfail -eq 0 ]
