#!/usr/bin/env bash
# make bench-threads: seconds per call of the CPU backend's heavy operations
# (tools/bench_threads.c) by factor size, with OpenBLAS on 1 thread, on every core,
# and on the backend's own choice (kfac_backend_cpu.c: one thread below a size,
# every core above; OPENBLAS_NUM_THREADS unset), on an idle CPU and on one loaded with
# a busy loop per core.  Prints a markdown table for BENCHMARKS.md.
#
#   tools/bench_threads.sh build/bench_threads [SIZES...]
set -u
BIN=${1:?usage: tools/bench_threads.sh build/bench_threads [SIZES...]}
shift
SIZES=${*:-16 76 145 257 801 1201 2305}
CORES=$(nproc)
SECS=${BENCH_THREADS_SECONDS:-1}
pids=()
load_on() {
    local i
    for i in $(seq "$CORES"); do
        sh -c 'while :; do :; done' &
        pids+=($!)
    done
    sleep 1
}
load_off() {
    kill "${pids[@]}" 2>/dev/null
    wait "${pids[@]}" 2>/dev/null
    pids=()
}
trap load_off EXIT
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $CORES cores; median seconds per call"
echo
echo "| load | N | threads | eigh | damped inverse | precondition (G 64) | A product (4096 columns) |"
echo "|---|---|---|---|---|---|---|"
for load in idle loaded; do
    [ $load = loaded ] && load_on
    for n in $SIZES; do
        for th in 1 "$CORES" auto; do
            if [ "$th" = auto ]; then
                line=$(env -u OPENBLAS_NUM_THREADS -u GOTO_NUM_THREADS -u OMP_NUM_THREADS "$BIN" "$n" "$SECS")
            else
                line=$(env -u GOTO_NUM_THREADS -u OMP_NUM_THREADS OPENBLAS_NUM_THREADS=$th "$BIN" "$n" "$SECS")
            fi
            set -- $line
            echo "| $load | $n | $th | $2 | $3 | $4 | $5 |"
        done
    done
    [ $load = loaded ] && load_off
done
