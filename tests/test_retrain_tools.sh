#!/usr/bin/env bash
# test_retrain_tools.sh <darknet build folder>: the retraining flows' Python parts on
# hand-made inputs whose results are worked out here.
#   tools/detect_curves.py: a `detector train` log with its interleaved lines, summed
#     seconds, per-checkpoint window means; a skipped update is an error.
#   tools/retrain_report.py: the issue's ratios for classify and detect runs, a
#     K-FAC run that never reaches SGD's result, non-finite counting, SGD alone;
#     the PNGs when gnuplot is installed (SKIP otherwise).
# Work files in build/tests/retrain_tools/.  (The flows themselves are run by
# `make bench-retrain-quick`; they take minutes.)
set -u
W=build/tests/retrain_tools
rm -rf "$W"
mkdir -p "$W"
. tests/shlib.sh

# ---- detect_curves.py -----------------------------------------------------------------
# 6 updates, losses 6..1, seconds 0.5 each but update 4 (1.5); Darknet's other lines
# between them; checkpoints 0, 3, 6
{
    echo "digits-yolo"
    echo "Learning Rate: 0.001, Momentum: 0.9, Decay: 0.0005"
    for u in 1 2 3 4 5 6; do
        echo "Loaded: 0.000100 seconds"
        echo "Region 13 Avg IOU: 0.3, Class: 0.4, Obj: 0.1, No Obj: 0.02, .5R: 0.1, .75R: 0.0,  count: 4"
        sec=0.500000
        [ $u = 4 ] && sec=1.500000
        echo "$u: $((7 - u)).000000, 9.000000 avg, 0.001000 rate, $sec seconds, $((u * 32)) images"
    done
} >"$W/train.log"
printf '0 0 0\n3 0.25 0.1\n6 0.5 0.2\n' >"$W/maps.txt"
if python3 tools/detect_curves.py "$W/train.log" "$W/maps.txt" "$W/run" 2>"$W/curves.err"; then
    # window means: updates 1-3 (6+5+4)/3 = 5, 4-6 (3+2+1)/3 = 2; seconds 1.5 at 3, 4.0 at 6
    printf 'updates,seconds,loss,map50,map5095\n0,0.0000,nan,0,0\n3,1.5000,5,0.25,0.1\n6,4.0000,2,0.5,0.2\n' >"$W/expect.csv"
    check curves_checkpoints "$W/run.csv differs from $W/expect.csv" cmp -s "$W/run.csv" "$W/expect.csv"
    check curves_every_update "$W/run-loss.csv: expected 6 updates ending 6,4.0000,1" \
        bash -c "[ \$(wc -l <'$W/run-loss.csv') -eq 7 ] && tail -n 1 '$W/run-loss.csv' | grep -qx '6,4.0000,1'"
else
    fail curves_checkpoints "detect_curves.py failed: $(cat "$W/curves.err")"
fi
grep -v '^3: ' "$W/train.log" >"$W/skip.log"
python3 tools/detect_curves.py "$W/skip.log" "$W/maps.txt" "$W/skip" 2>"$W/skip.err"
rc=$?
check curves_skipped_update "exit $rc, expected 1 naming the gap: $(cat "$W/skip.err")" \
    bash -c "[ $rc -eq 1 ] && grep -q 'update 4 follows update 2' '$W/skip.err'"

