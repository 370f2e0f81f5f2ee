#!/bin/sh
# darknet-kfac CPU benchmark (`make bench`): the figures in BENCHMARKS.md.
#
#   tools/bench.sh [DARKNET_BUILD_DIR]      (default build/darknet-cpu)
#
# 1. SGD learning-rate sweep on the demo CNN (cfg/digits.cfg): 3 epochs, 3 seeds, the
#    rate with the lowest median whole-training-set loss wins.
# 2. The demo comparison at that rate: SGD (cfg/digits.cfg) against K-FAC with its
#    defaults (cfg/digits-kfac.cfg), same seeds, same batches, 5 epochs: updates and
#    seconds to test-accuracy thresholds, to SGD's 3-epoch training loss, seconds per
#    update (tools/demo_table.py).
# 3. The defaults on classifiers that played no part in choosing them:
#    cfg/digits-bn.cfg and cfg/digits-mlp.cfg, each trained as it is with SGD and with
#    an empty [kfac] appended, at the cfg's own learning rate.
# 4. The deep autoencoder (cfg/digits-ae.cfg, batch 128): SGD for 3000 updates at the
#    cfg's rate, K-FAC's defaults until SGD's final reconstruction error
#    (tools/ae_table.py).
#
# Seconds are training time only (kfac_compare excludes data and evaluation), with
# OPENBLAS_NUM_THREADS=1 so that K-FAC's BLAS runs on one core like Darknet's own gemm.
# Environment: SEEDS ("1 2 3"), OUT (build/bench), RATES ("0.02 0.05 0.1").
# Takes about 40 minutes on 2 cores.
set -eu
cd "$(dirname "$0")/.."

SEEDS=${SEEDS:-"1 2 3"}
OUT=${OUT:-build/bench}
RATES=${RATES:-"0.02 0.05 0.1"}
COMPARE=${KFAC_COMPARE:-build/kfac_compare}
DATA=build/data/digits/digits.data
OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
export OPENBLAS_NUM_THREADS
[ -x "$COMPARE" ] || { echo "bench.sh: $COMPARE not found: run make first" >&2; exit 1; }
python3 tools/digits_prepare.py --out build/data/digits >/dev/null
mkdir -p "$OUT"
seeds_csv=$(echo "$SEEDS" | tr ' ' ',')

# run DIR NAME CFG SEED ITERS EVAL [extra kfac_compare args]: DIR/NAME-seedS.tsv
run() {
    dir=$1 name=$2 cfg=$3 seed=$4 iters=$5 ev=$6
    shift 6
    mkdir -p "$dir"
    if ! "$COMPARE" -data "$DATA" -cfg "$cfg" -seed "$seed" -iters "$iters" -eval "$ev" \
            -full-train -out "$dir/$name-seed$seed.tsv" "$@" >"$dir/$name-seed$seed.log" 2>&1; then
        echo "bench.sh: $name seed $seed failed; see $dir/$name-seed$seed.log" >&2
        exit 1
    fi
    echo "bench.sh: $dir $name seed $seed: iter, test acc, training loss $(tail -n 1 "$dir/$name-seed$seed.tsv" | cut -f1,4,6 | tr '\t' ' ')"
}

with_kfac() { # CFG -> OUT/<base>-kfac.cfg: the cfg plus an empty [kfac]
    k="$OUT/$(basename "$1" .cfg)-kfac.cfg"
    { cat "$1"; printf '\n[kfac]\n'; } > "$k"
    echo "$k"
}

echo "== 1. SGD learning-rate sweep, cfg/digits.cfg, 190 updates (3 epochs)"
best="" best_loss=""
for lr in $RATES; do
    for s in $SEEDS; do run "$OUT" "sweep-lr$lr" cfg/digits.cfg "$s" 190 190 -lr "$lr"; done
    med=$(for s in $SEEDS; do tail -n 1 "$OUT/sweep-lr$lr-seed$s.tsv" | cut -f6; done | sort -g |
          awk '{v[NR]=$1} END{print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}')
    echo "bench.sh: lr $lr: median training loss after 3 epochs $med"
    if [ -z "$best" ] || awk -v a="$med" -v b="$best_loss" 'BEGIN{exit !(a < b)}'; then
        best=$lr best_loss=$med
    fi
done
echo "bench.sh: best SGD learning rate $best (median loss $best_loss)"

echo "== 2. demo CNN at lr $best: SGD vs K-FAC defaults, 320 updates"
for s in $SEEDS; do
    # evaluations growing by 1.25 before every 10: 90% comes within 40 updates (demo.sh)
    run "$OUT/digits" sgd cfg/digits.cfg "$s" 320 10 -lr "$best" -eval-growth 1.25
    run "$OUT/digits" kfac cfg/digits-kfac.cfg "$s" 320 10 -lr "$best" -eval-growth 1.25
done
python3 tools/demo_table.py --dir "$OUT/digits" --seeds "$seeds_csv" --batch 64 | tee "$OUT/digits.txt"

echo "== 3. unseen classifiers, an empty [kfac] added, the cfg's own learning rate"
for spec in "digits-bn 750 25 32" "digits-mlp 160 8 128"; do
    set -- $spec
    kcfg=$(with_kfac "cfg/$1.cfg")
    for s in $SEEDS; do
        run "$OUT/$1" sgd "cfg/$1.cfg" "$s" "$2" "$3"
        run "$OUT/$1" kfac "$kcfg" "$s" "$2" "$3"
    done
    python3 tools/demo_table.py --dir "$OUT/$1" --seeds "$seeds_csv" --batch "$4" | tee "$OUT/$1.txt"
done
echo "== 4. the autoencoder (cfg/digits-ae.cfg), batch 128: SGD 3000 updates at the cfg's rate, K-FAC to SGD's final error"
kcfg=$(with_kfac cfg/digits-ae.cfg)
for s in $SEEDS; do
    run "$OUT/digits-ae" sgd cfg/digits-ae.cfg "$s" 3000 100
    target=$(tail -n 1 "$OUT/digits-ae/sgd-seed$s.tsv" | cut -f6)
    run "$OUT/digits-ae" kfac "$kcfg" "$s" 3000 25 -stop-below "$target"
done
python3 tools/ae_table.py --dir "$OUT/digits-ae" --seeds "$seeds_csv" --batch 128 | tee "$OUT/digits-ae.txt"
echo "bench.sh: tables in $OUT/*.txt"
