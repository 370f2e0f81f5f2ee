#!/bin/sh
# The step rules on the project's nets (`make bench-steps`): SGD and K-FAC with
# step=kl_clip, step=adaptive and step=auto, one seed, whole-training-set loss (error
# for the autoencoder) every EVAL updates; the table BENCHMARKS.md's "The step rule"
# section shows, and the measurements behind step=auto.
#
#   tools/step_rules.sh            (SEED=1, OUT=build/steps)
#
# Nets, each at its cfg's own rate (the rate SGD's sweep chose):
#   digits      cfg/digits.cfg, 200 updates     digits-bn   cfg/digits-bn.cfg, 200
#   digits-mlp  cfg/digits-mlp.cfg, 200         digits-ae   cfg/digits-ae.cfg, 1000
# Seconds depend on the machine's load; the table's point is the losses by update.
set -eu
cd "$(dirname "$0")/.."
SEED=${SEED:-1}
OUT=${OUT:-build/steps}
COMPARE=${KFAC_COMPARE:-build/kfac_compare}
DATA=build/data/digits/digits.data
OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
export OPENBLAS_NUM_THREADS
[ -x "$COMPARE" ] || { echo "step_rules.sh: $COMPARE not found: run make first" >&2; exit 1; }
python3 tools/digits_prepare.py --out build/data/digits >/dev/null
mkdir -p "$OUT"

# run NET ITERS EVAL RULE: OUT/NET-RULE.tsv; prints the row
run() {
    net=$1 iters=$2 ev=$3 rule=$4 cfg="$OUT/$1-$4.cfg"
    if [ "$rule" = sgd ]; then cp "cfg/$net.cfg" "$cfg"; else { cat "cfg/$net.cfg"; printf '\n[kfac]\nstep=%s\n' "$rule"; } >"$cfg"; fi
    if ! "$COMPARE" -data "$DATA" -cfg "$cfg" -seed "$SEED" -iters "$iters" -eval "$ev" -full-train \
            -out "$OUT/$net-$rule.tsv" >"$OUT/$net-$rule.log" 2>&1; then
        echo "step_rules.sh: $net $rule failed; see $OUT/$net-$rule.log" >&2
        exit 1
    fi
    # column 6: full_train_loss (classifiers), full_train_error (the autoencoder)
    col=6
    switch=$(sed -n 's/^K-FAC: update \([0-9]*\): step=auto.*/ (KL clip from update \1)/p' "$OUT/$net-$rule.log")
    printf '| %s | %s%s |' "$net" "$rule" "$switch"
    awk -v c="$col" 'NR > 1 && $1 > 0 { printf " %.4g |", $c }' "$OUT/$net-$rule.tsv"
    printf '\n'
}

for spec in "digits 200 20" "digits-bn 200 20" "digits-mlp 200 20" "digits-ae 1000 100"; do
    set -- $spec
    printf '\n%s, %s updates, the whole training set'"'"'s %s every %s updates:\n\n' "$1" "$2" \
        "$([ "$1" = digits-ae ] && echo "reconstruction error" || echo "loss")" "$3"
    printf '| net | rule |'
    i=$3
    while [ "$i" -le "$2" ]; do printf ' %s |' "$i"; i=$((i + $3)); done
    printf '\n|---|---|'
    i=$3
    while [ "$i" -le "$2" ]; do printf -- '---|'; i=$((i + $3)); done
    printf '\n'
    for rule in sgd kl_clip adaptive auto; do run "$1" "$2" "$3" "$rule"; done
done
