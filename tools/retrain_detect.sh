#!/usr/bin/env bash
# SGD against K-FAC on a real detection task, the Darknet user's retraining flow:
# a backbone classifier pretrained on the 20x20 digits, its weights cut with
# `darknet partial`, then `darknet detector train` of cfg/digits-yolo.cfg (a
# YOLOv3-tiny-style detector) on tools/digits_detect.py's 64x64 canvases, with SGD and
# with [kfac], from the same start; mAP of every checkpoint with `darknet detector
# valid` and tools/kfac_map.py.
#
# Usage, from anywhere (`make bench-retrain` runs it):
#
#   tools/retrain_detect.sh [--quick] [--seeds N] [--opts "sgd kfac"]
#       [--kfac "KEY=VALUE ..."] [--iters N] [--save-interval C] [--lr X]
#       [--pretrain-iters P] [--smooth W] [--data DIR] [--out DIR] [--no-plots]
#
#   --quick          smoke test: 1 seed, a small set (256 training, 40 test canvases,
#                    build/data/digits-detect-quick), 40 updates, a checkpoint every 10,
#                    backbone 40 updates; into build/retrain/quick/detect
#   --seeds N        seeds 1..N (default 3): seed S pretrains its own backbone
#                    (kfac_compare -seed S); SGD and K-FAC of a seed start from the same
#                    detector weights.  detector train itself seeds its batches from the
#                    clock (Darknet's way): its runs are not repeatable
#   --opts           optimizers (default "sgd kfac"; "sgd" alone for a check of SGD)
#   --kfac           the [kfac] section's lines for K-FAC, e.g. "damping=0.01"
#                    (default: an empty [kfac])
#   --iters N        detector updates per run (default 2000); the rate steps x0.1 at
#                    80% and 90% of them, burn-in is the cfg's 100 or N/10 if smaller
#   --save-interval C  a checkpoint every C updates (default 100; patches/0017's
#                    -save_interval), each scored
#   --lr X           the detector's learning rate, both optimizers (default: the cfg's)
#   --pretrain-iters P  backbone updates (default 320: 5 epochs of the 4000 digits)
#   --smooth W       updates averaged for the training-loss figures (default 100)
#   --data DIR       the detection set (default build/data/digits-detect, made with
#                    tools/digits_detect.py's defaults when missing)
#   --out DIR        default build/retrain/detect (quick: build/retrain/quick/detect)
#   --no-plots       skip the PNGs (gnuplot is needed for them)
#
# Steps, for each seed S (work folder OUT/seedS):
#   1. kfac_compare trains cfg/digits-backbone.cfg (SGD) on the digits: backbone.weights
#   2. darknet partial cfg/digits-backbone.cfg backbone.weights backbone.cut K, K =
#      the layers it shares with the detector (checked here: identical sections)
#   3. darknet partial DETECTOR_CFG backbone.cut start.weights: the detector with the
#      backbone's layers and Darknet's own initialization of the others (darknet partial
#      does not seed rand(): the same for every seed), saved whole, so that SGD and
#      K-FAC start from one file
#   4. for OPT in sgd, kfac: darknet detector train RUN.data CFG start.weights
#      -save_interval C (stdout in OPT/train.log, stderr in OPT/train.err: Darknet
#      writes both, unsynchronized; checkpoints in OPT/backup); the K-FAC cfg is the
#      SGD one plus [kfac]
#   5. each checkpoint and start.weights (update 0): darknet detector valid (with the
#      SGD cfg: the same net), tools/kfac_map.py -> OPT/maps.txt
#   6. tools/detect_curves.py -> OUT/OPT-seedS.csv (updates,seconds,loss,map50,map5095)
#      and OUT/OPT-seedS-loss.csv (every update)
# Then tools/retrain_report.py: OUT/summary.txt (printed) and OUT/map-updates.png,
# map-seconds.png, loss-updates.png.  The runs' cfgs (max_batches, steps, burn_in,
# the data set's anchors from its anchors.txt) are in OUT/cfg/.  K-FAC's state files of
# the numbered checkpoints are deleted after training (only the final one is kept).
#
# SGD's rates: see the headers of cfg/digits-backbone.cfg and cfg/digits-yolo.cfg.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
NSEEDS=3
OPTS="sgd kfac"
KFAC_LINES=""
ITERS=2000
SAVE=100
LR=""
PRETRAIN_ITERS=320
SMOOTH=100
DATA=""
OUT=""
PLOTS=1
die() { echo "retrain_detect: $*" >&2; exit 1; }
need() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
    case $1 in
        --quick) QUICK=1; shift ;;
        --seeds) need "$@"; NSEEDS=$2; shift 2 ;;
        --opts) need "$@"; OPTS=$2; shift 2 ;;
        --kfac) need "$@"; KFAC_LINES=$2; shift 2 ;;
        --iters) need "$@"; ITERS=$2; shift 2 ;;
        --save-interval) need "$@"; SAVE=$2; shift 2 ;;
        --lr) need "$@"; LR=$2; shift 2 ;;
        --pretrain-iters) need "$@"; PRETRAIN_ITERS=$2; shift 2 ;;
        --smooth) need "$@"; SMOOTH=$2; shift 2 ;;
        --data) need "$@"; DATA=$2; shift 2 ;;
        --out) need "$@"; OUT=$2; shift 2 ;;
        --no-plots) PLOTS=0; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
