#!/usr/bin/env bash
# SGD against K-FAC on the GoogLeNet-like nets (cfg/googlenet-digits.cfg, without batch
# norm, and cfg/googlenet-digits-bn.cfg), trained from scratch and retrained.
#
# Usage, from anywhere (`make bench-retrain` runs it):
#
#   tools/retrain_googlenet.sh [--quick] [--seeds N] [--nets "NET ..."]
#       [--phases "scratch retrain"] [--opts "sgd kfac"] [--kfac "KEY=VALUE ..."]
#       [--lr X] [--out DIR]
#       [--scratch-iters N] [--pretrain-iters N] [--retrain-iters N]
#       [--scratch-eval K] [--retrain-eval K] [--no-plots]
#
#   --quick          smoke test: 1 seed, 20 updates per run, into build/retrain/quick
#   --seeds N        seeds 1..N (default 3); a seed fixes the initial weights and the
#                    batches, the same for SGD and K-FAC
#   --nets           cfg/<NET>.cfg to run (default "googlenet-digits googlenet-digits-bn")
#   --phases         scratch: all 10 digits (4000 training, 1000 test images) from
#                    random weights, --scratch-iters updates (default 500, 8 epochs);
#                    retrain: the net pretrained with SGD on digits 0-4
#                    (--pretrain-iters, default 300), its weights cut before the
#                    connected head with `darknet partial`, then retrained with a new
#                    head on digits 5-9 (2000 training, 500 test images) for
#                    --retrain-iters updates (default 376, the issue's), every layer
#                    trained; SGD and K-FAC from the same cut weights and head
#   --opts           optimizers to run (default "sgd kfac"; "sgd" alone for a check
#                    of SGD's rate: the summary then has no ratios)
#   --kfac           the [kfac] section's lines for the K-FAC runs, e.g.
#                    "damping=0.01 kl_clip=0.001" (default: an empty [kfac]: every
#                    option at its default)
#   --lr X           learning rate of the scratch and retrain runs, both optimizers
#                    (default: the cfg's); pretraining keeps the cfg's
#   --scratch-eval K, --retrain-eval K  evaluate (whole training set loss, test
#                    accuracy) every K updates (defaults 25 and 8; an evaluation
#                    (forward passes over the 5000 images, or 2500) costs about as
#                    much CPU time as 35 updates (15) of the net without batch norm)
#   --out DIR        default build/retrain/googlenet (quick: build/retrain/quick/googlenet)
#   --no-plots       skip the PNGs (gnuplot is needed for them)
#
# Each run is tools/kfac_compare (deterministic: a function of cfg and seed), one at a
# time.  The runs' cfgs are the net's cfg with max_batches set to the run's length,
# the learning-rate step (x0.1) at 80% of it, the head's outputs set to the task's
# classes, and for K-FAC a [kfac] section appended: OUT/cfg/.
#
# Output, for PHASE in scratch and retrain and NET in --nets, in OUT/PHASE/NET/:
#   OPT-seedS.csv    updates,seconds,loss,accuracy,test_loss,window_loss (OPT sgd or
#                    kfac; loss: whole training set; seconds: training only)
#   OPT-seedS.tsv, .log   kfac_compare's own output
#   summary.txt      the summary table (tools/retrain_report.py), also printed
#   loss-updates.png, loss-seconds.png, accuracy-updates.png
# and for retrain the pretrained weights and their cut (OUT/retrain/NET/seedS/).
# Work data: build/data/digits-04 and build/data/digits-59 (lists of the demo digits).
#
# SGD's rates: 0.1 without batch norm, 0.2 with, from a sweep of 250 updates from
# scratch (the cfgs' headers have the numbers).
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
NSEEDS=3
NETS="googlenet-digits googlenet-digits-bn"
PHASES="scratch retrain"
OPTS="sgd kfac"
KFAC_LINES=""
LR=""
OUT=""
SCRATCH_ITERS=500
PRETRAIN_ITERS=300
RETRAIN_ITERS=376
SCRATCH_EVAL=25
RETRAIN_EVAL=8
PLOTS=1
die() { echo "retrain_googlenet: $*" >&2; exit 1; }
need() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
    case $1 in
        --quick) QUICK=1; shift ;;
        --seeds) need "$@"; NSEEDS=$2; shift 2 ;;
        --nets) need "$@"; NETS=$2; shift 2 ;;
        --phases) need "$@"; PHASES=$2; shift 2 ;;
        --opts) need "$@"; OPTS=$2; shift 2 ;;
        --kfac) need "$@"; KFAC_LINES=$2; shift 2 ;;
        --lr) need "$@"; LR=$2; shift 2 ;;
        --out) need "$@"; OUT=$2; shift 2 ;;
        --scratch-iters) need "$@"; SCRATCH_ITERS=$2; shift 2 ;;
        --pretrain-iters) need "$@"; PRETRAIN_ITERS=$2; shift 2 ;;
        --retrain-iters) need "$@"; RETRAIN_ITERS=$2; shift 2 ;;
        --scratch-eval) need "$@"; SCRATCH_EVAL=$2; shift 2 ;;
        --retrain-eval) need "$@"; RETRAIN_EVAL=$2; shift 2 ;;
        --no-plots) PLOTS=0; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
