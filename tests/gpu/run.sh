#!/usr/bin/env bash
# darknet-kfac's GPU checks (issue 3), in one call on a machine with a GPU:
#
#   tests/gpu/run.sh
#
#   1. builds the GPU variant (make GPU=1), which needs no GPU;
#   2. stops with a SKIP line and status 0 when `nvidia-smi -L` lists no GPU;
#   3. runs tests/gpu/test_gpu_kfac.c: every operation of the CUDA backend against
#      dense references and the CPU backend (the cases of tests/backend_cases.h),
#      the factor product's split-k and syrk paths, the driver's fallbacks, whole
#      updates CPU vs GPU, the state file, two replicas through sync_nets; then again
#      with cuDNN when cudnn.h is installed (KFAC_GPU_CUDNN=0 skips that);
#   4. trains the demo CNN briefly on the digits (build/data/digits) with SGD and
#      K-FAC, on the GPU and on the CPU from the same seed, checks the accuracies;
#   5. prints a timing table (seconds per update; K-FAC's breakdown on the GPU).
#
# The last line is `N passed, N failed`; the status is 0 only when nothing failed.
# What a machine without Debian's -dev packages needs carried: tests/gpu/README.md.
#
# Environment: CUDA_ARCH (default: the card's compute capability), OPENBLAS_LIB
# (default build/openblas/libopenblas.a when present, else the system's -lopenblas),
# KFAC_GPU_TRAIN_ITERS (updates per training run, default 60), KFAC_GPU_CUDNN.
set -u
cd "$(dirname "$0")/../.."
OUT=build/tests-gpu
mkdir -p "$OUT"
t_suite=$(date +%s)
. tests/count.sh

fail() { echo "FAIL $1: $2"; failed=$((failed + 1)); }
ok() { echo "ok $1"; passed=$((passed + 1)); }
finish() {
    echo "# suite: $(( $(date +%s) - t_suite )) s"
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
    exit
}

. tests/gpu/common.sh
gpu_setup || { fail setup "$GPU_BUILD_ERROR"; finish; }
echo "# building: make ${MAKEVARS[*]}"
# build_variant CUDNN: the variant and the test programs, counted as one check
build_variant() {
    if gpu_build "$1"; then ok "build_cudnn$1"; else fail "build_cudnn$1" "$GPU_BUILD_ERROR"; return 1; fi
}

build_variant 0 || finish
if [ "$GPUS" -eq 0 ]; then
    echo "SKIP tests/gpu: nvidia-smi -L lists no GPU here; the GPU variant was built, nothing was run"
    echo "$passed passed, $failed failed, 1 skipped"
    exit 0
fi
nvidia-smi -L
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)

# ---- CPU vs GPU, piece by piece --------------------------------------------------------------
count_run test_gpu_kfac "$OUT/cudnn0/test_gpu_kfac.log" env KFAC_GPU_TMP="$ROOT/$OUT" "$OUT/cudnn0/test_gpu_kfac" tests/gpu
if [ "${KFAC_GPU_CUDNN:-1}" != 0 ] && { [ -f "$CUDA_HOME/include/cudnn.h" ] || [ -f /usr/include/cudnn.h ]; }; then
    echo "# again with cuDNN convolutions"
    if build_variant 1; then
        count_run test_gpu_kfac_cudnn "$OUT/cudnn1/test_gpu_kfac.log" env KFAC_GPU_TMP="$ROOT/$OUT" "$OUT/cudnn1/test_gpu_kfac" tests/gpu
    fi
else
    echo "# cuDNN build skipped (no cudnn.h, or KFAC_GPU_CUDNN=0)"
fi

