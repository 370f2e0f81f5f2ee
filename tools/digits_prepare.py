#!/usr/bin/env python3
"""Prepare the digits data set for the darknet-kfac demo (python3 standard library only).

Usage, from the repository root:

    python3 tools/digits_prepare.py [--cache DIR] [--out DIR] [--backup DIR]

Defaults: --cache build/cache, --out build/data/digits, --backup build/backup/digits.

The source is OpenCV's sample image digits.png (2000x1000 pixels, 8-bit gray): 50 rows
x 100 columns of 20x20 handwritten digits, rows 0-4 are digit 0, rows 5-9 digit 1, and
so on, 500 per class. It ships in Debian's opencv-doc package, fetched with apt's
ordinary client (`apt-get download`, no root needed); only digits.png is extracted.

Output (OUT = --out):
    OUT/train/NNNNN_<label>.pgm  4000 images, 400 per class (binary PGM, P5, 20x20)
    OUT/test/NNNNN_<label>.pgm   1000 images, 100 per class
    OUT/labels.txt               one label per line, in class order
    OUT/train.list, test.list    image paths as seen from the current directory
    OUT/digits.data              Darknet's data file (classes, train, valid, labels,
                                 backup, top)
    OUT/stamp                    what was made from what; a rerun that finds it
                                 (and every file) does nothing

Darknet finds an image's label by substring search over its whole path (fill_truth in
src/data.c), so labels are dg0x..dg9x: none is a substring of another, and every path
written is checked to contain exactly its own label and no other.

The split is fixed: random.Random(1234) shuffles each class and takes 400 for
training and 100 for testing; the training list is then shuffled with the same
generator. Darknet must be run from the same directory as this script was, since the
lists hold relative paths.
"""

import argparse
import glob
import hashlib
import os
import random
import shutil
import struct
import subprocess
import sys
import zlib

# sha256 of usr/share/doc/opencv-doc/examples/data/digits.png from Debian bookworm's
# opencv-doc 4.6.0+dfsg-12 (computed once with sha256sum when this script was written).
# The image has not changed across OpenCV releases; if another release ships a
# different file, the check below stops rather than silently training on other data.
DIGITS_SHA256 = "60c917758ef97cc090f35cd8e293e4de691ef942847da0ff80dedab33d57c662"
DIGITS_MEMBER = "./usr/share/doc/opencv-doc/examples/data/digits.png"

IMAGE_W, IMAGE_H = 2000, 1000  # digits.png, pixels
CELL = 20                       # one digit is CELL x CELL pixels
ROWS_PER_CLASS = 5              # 5 rows of 100 digits = 500 per class
CLASSES = 10
TRAIN_PER_CLASS = 400
TEST_PER_CLASS = 100
SEED = 1234
LABELS = ["dg%dx" % k for k in range(CLASSES)]

# Bump when the output layout changes, so that an old output is rebuilt.
LAYOUT_VERSION = 1


def die(msg):
    """Print msg as an error and exit with status 1."""
    sys.stderr.write("digits_prepare: error: %s\n" % msg)
    sys.exit(1)


def log(msg):
    print("digits_prepare: %s" % msg, flush=True)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- fetching -------------

def fetch_deb(cache):
    """Return the path of opencv-doc*.deb in cache, downloading it with apt-get if absent."""
    debs = sorted(glob.glob(os.path.join(cache, "opencv-doc*.deb")))
    if debs:
        return debs[-1]
    log("downloading opencv-doc with apt-get into %s (about 96 MB)" % cache)
    cmd = ["apt-get", "download", "opencv-doc"]
    try:
        res = subprocess.run(cmd, cwd=cache)
        ok = res.returncode == 0
    except OSError as e:
        log("could not run apt-get: %s" % e)
        ok = False
    debs = sorted(glob.glob(os.path.join(cache, "opencv-doc*.deb")))
    if not ok or not debs:
        die("'apt-get download opencv-doc' failed. Fetch the package yourself and rerun:\n"
            "    (cd %s && apt-get download opencv-doc)\n"
            "or put any opencv-doc_*.deb (it holds %s) into %s."
            % (cache, DIGITS_MEMBER, cache))
    return debs[-1]


def extract_digits_png(deb, cache):
    """Extract digits.png from deb under cache/opencv-doc and return its path."""
    root = os.path.join(cache, "opencv-doc")
    png = os.path.join(root, DIGITS_MEMBER)
    png = os.path.normpath(png)
    if os.path.exists(png):
        return png
    os.makedirs(root, exist_ok=True)
    log("extracting digits.png from %s" % os.path.basename(deb))
    # Only the one member is taken (dpkg -x would unpack all ~200 MB of documentation).
    deb_cmd = ["dpkg-deb", "--fsys-tarfile", deb]
    tar_cmd = ["tar", "-x", "-C", root, DIGITS_MEMBER]
    try:
        p1 = subprocess.Popen(deb_cmd, stdout=subprocess.PIPE)
        p2 = subprocess.run(tar_cmd, stdin=p1.stdout)
        p1.stdout.close()
        rc1 = p1.wait()
    except OSError as e:
        die("could not run dpkg-deb/tar: %s" % e)
    if rc1 != 0 or p2.returncode != 0 or not os.path.exists(png):
        die("could not extract %s from %s (%s | %s failed)"
            % (DIGITS_MEMBER, deb, " ".join(deb_cmd), " ".join(tar_cmd)))
    return png


