#!/usr/bin/env bash
# The benchmarks of issue 13 (BENCHMARKS.md, "Batch-norm blocks and EKFAC"): this
# build's K-FAC, with the batch-norm scales and shifts preconditioned, against another
# build's K-FAC (the comparison build: one without the blocks, so its scales and
# shifts stay on SGD), same seeds, same cfgs, same batches; and scaling=ekfac against
# K-FAC.  Every run's figures are against SGD's result (tools/issue13_table.py).
#
#   BASE=<checkout of the comparison build, built with make> tools/bench_issue13.sh [SECTION...]
#
# Sections (default: all, in this order):
#   bn_cnn         cfg/digits-bn.cfg, 750 updates, evaluations every 25: SGD and K-FAC
#                  of BASE, K-FAC and EKFAC of this build (SEEDS)
#   gn_scratch     cfg/googlenet-digits-bn.cfg from scratch (tools/retrain_googlenet.sh,
#                  500 updates, evaluations every 50), 1 seed
#   small_ekfac    EKFAC against K-FAC on the demo CNN (320 updates, SGD at 0.05) and
#                  the MLP (160 updates) (SEEDS)
#   detect         the digits detector (tools/retrain_detect.sh), DETECT_ITERS updates
#                  (300), a checkpoint every 50, 1 seed
#   gn_retrain     cfg/googlenet-digits-bn.cfg retrained (376 updates, every 16), 1 seed
#   gn_plain_ekfac cfg/googlenet-digits.cfg from scratch, EKFAC against K-FAC, 1 seed
#
# Environment: SEEDS ("1 2 3"), OUT (build/issue13), DETECT_ITERS (300).  One BLAS
# thread (as tools/bench.sh); runs one at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE:?set BASE to the checkout of the comparison build (make run there)}
OUT=${OUT:-build/issue13}
SEEDS=${SEEDS:-"1 2 3"}
DETECT_ITERS=${DETECT_ITERS:-300}
export OPENBLAS_NUM_THREADS=1
DATA=build/data/digits/digits.data
MINE=build/kfac_compare
THEIRS=$BASE/build/kfac_compare
for b in "$MINE" "$THEIRS" "$BASE/build/darknet-cpu/darknet"; do [ -x "$b" ] || { echo "bench_issue13: $b not found" >&2; exit 1; }; done
python3 tools/digits_prepare.py --out build/data/digits >/dev/null
mkdir -p "$OUT"
csv_seeds=$(echo $SEEDS | tr ' ' ,)
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# run COMPARE DIR NAME CFG SEED ITERS EVAL [args]: DIR/NAME-seedS.csv (updates,seconds,loss,accuracy)
run() {
    local cmp=$1 dir=$2 name=$3 cfg=$4 seed=$5 iters=$6 ev=$7
    shift 7
    mkdir -p "$dir"
    "$cmp" -data "$DATA" -cfg "$cfg" -seed "$seed" -iters "$iters" -eval "$ev" -full-train \
        -out "$dir/$name-seed$seed.tsv" "$@" >"$dir/$name-seed$seed.log" 2>&1 ||
        { echo "bench_issue13: $name seed $seed failed (see $dir/$name-seed$seed.log)" >&2; exit 1; }
    awk -F'\t' 'NR == 1 { print "updates,seconds,loss,accuracy"; next } { print $1 "," $2 "," $6 "," $4 }' \
        "$dir/$name-seed$seed.tsv" >"$dir/$name-seed$seed.csv"
    log "$dir $name seed $seed: $(tail -n 1 "$dir/$name-seed$seed.csv")"
}
# with CFG LINES OUTFILE: the cfg with a [kfac] section of LINES (space separated)
with() {
    { cat "$1"; printf '\n[kfac]\n'; for kv in $2; do echo "$kv"; done; } >"$3"
    echo "$3"
}

bn_cnn() {
    local d=$OUT/bn_cnn
    mkdir -p "$d"
    local k=$(with cfg/digits-bn.cfg "" "$d/kfac.cfg") e=$(with cfg/digits-bn.cfg "scaling=ekfac" "$d/ekfac.cfg")
    for s in $SEEDS; do
        run "$THEIRS" "$d" sgd cfg/digits-bn.cfg "$s" 750 25
        run "$THEIRS" "$d" kfac_base "$k" "$s" 750 25
        run "$MINE" "$d" kfac_bn "$k" "$s" 750 25
        run "$MINE" "$d" ekfac "$e" "$s" 750 25
    done
    python3 tools/issue13_table.py --seeds "$csv_seeds" --sgd "$d/sgd" --run "kfac_base=$d/kfac_base" \
        --run "kfac_bn=$d/kfac_bn" --run "ekfac=$d/ekfac" --ratio kfac_bn/kfac_base --ratio ekfac/kfac_bn | tee "$d/table.txt"
}

