#!/usr/bin/env bash
# test_detect_train.sh <darknet build folder>: `detector train` with patches 0016
# (flip=0 in [net] stops the detection loader's left-right flips) and 0017
# (-save_interval N: numbered weights every N updates).
#
# Flips: tests/dk_train_detector.c, built here against the build's
# examples/detector.c and libdarknet.a with train_network wrapped, runs Darknet's own
# train_detector on 4 images whose single box sits in the left quarter and counts the
# images of every batch that arrive flipped (box center right of the middle):
#   flip=0: none of 64 images (16 updates of 4);
#   flip=1 (Darknet's default): some, not all (Darknet flips each image with
#           probability 1/2: all or none of 64 has probability 2^-63);
#   both: pixels and boxes always on the same side.
# Checkpoints: the darknet binary on the same data and tiny cfg (tests/cfg/detect-train.cfg):
#   -save_interval 3, 7 updates: det_3, det_6 and det_final.weights, no other;
#   no option, 200 updates: Darknet's rule, det_100 and det_200.weights;
#   -save_interval 0 / abc: a message and exit status 1 before any training.
# Work files in build/tests/detect_train/.
#
# Under `make test-sanitize` LeakSanitizer stays off for these runs: Darknet's
# train_detector frees nothing it allocates (its networks, lists, paths, the last
# batch), and a suppression by its name would hide leaks of darknet-kfac's below it
# too; AddressSanitizer and UBSan still check every access and operation.
set -u
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
DK=${1:?usage: tests/test_detect_train.sh <darknet build folder>}
W=build/tests/detect_train
rm -rf "$W"
mkdir -p "$W"
. tests/shlib.sh

if ! ${CC:-cc} -O1 ${KFAC_TEST_CFLAGS:-} -I"$DK/include" -I"$DK/src" -Idarknet-kfac tests/dk_train_detector.c \
        "$DK/examples/detector.c" "$DK/libdarknet.a" -Wl,--wrap=train_network \
        -lopenblas -lm -pthread -o "$W/dk_train_detector" >"$W/helper.build.log" 2>&1; then
    fail detect_train_helper_builds "see $W/helper.build.log"
    exit 1
fi
if ! "$W/dk_train_detector" make "$W/set" >"$W/make.log" 2>&1; then
    fail detect_train_set "dk_train_detector make failed: $(tail -1 "$W/make.log")"
    exit 1
fi
# cfg NAME FLIP MAX_BATCHES: the test cfg with those values, as $W/NAME.cfg
cfg() {
    sed -e "s/^flip=1\$/flip=$2/" -e "s/^max_batches=8\$/max_batches=$3/" tests/cfg/detect-train.cfg >"$W/$1.cfg"
}

# ---- flips ----------------------------------------------------------------------------
for flip in 0 1; do
    cfg "flip$flip" $flip 16
    log=$W/flip$flip.log
    if ! timeout 300 "$W/dk_train_detector" train "$W/set/det.data" "$W/flip$flip.cfg" >"$log" 2>&1; then
        fail detect_train_flip${flip}_runs "train_detector failed (see $log)"
        continue
    fi
    read -r _ n _ f _ i < <(grep '^images ' "$log")
    if [ "${n:-0}" -ne 64 ]; then
        fail detect_train_flip${flip}_batches "saw ${n:-no} images, expected 64 (16 updates of 4)"
        continue
    fi
    if [ "$flip" = 0 ]; then
        if [ "$f" -eq 0 ]; then ok detect_train_flip0_no_flips
        else fail detect_train_flip0_no_flips "$f of $n images arrived flipped with flip=0"; fi
    else
        if [ "$f" -gt 0 ] && [ "$f" -lt "$n" ]; then ok detect_train_flip1_flips_some
        else fail detect_train_flip1_flips_some "$f of $n images flipped with flip=1 (Darknet's default flips half)"; fi
    fi
    if [ "$i" -eq 0 ]; then ok detect_train_flip${flip}_boxes_follow_pixels
    else fail detect_train_flip${flip}_boxes_follow_pixels "$i of $n images have their box on the other side than their pixels"; fi
done

# ---- checkpoints ----------------------------------------------------------------------
# saved DIR: the numbered and final weights files in DIR, sorted, on one line
saved() { (cd "$1" && ls | grep -E '^det_[0-9a-z]+\.weights$' | sort | tr '\n' ' '); }
train() { # train NAME MAX_BATCHES [options]: darknet detector train in its own backup folder
    local name=$1 max=$2
    shift 2
    mkdir -p "$W/$name/backup"
    sed "s|^backup=.*|backup=$W/$name/backup|" "$W/set/det.data" >"$W/$name/det.data"
    sed -e "s/^max_batches=8\$/max_batches=$max/" tests/cfg/detect-train.cfg >"$W/$name/det.cfg"
    timeout 300 "$DK/darknet" detector train "$W/$name/det.data" "$W/$name/det.cfg" "$@" >"$W/$name.log" 2>&1
}
if train every3 7 -save_interval 3; then
    got=$(saved "$W/every3/backup")
    if [ "$got" = "det_3.weights det_6.weights det_final.weights " ]; then ok detect_train_save_interval
    else fail detect_train_save_interval "-save_interval 3 over 7 updates saved: $got(expected det_3, det_6, det_final)"; fi
else
    fail detect_train_save_interval "darknet detector train -save_interval 3 failed (see $W/every3.log)"
fi
if train default 200; then
    got=$(saved "$W/default/backup")
    if [ "$got" = "det_100.weights det_200.weights det_final.weights " ]; then ok detect_train_default_saves_unchanged
    else fail detect_train_default_saves_unchanged "200 updates without -save_interval saved: $got(expected Darknet's det_100, det_200, det_final)"; fi
else
    fail detect_train_default_saves_unchanged "darknet detector train failed (see $W/default.log)"
fi
for bad in 0 abc; do
    train "bad$bad" 2 -save_interval "$bad"
    rc=$?
    if [ $rc -eq 1 ] && grep -q -- "-save_interval $bad: must be a whole number" "$W/bad$bad.log" &&
       [ -z "$(saved "$W/bad$bad/backup")" ]; then
        ok "detect_train_save_interval_rejects_$bad"
    else
        fail "detect_train_save_interval_rejects_$bad" "exit status $rc, expected 1 with a message and no training (see $W/bad$bad.log)"
    fi
done
[ $nfail -eq 0 ]
