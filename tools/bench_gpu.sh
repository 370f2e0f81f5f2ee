#!/usr/bin/env bash
# GPU benchmark of darknet-kfac (issue 3): mean seconds per update of SGD and of K-FAC
# at its default intervals (statistics every 10 updates, decompositions every 100),
# K-FAC's breakdown, on the demo CNN (cfg/digits*.cfg) and on a YOLOv3-tiny-sized net
# (tests/gpu/yolov3-tiny-kfac.cfg, 64 images of 416x416 per update), random input;
# and the factor product of the YOLO net's largest covered layer against cuBLAS sgemm.
#
#   make bench-gpu        or        tools/bench_gpu.sh
#
# Needs a GPU.  Builds the GPU variant as tests/gpu/run.sh does (same environment:
# CUDA_ARCH, OPENBLAS_LIB; tests/gpu/README.md).  BENCH_ITERS (default 100) timed
# updates follow 5 untimed ones, so each K-FAC mean holds 10 statistics steps and one
# decomposition step, as a long run does.  Writes the table to build/bench_gpu.md and
# into BENCHMARKS.md between the lines <!-- bench-gpu --> and <!-- /bench-gpu -->
# (appended when they are absent).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=build/bench-gpu
mkdir -p "$OUT"
. tests/gpu/common.sh
gpu_setup || { echo "bench_gpu: $GPU_BUILD_ERROR" >&2; exit 1; }
if [ "$GPUS" -eq 0 ]; then
    echo "bench_gpu: nvidia-smi -L lists no GPU: nothing to time" >&2
    exit 1
fi
echo "bench_gpu: building: make ${MAKEVARS[*]}"
gpu_build 0 || { echo "bench_gpu: $GPU_BUILD_ERROR" >&2; exit 1; }
BIN=$OUT/cudnn0/bench_gpu
ITERS=${BENCH_ITERS:-100}
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)

# result FILE KEY: a value from bench_gpu's RESULT or PRODUCT line
result() { grep -E '^(RESULT|PRODUCT) ' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1; }

# bench KEY LABEL CFG [-product]: SGD and K-FAC runs of one cfg, logs $OUT/KEY-*.log
rows=""
bench() {
    local key=$1 name=$2 cfg=$3 extra=${4:-}
    "$BIN" -cfg "$cfg" -sgd -iters "$ITERS" -warmup 5 | tee "$OUT/$key-sgd.log"
    "$BIN" -cfg "$cfg" -iters "$ITERS" -warmup 5 $extra | tee "$OUT/$key-kfac.log"
    local s k
    s=$(result "$OUT/$key-sgd.log" s_per_update)
    k=$(result "$OUT/$key-kfac.log" s_per_update)
    rows+=$(printf '| %s | %.4f | %.4f | %.2fx | %.4f | %.4f | %.4f |' "$name" "$s" "$k" \
        "$(awk -v a="$k" -v b="$s" 'BEGIN { print a / b }')" \
        "$(result "$OUT/$key-kfac.log" stats)" "$(result "$OUT/$key-kfac.log" inverse)" \
        "$(result "$OUT/$key-kfac.log" precond)")$'\n'
}
bench digits "demo CNN (cfg/digits-kfac.cfg, 64 x 20x20)" cfg/digits-kfac.cfg
bench yolo "YOLOv3-tiny-sized (tests/gpu/yolov3-tiny-kfac.cfg, 64 x 416x416)" tests/gpu/yolov3-tiny-kfac.cfg -product
P=$OUT/yolo-kfac.log

{
    echo "<!-- bench-gpu -->"
    echo "## GPU: $CARD"
    echo
    echo "\`make bench-gpu\` (tools/bench_gpu.sh), $(date -u +%Y-%m-%d), CUDA_ARCH=${CUDA_ARCH:-default}:"
    echo "mean seconds per update over $ITERS updates after 5 warm-up ones, random input;"
    echo "K-FAC at its defaults (statistics every 10 updates, decompositions every 100);"
    echo "its parts are seconds per update, timed with CUDA events."
    echo
    echo "| net | SGD | K-FAC | K-FAC / SGD | statistics | decompositions | preconditioning |"
    echo "| --- | --- | --- | --- | --- | --- | --- |"
    printf '%s' "$rows"
    echo
    echo "Factor product of the YOLO net's largest covered layer (layer $(result "$P" layer), A of"
    echo "$(result "$P" K) over $(result "$P" n) columns): $(result "$P" product_gflops) GFLOP/s counting the"
    echo "symmetric product's useful flops, against $(result "$P" sgemm_gflops) GFLOP/s for cuBLAS sgemm on"
    echo "the same shapes (ratio $(result "$P" ratio))."
    echo "<!-- /bench-gpu -->"
} > build/bench_gpu.md
cat build/bench_gpu.md

# into BENCHMARKS.md: replace the marked section, or append it
if [ -f BENCHMARKS.md ] && grep -q '^<!-- bench-gpu -->' BENCHMARKS.md; then
    awk 'FNR == NR { sec = sec $0 "\n"; next }
         /^<!-- bench-gpu -->/ { printf "%s", sec; skip = 1; next }
         /^<!-- \/bench-gpu -->/ { skip = 0; next }
         !skip' build/bench_gpu.md BENCHMARKS.md > build/BENCHMARKS.md.new
    mv build/BENCHMARKS.md.new BENCHMARKS.md
else
    { [ -f BENCHMARKS.md ] && echo; cat build/bench_gpu.md; } >> BENCHMARKS.md
fi
echo "bench_gpu: written to build/bench_gpu.md and BENCHMARKS.md"
