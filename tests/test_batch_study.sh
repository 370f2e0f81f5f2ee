#!/usr/bin/env bash
# test_batch_study.sh <darknet build folder>: tools/batch_study.py end to end on the
# tiny autoencoder of tests/cfg/autoencoder.cfg, batches 32 and 64 (one forward pass
# of 32 images: subdivisions 1 and 2), one seed, 10 updates, a sweep of two rates:
# the generated cfgs, the CSVs' rows, the PNGs, and that a second call reruns
# nothing (resume).  Not a measurement: it checks the pipeline.
#
# Needs gnuplot (tools/setup.sh gnuplot) and the demo data; SKIP without them.
set -u
DK=${1:?usage: tests/test_batch_study.sh <darknet build folder>}
W=build/tests/batch_study
COMPARE=${KFAC_COMPARE:-build/kfac_compare}
. tests/shlib.sh

if ! command -v gnuplot >/dev/null; then
    echo "SKIP batch_study: no gnuplot (tools/setup.sh gnuplot installs Debian's gnuplot-nox)"
    exit 0
fi
if [ ! -f build/data/digits/digits.data ]; then
    python3 tools/digits_prepare.py >/dev/null 2>&1 || true
fi
if [ ! -f build/data/digits/digits.data ]; then
    echo "SKIP batch_study: no demo data (tools/digits_prepare.py failed)"
    exit 0
fi
rm -rf "$W"
args=(--cfg tests/cfg/autoencoder.cfg --batches 32,64 --seeds 1 --updates 10 --grid 1,2
      --pass-images 32 --evals 2 --out "$W" --compare "$COMPARE")
if ! python3 tools/batch_study.py "${args[@]}" >"$W.log" 2>&1; then
    fail batch_study_runs "tools/batch_study.py failed (see $W.log)"
    exit 1
fi
ok batch_study_runs

d=$W/autoencoder
msg=""
grep -qx 'batch=64' "$d/cfg/sgd-b64.cfg" && grep -qx 'subdivisions=2' "$d/cfg/sgd-b64.cfg" &&
    grep -qx 'policy=constant' "$d/cfg/sgd-b64.cfg" && grep -qx 'max_batches=10' "$d/cfg/sgd-b64.cfg" ||
    msg="$d/cfg/sgd-b64.cfg: not batch=64, subdivisions=2, policy=constant, max_batches=10"
[ "$(grep -c '^\[kfac\]' "$d/cfg/kfac-b64.cfg")" = 1 ] && [ "$(grep -c '^\[kfac\]' "$d/cfg/sgd-b64.cfg")" = 0 ] ||
    msg="$msg; [kfac] must be in kfac-b64.cfg only"
[ -z "$msg" ] && ok batch_study_cfgs || fail batch_study_cfgs "$msg"

# rows: CSV header + (sweep: 2 batches x 2 rates, runs: 2 batches x 2 optimizers, summary: 2)
msg=""
for f in sweep:5 runs:5 summary:3; do
    n=$(wc -l <"$d/${f%:*}.csv" 2>/dev/null || echo 0)
    [ "$n" = "${f#*:}" ] || msg="$msg ${f%:*}.csv has $n lines, expected ${f#*:};"
done
[ "$(awk -F, '$5 == 1' "$d/sweep.csv" | wc -l)" = 2 ] || msg="$msg sweep.csv: not one chosen rate per batch;"
[ -z "$msg" ] && ok batch_study_csv || fail batch_study_csv "$msg"

msg=""
for p in autoencoder-updates-to-target autoencoder-examples-to-target autoencoder-seconds-to-target \
         autoencoder-b32-curves autoencoder-b64-curves autoencoder-curves; do
    [ "$(head -c 8 "$W/$p.png" 2>/dev/null | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] ||
        msg="$msg $W/$p.png is not a PNG;"
done
[ -z "$msg" ] && ok batch_study_png || fail batch_study_png "$msg"

if python3 tools/batch_study.py "${args[@]}" >"$W.again.log" 2>&1 &&
        [ "$(grep -c 'done before, kept\|the sweep.s run' "$W.again.log")" = 8 ]; then
    ok batch_study_resume
else
    fail batch_study_resume "a second call reran runs (see $W.again.log)"
fi
# tools/kfac_batch_scaling.py (K-FAC stopped at the lowest target, SGD beside it with
# --sgd-grid): its tables must hold, for every batch and target, the first evaluated
# update of the run's TSV at or below the target (recomputed here with awk), the
# median of one seed; SGD's from the rate its sweep chose, which must be a rate with
# the fewest updates to the first target
K=$W/scaling
first_below() { # TSV target: the first update whose whole-training-set error is <= target
    awk -F'\t' -v t="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "full_train_error") c = i; next }
        $c != "nan" && $c + 0 <= t { print $1; exit }' "$1"
}
if python3 tools/kfac_batch_scaling.py --cfg tests/cfg/autoencoder.cfg --batches 32,64 --seeds 1 \
        --targets 30,24 --max-updates 12 --pass-images 32 --sgd-grid 0.5,2 --out "$K" --compare "$COMPARE" \
        >"$K.log" 2>&1; then
    msg=""
    for b in 32 64; do
        m=$(awk -F, -v b=$b '$1 == b && $NF == 1 { print $2 }' "$K/sweep.csv")
        fewest=$(awk -F, -v b=$b 'NR > 1 && $1 == b && $4 != "" && (f == "" || $4 + 0 < f) { f = $4 + 0 } END { print f }' \
                 "$K/sweep.csv")
        [ "$(awk -F, -v b=$b -v m="$m" '$1 == b && $2 == m { print $4 + 0 }' "$K/sweep.csv")" = "$fewest" ] ||
            msg="$msg batch $b: SGD's chosen rate x$m is not one with the fewest updates ($fewest);"
        for t in 30 24; do
            want=$(first_below "$K/runs/b$b-seed1.tsv" $t)
            got=$(awk -F, -v t=$t -v b=$b '$1 + 0 == t && $2 == b { print $3 + 0 }' "$K/summary.csv")
            [ -n "$want" ] && [ "$got" = "$want" ] || msg="$msg batch $b target $t: summary $got, TSV $want;"
            want=$(first_below "$K/runs/sgd-b$b-m$m-seed1.tsv" $t)
            got=$(awk -F, -v t=$t -v b=$b '$1 + 0 == t && $2 == b { print $3 }' "$K/sgd.csv")
            [ "$got" = "$want" ] || msg="$msg SGD batch $b target $t: sgd.csv '$got', TSV '$want';"
        done
    done
    [ "$(head -c 8 "$K/updates-to-target.png" 2>/dev/null | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] ||
        msg="$msg no PNG;"
    [ -z "$msg" ] && ok kfac_batch_scaling_table || fail kfac_batch_scaling_table "$msg (see $K.log)"
else
    fail kfac_batch_scaling_table "tools/kfac_batch_scaling.py failed (see $K.log)"
fi
[ $nfail -eq 0 ]
