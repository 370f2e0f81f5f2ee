# Sourced by tests/gpu/run.sh and tools/bench_gpu.sh (from the repository root, with
# OUT set to their output folder): the CUDA toolchain, stand-ins for missing tools,
# the make variables of a GPU build, and the build of one GPU variant with the
# programs that run on it.
#
#   gpu_setup           sets PATH, CUDA_HOME, LD_LIBRARY_PATH, GPUS (GPUs that
#                       nvidia-smi lists), CUDA_ARCH (the card's, unless set), MAKEVARS;
#                       returns 1 with GPU_BUILD_ERROR set when a tool is missing
#   gpu_build CUDNN     make MAKEVARS CUDNN=.. darknet, then compiles test_gpu_kfac,
#                       bench_gpu and kfac_compare into $OUT/cudnn<CUDNN>/; returns 1
#                       with GPU_BUILD_ERROR set on failure
ROOT=$PWD
GPU_BUILD_ERROR=""

gpu_setup() {
    local d t
    if ! command -v nvcc >/dev/null 2>&1; then
        for d in /usr/local/cuda/bin /usr/local/cuda-*/bin; do
            [ -x "$d/nvcc" ] && { export PATH="$PATH:$d"; break; }
        done
    fi
    command -v nvcc >/dev/null 2>&1 || { GPU_BUILD_ERROR="nvcc not found (on PATH or in /usr/local/cuda/bin)"; return 1; }
    # the toolkit: the first of these with cuda_runtime.h (nvcc itself may be a copy or
    # a wrapper in /usr/local/bin, whose parent has no CUDA headers)
    local nvcc_home home
    nvcc_home=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
    home=""
    for d in "${CUDA_HOME:-}" "$nvcc_home" /usr/local/cuda /usr/local/cuda-*; do
        [ -n "$d" ] && [ -f "$d/include/cuda_runtime.h" ] && { home=$d; break; }
    done
    [ -n "$home" ] || { GPU_BUILD_ERROR="cuda_runtime.h not found under \$CUDA_HOME, $nvcc_home or /usr/local/cuda*"; return 1; }
    export CUDA_HOME=$home
    export LD_LIBRARY_PATH="$CUDA_HOME/lib64:$CUDA_HOME/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    for t in make gcc tar python3; do
        command -v $t >/dev/null 2>&1 || { GPU_BUILD_ERROR="$t not found"; return 1; }
    done
    # Stand-ins for patch(1) and xz(1) where the machine lacks them (fetch_darknet.sh
    # and apply_patches.sh use both): git apply and Python's lzma, for the forms used.
    mkdir -p "$OUT/bin"
    if ! command -v patch >/dev/null 2>&1; then
        command -v git >/dev/null 2>&1 || { GPU_BUILD_ERROR="neither patch nor git found"; return 1; }
        cat > "$OUT/bin/patch" <<'EOF'
#!/usr/bin/env bash
# patch(1) stand-in: [-s] [--dry-run] [-pN] [-d DIR] [-F N] [--no-backup-if-mismatch] < file
dry=0; dir=.; strip=1
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry=1 ;;
        -s|--no-backup-if-mismatch) ;;
        -p*) strip=${1#-p} ;;
        -d) dir=$2; shift ;;
        -F) shift ;;
        -F*) ;;
        *) echo "patch stand-in: unsupported option $1" >&2; exit 2 ;;
    esac
    shift
done
tmp=$(mktemp); cat > "$tmp"
cd "$dir" || exit 2
# outside any repository, so the patch's paths are relative to DIR
export GIT_CEILING_DIRECTORIES=$(dirname "$PWD")
if [ $dry = 1 ]; then git apply --check -p"$strip" "$tmp"; else git apply -p"$strip" "$tmp"; fi
rc=$?; rm -f "$tmp"; exit $rc
EOF
        chmod +x "$OUT/bin/patch"
        echo "# patch(1) not found: using git apply ($OUT/bin/patch)"
    fi
    if ! command -v xz >/dev/null 2>&1; then
        cat > "$OUT/bin/xz" <<'EOF'
#!/usr/bin/env bash
# xz(1) stand-in for tar -J: decompresses stdin to stdout
exec python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)'
EOF
        chmod +x "$OUT/bin/xz"
        echo "# xz not found: using Python's lzma ($OUT/bin/xz)"
    fi
    export PATH="$ROOT/$OUT/bin:$PATH"

    GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    if [ -z "${CUDA_ARCH:-}" ] && [ "$GPUS" -gt 0 ]; then
        CUDA_ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
    fi
    # a machine without libopenblas-dev: the archive tests/gpu/pack_openblas.sh made
    if [ -z "${OPENBLAS_LIB:-}" ] && [ -f build/openblas/libopenblas.a ]; then
        OPENBLAS_LIB=$ROOT/build/openblas/libopenblas.a
    fi
    [ -n "${OPENBLAS_LIB:-}" ] && export OPENBLAS_LIB
    MAKEVARS=(GPU=1)
    [ -n "${CUDA_ARCH:-}" ] && MAKEVARS+=("CUDA_ARCH=$CUDA_ARCH")
    [ -n "${OPENBLAS_LIB:-}" ] && MAKEVARS+=("OPENBLAS_LIB=$OPENBLAS_LIB")
    return 0
}

gpu_build() {
    local cudnn=$1 dk vdir ld cflags t log=$OUT/build-cudnn$1.log
    if ! make "${MAKEVARS[@]}" CUDNN="$cudnn" darknet >"$log" 2>&1; then
        tail -n 30 "$log"
        GPU_BUILD_ERROR="make ${MAKEVARS[*]} CUDNN=$cudnn darknet failed (log: $log)"
        return 1
    fi
    dk=build/darknet-gpu$([ "$cudnn" = 1 ] && echo -cudnn)
    vdir=$OUT/cudnn$cudnn
    mkdir -p "$vdir"
    ld=$(make -s -C "$dk" KFAC_DIR="$ROOT/darknet-kfac" "${MAKEVARS[@]}" CUDNN="$cudnn" NVCC="$(command -v nvcc)" print-ldflags)
    cflags="-O2 -g -Wall -std=gnu99 -DGPU -I$CUDA_HOME/include -I$dk/include -I$dk/src -Idarknet-kfac -Itests"
    [ "$cudnn" = 1 ] && cflags="$cflags -DCUDNN"
    # kfac_compare too: darknet.h's structs change with -DGPU/-DCUDNN, so a driver
    # must be compiled with the flags its libdarknet.a was built with
    for t in tests/gpu/test_gpu_kfac tests/gpu/bench_gpu tools/kfac_compare; do
        if ! gcc $cflags $t.c "$dk/libdarknet.a" $ld -o "$vdir/${t##*/}" >"$vdir/${t##*/}.build.log" 2>&1; then
            cat "$vdir/${t##*/}.build.log"
            GPU_BUILD_ERROR="${t##*/} does not compile against $dk (log: $vdir/${t##*/}.build.log)"
            return 1
        fi
    done
    return 0
}
