#!/usr/bin/env bash
# darknet-kfac's CPU test suite.  `make test` runs it as:
#
#   tests/run.sh build/darknet-cpu [NAME...]      (make test)
#   tests/run.sh build/darknet-cpu-sanitize       (make test-sanitize)
#
# Compiles every tests/test_*.c against <darknet build>/libdarknet.a into build/tests/,
# runs them and the tests/test_*.sh drivers (from the repository root, each given the
# darknet build folder), and counts their `ok NAME` / `FAIL NAME: reason` lines.  A
# program that exits non-zero without printing a FAIL line counts as one failure.
# NAMEs (e.g. `factors cli`) run only the tests whose file names contain one of them.
# Each program's whole output is kept in build/tests/<test>.log.
#
# The last line is exactly `N passed, N failed`; the exit status is 0 only when
# nothing failed.
set -u
cd "$(dirname "$0")/.."

if [ $# -lt 1 ] || [ ! -f "$1/libdarknet.a" ]; then
    echo "usage: tests/run.sh <darknet build folder, e.g. build/darknet-cpu> [NAME...]" >&2
    echo "(no libdarknet.a in '${1:-}': run make first)" >&2
    exit 2
fi
DK=$1
shift
OUT=build/tests
mkdir -p "$OUT"

CC=${CC:-cc}
# KFAC_TEST_CFLAGS: what the build was compiled with beyond the defaults (the
# sanitizers of `make test-sanitize`)
CFLAGS="-O2 -g -Wall -std=gnu99 -I$DK/include -I$DK/src -Idarknet-kfac -Itests ${KFAC_TEST_CFLAGS:-}"
LIBS="$DK/libdarknet.a -lopenblas -lm -pthread"

# the variant's deterministic driver (the top Makefile's name for it), for the drivers
variant=${DK##*/darknet-}
# (next to the Darknet build folder, so that a build under another BUILD= tests its own)
KFAC_COMPARE=$(dirname "$DK")/kfac_compare
[ "$variant" = cpu ] || KFAC_COMPARE=$KFAC_COMPARE-$variant
export KFAC_COMPARE
t_suite=$(date +%s)
. tests/count.sh

selected() {
    [ $# -eq 1 ] && return 0
    local name=$1 pat
    shift
    for pat in "$@"; do
        case "$name" in *"$pat"*) return 0 ;; esac
    done
    return 1
}

for src in tests/test_*.c; do
    name=$(basename "$src" .c)
    selected "$name" "$@" || continue
    bin=$OUT/$name
    if ! $CC $CFLAGS "$src" $LIBS -o "$bin" >"$OUT/$name.build.log" 2>&1; then
        cat "$OUT/$name.build.log"
        echo "FAIL $name: does not compile"
        failed=$((failed + 1))
        continue
    fi
    count_run "$name" "$OUT/$name.log" "$bin"
done

for drv in tests/test_*.sh; do
    name=$(basename "$drv" .sh)
    selected "$name" "$@" || continue
    count_run "$name" "$OUT/$name.log" bash "$drv" "$DK"
done

echo "# suite: $(( $(date +%s) - t_suite )) s"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
