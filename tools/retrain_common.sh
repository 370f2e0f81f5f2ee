# What tools/retrain_googlenet.sh and tools/retrain_detect.sh share once their options
# are parsed: the checks of --opts and --lr, the binaries, gnuplot for the plots, one
# BLAS thread, the seeds and the timestamped log line.  Sourced from the repository
# root; uses the script's die, OPTS, LR, PLOTS and NSEEDS.
case $OPTS in "sgd kfac"|sgd|kfac) ;; *) die "--opts '$OPTS': one of 'sgd kfac', sgd, kfac" ;; esac
if [ -n "$LR" ] && ! awk -v x="$LR" 'BEGIN{exit !(x + 0 > 0)}'; then die "--lr $LR: must be > 0"; fi

DARKNET=${DARKNET:-build/darknet-cpu/darknet}
COMPARE=${KFAC_COMPARE:-build/kfac_compare}
for b in "$DARKNET" "$COMPARE"; do [ -x "$b" ] || die "$b not found: run make first"; done
if [ "$PLOTS" = 1 ] && ! command -v gnuplot >/dev/null; then
    die "gnuplot not found: install it with tools/setup.sh gnuplot (as root: gnuplot-nox), or pass --no-plots"
fi
# K-FAC's BLAS on one core like Darknet's own gemm, so that seconds compare like for like
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
SEEDS=$(seq -s ' ' 1 "$NSEEDS")
T0=$(date +%s)
log() { printf '[%5ds] %s\n' $(( $(date +%s) - T0 )) "$*"; }
