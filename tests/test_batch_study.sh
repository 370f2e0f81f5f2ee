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
for p in autoencoder-updates-to-target autoencoder-seconds-to-target autoencoder-b32-curves autoencoder-b64-curves; do
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
[ $nfail -eq 0 ]