GEN_ARGS=()
if [ $QUICK = 1 ]; then
    NSEEDS=1 ITERS=40 SAVE=10 PRETRAIN_ITERS=40 SMOOTH=5
    DATA=${DATA:-build/data/digits-detect-quick}
    OUT=${OUT:-build/retrain/quick/detect}
    GEN_ARGS=(--train 256 --test 40)
fi
DATA=${DATA:-build/data/digits-detect}
OUT=${OUT:-build/retrain/detect}
for v in NSEEDS ITERS SAVE PRETRAIN_ITERS SMOOTH; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "${v}=${!v}: must be a whole number >= 1"
done
. tools/retrain_common.sh

# ---- data -----------------------------------------------------------------------------
mkdir -p "$OUT/cfg"
python3 tools/digits_prepare.py --out build/data/digits >/dev/null
if [ ! -f "$DATA/digits-detect.data" ] || [ ! -f "$DATA/anchors.txt" ]; then
    log "making the detection set in $DATA (tools/digits_detect.py ${GEN_ARGS[*]})"
    python3 tools/digits_detect.py --out "$DATA" --backup "$DATA/backup" "${GEN_ARGS[@]}" >"$OUT.gen.log" 2>&1 ||
        die "tools/digits_detect.py failed: see $OUT.gen.log"
else
    log "detection set: $DATA (remove it to make it anew)"
fi
ANCHORS=$(sed -n 's/^anchors *= *//p' "$DATA/anchors.txt" | tr -d ' ')
[ -n "$ANCHORS" ] || die "$DATA/anchors.txt has no anchors line"

# ---- cfgs -----------------------------------------------------------------------------
# The detector for this run: max_batches, steps at 80% and 90%, burn_in capped at N/10,
# the set's anchors, --lr (detector train has no rate option); KFAC=1 appends the
# [kfac] section.
mkdet() { # mkdet DEST KFAC
    awk -v iters="$ITERS" -v anchors="$ANCHORS" -v lr="$LR" '
        /^max_batches *=/ { print "max_batches=" iters; next }
        /^learning_rate *=/ && lr != "" { print "learning_rate=" lr; next }
        /^steps *=/ { a = int(iters * 0.8); b = int(iters * 0.9)
                      print "steps=" (a > 0 ? a : 1) "," (b > a ? b : a + 1); next }
        /^burn_in *=/ { split($0, kv, "="); v = kv[2] + 0
                        if (v > int(iters / 10)) v = int(iters / 10)
                        print "burn_in=" v; next }
        /^anchors *=/ { print "anchors=" anchors; next }
        { print }' cfg/digits-yolo.cfg >"$1"
    if [ "$2" = 1 ]; then
        { printf '\n[kfac]\n'; for kv in $KFAC_LINES; do echo "$kv"; done; } >>"$1"
    fi
}
DET=$OUT/cfg/digits-yolo.cfg
DETK=$OUT/cfg/digits-yolo-kfac.cfg
mkdet "$DET" 0
mkdet "$DETK" 1
BACK=$OUT/cfg/digits-backbone.cfg
awk -v iters="$PRETRAIN_ITERS" '
    /^max_batches *=/ { print "max_batches=" iters; next }
    /^steps *=/ { s = int(iters * 0.8); print "steps=" (s > 0 ? s : 1); next }
    { print }' cfg/digits-backbone.cfg >"$BACK"
# The number of leading layers the backbone shares with the detector: sections after
# [net] compared option by option (comments and blanks dropped).
SHARED=$(python3 - "$BACK" "$DET" <<'EOF'
import sys
def sections(path):
    out = []
    for line in open(path):
        line = line.split("#")[0].split(";")[0].replace(" ", "").strip()
        if not line:
            continue
        if line.startswith("["):
            out.append([line])
        elif out:
            out[-1].append(line)
    return [tuple(s[:1] + sorted(s[1:])) for s in out if s[0] not in ("[net]", "[network]")]
a, b = sections(sys.argv[1]), sections(sys.argv[2])
n = 0
while n < min(len(a), len(b)) and a[n] == b[n]:
    n += 1
print(n)
EOF
)
[ "$SHARED" -gt 0 ] || die "cfg/digits-backbone.cfg shares no leading layer with cfg/digits-yolo.cfg"
NDET=$(grep -c '^\[' "$DET")
log "the backbone shares layers 0-$((SHARED - 1)) with the detector"

