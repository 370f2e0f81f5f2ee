#!/usr/bin/env python3
"""Make a small object-detection data set from the demo's handwritten digits.

Usage, from the repository root (python3 standard library only):

    python3 tools/digits_detect.py [--digits DIR] [--out DIR] [--backup DIR]
        [--train N] [--test N] [--canvas WxH] [--sizes MIN-MAX] [--max-digits N]
        [--seed S] [--net WxH] [--anchors K]

Defaults: --digits build/data/digits (tools/digits_prepare.py's output), --out
build/data/digits-detect, --backup build/backup/digits-detect, --train 4000, --test
500, --canvas 64x64, --sizes 14-40, --max-digits 4, --seed 1, --net: the canvas size,
--anchors 6.

Each canvas is a gray background (one level per canvas, 0..80) holding 1 to
--max-digits of the 20x20 digits, each scaled (bilinear) to a random square of
--sizes pixels and drawn at a random position inside the canvas, brightness 160..255;
digits are combined by taking the brighter pixel.  A digit whose ink box would share
more than 15% of the smaller box's area with a box already placed is moved, up to 50
tries, and then left out: no digit is hidden behind another.  Train
canvases draw only from the training digits of --digits (train.list), test canvases
only from its test digits (test.list); each list is used in a shuffled cycle, so every
digit appears before any appears twice.  Train and test have their own random
streams (seeded from --seed and the split's name): --train does not change the test
set.

The box of a digit is tight around its ink: the smallest pixel rectangle holding
every pixel where the scaled digit is at least 64 of 255 (a quarter of full ink; the
scans' faint antialiasing fringe stays outside).

Output (OUT = --out; the lists hold paths as seen from the current directory, so
Darknet must run from the same directory):
    OUT/images/{train,test}/<split>NNNNN.png  8-bit gray PNG canvases (stb_image loads
                                         them in Darknet without OpenCV)
    OUT/labels/{train,test}/<split>NNNNN.txt  Darknet labels, `class cx cy w h`
                                         normalized (fill_truth_detection's path rule:
                                         images -> labels, .png -> .txt; checked)
    OUT/train.txt, OUT/test.txt          image lists
    OUT/digits-detect.names              zero .. nine
    OUT/digits-detect.data               classes, train, valid, names, backup, results
    OUT/results/                         where `darknet detector valid` writes
    OUT/sources.tsv                      one line per digit drawn: image, class,
                                         source digit (its path in --digits' lists),
                                         cell size, x, y, brightness, background
    OUT/anchors.txt                      `anchors = w,h, ...` for a YOLOv3-tiny cfg
                                         (6 anchors, smallest first: mask=0,1,2 for the
                                         fine layer, 3,4,5 for the coarse one), in
                                         pixels of the --net input size, and their
                                         mean IoU with the training boxes

Anchors: k-means on the training boxes' (w, h) with distance 1 - IoU (boxes compared
as if centered on each other, YOLOv2's choice), each centroid the mean of its boxes;
10 starts from --seed, the best mean IoU kept; sorted by area.

Same arguments, same bytes: the generator uses only seeded generators and integer
pixel arithmetic (zlib's output is deterministic for one zlib build).
"""

import argparse
import os
import random
import shutil
import struct
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kfac_map import label_path  # noqa: E402  (Darknet's image -> label path rule)

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
CELL = 20               # the source digits are CELL x CELL
INK = 64                # scaled digit value from which a pixel counts as ink (of 255)
BACKGROUND = (0, 80)    # canvas gray level range
BRIGHTNESS = (160, 255) # ink level range of a digit at full ink
MAX_OVERLAP = 0.15      # largest intersection over the smaller box's area
TRIES = 50              # placements tried per digit
KMEANS_STARTS = 10


def die(msg):
    sys.stderr.write("digits_detect: error: %s\n" % msg)
    sys.exit(1)


def log(msg):
    print("digits_detect: %s" % msg, flush=True)


def list_path(path):
    """Path as written into the lists: relative to the current directory when inside it."""
    rel = os.path.relpath(path)
    return os.path.abspath(path) if rel.startswith("..") else rel


# ---------------------------------------------------------------- images ---------------