# ---- retrain_report.py, classify ----------------------------------------------------------
# csv FILE "u,seconds,loss,acc ..." (test_loss and window_loss: copies of loss)
csv() {
    local f=$1 r
    echo "updates,seconds,loss,accuracy,test_loss,window_loss" >"$f"
    for r in $2; do
        IFS=, read -r u s l a <<<"$r"
        echo "$u,$s,$l,$a,$l,$l" >>"$f"
    done
}
C=$W/classify
mkdir -p "$C"
# seed 1: K-FAC reaches SGD's final loss 0.5 at 10 and its accuracy 0.9 at 10 (of 20);
# seed 2: at 20 (loss 0.45 <= 0.5) and never (0.85 < 0.9).  Medians: loss 15, accuracy
# median(10, never) = never.  Seconds per update: SGD 1, K-FAC 2 -> 2.00.
csv "$C/sgd-seed1.csv" "0,0,2.0,0.1 10,10,1.0,0.8 20,20,0.5,0.9"
csv "$C/kfac-seed1.csv" "0,0,2.0,0.1 10,20,0.4,0.9 20,40,0.2,0.95"
csv "$C/sgd-seed2.csv" "0,0,2.0,0.1 10,10,1.0,0.8 20,20,0.5,0.9"
csv "$C/kfac-seed2.csv" "0,0,2.0,0.1 10,20,0.6,0.8 20,40,0.45,0.85"
if python3 tools/retrain_report.py "$C" --kind classify --seeds 1,2 --updates 20 --title T \
        --no-plots >"$C/out.txt" 2>&1; then
    check report_loss_ratio "expected 'to SGD's final training loss 15 0.75 no' in $C/out.txt" \
        grep -Eq "^to SGD's final training loss +15 +0\.75 +no$" "$C/out.txt"
    check report_score_never "expected 'to SGD's final test accuracy never - no' in $C/out.txt" \
        grep -Eq "^to SGD's final test accuracy +never +- +no$" "$C/out.txt"
    check report_seconds_ratio "expected seconds per update 1.0000 2.0000 2.00 in $C/out.txt" \
        grep -Eq "^seconds per update +1\.0000 +2\.0000 +2\.00$" "$C/out.txt"
    # seconds to SGD's result over SGD's 20: the loss at 20 s (seed 1) and 40 s (seed 2),
    # 1.00 and 2.00, median 1.50; the accuracy at 20 s and never: median never
    check report_seconds_to_loss "expected 'to SGD's final training loss 1.50 no' (seconds) in $C/out.txt" \
        grep -Eq "^to SGD's final training loss +1\.50 +no$" "$C/out.txt"
    check report_seconds_to_score "expected 'to SGD's final test accuracy never no' (seconds) in $C/out.txt" \
        grep -Eq "^to SGD's final test accuracy +never +no$" "$C/out.txt"
    check report_summary_file "$C/summary.txt should hold the printed table" cmp -s "$C/summary.txt" "$C/out.txt"
else
    fail report_loss_ratio "retrain_report.py failed: $(tail -3 "$C/out.txt")"
fi
# a NaN in K-FAC's seed 2 and a run cut short in SGD's seed 1
N=$W/nonfinite
mkdir -p "$N"
csv "$N/sgd-seed1.csv" "0,0,2.0,0.1 10,10,1.0,0.8"
csv "$N/kfac-seed1.csv" "0,0,2.0,0.1 10,20,0.4,0.9 20,40,0.2,0.95"
csv "$N/sgd-seed2.csv" "0,0,2.0,0.1 10,10,1.0,0.8 20,20,0.5,0.9"
csv "$N/kfac-seed2.csv" "0,0,2.0,0.1 10,20,nan,0.1"
python3 tools/retrain_report.py "$N" --kind classify --seeds 1,2 --updates 20 --title T --no-plots >"$N/out.txt" 2>&1
check report_nonfinite "expected '1 of 2' for both optimizers in $N/out.txt" \
    grep -Eq "^runs with a non-finite loss or cut short +1 of 2 +1 of 2" "$N/out.txt"
python3 tools/retrain_report.py "$C" --kind classify --seeds 1,2 --updates 20 --title T \
    --opts sgd --no-plots >"$C/sgd.txt" 2>&1
check report_sgd_alone "an SGD-only table without K-FAC's columns expected in $C/sgd.txt" \
    bash -c "grep -Eq '^final test accuracy +0\.9000$' '$C/sgd.txt' && ! grep -q K-FAC '$C/sgd.txt'"