# ---- helpers --------------------------------------------------------------------------
# follow PID LOG LABEL PATTERN: waits for PID, printing LOG's last PATTERN line every
# 30 s when it is new; returns PID's exit status
follow() {
    local pid=$1 logf=$2 label=$3 pat=$4 t=$(date +%s) last shown=""
    while kill -0 "$pid" 2>/dev/null; do
        sleep 2
        if [ $(( ($(date +%s) - t) % 30 )) -lt 2 ]; then
            last=$(grep -E "$pat" "$logf" | tail -n 1 | tr -s ' ')
            [ -n "$last" ] && [ "$last" != "$shown" ] && log "$label: $last" && shown=$last
        fi
    done
    wait "$pid"
}
# score DATA CFG WEIGHTS PREFIX: prints "MAP50 MAP5095" (nan nan when not scorable)
score() {
    local data=$1 cfg=$2 w=$3 p=$4 res m
    res=$(sed -n 's/^results=//p' "$data")
    if "$DARKNET" detector valid "$data" "$cfg" "$w" -out "$p" >"$res/$p.log" 2>&1 &&
       m=$(python3 tools/kfac_map.py "$data" --out "$p" 2>>"$res/$p.log" | tail -n 1) &&
       [[ $m =~ ^mAP@0.5=([0-9.]+)\ mAP@0.5:0.95=([0-9.]+)$ ]]; then
        echo "${BASH_REMATCH[1]} ${BASH_REMATCH[2]}"
        rm -f "$res/$p"*.txt
    else
        echo "nan nan"
    fi
}

# ---- runs -----------------------------------------------------------------------------
for s in $SEEDS; do
    w=$OUT/seed$s
    mkdir -p "$w"
    t=$(date +%s)
    "$COMPARE" -data build/data/digits/digits.data -cfg "$BACK" -seed "$s" -iters "$PRETRAIN_ITERS" \
        -eval "$(( PRETRAIN_ITERS < 40 ? PRETRAIN_ITERS : 40 ))" -weights-out "$w/backbone.weights" \
        >"$w/backbone.log" 2>&1 &
    follow $! "$w/backbone.log" "backbone seed $s" '^iter' ||
        { tail -n 20 "$w/backbone.log" >&2; die "backbone training failed: see $w/backbone.log"; }
    log "backbone seed $s: $(grep '^iter' "$w/backbone.log" | tail -n 1 | tr -s ' ') ($(( $(date +%s) - t )) s)"
    "$DARKNET" partial "$BACK" "$w/backbone.weights" "$w/backbone.cut" "$SHARED" >"$w/partial.log" 2>&1 &&
    "$DARKNET" partial "$DET" "$w/backbone.cut" "$w/start.weights" "$NDET" >>"$w/partial.log" 2>&1 ||
        die "darknet partial failed: see $w/partial.log"
    for opt in $OPTS; do
        r=$w/$opt
        rm -rf "$r"
        mkdir -p "$r/backup" "$r/results"
        sed -e "s|^backup=.*|backup=$r/backup|" -e "s|^results=.*|results=$r/results|" \
            "$DATA/digits-detect.data" >"$r/run.data"
        cfg=$DET
        [ $opt = kfac ] && cfg=$DETK
        t=$(date +%s)
        log "detector $opt seed $s: training $ITERS updates from $w/start.weights"
        "$DARKNET" detector train "$r/run.data" "$cfg" "$w/start.weights" -save_interval "$SAVE" \
            >"$r/train.log" 2>"$r/train.err" &
        follow $! "$r/train.log" "detector $opt seed $s (of $ITERS)" '^[0-9]+: .* images$' ||
            { tail -n 20 "$r/train.err" >&2; die "detector train failed: see $r/train.log, train.err"; }
        log "detector $opt seed $s: trained in $(( $(date +%s) - t )) s"
        base=$(basename "$cfg" .cfg)
        find "$r/backup" -name "${base}_[0-9]*.weights.kfac" -delete
        : >"$r/maps.txt"
        for u in $(seq 0 "$SAVE" "$ITERS") $( [ $((ITERS % SAVE)) -ne 0 ] && echo "$ITERS"); do
            if [ "$u" = 0 ]; then wf=$w/start.weights
            elif [ "$u" = "$ITERS" ] && [ ! -f "$r/backup/${base}_$u.weights" ]; then wf=$r/backup/${base}_final.weights
            else wf=$r/backup/${base}_$u.weights
            fi
            [ -f "$wf" ] || die "no checkpoint $wf"
            m=$(score "$r/run.data" "$DET" "$wf" "u${u}_")
            echo "$u $m" >>"$r/maps.txt"
            log "detector $opt seed $s: update $u: mAP@0.5, mAP@0.5:0.95 = $m"
        done
        python3 tools/detect_curves.py "$r/train.log" "$r/maps.txt" "$OUT/$opt-seed$s"
    done
done
plot_args=()
[ $PLOTS = 0 ] && plot_args=(--no-plots)
python3 tools/retrain_report.py "$OUT" --kind detect --seeds "$(echo $SEEDS | tr ' ' ,)" \
    --opts "$(echo $OPTS | tr ' ' ,)" --updates "$ITERS" --smooth "$SMOOTH" \
    --title "digits-yolo from a pretrained backbone" "${plot_args[@]}"
log "all done: $OUT/summary.txt"
