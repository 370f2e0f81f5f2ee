#!/bin/sh
# K-FAC's cost per update on a full-size yolov3-tiny (416x416, 80 classes, two [yolo]
# heads: tests/gpu/yolov3-tiny-kfac.cfg) on the CPU, against Darknet's SGD on the same
# net: `make bench-yolo`.  Random images, one box each (timing only, as bench_gpu).
#
#   tools/bench_yolo.sh BENCH_UPDATE      (the Makefile passes build/bench_update-<variant>)
#
# Environment: BATCH (8) and SUBDIV (1) replace the cfg's 64 and 2, since an update of
# 64 images takes minutes on 2 cores; ITERS (11: updates 0-10, so two statistics
# steps and two decompositions, as in K-FAC's first 100 updates); RULES ("auto
# kl_clip": on [yolo] heads the default is the adaptive step, with 4 or 5 extra
# forward passes per update);
# OUT (build/bench-yolo).  Each update is timed apart (bench -each), so that the table
# shows an ordinary update, a statistics update and a decomposition separately and
# composes them at the default intervals (statistics every 10 updates, decompositions
# every 10 during the first 100 updates, then every 100).
set -eu
cd "$(dirname "$0")/.."
BIN=${1:?usage: tools/bench_yolo.sh BENCH_UPDATE}
BATCH=${BATCH:-8}
SUBDIV=${SUBDIV:-1}
ITERS=${ITERS:-11}
RULES=${RULES:-"auto kl_clip"}
OUT=${OUT:-build/bench-yolo}
OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
export OPENBLAS_NUM_THREADS
mkdir -p "$OUT"
cfg=$OUT/yolov3-tiny-b$BATCH.cfg
sed "s/^batch=.*/batch=$BATCH/; s/^subdivisions=.*/subdivisions=$SUBDIV/" tests/gpu/yolov3-tiny-kfac.cfg >"$cfg"

echo "bench_yolo: SGD, $ITERS updates of $BATCH images (416x416) in $SUBDIV subdivision(s)"
"$BIN" -cfg "$cfg" -sgd -iters "$ITERS" -warmup 0 -each >"$OUT/sgd.log" 2>&1 ||
    { echo "bench_yolo: SGD run failed; see $OUT/sgd.log" >&2; exit 1; }
logs="sgd=$OUT/sgd.log"
for rule in $RULES; do
    { sed '/^\[kfac\]/,$d' "$cfg"; printf '[kfac]\nstep=%s\n' "$rule"; } >"$OUT/kfac-$rule.cfg"
    echo "bench_yolo: K-FAC step=$rule"
    "$BIN" -cfg "$OUT/kfac-$rule.cfg" -iters "$ITERS" -warmup 0 -each >"$OUT/kfac-$rule.log" 2>&1 ||
        { echo "bench_yolo: K-FAC step=$rule failed; see $OUT/kfac-$rule.log" >&2; exit 1; }
    logs="$logs $rule=$OUT/kfac-$rule.log"
done
python3 - "$BATCH" "$SUBDIV" $logs <<'PY' | tee "$OUT/table.md"
import re, statistics, sys
batch, subdiv = sys.argv[1], sys.argv[2]
def each(path):
    rows = []
    for line in open(path):
        if line.startswith("EACH "):
            rows.append({k: float(v) for k, v in (f.split("=") for f in line.split()[1:])})
    if not rows:
        sys.exit("bench_yolo: no EACH lines in %s" % path)
    return rows
runs = [a.split("=", 1) for a in sys.argv[3:]]
sgd = statistics.median(r["s"] for r in each(runs[0][1]))
print("seconds per update, %s images of 416x416 per update (%s subdivision(s)), one core for K-FAC's BLAS:\n" % (batch, subdiv))
print("| run | ordinary update | statistics update | one decomposition of all factors | first 100 updates, mean | after, mean | after / SGD |")
print("|---|---|---|---|---|---|---|")
print("| SGD | %.2f | | | %.2f | %.2f | 1.00 |" % (sgd, sgd, sgd))
for rule, path in runs[1:]:
    rows = each(path)
    # the phase timers read a few microseconds on updates that do not run the phase
    plain = [r["s"] for r in rows if r["stats"] < 1e-3 and r["inverse"] < 1e-3]
    stats = [r["s"] - r["inverse"] for r in rows if r["stats"] >= 1e-3]
    inv = [r["inverse"] for r in rows if r["inverse"] >= 1e-3]
    p = statistics.median(plain) if plain else float("nan")
    st = statistics.mean(stats) if stats else float("nan")
    iv = statistics.mean(inv) if inv else float("nan")
    # statistics every 10 updates; decompositions every 10 during the first 100, then every 100
    early = p + (st - p) / 10 + iv / 10
    late = p + (st - p) / 10 + iv / 100
    print("| K-FAC step=%s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |" % (rule, p, st, iv, early, late, late / sgd))
for rule, path in runs[1:]:
    for line in open(path):
        if line.startswith("K-FAC") and ("layers" in line or "blocks" in line or "step=" in line):
            print("    %s: %s" % (rule, line.rstrip()))
PY
