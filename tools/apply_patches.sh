#!/usr/bin/env bash
# Copy a pristine Darknet tree and apply patches/series to the copy.
# Usage: tools/apply_patches.sh PRISTINE_DIR OUT_DIR PATCH_DIR
# Every patch is dry-run first, so a hunk that does not fit a user's fork is named
# before anything changes.
set -euo pipefail
src=${1:?}; out=${2:?}; pdir=${3:?}
pdir=$(cd "$pdir" && pwd)
if [ ! -f "$src/src/network.c" ] || [ ! -f "$src/include/darknet.h" ]; then
    echo "apply_patches: $src does not look like a Darknet tree (no src/network.c, include/darknet.h)" >&2
    exit 1
fi
rm -rf "$out"
mkdir -p "$out"
# a user's checkout may hold build outputs: leave them behind
tar -C "$src" --exclude=.git --exclude='./obj' --exclude='*.o' --exclude='*.a' --exclude='*.so' -cf - . | tar -C "$out" -xf -
rm -f "$out/darknet"
while read -r p; do
    case "$p" in ''|'#'*) continue ;; esac
    if ! log=$(patch --dry-run -p1 -d "$out" -F 0 < "$pdir/$p" 2>&1); then
        echo "apply_patches: patches/$p does not apply to $src:" >&2
        echo "$log" | grep -E 'checking file|FAILED|can.t find|No file|malformed' >&2 || echo "$log" >&2
        echo "apply_patches: Darknet must be pjreddie 61c9d02e (with or without Debian's patches); rebase this patch onto your fork by hand" >&2
        rm -rf "$out"
        exit 1
    fi
    patch -s -p1 -d "$out" -F 0 --no-backup-if-mismatch < "$pdir/$p"
    echo "apply_patches: applied $p"
done < "$pdir/series"
touch "$out/.patched"
