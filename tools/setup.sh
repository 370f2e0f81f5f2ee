#!/usr/bin/env bash
# Install the Debian packages darknet-kfac needs.  As root it installs them; otherwise
# it prints the exact command.  Usage: tools/setup.sh [opencv] [gnuplot] [fuzz] [valgrind] [mpi]
#   fuzz      clang and its runtime libraries (libFuzzer, sanitizers): make fuzz
#   valgrind  memcheck for the end-to-end test: tests/test_valgrind.sh
#   mpi       Open MPI (headers, library, mpicc, mpirun): make MPI=1, the distributed tests
set -euo pipefail
pkgs="build-essential patch xz-utils ca-certificates libopenblas-dev python3 dpkg"
for extra in "$@"; do
    case "$extra" in
        opencv) pkgs="$pkgs libopencv-dev pkg-config" ;;
        gnuplot) pkgs="$pkgs gnuplot-nox" ;;
        fuzz) pkgs="$pkgs clang libclang-rt-dev" ;;
        valgrind) pkgs="$pkgs valgrind" ;;
        mpi) pkgs="$pkgs libopenmpi-dev openmpi-bin" ;;
        *) echo "setup.sh: unknown extra '$extra' (known: opencv gnuplot fuzz valgrind mpi)" >&2; exit 2 ;;
    esac
done
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
    echo "setup.sh: all needed Debian packages are installed"
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
else
    echo "setup.sh: missing Debian packages:$missing"
    echo "run:  sudo apt-get update && sudo apt-get install -y --no-install-recommends$missing"
    exit 1
fi
