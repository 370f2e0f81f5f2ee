#!/usr/bin/env bash
# test_checksum.sh <darknet build folder>: one fixed K-FAC run on the CPU gives the
# same final weights, bit for bit, as it did when the checksum below was recorded.
#
# The run: the demo CNN (cfg/digits-kfac.cfg, every [kfac] default) on the demo data,
# seed 1, 200 updates, through build/kfac_compare (same initial weights and batches
# for a given seed).  200 updates cover two inverse intervals, twenty statistics
# steps with the true-Fisher pass, the KL clip and the lr policy's first step.
#
# Recorded at commit dead170 (before the backend split of issue 6), so that moving
# code keeps the arithmetic.  A change that is meant to change the numbers (a new
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
EXPECTED=fe2236b700a478545c1c93617b7528d295bf5554b900f1494800cc9dc50f5f7c
W=build/tests/checksum
DATA=build/data/digits/digits.data
COMPARE=build/kfac_compare
mkdir -p "$W"

if ! grep -qw avx2 /proc/cpuinfo 2>/dev/null; then
    echo "SKIP checksum_demo_cnn_200: no AVX2 here, OpenBLAS's Haswell kernels cannot be pinned"
    exit 0
fi
if [ ! -f "$DATA" ]; then
    python3 tools/digits_prepare.py >"$W/prepare.log" 2>&1 || true
fi
if [ ! -f "$DATA" ]; then
    echo "FAIL checksum_demo_cnn_200: no demo data ($DATA; tools/digits_prepare.py failed, see $W/prepare.log)"
    exit 1
fi
rm -f "$W/final.weights"
if ! OPENBLAS_NUM_THREADS=1 OPENBLAS_CORETYPE=Haswell "$COMPARE" -data "$DATA" -cfg cfg/digits-kfac.cfg \
        -seed 1 -iters 200 -eval 200 -weights-out "$W/final.weights" >"$W/run.log" 2>&1; then
    echo "FAIL checksum_demo_cnn_200: $COMPARE failed (see $W/run.log)"
    exit 1
fi
got=$(sha256sum "$W/final.weights" | cut -d' ' -f1)
if [ "$got" = "$EXPECTED" ]; then
    echo "ok checksum_demo_cnn_200"
else
    echo "FAIL checksum_demo_cnn_200: final weights sha256 $got, recorded $EXPECTED"
    exit 1
fi
