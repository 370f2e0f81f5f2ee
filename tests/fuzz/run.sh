#!/usr/bin/env bash
# make fuzz: libFuzzer on darknet-kfac's two readers of user files.
#
#   tests/fuzz/run.sh build/darknet-cpu-fuzz SECONDS
#
#   fuzz_cfg    the [kfac] section parser, through Darknet's read_cfg (fuzz_cfg.c)
#   fuzz_state  the state-file reader on a small [kfac] net (fuzz_state.c)
#
# Each target is built with clang (-fsanitize=fuzzer,address,undefined) against the
# FUZZ=1 build of Darknet and darknet-kfac, and runs for SECONDS from the committed
# seeds (tests/fuzz/corpus/<target>) plus what earlier runs found (build/fuzz/corpus).
# A crash, a leak, a sanitizer report or a timeout stops it: the input is saved under
# build/fuzz/artifacts/, and the script exits 1 after printing how to make it a
# regression case (tests/fuzz/regress/<target>/, replayed by `make test`).
set -u
cd "$(dirname "$0")/../.."
DK=${1:?usage: tests/fuzz/run.sh <FUZZ=1 darknet build> SECONDS}
SECONDS_EACH=${2:?usage: tests/fuzz/run.sh <FUZZ=1 darknet build> SECONDS}
OUT=build/fuzz
mkdir -p "$OUT/artifacts" "$OUT/tmp"
export TMPDIR=$PWD/$OUT/tmp
FLAGS="-g -O1 -fsanitize=fuzzer,address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all"
INC="-I$DK/include -I$DK/src -Idarknet-kfac"
LIBS="$DK/libdarknet.a -lopenblas -lm -pthread"
status=0
for t in cfg state; do
    bin=$OUT/fuzz_$t
    if ! clang $FLAGS $INC "tests/fuzz/fuzz_$t.c" $LIBS -o "$bin" 2>"$OUT/fuzz_$t.build.log"; then
        cat "$OUT/fuzz_$t.build.log"
        echo "FAIL fuzz_$t: does not build"
        status=1
        continue
    fi
    mkdir -p "$OUT/corpus/$t"
    echo "# fuzz_$t: $SECONDS_EACH s"
    # -close_fd_mask=2 silences Darknet's cfg warnings; libFuzzer and the sanitizers
    # still report a crash.  -timeout: a single input taking seconds is a hang.
    if "$bin" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
            -close_fd_mask=2 -artifact_prefix="$OUT/artifacts/$t-" \
            "$OUT/corpus/$t" "tests/fuzz/corpus/$t" >"$OUT/fuzz_$t.log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$OUT/fuzz_$t.log")
        cov=$(grep -Eo 'cov: [0-9]+' "$OUT/fuzz_$t.log" | tail -1)
        echo "ok fuzz_$t: ${runs:-?} inputs, $cov, no crash, leak or sanitizer report"
    else
        tail -n 40 "$OUT/fuzz_$t.log"
        echo "FAIL fuzz_$t: see $OUT/fuzz_$t.log; the input is in $OUT/artifacts/ (copy it to tests/fuzz/regress/$t/ once fixed)"
        status=1
    fi
done
exit $status