small_ekfac() {
    local d=$OUT/small
    mkdir -p "$d"
    local m=$(with cfg/digits-mlp.cfg "" "$d/mlp-kfac.cfg") me=$(with cfg/digits-mlp.cfg "scaling=ekfac" "$d/mlp-ekfac.cfg")
    { cat cfg/digits-kfac.cfg; echo scaling=ekfac; } >"$d/cnn-ekfac.cfg"
    for s in $SEEDS; do
        run "$MINE" "$d" cnn_sgd cfg/digits.cfg "$s" 320 20 -lr 0.05
        run "$MINE" "$d" cnn_kfac cfg/digits-kfac.cfg "$s" 320 20 -lr 0.05
        run "$MINE" "$d" cnn_ekfac "$d/cnn-ekfac.cfg" "$s" 320 20 -lr 0.05
        run "$MINE" "$d" mlp_sgd cfg/digits-mlp.cfg "$s" 160 8
        run "$MINE" "$d" mlp_kfac "$m" "$s" 160 8
        run "$MINE" "$d" mlp_ekfac "$me" "$s" 160 8
    done
    for n in cnn mlp; do
        python3 tools/issue13_table.py --seeds "$csv_seeds" --sgd "$d/${n}_sgd" --run "kfac=$d/${n}_kfac" \
            --run "ekfac=$d/${n}_ekfac" --ratio ekfac/kfac | tee "$d/$n-table.txt"
    done
}

# gn NET PHASE EVAL-OPTION EVERY: the GoogLeNet-like flow, SGD and K-FAC of BASE,
# K-FAC and EKFAC of this build, 1 seed
gn() {
    local net=$1 phase=$2 evopt=$3 every=$4 d=$OUT/gn-$2-$1
    KFAC_COMPARE=$THEIRS DARKNET=$BASE/build/darknet-cpu/darknet tools/retrain_googlenet.sh --seeds 1 --nets "$net" \
        --phases "$phase" "$evopt" "$every" --no-plots --out "$d/base" >"$d-base.log" 2>&1 ||
        { echo "bench_issue13: $d base failed (see $d-base.log)" >&2; exit 1; }
    tools/retrain_googlenet.sh --seeds 1 --nets "$net" --phases "$phase" "$evopt" "$every" --no-plots --opts kfac \
        --out "$d/bn" >"$d-bn.log" 2>&1 || { echo "bench_issue13: $d failed (see $d-bn.log)" >&2; exit 1; }
    tools/retrain_googlenet.sh --seeds 1 --nets "$net" --phases "$phase" "$evopt" "$every" --no-plots --opts kfac \
        --kfac scaling=ekfac --out "$d/ekfac" >"$d-ekfac.log" 2>&1 ||
        { echo "bench_issue13: $d ekfac failed (see $d-ekfac.log)" >&2; exit 1; }
    local r=$phase/$net
    python3 tools/issue13_table.py --seeds 1 --sgd "$d/base/$r/sgd" --run "kfac_base=$d/base/$r/kfac" \
        --run "kfac_bn=$d/bn/$r/kfac" --run "ekfac=$d/ekfac/$r/kfac" --ratio kfac_bn/kfac_base --ratio ekfac/kfac_bn |
        tee "$d/table.txt"
}

detect() {
    local d=$OUT/detect
    mkdir -p "$d"
    DARKNET=$BASE/build/darknet-cpu/darknet KFAC_COMPARE=$THEIRS tools/retrain_detect.sh --seeds 1 --iters "$DETECT_ITERS" \
        --save-interval 50 --no-plots --out "$d/base" >"$d/base.log" 2>&1 ||
        { echo "bench_issue13: detect base failed (see $d/base.log)" >&2; exit 1; }
    tools/retrain_detect.sh --seeds 1 --iters "$DETECT_ITERS" --save-interval 50 --no-plots --opts kfac --out "$d/bn" \
        >"$d/bn.log" 2>&1 || { echo "bench_issue13: detect failed (see $d/bn.log)" >&2; exit 1; }
    python3 tools/issue13_table.py --seeds 1 --score map50 --sgd "$d/base/sgd" --run "kfac_base=$d/base/kfac" \
        --run "kfac_bn=$d/bn/kfac" --ratio kfac_bn/kfac_base | tee "$d/table.txt"
}

gn_plain_ekfac() {
    local d=$OUT/gn-scratch-plain r=scratch/googlenet-digits
    tools/retrain_googlenet.sh --seeds 1 --nets googlenet-digits --phases scratch --scratch-eval 50 --no-plots \
        --out "$d/kfac" >"$d-kfac.log" 2>&1 || { echo "bench_issue13: $d failed (see $d-kfac.log)" >&2; exit 1; }
    tools/retrain_googlenet.sh --seeds 1 --nets googlenet-digits --phases scratch --scratch-eval 50 --no-plots \
        --opts kfac --kfac scaling=ekfac --out "$d/ekfac" >"$d-ekfac.log" 2>&1 ||
        { echo "bench_issue13: $d ekfac failed (see $d-ekfac.log)" >&2; exit 1; }
    python3 tools/issue13_table.py --seeds 1 --sgd "$d/kfac/$r/sgd" --run "kfac=$d/kfac/$r/kfac" \
        --run "ekfac=$d/ekfac/$r/kfac" --ratio ekfac/kfac | tee "$d/table.txt"
}

SECTIONS=${*:-"bn_cnn gn_scratch small_ekfac detect gn_retrain gn_plain_ekfac"}
for sec in $SECTIONS; do
    log "== $sec"
    case $sec in
        bn_cnn) bn_cnn ;;
        gn_scratch) mkdir -p "$OUT"; gn googlenet-digits-bn scratch --scratch-eval 50 ;;
        small_ekfac) small_ekfac ;;
        detect) detect ;;
        gn_retrain) mkdir -p "$OUT"; gn googlenet-digits-bn retrain --retrain-eval 16 ;;
        gn_plain_ekfac) gn_plain_ekfac ;;
        *) echo "bench_issue13: unknown section $sec" >&2; exit 1 ;;
    esac
done
log "done: tables in $OUT/*/table.txt"
