#!/usr/bin/env bash
# tools/demo_mpi.sh COMPARE [options]: training across processes on this machine
# (`make demo-mpi`): SGD and K-FAC on one process at the global batch and on N ranks
# (mpirun) at batch/N each, the same images in every update (tools/kfac_compare's
# slices), and where an update's time goes.
#
#   COMPARE         the MPI build of tools/kfac_compare (build/kfac_compare-cpu-mpi)
#   --sgd CFG       the SGD cfg (default cfg/digits.cfg)
#   --kfac CFG      the K-FAC cfg (default: cfg/digits-kfac.cfg with the default SGD
#                   cfg, else the SGD cfg with an empty [kfac] appended)
#   --batch B       the global batch (default: the SGD cfg's)
#   --ranks N       ranks of the distributed runs (default 2)
#   --iters N       updates per run (default 200)
#   --out DIR       logs and cfgs (default build/demo-mpi)
#   --repeat R      every run R times, interleaved; the table shows medians (default 1)
#   --owner         also K-FAC on N ranks with [kfac] dist_precondition=owner (each
#                   layer's owner preconditions it and broadcasts the result)
#
# Prints (tools/demo_mpi_table.py) one row per run: seconds per update (training only:
# kfac_compare excludes data and evaluation) and their split: forward and backward (the
# rest), waiting for the slowest rank, the gradient all-reduce, K-FAC's statistics
# (with their all-reduce), its decompositions (with receiving the other ranks' from
# their owners, which waits for them), its preconditioning and step (with the adaptive
# step's scalars); bytes handed to the collectives per update; the largest share of an
# update any rank waited for its background decompositions; the final test accuracy
# and loss.  Then, per optimizer, the distributed run's seconds per update over the one
# process's and the parallel efficiency (one process / (N x distributed)), and K-FAC's
# schedule.  OPENBLAS_NUM_THREADS=1: each rank is one core, as Darknet's own training
# is.  Every run goes through mpirun (one process: -np 1), so that all are measured
# alike; the machine's load average is printed before each.
set -euo pipefail
cd "$(dirname "$0")/.."
COMPARE=${1:?usage: tools/demo_mpi.sh COMPARE [--sgd CFG] [--kfac CFG] [--batch B] [--ranks N] [--iters N] [--out DIR] [--repeat R] [--owner]}
shift
SGD=cfg/digits.cfg KFAC="" BATCH="" RANKS=2 ITERS=200 OUT=build/demo-mpi REPEAT=1 OWNER=0
while [ $# -gt 0 ]; do
    case "$1" in
        --owner) OWNER=1; shift; continue ;;
        --sgd) SGD=$2 ;;
        --kfac) KFAC=$2 ;;
        --batch) BATCH=$2 ;;
        --ranks) RANKS=$2 ;;
        --iters) ITERS=$2 ;;
        --out) OUT=$2 ;;
        --repeat) REPEAT=$2 ;;
        *) echo "demo_mpi.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift 2
done
[ -x "$COMPARE" ] || { echo "demo_mpi.sh: $COMPARE not found: make MPI=1 builds it" >&2; exit 1; }
command -v mpirun >/dev/null || { echo "demo_mpi.sh: mpirun not found (tools/setup.sh mpi)" >&2; exit 1; }
[ -n "$BATCH" ] || BATCH=$(sed -n 's/^batch=//p' "$SGD" | head -1)
if [ $((BATCH % RANKS)) -ne 0 ]; then echo "demo_mpi.sh: --batch $BATCH is not a multiple of --ranks $RANKS" >&2; exit 2; fi
DATA=build/data/digits/digits.data
python3 tools/digits_prepare.py --out build/data/digits >/dev/null
mkdir -p "$OUT"
if [ -z "$KFAC" ] && [ "$SGD" = cfg/digits.cfg ]; then KFAC=cfg/digits-kfac.cfg; fi
if [ -z "$KFAC" ]; then
    KFAC=$OUT/$(basename "$SGD" .cfg)-kfac.cfg
    printf '%s\n\n[kfac]\n' "$(cat "$SGD")" >"$KFAC"
fi
export OPENBLAS_NUM_THREADS=1
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi

# batched CFG B -> OUT/<base>-bB.cfg
batched() {
    local c="$OUT/$(basename "$1" .cfg)-b$2.cfg"
    sed "s/^batch=.*/batch=$2/" "$1" >"$c"
    echo "$c"
}

# run NAME NP CFG: OUT/NAME.log (rank 0's stdout), OUT/NAME.err (every rank's stderr),
# both tagged [1,rank] by mpirun
run() {
    local name=$1 np=$2 cfg=$3
    echo "demo_mpi.sh: $name: $np process(es), $(sed -n 's/^batch=//p' "$cfg") images each, $ITERS updates; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    mpirun --oversubscribe --tag-output -np "$np" "$COMPARE" -data "$DATA" -cfg "$cfg" -iters "$ITERS" \
        -eval "$ITERS" >"$OUT/$name.log" 2>"$OUT/$name.err"
}

per=$((BATCH / RANKS))
s1=$(batched "$SGD" "$BATCH") sn=$(batched "$SGD" "$per") k1=$(batched "$KFAC" "$BATCH") kn=$(batched "$KFAC" "$per")
ko=$OUT/$(basename "$kn" .cfg)-owner.cfg
sed '/^\[kfac\]$/a dist_precondition=owner' "$kn" >"$ko"
for r in $(seq 1 "$REPEAT"); do
    run "sgd-1-r$r" 1 "$s1"
    run "sgd-$RANKS-r$r" "$RANKS" "$sn"
    run "kfac-1-r$r" 1 "$k1"
    run "kfac-$RANKS-r$r" "$RANKS" "$kn"
    if [ "$OWNER" = 1 ]; then run "kfac-owner-$RANKS-r$r" "$RANKS" "$ko"; fi
done
python3 tools/demo_mpi_table.py "$OUT" "$RANKS" "$BATCH" "$REPEAT" $([ "$OWNER" = 1 ] && echo owner)