def read_pgm(path):
    """(w, h, pixels) of a binary 8-bit PGM (P5) as digits_prepare.py writes them."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        die("cannot read %s: %s" % (path, e.strerror))
    parts = data.split(None, 4)
    if len(parts) < 5 or parts[0] != b"P5" or parts[3] != b"255":
        die("%s: not an 8-bit binary PGM" % path)
    w, h = int(parts[1]), int(parts[2])
    pixels = parts[4]
    if len(pixels) != w * h:
        die("%s: %d bytes of pixels, expected %d" % (path, len(pixels), w * h))
    return w, h, pixels


def png_gray8(w, h, pixels):
    """An 8-bit grayscale PNG (color type 0, filter 0 on every row) as bytes."""
    def chunk(ctype, body):
        return (struct.pack(">I", len(body)) + ctype + body
                + struct.pack(">I", zlib.crc32(ctype + body) & 0xffffffff))
    raw = b"".join(b"\x00" + bytes(pixels[y * w:(y + 1) * w]) for y in range(h))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def scale_digit(cell, s):
    """The CELL x CELL digit resampled to s x s (bilinear, pixel centers aligned) as a
    list of ints 0..255."""
    out = [0] * (s * s)
    # Source coordinate of each output pixel center, in 1/s units of a source pixel,
    # kept in integers so that the result is the same everywhere: u = ((2x+1)*CELL - s) / (2s).
    for y in range(s):
        vy = (2 * y + 1) * CELL - s
        y0 = max(0, min(CELL - 1, vy // (2 * s)))
        fy = min(max(vy - y0 * 2 * s, 0), 2 * s)  # weight of row y0+1, in 1/(2s)
        y1 = min(y0 + 1, CELL - 1)
        for x in range(s):
            vx = (2 * x + 1) * CELL - s
            x0 = max(0, min(CELL - 1, vx // (2 * s)))
            fx = min(max(vx - x0 * 2 * s, 0), 2 * s)
            x1 = min(x0 + 1, CELL - 1)
            top = cell[y0 * CELL + x0] * (2 * s - fx) + cell[y0 * CELL + x1] * fx
            bot = cell[y1 * CELL + x0] * (2 * s - fx) + cell[y1 * CELL + x1] * fx
            d = 4 * s * s
            out[y * s + x] = (top * (2 * s - fy) + bot * fy + d // 2) // d
    return out


def ink_box(digit, s):
    """(x1, y1, x2, y2) of the ink in an s x s digit, x2/y2 exclusive; None if no ink."""
    xs = [i % s for i, v in enumerate(digit) if v >= INK]
    ys = [i // s for i, v in enumerate(digit) if v >= INK]
    if not xs:
        return None
    return min(xs), min(ys), max(xs) + 1, max(ys) + 1


def overlap(a, b):
    """Intersection of boxes a and b over the smaller one's area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / small


# ---------------------------------------------------------------- generation -----------

class Pool:
    """The digits of one split, drawn in shuffled cycles from a seeded generator."""

    def __init__(self, items, rng):
        self.items = items  # [(class, source path, pixels)]
        self.rng = rng
        self.order = []

    def draw(self):
        if not self.order:
            self.order = list(range(len(self.items)))
            self.rng.shuffle(self.order)
        return self.items[self.order.pop()]


def make_canvas(rng, pool, w, h, smin, smax, max_digits):
    """One canvas: (pixels, objects); objects are (class, box, source, s, x, y, level)."""
    background = rng.randint(*BACKGROUND)
    pixels = bytearray([background]) * (w * h)
    boxes, objects = [], []
    for _ in range(rng.randint(1, max_digits)):
        k, source, cell = pool.draw()
        s = rng.randint(smin, smax)
        level = rng.randint(*BRIGHTNESS)
        digit = scale_digit(cell, s)
        ink = ink_box(digit, s)
        if ink is None:
            continue
        for _ in range(TRIES):
            x, y = rng.randint(0, w - s), rng.randint(0, h - s)
            box = (x + ink[0], y + ink[1], x + ink[2], y + ink[3])
            if all(overlap(box, b) <= MAX_OVERLAP for b in boxes):
                break
        else:
            continue
        for dy in range(s):
            row = (y + dy) * w + x
            for dx in range(s):
                v = background + (level - background) * digit[dy * s + dx] // 255
                if v > pixels[row + dx]:
                    pixels[row + dx] = v
        boxes.append(box)
        objects.append((k, box, source, s, x, y, level))
    return pixels, objects, background


def read_digits(folder, split):
    """[(class, path, pixels)] of --digits' split list (train or test)."""
    lst = os.path.join(folder, split + ".list")
    labels_txt = os.path.join(folder, "labels.txt")
    for p in (lst, labels_txt):
        if not os.path.isfile(p):
            die("%s missing: make the digits first with python3 tools/digits_prepare.py "
                "(or point --digits at its output)" % p)
    with open(labels_txt) as f:
        labels = f.read().split()
    if len(labels) != len(NAMES):
        die("%s: %d labels, expected %d" % (labels_txt, len(labels), len(NAMES)))
    with open(lst) as f:
        paths = f.read().split()
    items = []
    for p in paths:
        base = os.path.basename(p)
        found = [k for k, lab in enumerate(labels) if lab in base]
        if len(found) != 1:
            die("%s (in %s): its name holds %d of the labels %s, expected one"
                % (p, lst, len(found), labels))
        w, h, pixels = read_pgm(p)
        if (w, h) != (CELL, CELL):
            die("%s is %dx%d, expected %dx%d" % (p, w, h, CELL, CELL))
        items.append((found[0], p, pixels))
    if not items:
        die("%s is empty" % lst)
    return items