# ---- a short training on the digits ----------------------------------------------------------
ITERS=${KFAC_GPU_TRAIN_ITERS:-60}
DATA=build/data/digits/digits.data
declare -A SECS ACC
# train NAME CFG GPU: kfac_compare, same seed for every run
train() {
    local name=$1 cfg=$2 gpu=$3 log=$OUT/train-$1.log
    if ! "$OUT/cudnn0/kfac_compare" -data "$DATA" -cfg "$cfg" -seed 1 -iters "$ITERS" -eval "$ITERS" -gpu "$gpu" \
            -out "$OUT/train-$name.tsv" >"$log" 2>&1; then
        tail -n 20 "$log"
        fail "train_$name" "kfac_compare failed (log: $log)"
        return 1
    fi
    SECS[$name]=$(sed -n 's/^mean seconds per update: //p' "$log")
    ACC[$name]=$(tail -n 1 "$OUT/train-$name.tsv" | cut -f4)
    echo "# $name: ${SECS[$name]} s per update, test accuracy ${ACC[$name]} after $ITERS updates"
}
# check_acc NAME MIN
check_acc() {
    local a=${ACC[$1]:-}
    [ -n "$a" ] || return
    if awk -v a="$a" -v m="$2" 'BEGIN { exit !(a >= m) }'; then ok "train_$1_accuracy"
    else fail "train_$1_accuracy" "test accuracy $a after $ITERS updates, expected >= $2"; fi
}

if [ ! -f "$DATA" ]; then
    fail train_data "$DATA not found: run python3 tools/digits_prepare.py here, or carry build/data/digits (tests/gpu/README.md)"
else
    train sgd_gpu cfg/digits.cfg 0
    train kfac_gpu cfg/digits-kfac.cfg 0
    train sgd_cpu cfg/digits.cfg -1
    train kfac_cpu cfg/digits-kfac.cfg -1
    # one epoch (62 updates) of SGD passes 0.9 on the CPU; 0.8 catches a broken GPU
    # path (chance is 0.1) without depending on the last percent
    check_acc sgd_gpu 0.8
    check_acc kfac_gpu 0.8
    # same seed, weights and batches on both devices: only float rounding differs, so
    # the accuracies stay within a few test images of each other
    if [ -n "${ACC[kfac_gpu]:-}" ] && [ -n "${ACC[kfac_cpu]:-}" ]; then
        if awk -v a="${ACC[kfac_gpu]}" -v b="${ACC[kfac_cpu]}" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 0.03) }'; then
            ok train_kfac_gpu_matches_cpu
        else
            fail train_kfac_gpu_matches_cpu "test accuracy GPU ${ACC[kfac_gpu]} vs CPU ${ACC[kfac_cpu]} (allowed 0.03)"
        fi
    fi
fi

# ---- timing table -----------------------------------------------------------------------------
BENCH=""
if "$OUT/cudnn0/bench_gpu" -cfg cfg/digits-kfac.cfg -iters 100 -warmup 5 >"$OUT/bench-digits.log" 2>&1; then
    BENCH=$(grep '^RESULT' "$OUT/bench-digits.log")
    ok bench_digits
else
    tail -n 20 "$OUT/bench-digits.log"
    fail bench_digits "bench_gpu failed (log: $OUT/bench-digits.log)"
fi
echo
echo "Timing on $CARD, demo CNN (cfg/digits*.cfg, batch 64), seconds per update:"
printf '| %-6s | %-10s | %-10s |\n' "" "CPU" "GPU"
printf '| %-6s | %-10s | %-10s |\n' "SGD" "${SECS[sgd_cpu]:--}" "${SECS[sgd_gpu]:--}"
printf '| %-6s | %-10s | %-10s |\n' "K-FAC" "${SECS[kfac_cpu]:--}" "${SECS[kfac_gpu]:--}"
if [ -n "$BENCH" ]; then
    echo "K-FAC on the GPU, default intervals, random input, per update (bench_gpu):"
    echo "$BENCH" | tr ' ' '\n' | grep -E '^(s_per_update|stats|inverse|precond)=' | sed 's/=/: /; s/^/  /'
fi
echo
finish
