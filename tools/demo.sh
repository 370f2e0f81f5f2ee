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
#   EVAL_GROWTH=1.25  and before that, at updates growing by this factor (1, 2, 3, 4,
#                     5, 7, 9, ...): both optimizers reach 90% test accuracy within
#                     the first 40 updates, where every 10 would round K-FAC's 12-14
#                     up to 20 and SGD's 34-40 up to 40 (1: every EVAL only)
#   OUT=build/demo    where the TSVs, logs and table go
#   KFAC_COMPARE=build/kfac_compare
#   OPENBLAS_NUM_THREADS=1  K-FAC's LAPACK/BLAS calls run on one core like Darknet's
#                     own gemm, so seconds compare like for like; set it to use more
#
#   AE_ITERS=1000     updates of the autoencoder part (batch 128); AE_ITERS=0 skips it
#
# Steps: tools/digits_prepare.py (fetches opencv-doc with apt-get download the first
# time), then for each seed kfac_compare with cfg/digits.cfg (SGD) and
# cfg/digits-kfac.cfg (the same plus [kfac]), one run at a time so that timings do not
# disturb each other, then tools/demo_table.py prints the table (also written to
# OUT/table.txt).  Then the deep autoencoder (cfg/digits-ae.cfg, seed 1): SGD at the
# cfg's rate and K-FAC with an empty [kfac], AE_ITERS updates each, reconstruction
# error over the whole training set; tools/ae_table.py prints where K-FAC reaches
# SGD's final error.  gnuplot draws both comparisons into OUT/demo.png.  About 8
# minutes on 2 CPU cores.
set -eu

cd "$(dirname "$0")/.."

SEEDS=${SEEDS:-"1 2 3"}
ITERS=${ITERS:-320}
EVAL=${EVAL:-10}
EVAL_GROWTH=${EVAL_GROWTH:-1.25}
AE_ITERS=${AE_ITERS:-1000}
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
                -eval "$EVAL" -eval-growth "$EVAL_GROWTH" -full-train -out "$tsv" >"$log" 2>&1; then
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

# The deep autoencoder, where Martens & Grosse showed K-FAC first: one seed (a run of
# 1000 updates takes a minute or two).
if [ "$AE_ITERS" -gt 0 ]; then
    echo
    mkdir -p "$OUT/ae"
    { cat cfg/digits-ae.cfg; printf '\n[kfac]\n'; } >"$OUT/ae/digits-ae-kfac.cfg"
    for opt in sgd kfac; do
        case $opt in
            sgd) cfg=cfg/digits-ae.cfg ;;
            kfac) cfg=$OUT/ae/digits-ae-kfac.cfg ;;
        esac
        log=$OUT/ae/$opt-seed1.log
        if ! "$KFAC_COMPARE" -data "$DATA" -cfg "$cfg" -seed 1 -iters "$AE_ITERS" \
                -eval $((AE_ITERS / 20 > 0 ? AE_ITERS / 20 : 1)) -full-train \
                -out "$OUT/ae/$opt-seed1.tsv" >"$log" 2>&1; then
            echo "demo.sh: $KFAC_COMPARE failed for $cfg; the end of $log:" >&2
            tail -n 20 "$log" >&2
            exit 1
        fi
        echo "demo.sh: autoencoder $opt: $(grep '^iter' "$log" | tail -n 1 | tr -s ' ')"
    done
    echo
    python3 tools/ae_table.py --dir "$OUT/ae" --seeds 1 --batch 128 | tee "$OUT/ae/table.txt"
fi

# The curves, seed 1: the CNN's loss and the autoencoder's error against updates.
if command -v gnuplot >/dev/null; then
    {
        echo "set terminal pngcairo size 1200,480 font ',10'"
        echo "set output '$OUT/demo.png'"
        echo "set multiplot layout 1,2"
        echo "set xlabel 'updates'; set logscale y; set grid; set key top right"
        echo "set title 'demo CNN (cfg/digits.cfg), seed 1: whole training set loss'"
        echo "plot '$OUT/sgd-seed1.tsv' every ::1 using 1:6 with linespoints title 'SGD', \\"
        echo "     '$OUT/kfac-seed1.tsv' every ::1 using 1:6 with linespoints title 'K-FAC'"
        if [ "$AE_ITERS" -gt 0 ]; then
            echo "set title 'autoencoder (cfg/digits-ae.cfg), seed 1: reconstruction error'"
            echo "plot '$OUT/ae/sgd-seed1.tsv' every ::1 using 1:6 with linespoints title 'SGD', \\"
            echo "     '$OUT/ae/kfac-seed1.tsv' every ::1 using 1:6 with linespoints title 'K-FAC'"
        fi
        echo "unset multiplot"
    } >"$OUT/demo.gp"
    if gnuplot "$OUT/demo.gp"; then
        echo
        echo "demo.sh: the curves: $OUT/demo.png"
    else
        echo "demo.sh: gnuplot failed on $OUT/demo.gp; the tables above stand" >&2
    fi
else
    echo "demo.sh: gnuplot not found, no plot (tools/setup.sh gnuplot installs it)"
fi

# The batch-size study (make study, tools/batch_study.py) draws its figures apart
# from the demo; show where one is when it has been run (--quick: its smoke test).
for plot in build/study/digits-ae-updates-to-target.png build/study-quick/digits-ae-updates-to-target.png; do
    if [ -f "$plot" ]; then
        echo "demo.sh: the batch-size study's updates to target against batch size: $plot"
        break
    fi
done
[ -f "$plot" ] || echo "demo.sh: 'make study' draws SGD against K-FAC over batch sizes (build/study/*.png)"