# ---- retrain_report.py, detect ------------------------------------------------------------
D=$W/detect
mkdir -p "$D"
# dcsv BASE "u,seconds,loss,map50 ..." and BASE-loss.csv with one update per row
dcsv() {
    local b=$1 r
    echo "updates,seconds,loss,map50,map5095" >"$b.csv"
    for r in $2; do IFS=, read -r u s l m <<<"$r"; echo "$u,$s,$l,$m,$m" >>"$b.csv"; done
    echo "updates,seconds,loss" >"$b-loss.csv"
    for r in $3; do IFS=, read -r u l <<<"$r"; echo "$u,$u,$l" >>"$b-loss.csv"; done
}
# --smooth 2: SGD's losses 3, 3, 2, 2 end with the mean (2 + 2)/2 = 2; K-FAC's losses
# 4, 3, 2, 1 have the 2-update means 3.5, 2.5, 1.5 at updates 2, 3, 4: first <= 2 at
# update 4 (ratio 1.00).  SGD's final mAP@0.5 0.3; K-FAC has 0.4 at update 2 (0.50).
# A title with a quote must reach gnuplot intact (below).
dcsv "$D/sgd-seed1" "0,0,nan,0 2,2,3,0.1 4,4,2,0.3" "1,3 2,3 3,2 4,2"
dcsv "$D/kfac-seed1" "0,0,nan,0 2,2,3,0.4 4,4,1,0.5" "1,4 2,3 3,2 4,1"
if python3 tools/retrain_report.py "$D" --kind detect --seeds 1 --updates 4 --smooth 2 --title T \
        --no-plots >"$D/out.txt" 2>&1; then
    check report_detect_loss "expected 'to SGD's final training loss 4 1.00 no' in $D/out.txt" \
        grep -Eq "^to SGD's final training loss +4 +1\.00 +no$" "$D/out.txt"
    check report_detect_map "expected 'to SGD's final mAP@0.5 2 0.50 yes' in $D/out.txt" \
        grep -Eq "^to SGD's final mAP@0\.5 +2 +0\.50 +yes$" "$D/out.txt"
    # seconds from the per-update curve (second = update there): 4 and 2 of SGD's 4
    check report_detect_seconds "expected seconds ratios 1.00 no (loss) and 0.50 yes (mAP) in $D/out.txt" \
        bash -c "grep -Eq \"^to SGD's final training loss +1\.00 +no$\" '$D/out.txt' &&
                 grep -Eq \"^to SGD's final mAP@0\.5 +0\.50 +yes$\" '$D/out.txt'"
else
    fail report_detect_loss "retrain_report.py failed: $(tail -3 "$D/out.txt")"
fi

# ---- plots ------------------------------------------------------------------------------
if command -v gnuplot >/dev/null; then
    png() { [ "$(head -c 4 "$1" 2>/dev/null | od -An -c | tr -d ' ')" = '211PNG' ]; }
    python3 tools/retrain_report.py "$C" --kind classify --seeds 1,2 --updates 20 --title T >"$C/plots.txt" 2>&1
    check report_classify_pngs "loss-updates, loss-seconds, accuracy-updates PNGs expected in $C ($(tail -1 "$C/plots.txt"))" \
        bash -c "$(declare -f png); png '$C/loss-updates.png' && png '$C/loss-seconds.png' && png '$C/accuracy-updates.png'"
    python3 tools/retrain_report.py "$D" --kind detect --seeds 1 --updates 4 --smooth 2 --title "it's T" >"$D/plots.txt" 2>&1
    check report_detect_pngs "map-updates, map-seconds, loss-updates PNGs expected in $D ($(tail -1 "$D/plots.txt"))" \
        bash -c "$(declare -f png); png '$D/map-updates.png' && png '$D/map-seconds.png' && png '$D/loss-updates.png'"
else
    echo "SKIP report_pngs: no gnuplot (tools/setup.sh gnuplot installs it)"
fi
[ $nfail -eq 0 ]
