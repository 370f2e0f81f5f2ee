#!/usr/bin/env bash
# test_fuzz_regress.sh <darknet build folder>: the fuzz targets' inputs, replayed.
#
# tests/fuzz/fuzz_cfg.c and fuzz_state.c are built with tests/fuzz/replay.c as main
# (no libFuzzer needed) against this build, and run on every seed of
# tests/fuzz/corpus/<target> and every input that once crashed them,
# tests/fuzz/regress/<target>/ (named after what they found).  Under make
# test-sanitize the same inputs run with ASan and UBSan (KFAC_TEST_CFLAGS), which is
# what caught them in the first place; here a plain build must not crash on them.
set -u
DK=${1:?usage: tests/test_fuzz_regress.sh <darknet build folder>}
W=build/tests/fuzz
mkdir -p "$W/tmp"
export TMPDIR=$PWD/$W/tmp
nfail=0
CC=${CC:-cc}
CFLAGS="-O1 -g -Wall -std=gnu99 -I$DK/include -I$DK/src -Idarknet-kfac ${KFAC_TEST_CFLAGS:-}"
for t in cfg state; do
    bin=$W/replay_$t
    if ! $CC $CFLAGS tests/fuzz/fuzz_$t.c tests/fuzz/replay.c "$DK/libdarknet.a" -lopenblas -lm -pthread \
            -o "$bin" >"$W/replay_$t.build.log" 2>&1; then
        cat "$W/replay_$t.build.log"
        echo "FAIL replay_$t: does not compile"
        nfail=$((nfail + 1))
        continue
    fi
    files=$(ls tests/fuzz/corpus/$t/* tests/fuzz/regress/$t/* 2>/dev/null)
    # shellcheck disable=SC2086
    if ! "$bin" "$t" $files >"$W/replay_$t.log" 2>&1; then
        echo "FAIL replay_$t: crashed on $(sed -n 's/^# replay_[a-z]* //p' "$W/replay_$t.log" | tail -1) (see $W/replay_$t.log)"
        nfail=$((nfail + 1))
    fi
    grep '^ok ' "$W/replay_$t.log"
done
[ $nfail -eq 0 ]
