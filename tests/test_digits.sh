#!/usr/bin/env bash
# test_digits.sh <darknet build folder>: on the demo data (OpenCV's handwritten
# digits, tools/digits_prepare.py), K-FAC (cfg/digits-kfac.cfg) reaches a lower
# training loss than SGD (cfg/digits.cfg) at the same number of updates.
#
# build/kfac_compare trains each cfg deterministically from the same seed (same
# initial weights, same batches) for ITERS updates and writes Darknet's own training
# loss averaged over each window of 10 updates.  The measure is the mean of those
# window losses after the first WARM updates: a single window is noisy (one window
# can favour either optimizer), while the mean over updates WARM+1..ITERS separated
# the two by 23-34% on seeds 1-3 when this test was written, with K-FAC ahead on each.
# The first windows are left out because both start from the same loss and K-FAC's
# first statistics come from one batch.  Two seeds, each must pass.
#
# The data is made by `python3 tools/digits_prepare.py` when missing (it fetches
# OpenCV's sample image with apt); when that is impossible the test prints SKIP and
# passes nothing.  Each run's TSV is kept in build/tests/digits/.
set -u
DK=${1:?usage: tests/test_digits.sh <darknet build folder>}
ITERS=100
WARM=20
EVAL=10
W=build/tests/digits
DATA=build/data/digits/digits.data
COMPARE=${KFAC_COMPARE:-build/kfac_compare}
mkdir -p "$W"
. tests/shlib.sh

if [ ! -f "$DATA" ]; then
    echo "# $DATA missing: running python3 tools/digits_prepare.py"
    python3 tools/digits_prepare.py >"$W/prepare.log" 2>&1 || true
fi
if [ ! -f "$DATA" ]; then
    echo "SKIP digits_kfac_below_sgd: no demo data ($DATA) and tools/digits_prepare.py could not make it (see $W/prepare.log)"
    exit 0
fi
if [ ! -x "$COMPARE" ]; then
    fail digits_driver "no $COMPARE: build it with make"
    exit 1
fi
for cfg in cfg/digits.cfg cfg/digits-kfac.cfg; do
    [ -f "$cfg" ] || { fail digits_cfgs "no $cfg"; exit 1; }
done

# mean_loss TSV: mean train_loss (column 3) of the windows ending after WARM updates;
# "nan" if any window's loss is not a finite number
mean_loss() {
    awk -v warm="$WARM" 'NR > 1 && $1 > warm {
            if ($3 !~ /^[0-9.eE+-]+$/) bad = 1; s += $3; n++ }
        END { if (bad || n == 0) print "nan"; else printf "%.6f\n", s / n }' "$1"
}

for seed in 1 2; do
    for opt in sgd kfac; do
        cfg=cfg/digits.cfg
        [ $opt = kfac ] && cfg=cfg/digits-kfac.cfg
        if ! "$COMPARE" -data "$DATA" -cfg "$cfg" -seed $seed -iters $ITERS -eval $EVAL \
            -out "$W/$opt-seed$seed.tsv" >"$W/$opt-seed$seed.log" 2>&1; then
            fail "digits_seed${seed}_${opt}_runs" "$COMPARE failed (see $W/$opt-seed$seed.log)"
        fi
    done
    s=$(mean_loss "$W/sgd-seed$seed.tsv" 2>/dev/null || echo nan)
    k=$(mean_loss "$W/kfac-seed$seed.tsv" 2>/dev/null || echo nan)
    echo "# seed $seed: mean training loss over updates $((WARM + 1))-$ITERS: SGD $s, K-FAC $k"
    if [ "$s" = nan ] || [ "$k" = nan ]; then
        fail "digits_seed${seed}_kfac_train_loss_below_sgd" "a loss is not finite: SGD $s, K-FAC $k (see $W/*-seed$seed.tsv)"
    elif awk -v s="$s" -v k="$k" 'BEGIN { exit !(k < s) }'; then
        ok "digits_seed${seed}_kfac_train_loss_below_sgd"
    else
        fail "digits_seed${seed}_kfac_train_loss_below_sgd" "K-FAC $k >= SGD $s (mean training loss over updates $((WARM + 1))-$ITERS)"
    fi
done
[ $nfail -eq 0 ]