# ---------------------------------------------------------------- PNG decoding ---------

def png_read_gray8(path):
    """Decode an 8-bit grayscale, non-interlaced PNG.

    Returns (width, height, pixels) with pixels a bytearray of height*width bytes, row
    major. Anything else (other color types, bit depths, interlacing, bad CRCs) stops
    with a message naming the file and the reason.
    """
    with open(path, "rb") as f:
        buf = f.read()
    if buf[:8] != b"\x89PNG\r\n\x1a\n":
        die("%s: not a PNG file" % path)
    pos = 8
    header = None
    idat = []
    while True:
        if pos + 8 > len(buf):
            die("%s: truncated PNG (no IEND chunk)" % path)
        length, ctype = struct.unpack(">I4s", buf[pos:pos + 8])
        body = buf[pos + 8:pos + 8 + length]
        if len(body) != length or pos + 12 + length > len(buf):
            die("%s: truncated %r chunk" % (path, ctype))
        (crc,) = struct.unpack(">I", buf[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(ctype + body) & 0xffffffff != crc:
            die("%s: CRC mismatch in %r chunk" % (path, ctype))
        pos += 12 + length
        if ctype == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif ctype == b"IDAT":
            idat.append(body)
        elif ctype == b"IEND":
            break
    if header is None:
        die("%s: no IHDR chunk" % path)
    width, height, depth, color, compression, pfilter, interlace = header
    if depth != 8 or color != 0:
        die("%s: bit depth %d, color type %d: only 8-bit grayscale (color type 0) "
            "is supported" % (path, depth, color))
    if compression != 0 or pfilter != 0:
        die("%s: unknown compression %d or filter method %d" % (path, compression, pfilter))
    if interlace != 0:
        die("%s: interlaced PNGs are not supported" % path)
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        die("%s: bad zlib stream: %s" % (path, e))
    stride = width  # bytes per row: 1 byte per pixel
    if len(raw) != height * (stride + 1):
        die("%s: image data is %d bytes, expected %d"
            % (path, len(raw), height * (stride + 1)))
    out = bytearray(height * stride)
    prev = bytearray(stride)  # the row above the first row is all zeros
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        png_unfilter(line, prev, ftype, path, y)
        out[y * stride:(y + 1) * stride] = line
        prev = line
    return width, height, out


def png_unfilter(line, prev, ftype, path, y):
    """Undo one row's PNG filter in place (PNG spec section 9; 1 byte per pixel)."""
    n = len(line)
    if ftype == 0:  # None
        return
    if ftype == 1:  # Sub: x + a
        for i in range(1, n):
            line[i] = (line[i] + line[i - 1]) & 0xff
    elif ftype == 2:  # Up: x + b
        for i in range(n):
            line[i] = (line[i] + prev[i]) & 0xff
    elif ftype == 3:  # Average: x + floor((a + b) / 2)
        line[0] = (line[0] + (prev[0] >> 1)) & 0xff
        for i in range(1, n):
            line[i] = (line[i] + ((line[i - 1] + prev[i]) >> 1)) & 0xff
    elif ftype == 4:  # Paeth
        line[0] = (line[0] + prev[0]) & 0xff  # a = c = 0: the predictor is b
        for i in range(1, n):
            a, b, c = line[i - 1], prev[i], prev[i - 1]
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            if pa <= pb and pa <= pc:
                pred = a
            elif pb <= pc:
                pred = b
            else:
                pred = c
            line[i] = (line[i] + pred) & 0xff
    else:
        die("%s: row %d has unknown PNG filter type %d" % (path, y, ftype))


# ---------------------------------------------------------------- output ---------------

def write_pgm(path, w, h, pixels):
    with open(path, "wb") as f:
        f.write(b"P5\n%d %d\n255\n" % (w, h))
        f.write(pixels)


def cut_cell(pixels, width, row, col):
    """Return the CELL x CELL digit at grid position (row, col) as bytes."""
    out = bytearray()
    for y in range(row * CELL, (row + 1) * CELL):
        start = y * width + col * CELL
        out += pixels[start:start + CELL]
    return bytes(out)


def split_indices():
    """Return (train, test): lists of (class, index within class), fixed by SEED."""
    rng = random.Random(SEED)
    train, test = [], []
    for k in range(CLASSES):
        idx = list(range(ROWS_PER_CLASS * IMAGE_W // CELL))
        rng.shuffle(idx)
        train += [(k, i) for i in idx[:TRAIN_PER_CLASS]]
        test += [(k, i) for i in idx[TRAIN_PER_CLASS:TRAIN_PER_CLASS + TEST_PER_CLASS]]
    rng.shuffle(train)
    return train, test


def check_labels(paths_by_class):
    """Stop unless every path contains its own label and no other (Darknet's rule)."""
    for k, paths in enumerate(paths_by_class):
        for p in paths:
            found = [lab for lab in LABELS if lab in p]
            if found != [LABELS[k]]:
                die("path %s matches labels %s under Darknet's substring search "
                    "(expected only %s): choose an output folder whose name does not "
                    "contain dg0x..dg9x" % (p, found, LABELS[k]))


def stamp_text(sha):
    return "digits.png sha256 %s\nlayout %d\nseed %d\n" % (sha, LAYOUT_VERSION, SEED)


def up_to_date(out, stamp):
    """True when out holds a stamp equal to stamp, both lists, and every file they name."""
    try:
        with open(os.path.join(out, "stamp")) as f:
            if f.read() != stamp:
                return False
        for name in ("labels.txt", "digits.data"):
            if not os.path.exists(os.path.join(out, name)):
                return False
        for name, count in (("train", CLASSES * TRAIN_PER_CLASS),
                            ("test", CLASSES * TEST_PER_CLASS)):
            with open(os.path.join(out, name + ".list")) as f:
                paths = f.read().split()
            if len(paths) != count or not all(os.path.isfile(p) for p in paths):
                return False
    except OSError:
        return False
    return True


def list_path(path):
    """Path as written into the lists: relative to the current directory when inside it."""
    rel = os.path.relpath(path)
    return os.path.abspath(path) if rel.startswith("..") else rel


def main():
    ap = argparse.ArgumentParser(description="Prepare OpenCV's digits for the darknet-kfac demo.")
    ap.add_argument("--cache", default=os.path.join("build", "cache"),
                    help="download folder (default build/cache)")
    ap.add_argument("--out", default=os.path.join("build", "data", "digits"),
                    help="output folder (default build/data/digits)")
    ap.add_argument("--backup", default=os.path.join("build", "backup", "digits"),
                    help="Darknet's backup folder written into digits.data "
                         "(default build/backup/digits)")
    args = ap.parse_args()

    os.makedirs(args.cache, exist_ok=True)
    deb = fetch_deb(args.cache)
    png = extract_digits_png(deb, args.cache)
    sha = sha256_file(png)
    if sha != DIGITS_SHA256:
        die("%s has sha256 %s, expected %s: not the digits.png this demo was made "
            "for (remove %s and %s to fetch it again)"
            % (png, sha, DIGITS_SHA256, os.path.join(args.cache, "opencv-doc"), deb))

    stamp = stamp_text(sha)
    out = args.out
    clash = [lab for lab in LABELS if lab in list_path(out)]
    if clash:
        die("output folder %s contains the label name(s) %s: Darknet finds labels by "
            "substring search over the whole path, so choose another --out"
            % (out, ", ".join(clash)))
    if up_to_date(out, stamp):
        log("%s is up to date (stamp matches), nothing to do" % out)
        return

    log("decoding %s" % png)
    width, height, pixels = png_read_gray8(png)
    if (width, height) != (IMAGE_W, IMAGE_H):
        die("%s is %dx%d, expected %dx%d" % (png, width, height, IMAGE_W, IMAGE_H))

    train, test = split_indices()
    os.makedirs(args.backup, exist_ok=True)
    lists = {}
    for name, items in (("train", train), ("test", test)):
        folder = os.path.join(out, name)
        if os.path.isdir(folder):
            shutil.rmtree(folder)  # a stale image would not be in the list, but clean anyway
        os.makedirs(folder)
        paths_by_class = [[] for _ in range(CLASSES)]
        lines = []
        for n, (k, i) in enumerate(items):
            row = k * ROWS_PER_CLASS + i // (IMAGE_W // CELL)
            col = i % (IMAGE_W // CELL)
            path = os.path.join(folder, "%05d_%s.pgm" % (n, LABELS[k]))
            write_pgm(path, CELL, CELL, cut_cell(pixels, width, row, col))
            p = list_path(path)
            paths_by_class[k].append(p)
            lines.append(p)
        check_labels(paths_by_class)
        lists[name] = os.path.join(out, name + ".list")
        with open(lists[name], "w") as f:
            f.write("\n".join(lines) + "\n")
        log("wrote %d %s images into %s" % (len(items), name, folder))

    labels_txt = os.path.join(out, "labels.txt")
    with open(labels_txt, "w") as f:
        f.write("\n".join(LABELS) + "\n")
    data_file = os.path.join(out, "digits.data")
    with open(data_file, "w") as f:
        f.write("classes=%d\ntrain=%s\nvalid=%s\nlabels=%s\nbackup=%s\ntop=1\n"
                % (CLASSES, list_path(lists["train"]), list_path(lists["test"]),
                   list_path(labels_txt), list_path(args.backup)))
    with open(os.path.join(out, "stamp"), "w") as f:
        f.write(stamp)
    log("wrote %s" % data_file)


if __name__ == "__main__":
    main()
