#!/usr/bin/env bash
# tools/demo_mpi.sh COMPARE [options]: training across processes on this machine
# (`make demo-mpi`): SGD and K-FAC on one process at the global batch and on N ranks
# (mpirun) at batch/N each, the same images in every update (tools/kfac_compare's
# slices), and where an update's time goes.
#
#   COMPARE         the MPI build of tools/kfac_compare (build/kfac_compare-cpu-mpi)
#   --sgd CFG       the SGD cfg (default cfg/digits.cfg)
#   --kfac CFG      the K-FAC cfg (default cfg/digits-kfac.cfg)
#   --batch B       the global batch (default: the SGD cfg's)
#   --ranks N       ranks of the distributed runs (default 2)
#   --iters N       updates per run (default 200)
#   --out DIR       logs and cfgs (default build/demo-mpi)
#
# Prints one row per run: seconds per update (training only: kfac_compare excludes
# data and evaluation) and their split: forward and backward (the rest), waiting for
# the slowest rank, the gradient all-reduce, K-FAC's statistics (with their all-reduce),
# its decompositions (with receiving the other ranks' from their owners, which waits
# for them), its preconditioning and step (with the adaptive step's scalars); bytes
# handed to the collectives per update; the final test accuracy and loss.  Then, per
# optimizer, the distributed run's seconds per update over the one process's and the
# parallel efficiency (one process / (N x distributed)).  OPENBLAS_NUM_THREADS=1: each rank is
# one core, as Darknet's own training is.
set -euo pipefail
cd "$(dirname "$0")/.."
COMPARE=${1:?usage: tools/demo_mpi.sh COMPARE [--sgd CFG] [--kfac CFG] [--batch B] [--ranks N] [--iters N] [--out DIR]}
shift
SGD=cfg/digits.cfg KFAC=cfg/digits-kfac.cfg BATCH="" RANKS=2 ITERS=200 OUT=build/demo-mpi
while [ $# -gt 0 ]; do
    case "$1" in
        --sgd) SGD=$2 ;;
        --kfac) KFAC=$2 ;;
        --batch) BATCH=$2 ;;
        --ranks) RANKS=$2 ;;
        --iters) ITERS=$2 ;;
        --out) OUT=$2 ;;
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
export OPENBLAS_NUM_THREADS=1
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi

# batched CFG B -> OUT/<base>-bB.cfg
batched() {
    local c="$OUT/$(basename "$1" .cfg)-b$2.cfg"
    sed "s/^batch=.*/batch=$2/" "$1" >"$c"
    echo "$c"
}

# run NAME NP CFG: OUT/NAME.log
run() {
    local name=$1 np=$2 cfg=$3
    echo "demo_mpi.sh: $name ($np process$([ "$np" -gt 1 ] && echo "es, mpirun"), $(sed -n 's/^batch=//p' "$cfg") images each, $ITERS updates)" >&2
    if [ "$np" -gt 1 ]; then
        mpirun --oversubscribe -np "$np" "$COMPARE" -data "$DATA" -cfg "$cfg" -iters "$ITERS" -eval "$ITERS" \
            >"$OUT/$name.log" 2>"$OUT/$name.err"
    else
        "$COMPARE" -data "$DATA" -cfg "$cfg" -iters "$ITERS" -eval "$ITERS" >"$OUT/$name.log" 2>"$OUT/$name.err"
    fi
}

per=$((BATCH / RANKS))
run sgd-1 1 "$(batched "$SGD" "$BATCH")"
run sgd-$RANKS "$RANKS" "$(batched "$SGD" "$per")"
run kfac-1 1 "$(batched "$KFAC" "$BATCH")"
run kfac-$RANKS "$RANKS" "$(batched "$KFAC" "$per")"

python3 - "$OUT" "$RANKS" "$BATCH" <<'EOF'
import re
import sys

out, ranks, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


def parse(name):
    text = open("%s/%s.log" % (out, name)).read()
    num = lambda pat: [float(x) for x in re.search(pat, text).groups()] if re.search(pat, text) else None
    r = {"total": num(r"mean seconds per update: ([0-9.e-]+)")[0]}
    r["kfac"] = num(r"K-FAC seconds per update: statistics ([0-9.e-]+), decompositions ([0-9.e-]+), "
                    r"preconditioning and step ([0-9.e-]+)") or [0, 0, 0]
    r["coll"] = num(r"collectives seconds per update \(\d+ ranks\): waiting ([0-9.e-]+), gradients ([0-9.e-]+), "
                    r"statistics ([0-9.e-]+), decompositions from their owners ([0-9.e-]+), "
                    r"loss and scalars ([0-9.e-]+); bytes per update ([0-9.e+-]+)") or [0] * 6
    last = [l for l in text.splitlines() if l.startswith("iter ")][-1]
    r["acc"] = float(re.search(r"test_acc ([0-9.]+)", last).group(1))
    r["loss"] = float(re.search(r"test_loss ([0-9.]+)", last).group(1))
    return r


rows = []
print("\nglobal batch %d; %d ranks at %d each against one process; seconds per update (training only)\n" %
      (batch, ranks, batch // ranks))
print("| run | s/update | forward+backward | waiting | gradient all-reduce | K-FAC statistics (all-reduce) "
      "| decompositions (from the owners) | preconditioning + step | bytes/update | test acc | test loss |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
res = {}
for opt in ("sgd", "kfac"):
    for np_ in (1, ranks):
        name = "%s-%d" % (opt, np_)
        r = parse(name)
        res[name] = r
        st, dec, pre = r["kfac"]
        w, g, sst, share, sc, by = r["coll"]
        rest = r["total"] - st - dec - pre - w - g
        print("| %s, %d %s | %.4f | %.4f | %.4f | %.4f | %.4f (%.4f) | %.4f (%.4f) | %.4f | %.0f | %.3f | %.4f |" % (
            opt.upper() if opt == "sgd" else "K-FAC", np_, "process" if np_ == 1 else "ranks", r["total"], rest, w, g,
            st, sst, dec, share, pre, by, r["acc"], r["loss"]))
print()
for opt in ("sgd", "kfac"):
    one, dist = res["%s-1" % opt]["total"], res["%s-%d" % (opt, ranks)]["total"]
    print("%s: %d ranks take %.2f x the one process's seconds per update; parallel efficiency %.0f%%" % (
        "SGD" if opt == "sgd" else "K-FAC", ranks, dist / one, 100 * one / (ranks * dist)))
k1, s1 = res["kfac-1"]["total"], res["sgd-1"]["total"]
kn, sn = res["kfac-%d" % ranks]["total"], res["sgd-%d" % ranks]["total"]
print("K-FAC / SGD seconds per update: one process %.2f, %d ranks %.2f" % (k1 / s1, ranks, kn / sn))
EOF
