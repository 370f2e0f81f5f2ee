#!/usr/bin/env bash
# Packs the part of OpenBLAS that darknet-kfac's CPU path uses into OUT_DIR, for a
# machine that has no Debian -dev packages (the lent GPU machine: tests/gpu/README.md).
#
#   tests/gpu/pack_openblas.sh [OUT_DIR]          default build/openblas
#
# Run it here, after `make` (it reads which BLAS/LAPACK symbols build/darknet-cpu's
# K-FAC objects call).  It writes
#
#   OUT_DIR/libopenblas.a     one relocatable object: the OpenBLAS members those
#                             symbols need (ld -r), with the static libgfortran and
#                             libquadmath they call, so nothing else is needed to link
#   OUT_DIR/cblas.h, openblas_config.h   the headers kfac_*.c include
#
# Debian's whole libopenblas.a is 58 MB; this is about 28 MB, under the device
# machine's carry limit.  Build there with `make GPU=1 OPENBLAS_LIB=$PWD/OUT_DIR/libopenblas.a`.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-build/openblas}

lib=${OPENBLAS_A:-}
if [ -z "$lib" ]; then
    for c in /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.a /usr/lib/x86_64-linux-gnu/libopenblas.a /usr/lib/libopenblas.a; do
        [ -f "$c" ] && { lib=$c; break; }
    done
fi
[ -n "$lib" ] || { echo "pack_openblas: no static libopenblas.a found (install libopenblas-dev, or set OPENBLAS_A=...)" >&2; exit 1; }
hdr=""
for c in /usr/include/x86_64-linux-gnu/cblas.h /usr/include/openblas/cblas.h /usr/include/cblas.h; do
    [ -f "$c" ] && { hdr=$(readlink -f "$c"); break; }
done
[ -n "$hdr" ] || { echo "pack_openblas: no cblas.h found (install libopenblas-dev)" >&2; exit 1; }
cfg=$(dirname "$hdr")/openblas_config.h
[ -f "$cfg" ] || { echo "pack_openblas: $cfg missing beside $hdr" >&2; exit 1; }
gfortran=$(gcc -print-file-name=libgfortran.a)
quadmath=$(gcc -print-file-name=libquadmath.a)
for f in "$gfortran" "$quadmath"; do
    [ -f "$f" ] || { echo "pack_openblas: $(basename "$f") not found by gcc (install gfortran's runtime: libgfortran-12-dev)" >&2; exit 1; }
done

objs=(build/darknet-cpu/obj/kfac_*.o)
[ -f "${objs[0]}" ] || { echo "pack_openblas: no build/darknet-cpu/obj/kfac_*.o: run make first" >&2; exit 1; }
# the symbols K-FAC calls that OpenBLAS defines
defined=$(nm --defined-only "$lib" 2>/dev/null | awk 'NF == 3 && $2 ~ /[TW]/ {print $3}' | sort -u)
wanted=$(nm -u "${objs[@]}" | awk 'NF == 2 {print $2}' | sort -u | comm -12 - <(echo "$defined"))
[ -n "$wanted" ] || { echo "pack_openblas: the K-FAC objects call nothing from $lib?" >&2; exit 1; }

mkdir -p "$out"
undef=()
for s in $wanted; do undef+=(-u "$s"); done
ld -r "${undef[@]}" -o "$out/openblas_kfac.o" "$lib" "$gfortran" "$quadmath"
rm -f "$out/libopenblas.a"
ar rcs "$out/libopenblas.a" "$out/openblas_kfac.o"
rm -f "$out/openblas_kfac.o"
cp "$hdr" "$out/cblas.h"
cp "$cfg" "$out/openblas_config.h"
echo "pack_openblas: $out/libopenblas.a ($(du -h "$out/libopenblas.a" | cut -f1)) for:" $wanted