if [ $QUICK = 1 ]; then
    NSEEDS=1 SCRATCH_ITERS=20 PRETRAIN_ITERS=20 RETRAIN_ITERS=20 SCRATCH_EVAL=10 RETRAIN_EVAL=10
    OUT=${OUT:-build/retrain/quick/googlenet}
fi
OUT=${OUT:-build/retrain/googlenet}
for v in NSEEDS SCRATCH_ITERS PRETRAIN_ITERS RETRAIN_ITERS SCRATCH_EVAL RETRAIN_EVAL; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "${v}=${!v}: must be a whole number >= 1"
done
for p in $PHASES; do
    case $p in scratch|retrain) ;; *) die "--phases: unknown phase $p (scratch, retrain)" ;; esac
done
for n in $NETS; do [ -f "cfg/$n.cfg" ] || die "--nets: no cfg/$n.cfg"; done
. tools/retrain_common.sh

# ---- data -----------------------------------------------------------------------------
python3 tools/digits_prepare.py --out build/data/digits >/dev/null
# subset NAME FIRST LAST: build/data/digits-NAME with the digits FIRST..LAST only
subset() {
    local d=build/data/digits-$1 k labels=""
    mkdir -p "$d"
    for k in $(seq "$2" "$3"); do labels="$labels dg${k}x"; done
    printf '%s\n' $labels >"$d/labels.txt"
    for split in train test; do
        grep -E "_dg[$2-$3]x\.pgm\$" "build/data/digits/$split.list" >"$d/$split.list"
    done
    printf 'classes=%d\ntrain=%s/train.list\nvalid=%s/test.list\nlabels=%s/labels.txt\ntop=1\n' \
        $(( $3 - $2 + 1 )) "$d" "$d" "$d" >"$d/digits.data"
}
subset 04 0 4
subset 59 5 9

# ---- cfgs -----------------------------------------------------------------------------
mkdir -p "$OUT/cfg"
# mkcfg SRC DEST ITERS OUTPUTS KFAC(0/1): the run's cfg (see the header)
mkcfg() {
    awk -v iters="$3" -v outputs="$4" '
        /^\[/ { sec = $0 }
        /^max_batches *=/ { print "max_batches=" iters; next }
        /^steps *=/ { s = int(iters * 0.8); print "steps=" (s > 0 ? s : 1); next }
        sec == "[connected]" && /^output *=/ { print "output=" outputs; next }
        { print }' "$1" >"$2"
    if [ "$5" = 1 ]; then
        { printf '\n[kfac]\n'; for kv in $KFAC_LINES; do echo "$kv"; done; } >>"$2"
    fi
}
# the index of the [connected] head in a cfg (sections after [net], from 0)
head_layer() {
    awk '/^\[/ { if ($0 == "[net]" || $0 == "[network]") next
                 if ($0 == "[connected]") { print n; found = 1; exit }
                 n++ }
         END { if (!found) exit 1 }' "$1"
}

# ---- one run --------------------------------------------------------------------------
# train LABEL LOG kfac_compare-args...: runs kfac_compare, printing its latest
# evaluation every 30 s (when new) and the last one at the end; stops the flow on
# failure
train() {
    local label=$1 logf=$2 t=$(date +%s) pid last="" shown=""
    shift 2
    "$COMPARE" "$@" >"$logf" 2>&1 &
    pid=$!
    while kill -0 $pid 2>/dev/null; do
        sleep 2
        if [ $(( ($(date +%s) - t) % 30 )) -lt 2 ]; then
            last=$(grep '^iter' "$logf" | tail -n 1 | tr -s ' ')
            [ -n "$last" ] && [ "$last" != "$shown" ] && log "$label: $last" && shown=$last
        fi
    done
    if ! wait $pid; then
        echo "retrain_googlenet: $label failed; the end of $logf:" >&2
        tail -n 20 "$logf" >&2
        exit 1
    fi
    grep -q 'loss is nan' "$logf" && log "$label: the loss became NaN (the run stopped there)"
    log "$label: done in $(( $(date +%s) - t )) s: $(grep '^iter' "$logf" | tail -n 1 | tr -s ' ')"
}
# tsv2csv TSV CSV: kfac_compare's columns as the report's
tsv2csv() {
    awk -F '\t' 'NR == 1 { print "updates,seconds,loss,accuracy,test_loss,window_loss"; next }
                 { print $1 "," $2 "," $6 "," $4 "," $5 "," $3 }' "$1" >"$2"
}
lr_args=()
[ -n "$LR" ] && lr_args=(-lr "$LR")

