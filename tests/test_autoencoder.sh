#!/usr/bin/env bash
# test_autoencoder.sh <darknet build folder>: tools/kfac_compare's autoencoder task
# (a cfg ending in [logistic] with as many outputs as inputs) on the demo digits, with
# the tiny net of tests/cfg/autoencoder.cfg.
#
#   autoencoder_zero_weights  from all-zero weights every output is sigmoid(0) = 0.5,
#       so the reconstruction error at update 0 is the mean over images of
#       sum_pixels (x - 0.5)^2, computed here in Python from the PGM files themselves
#       (which also checks that the net is fed the gray image and asked for it back),
#       and the cross-entropy is 400 ln 2 per image whatever the image.
#   autoencoder_sgd_trains    from the random initialization, 30 SGD updates: every
#       value of the TSV finite, the whole-training-set error below its update-0 value.
#   autoencoder_kfac_runs     the same net with an empty [kfac]: runs, values finite.
#   autoencoder_schedule      -eval 10 -eval-growth 2 evaluates at updates 0 1 2 4 8 10
#       20 30; -stop-below 50 ends the same run at its first evaluation with a
#       whole-training-set error <= 50.
#   autoencoder_bad_cfg       a [logistic] net with fewer outputs than inputs, and an
#       autoencoder with channels=3, stop with a message and status 1.
#
# The data is made by tools/digits_prepare.py when missing; without it, SKIP.
set -u
DK=${1:?usage: tests/test_autoencoder.sh <darknet build folder>}
W=build/tests/autoencoder
DATA=build/data/digits/digits.data
COMPARE=${KFAC_COMPARE:-build/kfac_compare}
CFG=tests/cfg/autoencoder.cfg
mkdir -p "$W"
. tests/shlib.sh

if [ ! -f "$DATA" ]; then
    python3 tools/digits_prepare.py >"$W/prepare.log" 2>&1 || true
fi
if [ ! -f "$DATA" ]; then
    echo "SKIP autoencoder: no demo data ($DATA; tools/digits_prepare.py failed, see $W/prepare.log)"
    exit 0
fi

# Zero weights for the cfg's connected layers in Darknet's format: major 0, minor 2,
# revision 0, seen as a 64-bit count, then per layer its biases and weights.
python3 - "$W/zero.weights" <<'PY'
import struct, sys
sizes = [400, 32, 8, 32, 400]  # tests/cfg/autoencoder.cfg
n = sum(o + i * o for i, o in zip(sizes, sizes[1:]))
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<iiiQ", 0, 2, 0, 0))
    f.write(b"\0" * (4 * n))
PY

# compare_zero TSV: the update-0 row against the values computed from the images
compare_zero() {
    python3 - "$1" <<'PY'
import math, sys

def images(list_file):
    """Pixels of each listed binary PGM (P5, 8 bits), as floats in [0, 1]."""
    out = []
    for path in open(list_file).read().split():
        data = open(path, "rb").read()
        fields, pos = [], 0
        while len(fields) < 4:  # magic, width, height, maxval
            while data[pos:pos + 1].isspace():
                pos += 1
            start = pos
            while not data[pos:pos + 1].isspace():
                pos += 1
            fields.append(data[start:pos])
        w, h, maxval = int(fields[1]), int(fields[2]), int(fields[3])
        px = data[pos + 1:pos + 1 + w * h]
        assert fields[0] == b"P5" and maxval == 255 and len(px) == 400, path
        out.append([v / 255.0 for v in px])
    return out

def error(imgs):
    return sum(sum((x - 0.5) ** 2 for x in img) for img in imgs) / len(imgs)

rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
row0 = dict(zip(rows[0], map(float, rows[1])))
want = {
    "full_train_error": error(images("build/data/digits/train.list")),
    "test_error": error(images("build/data/digits/test.list")),
    "full_train_loss": 400 * math.log(2),
    "test_loss": 400 * math.log(2),
}
bad = []
for k, v in want.items():
    # the driver sums in double over float pixels k/255 (relative rounding 6e-8 each)
    # and prints 6 decimals of values near 100: 1e-6 relative covers both
    if abs(row0[k] - v) > 1e-6 * abs(v):
        bad.append("%s %.6f, expected %.6f" % (k, row0[k], v))
print("; ".join(bad) if bad else "equal: " + ", ".join("%s %.6f" % kv for kv in want.items()))
sys.exit(1 if bad else 0)
PY
}

# finite_and_falls TSV: every value finite (train_loss of row 0 is nan by definition),
# full_train_error at the end below its value at update 0
finite_and_falls() {
    awk -F'\t' 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
        { for (i = 1; i <= NF; i++) {
              if (NR == 2 && i == col["train_loss"]) continue
              if ($i !~ /^-?[0-9.]+([eE][-+]?[0-9]+)?$/) { print "row " NR - 1 " column " i " is " $i; bad = 1 }
          }
          if (NR == 2) first = $col["full_train_error"]; last = $col["full_train_error"] }
        END { if (bad) exit 1
              if (!(last < first)) { print "full_train_error " first " at update 0, " last " at the end"; exit 1 }
              print "full_train_error " first " -> " last }' "$1"
}