def write_split(args, split, count, digits, w, h, smin, smax):
    """Write one split's canvases and labels; return (list lines, sources lines, boxes)."""
    rng = random.Random("%d:%s" % (args.seed, split))
    pool = Pool(digits, random.Random("%d:%s:pool" % (args.seed, split)))
    img_dir = os.path.join(args.out, "images", split)
    lab_dir = os.path.join(args.out, "labels", split)
    for d in (img_dir, lab_dir):
        if os.path.isdir(d):
            shutil.rmtree(d)  # a canvas left from a larger run would linger unlisted
        os.makedirs(d)
    lines, sources, sizes = [], [], []
    for n in range(count):
        if n and n % 500 == 0:
            log("%s: %d of %d canvases" % (split, n, count))
        pixels, objects, background = make_canvas(rng, pool, w, h, smin, smax,
                                                  args.max_digits)
        name = "%s%05d" % (split, n)
        img = os.path.join(img_dir, name + ".png")
        lab = os.path.join(lab_dir, name + ".txt")
        listed = list_path(img)
        if label_path(listed) != list_path(lab):
            die("Darknet would read the labels of %s from %s, not %s: choose an --out "
                "without 'images', 'JPEGImages', 'raw' or '.png' in it"
                % (listed, label_path(listed), list_path(lab)))
        with open(img, "wb") as f:
            f.write(png_gray8(w, h, pixels))
        with open(lab, "w") as f:
            for k, (x1, y1, x2, y2), *_ in objects:
                f.write("%d %.7f %.7f %.7f %.7f\n" % (k, (x1 + x2) / 2 / w, (y1 + y2) / 2 / h,
                                                     (x2 - x1) / w, (y2 - y1) / h))
        for k, box, source, s, x, y, level in objects:
            sources.append("%s\t%d\t%s\t%d\t%d\t%d\t%d\t%d"
                           % (name, k, source, s, x, y, level, background))
            sizes.append((box[2] - box[0], box[3] - box[1]))
        lines.append(listed)
    log("%s: %d canvases, %d digits in %s" % (split, count, len(sources), img_dir))
    return lines, sources, sizes


# ---------------------------------------------------------------- anchors --------------

def wh_iou(a, b):
    """IoU of two (w, h) boxes sharing their center."""
    inter = min(a[0], b[0]) * min(a[1], b[1])
    return inter / (a[0] * a[1] + b[0] * b[1] - inter)


def kmeans_anchors(sizes, k, seed):
    """k (w, h) centroids of sizes under the 1 - IoU distance, sorted by area, and their
    mean IoU with the boxes (each box with its best centroid)."""
    counts = {}
    for wh in sizes:
        counts[wh] = counts.get(wh, 0) + 1
    uniq = sorted(counts)  # boxes have whole-pixel sizes: few distinct ones, weighted
    if len(uniq) < k:
        die("only %d distinct training box sizes for %d anchors" % (len(uniq), k))
    rng = random.Random("%d:anchors" % seed)
    total = len(sizes)
    best = None
    for _ in range(KMEANS_STARTS):
        cents = [tuple(map(float, wh)) for wh in rng.sample(uniq, k)]
        assign = None
        for _ in range(1000):
            new = [max(range(k), key=lambda j: wh_iou(wh, cents[j])) for wh in uniq]
            if new == assign:
                break
            assign = new
            for j in range(k):
                members = [(wh, counts[wh]) for wh, a in zip(uniq, assign) if a == j]
                n = sum(c for _, c in members)
                if n:  # an empty cluster keeps its centroid
                    cents[j] = (sum(wh[0] * c for wh, c in members) / n,
                                sum(wh[1] * c for wh, c in members) / n)
        score = sum(max(wh_iou(wh, c) for c in cents) * counts[wh] for wh in uniq) / total
        if best is None or score > best[0]:
            best = (score, cents)
    return sorted(best[1], key=lambda c: (c[0] * c[1], c[0])), best[0]


# ---------------------------------------------------------------- main -----------------

def parse_pair(text, sep, what):
    try:
        a, b = (int(v) for v in text.lower().split(sep))
    except ValueError:
        die("%s %r: expected two integers separated by '%s'" % (what, text, sep))
    return a, b


