#!/usr/bin/env bash
# tools/bench_mpi.sh COMPARE BENCH_COMM: BENCHMARKS.md's measurements of training across
# processes on this machine (`make bench-mpi`), into build/bench-mpi/:
#
#   comm-shm.txt, comm-tcp.txt   tools/bench_comm.c on 2 ranks, over shared memory and
#                                over TCP (loopback): seconds per all-reduce and
#                                broadcast by buffer size (the scaling model's alpha and
#                                beta)
#   digits-64/, digits-128/      the demo CNN (cfg/digits.cfg, cfg/digits-kfac.cfg),
#                                global batch 64 (2 ranks at 32) and 128 (2 at 64)
#   googlenet-128/               the GoogLeNet-like net (cfg/googlenet-digits.cfg and
#                                it with an empty [kfac]), 2 ranks at 64
#   digits-64-inv10/, -inv100/   the demo CNN at 64 with a fixed schedule (statistics
#                                every 10, decompositions every 10 or 100), so that the
#                                bytes per update are a function of the cfg alone
#
# each a tools/demo_mpi.sh table (3 runs of each, medians) in table.txt, the demo CNN's
# with K-FAC on 2 ranks in both [kfac] dist_precondition modes (--owner).  About 30
# minutes on 2 idle cores.  Environment: REPEAT (3), ITERS_DIGITS (200), ITERS_GOOGLENET
# (100), OUT (build/bench-mpi).
set -euo pipefail
cd "$(dirname "$0")/.."
COMPARE=${1:?usage: tools/bench_mpi.sh COMPARE BENCH_COMM}
COMM=${2:?usage: tools/bench_mpi.sh COMPARE BENCH_COMM}
REPEAT=${REPEAT:-3}
OUT=${OUT:-build/bench-mpi}
mkdir -p "$OUT"
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
echo "bench_mpi.sh: $(date -u), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), load average $(cut -d' ' -f1-3 /proc/loadavg)"
mpirun --oversubscribe -np 2 "$COMM" | tee "$OUT/comm-shm.txt"
mpirun --oversubscribe --mca btl self,tcp -np 2 "$COMM" | tee "$OUT/comm-tcp.txt"
table() { # NAME demo_mpi.sh options...
    local name=$1
    shift
    mkdir -p "$OUT/$name"
    tools/demo_mpi.sh "$COMPARE" --out "$OUT/$name" --repeat "$REPEAT" "$@" | tee "$OUT/$name/table.txt"
}
table digits-64 --iters "${ITERS_DIGITS:-200}" --owner
table digits-128 --batch 128 --iters "${ITERS_DIGITS:-200}" --owner
table googlenet-128 --sgd cfg/googlenet-digits.cfg --batch 128 --iters "${ITERS_GOOGLENET:-100}"
for inv in 10 100; do
    sed -e "/^\[kfac\]$/a inverse_interval=$inv" -e '/^\[kfac\]$/a stats_interval=10' cfg/digits-kfac.cfg \
        >"$OUT/digits-kfac-inv$inv.cfg"
    table "digits-64-inv$inv" --kfac "$OUT/digits-kfac-inv$inv.cfg" --iters "${ITERS_DIGITS:-200}" --owner
done
echo "bench_mpi.sh: done $(date -u), load average $(cut -d' ' -f1-3 /proc/loadavg)"
