#!/usr/bin/env bash
# Fetch the pinned Debian source package of Darknet and unpack it with Debian's own
# patch series applied.  Usage: tools/fetch_darknet.sh CACHE_DIR OUT_DIR
#
# The package is fetched with apt's ordinary client through a private deb-src list
# derived from this machine's own Debian sources, so nothing system-wide changes and
# no root is needed.  A cache that already holds the files (as carried to a machine
# with no package archive) is used as it is, after the checksum test.
set -euo pipefail

VERSION="0.0.0+git20180914.61c9d02e-2"
ORIG="darknet_0.0.0+git20180914.61c9d02e.orig.tar.xz"
DEBIAN_TAR="darknet_${VERSION}.debian.tar.xz"
# sha256 of upstream pjreddie/darknet 61c9d02e as packed by Debian
ORIG_SHA256="ec536ae11853846aab96183d8ec18730a46cce71f7d935768d235029329f9e93"

cache=${1:?usage: fetch_darknet.sh CACHE_DIR OUT_DIR}
out=${2:?usage: fetch_darknet.sh CACHE_DIR OUT_DIR}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

if [ ! -f "$cache/$ORIG" ] || [ ! -f "$cache/$DEBIAN_TAR" ]; then
    echo "fetch_darknet: getting Debian source package darknet=$VERSION with apt-get"
    apt_dir="$cache/apt"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/sources.list.d"
    : > "$apt_dir/sources.list"
    rm -f "$apt_dir/sources.list.d/"*
    # deb822 files: every 'Types: deb' stanza becomes deb-src; one-line files likewise.
    found=0
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        sed -E 's/^Types:[[:space:]]*deb[[:space:]]*$/Types: deb-src/' "$f" > "$apt_dir/sources.list.d/$(basename "$f")"
        found=1
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        grep -E '^[[:space:]]*deb[[:space:]]' "$f" | sed -E 's/^[[:space:]]*deb[[:space:]]/deb-src /' >> "$apt_dir/sources.list" || true
        found=1
    done
    if [ "$found" = 0 ]; then
        echo "fetch_darknet: no Debian apt sources found under /etc/apt; set DARKNET_SRC=<a checkout of pjreddie/darknet 61c9d02e> instead" >&2
        exit 1
    fi
    apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list"
              -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
              -o "Dir::State::Lists=$apt_dir/lists"
              -o "APT::Sandbox::User=root" -q)
    apt-get "${apt_opts[@]}" update >/dev/null
    (cd "$cache" && apt-get "${apt_opts[@]}" source --download-only "darknet=$VERSION")
fi

got=$(sha256sum "$cache/$ORIG" | cut -d' ' -f1)
if [ "$got" != "$ORIG_SHA256" ]; then
    echo "fetch_darknet: $cache/$ORIG has sha256 $got, expected $ORIG_SHA256; delete it and run again" >&2
    exit 1
fi

rm -rf "$out.tmp"
mkdir -p "$out.tmp"
tar -xJf "$cache/$ORIG" -C "$out.tmp" --strip-components=1
tar -xJf "$cache/$DEBIAN_TAR" -C "$out.tmp"
# Debian's own patch series, in Debian's order, exactly as dpkg-source applies it.
while read -r p; do
    case "$p" in ''|'#'*) continue ;; esac
    patch -s -p1 -d "$out.tmp" < "$out.tmp/debian/patches/$p"
done < "$out.tmp/debian/patches/series"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "fetch_darknet: Darknet $VERSION unpacked with Debian's patches in $out"
