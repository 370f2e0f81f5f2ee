#!/usr/bin/env bash
# test_layout.sh <darknet build folder>: Darknet's and darknet-kfac's functions start on
# 64-byte boundaries (the Makefile's DK_ALIGN, -falign-functions=64).
#
# Without it, an edit anywhere in the library moved Darknet's gemm loops by 16 bytes
# and made SGD 16% slower on the demo CNN (BENCHMARKS.md, "Darknet's speed moved with
# the binary's layout"), so that benchmarks across commits measured the link.  The
# check reads the addresses of the hot functions from the darknet binary's symbol
# table: with functions aligned to only 16 bytes, all of them would sit on a 64-byte
# boundary by chance about once in 4^12.
set -u
DK=${1:?usage: tests/test_layout.sh <darknet build folder>}
BIN=$DK/darknet
if [ ! -x "$BIN" ]; then
    echo "FAIL layout: $BIN not found"
    exit 1
fi
# Darknet's products, im2col and the layers K-FAC's passes spend their time in, and
# two of K-FAC's own
FUNCS="gemm_nn gemm_nt gemm_tn gemm_tt gemm_cpu im2col_cpu col2im_cpu forward_convolutional_layer
backward_convolutional_layer forward_connected_layer kfac_network_precondition kfac_layer_backward"
syms=$(nm "$BIN" 2>/dev/null)
for f in $FUNCS; do
    addr=$(printf '%s\n' "$syms" | awk -v f="$f" '$3 == f && ($2 == "T" || $2 == "t") { print $1; exit }')
    if [ -z "$addr" ]; then
        echo "FAIL layout_$f: no symbol $f in $BIN"
        continue
    fi
    if [ $(( 16#$addr % 64 )) -eq 0 ]; then
        echo "ok layout_$f"
    else
        echo "FAIL layout_$f: at 0x$addr, $(( 16#$addr % 64 )) bytes past a 64-byte boundary (built without -falign-functions=64?)"
    fi
done