# ---- phases ---------------------------------------------------------------------------
summaries=()
for net in $NETS; do
    for phase in $PHASES; do
        d=$OUT/$phase/$net
        mkdir -p "$d"
        if [ $phase = scratch ]; then
            iters=$SCRATCH_ITERS
            mkcfg "cfg/$net.cfg" "$OUT/cfg/$net-scratch.cfg" "$iters" 10 0
            mkcfg "cfg/$net.cfg" "$OUT/cfg/$net-scratch-kfac.cfg" "$iters" 10 1
            for s in $SEEDS; do
                for opt in $OPTS; do
                    c=$OUT/cfg/$net-scratch.cfg
                    [ $opt = kfac ] && c=$OUT/cfg/$net-scratch-kfac.cfg
                    train "scratch $net $opt seed $s" "$d/$opt-seed$s.log" \
                        -data build/data/digits/digits.data -cfg "$c" -seed "$s" -iters "$iters" \
                        -eval "$SCRATCH_EVAL" -full-train -out "$d/$opt-seed$s.tsv" "${lr_args[@]}"
                    tsv2csv "$d/$opt-seed$s.tsv" "$d/$opt-seed$s.csv"
                done
            done
            title="$net from scratch, all digits"
        else
            iters=$RETRAIN_ITERS
            mkcfg "cfg/$net.cfg" "$OUT/cfg/$net-pretrain.cfg" "$PRETRAIN_ITERS" 5 0
            mkcfg "cfg/$net.cfg" "$OUT/cfg/$net-retrain.cfg" "$iters" 5 0
            mkcfg "cfg/$net.cfg" "$OUT/cfg/$net-retrain-kfac.cfg" "$iters" 5 1
            cut=$(head_layer "cfg/$net.cfg") || die "cfg/$net.cfg has no [connected] head to cut before"
            for s in $SEEDS; do
                w=$d/seed$s
                mkdir -p "$w"
                train "pretrain $net (digits 0-4, SGD) seed $s" "$w/pretrain.log" \
                    -data build/data/digits-04/digits.data -cfg "$OUT/cfg/$net-pretrain.cfg" -seed "$s" \
                    -iters "$PRETRAIN_ITERS" -eval "$(( PRETRAIN_ITERS < 50 ? PRETRAIN_ITERS : 50 ))" \
                    -weights-out "$w/pretrain.weights"
                "$DARKNET" partial "$OUT/cfg/$net-pretrain.cfg" "$w/pretrain.weights" "$w/cut.weights" "$cut" \
                    >"$w/partial.log" 2>&1 || die "darknet partial failed: see $w/partial.log"
                log "retrain $net seed $s: layers 0-$((cut - 1)) of the pretrained net in $w/cut.weights"
                for opt in $OPTS; do
                    c=$OUT/cfg/$net-retrain.cfg
                    [ $opt = kfac ] && c=$OUT/cfg/$net-retrain-kfac.cfg
                    train "retrain $net (digits 5-9) $opt seed $s" "$d/$opt-seed$s.log" \
                        -data build/data/digits-59/digits.data -cfg "$c" -seed "$s" -iters "$iters" \
                        -eval "$RETRAIN_EVAL" -full-train -weights "$w/cut.weights" \
                        -out "$d/$opt-seed$s.tsv" "${lr_args[@]}"
                    tsv2csv "$d/$opt-seed$s.tsv" "$d/$opt-seed$s.csv"
                done
            done
            title="$net retrained: digits 0-4 -> 5-9, new head"
        fi
        plot_args=()
        [ $PLOTS = 0 ] && plot_args=(--no-plots)
        python3 tools/retrain_report.py "$d" --kind classify --seeds "$(echo $SEEDS | tr ' ' ,)" \
            --opts "$(echo $OPTS | tr ' ' ,)" --updates "$iters" --title "$title" "${plot_args[@]}"
        summaries+=("$d/summary.txt")
    done
done
log "all done; summaries: ${summaries[*]}"
