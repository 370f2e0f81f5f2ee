#!/usr/bin/env bash
# test_digits_detect.sh <darknet build folder>: tools/digits_detect.py makes a small
# detection set (TRAIN + TEST canvases) from the demo digits; checks that a rerun
# writes the same bytes and another seed other images, then
# tests/digits_detect_check.py checks the output (lists and Darknet's label paths,
# PNGs decode, labels in range and inside the canvas, boxes tight around the ink,
# train and test digits disjoint, names and .data, anchors sorted) and what Darknet
# itself loads from it: tests/dk_load_detection.c, built here against libdarknet.a,
# reads a few images and their labels with load_image_color and fill_truth_detection.
#
# DIGITS_DETECT in the environment names another copy of the generator (to check
# that a deliberately broken copy fails here).
#
# The digits are made by `python3 tools/digits_prepare.py` when missing; when that is
# impossible the test prints SKIP.  Work files in build/tests/digits_detect/.
set -u
DK=${1:?usage: tests/test_digits_detect.sh <darknet build folder>}
W=build/tests/digits_detect
DIGITS=build/data/digits
TRAIN=40
TEST=12
MAXD=4
mkdir -p "$W"
. tests/shlib.sh

if [ ! -f "$DIGITS/train.list" ]; then
    echo "# $DIGITS missing: running python3 tools/digits_prepare.py"
    python3 tools/digits_prepare.py >"$W/prepare.log" 2>&1 || true
fi
if [ ! -f "$DIGITS/train.list" ]; then
    echo "SKIP digits_detect: no demo digits ($DIGITS) and tools/digits_prepare.py could not make them (see $W/prepare.log)"
    exit 0
fi

gen() {  # gen OUT SEED
    python3 "${DIGITS_DETECT:-tools/digits_detect.py}" --digits "$DIGITS" --out "$1" --backup "$1/backup" \
        --train $TRAIN --test $TEST --max-digits $MAXD --seed "$2"
}
sums() {  # every file's sha256 under $1, by path
    (cd "$1" && find . -type f | LC_ALL=C sort | xargs sha256sum)
}

if ! gen "$W/a" 3 >"$W/gen-a.log" 2>&1; then
    fail digits_detect_runs "tools/digits_detect.py failed (see $W/gen-a.log)"
    exit 1
fi
ok digits_detect_runs
sums "$W/a" >"$W/a.sums"
gen "$W/a" 3 >"$W/gen-a2.log" 2>&1
sums "$W/a" >"$W/a2.sums"
if cmp -s "$W/a.sums" "$W/a2.sums"; then
    ok digits_detect_deterministic
else
    fail digits_detect_deterministic "a rerun with the same seed wrote other bytes: $(diff "$W/a.sums" "$W/a2.sums" | head -2 | tr '\n' ' ')"
fi
gen "$W/b" 4 >"$W/gen-b.log" 2>&1
if cmp -s "$W/a/images/train/train00000.png" "$W/b/images/train/train00000.png"; then
    fail digits_detect_seed_used "seeds 3 and 4 gave the same first canvas"
else
    ok digits_detect_seed_used
fi

DUMP=()
if ${CC:-cc} -O1 ${KFAC_TEST_CFLAGS:-} -I"$DK/include" -I"$DK/src" tests/dk_load_detection.c "$DK/libdarknet.a" \
    -lopenblas -lm -pthread -o "$W/dk_load_detection" >"$W/helper.build.log" 2>&1; then
    if "$W/dk_load_detection" 10 $(head -3 "$W/a/train.txt") $(head -2 "$W/a/test.txt") \
        >"$W/darknet.dump" 2>"$W/darknet.err"; then
        DUMP=("$W/darknet.dump")
    else
        fail digits_detect_darknet_loads_images_and_labels "dk_load_detection failed: $(tail -1 "$W/darknet.err")"
    fi
else
    fail digits_detect_darknet_helper_builds "see $W/helper.build.log"
fi
python3 tests/digits_detect_check.py "$W/a" "$DIGITS" $TRAIN $TEST $MAXD "${DUMP[@]}" || nfail=$((nfail + 1))
[ $nfail -eq 0 ]
