#!/bin/sh
# darknet-kfac demo: SGD and K-FAC side by side on OpenCV's handwritten digits.
#
# Usage, from anywhere (it works from the repository root; `make demo` runs it):
#
#   tools/demo.sh
#
# Environment (all optional):
#   SEEDS="1 2 3"     seeds; each seed gives SGD and K-FAC the same initial weights and
#                     the same sequence of batches
#   ITERS=320         updates per run (320 x 64 images = about 5 epochs; the cfgs'
#                     max_batches)
#   EVAL=10           evaluate (test set and whole training set) every EVAL updates
#   OUT=build/demo    where the TSVs, logs and table go
#   KFAC_COMPARE=build/kfac_compare
#   OPENBLAS_NUM_THREADS=1  K-FAC's LAPACK/BLAS calls run on one core like Darknet's
#                     own gemm, so seconds compare like for like; set it to use more
#
# Steps: tools/digits_prepare.py (fetches opencv-doc with apt-get download the first
# time), then for each seed kfac_compare with cfg/digits.cfg (SGD) and
# cfg/digits-kfac.cfg (the same plus [kfac]), one run at a time so that timings do not
# disturb each other, then tools/demo_table.py prints the table (also written to
# OUT/table.txt). About 4 minutes on 2 CPU cores.
set -eu

cd "$(dirname "$0")/.."

SEEDS=${SEEDS:-"1 2 3"}
ITERS=${ITERS:-320}
EVAL=${EVAL:-10}
OUT=${OUT:-build/demo}
KFAC_COMPARE=${KFAC_COMPARE:-build/kfac_compare}
OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
export OPENBLAS_NUM_THREADS

DATA=build/data/digits/digits.data

if [ ! -x "$KFAC_COMPARE" ]; then
    echo "demo.sh: $KFAC_COMPARE not found: run make first" >&2
    exit 1
fi

python3 tools/digits_prepare.py --out build/data/digits
mkdir -p "$OUT"

start=$(date +%s)
for seed in $SEEDS; do
    for opt in sgd kfac; do
        case $opt in
            sgd) cfg=cfg/digits.cfg ;;
            kfac) cfg=cfg/digits-kfac.cfg ;;
        esac
        tsv=$OUT/$opt-seed$seed.tsv
        log=$OUT/$opt-seed$seed.log
        if ! "$KFAC_COMPARE" -data "$DATA" -cfg "$cfg" -seed "$seed" -iters "$ITERS" \
                -eval "$EVAL" -full-train -out "$tsv" >"$log" 2>&1; then
            echo "demo.sh: $KFAC_COMPARE failed for $cfg seed $seed; the end of $log:" >&2
            tail -n 20 "$log" >&2
            exit 1
        fi
        echo "demo.sh: $opt seed $seed: $(grep '^iter' "$log" | tail -n 1 | tr -s ' ')"
    done
done
echo "demo.sh: training done in $(( $(date +%s) - start )) s"
echo

seeds_csv=$(echo "$SEEDS" | tr ' ' ',')
python3 tools/demo_table.py --dir "$OUT" --seeds "$seeds_csv" | tee "$OUT/table.txt"

# The batch-size study (make study, tools/batch_study.py) draws its figures apart
# from the demo; show where one is when it has been run (--quick: its smoke test).
for plot in build/study/digits-ae-updates-to-target.png build/study-quick/digits-ae-updates-to-target.png; do
    if [ -f "$plot" ]; then
        echo
        echo "demo.sh: the batch-size study's updates to target against batch size: $plot"
        break
    fi
done
[ -f "$plot" ] || echo "demo.sh: 'make study' draws SGD against K-FAC over batch sizes (build/study/*.png)"