if OPENBLAS_NUM_THREADS=1 "$COMPARE" -data "$DATA" -cfg "$CFG" -weights "$W/zero.weights" \
        -iters 0 -full-train -out "$W/zero.tsv" >"$W/zero.log" 2>&1; then
    if msg=$(compare_zero "$W/zero.tsv" 2>&1); then
        echo "# $msg"
        ok autoencoder_zero_weights
    else
        fail autoencoder_zero_weights "$msg"
    fi
else
    fail autoencoder_zero_weights "$COMPARE failed (see $W/zero.log)"
fi

{ cat "$CFG"; printf '\n[kfac]\n'; } >"$W/autoencoder-kfac.cfg"
for opt in sgd kfac; do
    cfg=$CFG name=autoencoder_sgd_trains
    [ $opt = kfac ] && cfg=$W/autoencoder-kfac.cfg name=autoencoder_kfac_runs
    if ! OPENBLAS_NUM_THREADS=1 "$COMPARE" -data "$DATA" -cfg "$cfg" -seed 1 -iters 30 -eval 10 \
            -full-train -out "$W/$opt.tsv" >"$W/$opt.log" 2>&1; then
        fail $name "$COMPARE failed (see $W/$opt.log)"
    elif ! head -n 1 "$W/$opt.tsv" | grep -qx "$(printf 'iter\ttrain_seconds\ttrain_loss\ttest_error\ttest_loss\tfull_train_error\tfull_train_loss')"; then
        fail $name "unexpected TSV header: $(head -n 1 "$W/$opt.tsv")"
    elif [ "$(wc -l <"$W/$opt.tsv")" -ne 5 ]; then
        fail $name "expected rows for updates 0, 10, 20, 30 in $W/$opt.tsv"
    elif msg=$(finite_and_falls "$W/$opt.tsv"); then
        echo "# $opt: $msg"
        ok $name
    else
        fail $name "$msg"
    fi
done

# the evaluation schedule and the stop at a target, on the SGD run's settings
msg=""
if OPENBLAS_NUM_THREADS=1 "$COMPARE" -data "$DATA" -cfg "$CFG" -seed 1 -iters 30 -eval 10 -eval-growth 2 \
        -full-train -out "$W/growth.tsv" >"$W/growth.log" 2>&1; then
    iters=$(cut -f1 "$W/growth.tsv" | tail -n +2 | tr '\n' ' ')
    [ "$iters" = "0 1 2 4 8 10 20 30 " ] || msg="-eval-growth 2: evaluations at $iters"
    # the first row after update 0 at or below 50, as the run without a stop has it
    want=$(awk -F'\t' 'NR > 2 && $6 <= 50 { print $1; exit }' "$W/growth.tsv")
    if OPENBLAS_NUM_THREADS=1 "$COMPARE" -data "$DATA" -cfg "$CFG" -seed 1 -iters 30 -eval 10 -eval-growth 2 \
            -full-train -stop-below 50 -out "$W/stop.tsv" >"$W/stop.log" 2>&1; then
        got=$(tail -n 1 "$W/stop.tsv" | cut -f1)
        [ -n "$want" ] && [ "$got" = "$want" ] || msg="$msg; -stop-below 50: last row at update $got, expected ${want:-(none below 50)}"
    else
        msg="$msg; -stop-below run failed (see $W/stop.log)"
    fi
else
    msg="run failed (see $W/growth.log)"
fi
[ -z "$msg" ] && ok autoencoder_schedule || fail autoencoder_schedule "$msg"

# bad_cfg NAME CFG-TEXT EXPECTED-MESSAGE-PART
bad_cfg() {
    printf '%s\n' "$2" >"$W/$1.cfg"
    "$COMPARE" -data "$DATA" -cfg "$W/$1.cfg" -iters 1 >"$W/$1.log" 2>&1
    local rc=$?
    if [ $rc -ne 1 ]; then
        fail autoencoder_bad_cfg "$1: exit status $rc, expected 1 (see $W/$1.log)"
    elif ! grep -q "$3" "$W/$1.log"; then
        fail autoencoder_bad_cfg "$1: no message '$3' (see $W/$1.log)"
    else
        return 0
    fi
    return 1
}
net='[net]
batch=8
height=20
width=20
min_crop=20
max_crop=20'
bad_cfg narrow "$net
channels=1
[connected]
output=10
activation=linear
[logistic]" "an autoencoder needs as many" &&
bad_cfg color "$net
channels=3
[connected]
output=1200
activation=linear
[logistic]" "set channels=1" && ok autoencoder_bad_cfg

[ $nfail -eq 0 ]
