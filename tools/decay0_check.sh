#!/usr/bin/env bash
# tools/decay0_check.sh: the adaptive step without weight decay (issue 11): the digits
# autoencoder (cfg/digits-ae.cfg) with decay=0 and an empty [kfac], at batch 64 and 128,
# UPDATES updates per seed; per run the best test error after leaving the plateau at
# the mean image and the worst after that best, against the issue's bound of 1.5x.
#
#   tools/decay0_check.sh [--seeds "1 2 3"] [--batches "64 128"] [--updates 3000]
#                         [--compare build/kfac_compare] [--out build/decay0]
#
# Writes OUT/b<batch>-s<seed>.tsv (kfac_compare's rows, every 50 updates) and prints a
# table.  About 0.1 s per update at batch 64 on one idle core of the project's 2-core
# machine: 3 seeds x 2 batches x 3000 updates is about two hours.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS="1 2 3" BATCHES="64 128" UPDATES=3000 COMPARE=build/kfac_compare OUT=build/decay0
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds) SEEDS=$2; shift 2 ;;
        --batches) BATCHES=$2; shift 2 ;;
        --updates) UPDATES=$2; shift 2 ;;
        --compare) COMPARE=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "decay0_check.sh: unknown option $1 (--help)" >&2; exit 2 ;;
    esac
done
[ -x "$COMPARE" ] || { echo "decay0_check.sh: $COMPARE not found: run make first" >&2; exit 1; }
python3 tools/digits_prepare.py --out build/data/digits >/dev/null
mkdir -p "$OUT"
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
for b in $BATCHES; do
    cfg=$OUT/digits-ae-decay0-b$b.cfg
    { sed -e 's/^decay=.*/decay=0/' -e "s/^batch=.*/batch=$b/" cfg/digits-ae.cfg; printf '\n[kfac]\n'; } >"$cfg"
    for s in $SEEDS; do
        "$COMPARE" -data build/data/digits/digits.data -cfg "$cfg" -seed "$s" -iters "$UPDATES" -eval 50 \
            -out "$OUT/b$b-s$s.tsv" >"$OUT/b$b-s$s.log" 2>&1
        echo "decay0_check.sh: batch $b seed $s done"
    done
done
python3 - "$OUT" "$BATCHES" "$SEEDS" <<'PY'
import math, sys
out, batches, seeds = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
print("| batch | seed | plateau (update 50) | left it by | best (update) | worst after best (update) | worst / best | final |")
print("|---|---|---|---|---|---|---|---|")
for b in batches:
    for s in seeds:
        rows = [l.split("\t") for l in open(f"{out}/b{b}-s{s}.tsv").read().split("\n")[1:] if l.strip()]
        err = [(int(r[0]), float(r[3])) for r in rows]
        plateau = dict(err)[50]
        left = [i for i, (u, e) in enumerate(err) if math.isfinite(e) and e < 0.7 * plateau]
        if not left:
            print(f"| {b} | {s} | {plateau:.2f} | never | | | | {err[-1][1]:.2f} |")
            continue
        after = err[left[0]:]
        bi = min(range(len(after)), key=lambda i: after[i][1] if math.isfinite(after[i][1]) else math.inf)
        wu, w = max(after[bi:], key=lambda x: x[1] if math.isfinite(x[1]) else math.inf)
        print(f"| {b} | {s} | {plateau:.2f} | {after[0][0]} | {after[bi][1]:.3f} ({after[bi][0]}) | {w:.3f} ({wu}) | {w / after[bi][1]:.2f} | {err[-1][1]:.3f} |")
PY