def main():
    ap = argparse.ArgumentParser(description="Detection canvases from the demo's digits "
                                 "(see the module docstring).")
    ap.add_argument("--digits", default=os.path.join("build", "data", "digits"),
                    help="digits_prepare.py's output (default build/data/digits)")
    ap.add_argument("--out", default=os.path.join("build", "data", "digits-detect"),
                    help="output folder (default build/data/digits-detect)")
    ap.add_argument("--backup", default=os.path.join("build", "backup", "digits-detect"),
                    help="Darknet's backup folder (default build/backup/digits-detect)")
    ap.add_argument("--train", type=int, default=4000, help="train canvases (default 4000)")
    ap.add_argument("--test", type=int, default=500, help="test canvases (default 500)")
    ap.add_argument("--canvas", default="64x64", help="canvas WxH (default 64x64)")
    ap.add_argument("--sizes", default="14-40",
                    help="digit cell size range in pixels, MIN-MAX (default 14-40)")
    ap.add_argument("--max-digits", type=int, default=4, help="digits per canvas, at most "
                    "(default 4; at least 1)")
    ap.add_argument("--seed", type=int, default=1, help="seed (default 1)")
    ap.add_argument("--net", help="network input WxH the anchors are for (default: the "
                    "canvas size)")
    ap.add_argument("--anchors", type=int, default=6, help="number of anchors (default 6)")
    args = ap.parse_args()

    w, h = parse_pair(args.canvas, "x", "--canvas")
    smin, smax = parse_pair(args.sizes, "-", "--sizes")
    netw, neth = parse_pair(args.net, "x", "--net") if args.net else (w, h)
    if not 0 < smin <= smax <= min(w, h):
        die("--sizes %d-%d must satisfy 0 < MIN <= MAX <= the canvas's side %d"
            % (smin, smax, min(w, h)))
    if args.train < 1 or args.test < 1 or args.max_digits < 1 or args.anchors < 1:
        die("--train, --test, --max-digits and --anchors must be >= 1")
    if netw < 1 or neth < 1:
        die("--net must be positive")
    # Darknet's detector uses the names only for result files and drawing, but its
    # classifier finds labels by substring search over paths: keep both uses safe.
    for a in NAMES:
        for b in NAMES:
            if a != b and a in b:
                die("class name %s is a substring of %s" % (a, b))
    clash = [n for n in NAMES if n in list_path(args.out)]
    if clash:
        die("output folder %s contains the class name(s) %s; choose another --out"
            % (args.out, ", ".join(clash)))

    splits = {}
    for split, count in (("train", args.train), ("test", args.test)):
        digits = read_digits(args.digits, split)
        log("%s: %d source digits from %s" % (split, len(digits), args.digits))
        splits[split] = write_split(args, split, count, digits, w, h, smin, smax)

    os.makedirs(os.path.join(args.out, "results"), exist_ok=True)
    os.makedirs(args.backup, exist_ok=True)
    for split in ("train", "test"):
        with open(os.path.join(args.out, split + ".txt"), "w") as f:
            f.write("".join(p + "\n" for p in splits[split][0]))
    with open(os.path.join(args.out, "sources.tsv"), "w") as f:
        f.write("image\tclass\tsource\tsize\tx\ty\tbrightness\tbackground\n")
        for split in ("train", "test"):
            f.write("".join(l + "\n" for l in splits[split][1]))
    names = os.path.join(args.out, "digits-detect.names")
    with open(names, "w") as f:
        f.write("".join(n + "\n" for n in NAMES))
    data = os.path.join(args.out, "digits-detect.data")
    with open(data, "w") as f:
        f.write("classes=%d\ntrain=%s\nvalid=%s\nnames=%s\nbackup=%s\nresults=%s\n"
                % (len(NAMES), list_path(os.path.join(args.out, "train.txt")),
                   list_path(os.path.join(args.out, "test.txt")), list_path(names),
                   list_path(args.backup), list_path(os.path.join(args.out, "results"))))

    anchors, mean_iou = kmeans_anchors(splits["train"][2], args.anchors, args.seed)
    scaled = ["%.1f,%.1f" % (aw * netw / w, ah * neth / h) for aw, ah in anchors]
    line = "anchors = %s" % ", ".join(scaled)
    with open(os.path.join(args.out, "anchors.txt"), "w") as f:
        f.write("# k-means (1 - IoU) on %d training boxes, seed %d; pixels of a %dx%d "
                "network input; mean IoU %.4f\n%s\n"
                % (len(splits["train"][2]), args.seed, netw, neth, mean_iou, line))
    log("%s (mean IoU with the training boxes %.4f)" % (line, mean_iou))
    log("wrote %s" % data)


if __name__ == "__main__":
    main()
