#!/usr/bin/env python3
"""Mean average precision of `darknet detector valid`'s results (standard library only).

Darknet 61c9d02e has no mAP command: `detector valid` only writes its detections.
This tool scores them against the ground truth Darknet trains with.

Usage, from the directory Darknet was run in (the lists hold relative paths):

    python3 tools/kfac_map.py [options] DATA

    DATA            the .data file given to `darknet detector valid`
    --results DIR   where the result files are (default: DATA's results=, else
                    "results", as in Darknet)
    --out NAME      result file prefix, as Darknet's -out (default comp4_det_test_)
    --valid LIST    image list (default: DATA's valid=)
    --names FILE    class names (default: DATA's names=, else labels=)
    --classes N     number of classes (default: DATA's classes=, else the names count)
    --sizes FILE    image sizes, lines `IMAGE WIDTH HEIGHT` (IMAGE: the path as in the
                    list, or its image id); images not named there have their size
                    read from the file's header (PNG, PGM/PPM/PBM, BMP, JPEG)
    --precision N   decimals printed (default 4)

Input:
  - result files DIR/<NAME><class name>.txt, one per class, lines
    `IMAGE_ID SCORE XMIN YMIN XMAX YMAX` (print_detector_detections in Darknet's
    examples/detector.c, the `eval=voc` default of validate_detector)
  - the images of the valid list, and for each its label file: the path with the
    first "images" replaced by "labels", then "JPEGImages" -> "labels", "raw" ->
    "labels", and .jpg/.png/.JPG/.JPEG -> .txt, each first occurrence only, exactly as
    fill_truth_detection in src/data.c does; lines `CLASS CX CY W H`, normalized to
    [0, 1]; an image without objects has an empty label file

Output: one row per class (ground-truth boxes, detections, AP@0.5, AP@0.75,
AP@0.5:0.95; `-` for a class without ground truth), then as the last line

    mAP@0.5=0.7312 mAP@0.5:0.95=0.4120

Exit status 0; 1 on bad input, with the file (and line) named; 2 on bad usage.

Conventions (each checked by a hand-computed case in tests/test_map.sh):
  - Coordinates.  Darknet writes a box of center (x, y) and size (w, h) in pixels of
    the original image as xmin = x - w/2 + 1, xmax = x + w/2 + 1 (and likewise y),
    then clips xmin, ymin to 1 and xmax, ymax to the image's width and height.  The
    +1 is VOC's 1-based pixel numbering, so 1 is subtracted to get back the continuous
    box Darknet predicted.  Clipping xmax to w (not w + 1) would cut one pixel off
    every box that reaches the right or bottom edge: an edge written as exactly the
    width (height) is read as the image's edge.  Ground truth is the label's box times
    the image size, clipped to the image as Darknet's training clips it (correct_boxes
    in src/data.c).  IoU is area over union of these continuous boxes, without VOC's
    "+1" on widths (that belongs to inclusive integer pixel boxes, which neither side
    is).
  - Matching, per class, detections in order of descending score: a detection is
    compared with every ground-truth box of its class in its image; the box with the
    highest IoU (the first in the label file on equal IoU) is its candidate.  IoU >=
    the threshold and a candidate not yet matched: true positive; otherwise a false
    positive, so a second detection of a matched box is a false positive even when
    another box would have fitted it.  This is the VOC devkit's rule (VOCevaldet.m:
    `ovmax >= minoverlap`; the Python port in py-faster-rcnn writes `>`); COCO's
    matcher would instead try the next best unmatched box.
  - Ties in score keep the order of the result file (a stable sort), i.e. the order
    of the valid list and, within an image, Darknet's detection order.
  - AP: VOC's all-point interpolation (VOC 2010 onward): precision made monotone
    (each point takes the highest precision at any higher recall), area under that
    curve summed at every recall change.  A class with ground truth and no
    detections has AP 0.  A class without ground truth has no AP and is left out of
    every mean (its detections are still counted); if no class has ground truth the
    tool stops.
  - mAP@0.5: mean over classes of AP at IoU 0.5.  mAP@0.5:0.95: AP at each IoU
    threshold 0.50, 0.55, ..., 0.95 (each the nearest double to the decimal),
    averaged over thresholds and classes as COCO averages them (every class has all
    ten, so this equals the mean over classes of each class's mean), but with the
    VOC matching and interpolation above at each threshold, not COCO's 101-point
    recall sampling.
"""

import argparse
import math
import os
import struct
import sys

IOU_THRESHOLDS = [round(0.50 + 0.05 * i, 2) for i in range(10)]
DEFAULT_OUT = "comp4_det_test_"  # validate_detector's default when -out is not given
DEFAULT_RESULTS = "results"      # its default when the .data has no results=


class InputError(Exception):
    """Bad input; the message names the file (and line) at fault."""


def log(msg):
    sys.stderr.write("kfac_map: %s\n" % msg)
    sys.stderr.flush()


# ---------------------------------------------------------------- Darknet's files ------

def read_lines(path, what):
    """The lines of a text file; InputError naming what the file is when it cannot be read."""
    try:
        with open(path) as f:
            return f.read().split("\n")
    except OSError as e:
        raise InputError("cannot read %s: %s" % (what, e.strerror))


def read_data_file(path):
    """Parse a Darknet .data file as read_data_cfg does: all blanks removed, '#' and ';'
    start comments, key=value; the first occurrence of a key wins (option_find)."""
    opts = {}
    for n, line in enumerate(read_lines(path, path), 1):
        line = line.replace(" ", "").replace("\t", "").replace("\r", "")
        if not line or line[0] in "#;":
            continue
        if "=" not in line:
            raise InputError("%s:%d: not key=value: %s" % (path, n, line))
        key, val = line.split("=", 1)
        opts.setdefault(key, val)
    return opts


def read_list(path, what):
    """Lines of a list file (Darknet's get_paths), without line ends or empty lines."""
    try:
        with open(path) as f:
            return [l.rstrip("\r\n") for l in f if l.strip()]
    except OSError as e:
        raise InputError("cannot read %s %s: %s" % (what, path, e.strerror))


def image_id(path):
    """Darknet's basecfg: the file name up to its first '.' (the id in result files)."""
    name = path.rsplit("/", 1)[-1]
    return name.split(".", 1)[0]


def find_replace(s, orig, rep):
    """Darknet's find_replace: the first occurrence only."""
    i = s.find(orig)
    return s if i < 0 else s[:i] + rep + s[i + len(orig):]


def label_path(image_path):
    """The label file fill_truth_detection reads for image_path."""
    p = find_replace(image_path, "images", "labels")
    p = find_replace(p, "JPEGImages", "labels")
    p = find_replace(p, "raw", "labels")
    for ext in (".jpg", ".png", ".JPG", ".JPEG"):
        p = find_replace(p, ext, ".txt")
    return p


# ---------------------------------------------------------------- image sizes ----------

def pnm_size(path, head):
    """Width and height from a PBM/PGM/PPM header (comments allowed)."""
    tokens = []
    i = 2
    while len(tokens) < 2 and i < len(head):
        c = head[i:i + 1]
        if c == b"#":
            while i < len(head) and head[i:i + 1] not in (b"\n", b"\r"):
                i += 1
        elif c.isspace():
            i += 1
        else:
            j = i
            while j < len(head) and not head[j:j + 1].isspace() and head[j:j + 1] != b"#":
                j += 1
            tokens.append(head[i:j])
            i = j
    if len(tokens) < 2 or not all(t.isdigit() for t in tokens):
        raise InputError("%s: bad PNM header" % path)
    return int(tokens[0]), int(tokens[1])


def jpeg_size(path, data):
    """Width and height from the first start-of-frame marker of a JPEG."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise InputError("%s: bad JPEG marker at byte %d" % (path, i))
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        (seglen,) = struct.unpack(">H", data[i + 2:i + 4])
        # SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC) which share the range
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > len(data):
                break
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        i += 2 + seglen
    raise InputError("%s: no JPEG frame header found" % path)


def image_size(path):
    """(width, height) of an image file, from its header."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 16)
            if data[:2] == b"\xff\xd8" and len(data) == 1 << 16:
                data += f.read()  # a JPEG's frame header may follow large metadata
    except OSError as e:
        raise InputError("cannot read image %s: %s (give its size with --sizes)"
                         % (path, e.strerror))
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise InputError("%s: PNG without IHDR" % path)
        return struct.unpack(">II", data[16:24])
    if len(data) >= 2 and data[:1] == b"P" and data[1:2] in b"123456":
        return pnm_size(path, data)
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return w, abs(h)  # a negative height marks a top-down bitmap
    if data[:2] == b"\xff\xd8":
        return jpeg_size(path, data)
    raise InputError("%s: not a PNG, PNM, BMP or JPEG file: give its size with --sizes"
                     % path)


def read_sizes(path):
    """--sizes file: {image path or id: (w, h)}."""
    sizes = {}
    for n, line in enumerate(read_lines(path, path), 1):
        if not line.strip():
            continue
        parts = line.rsplit(None, 2)
        try:
            w, h = int(parts[1]), int(parts[2])
        except (IndexError, ValueError):
            raise InputError("%s:%d: expected `IMAGE WIDTH HEIGHT`: %s" % (path, n, line))
        if w <= 0 or h <= 0:
            raise InputError("%s:%d: size must be positive: %s" % (path, n, line))
        sizes[parts[0]] = (w, h)
    return sizes


# ---------------------------------------------------------------- ground truth ---------

def read_labels(path, image, classes, w, h):
    """Boxes of the label file path (of image) as [(class, x1, y1, x2, y2)] in pixels,
    continuous."""
    boxes = []
    lines = read_lines(path, "label file %s (Darknet's label path for %s)" % (path, image))
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            raise InputError("%s:%d: expected `CLASS CX CY W H`: %s" % (path, n, line))
        try:
            k = int(parts[0])
            cx, cy, bw, bh = (float(v) for v in parts[1:])
        except ValueError:
            raise InputError("%s:%d: not numbers: %s" % (path, n, line))
        if not 0 <= k < classes:
            raise InputError("%s:%d: class %d out of range 0..%d" % (path, n, k, classes - 1))
        if not all(0.0 <= v <= 1.0 for v in (cx, cy, bw, bh)) or bw <= 0 or bh <= 0:
            raise InputError("%s:%d: center and size must be in [0, 1], size > 0: %s"
                             % (path, n, line))
        x1 = max(0.0, (cx - bw / 2) * w)
        x2 = min(float(w), (cx + bw / 2) * w)
        y1 = max(0.0, (cy - bh / 2) * h)
        y2 = min(float(h), (cy + bh / 2) * h)
        boxes.append((k, x1, y1, x2, y2))
    return boxes


def read_ground_truth(paths, classes, sizes):
    """Return (images, truth): images maps image id -> (w, h); truth[k][id] is the list
    of class k's boxes (x1, y1, x2, y2) in that image, in label-file order."""
    images = {}
    first_path = {}
    truth = [dict() for _ in range(classes)]
    for p in paths:
        iid = image_id(p)
        if iid in images:
            raise InputError("images %s and %s have the same id %r: Darknet's result files "
                             "cannot tell them apart" % (first_path[iid], p, iid))
        size = sizes.get(p) or sizes.get(iid) or image_size(p)
        images[iid] = size
        first_path[iid] = p
        for k, x1, y1, x2, y2 in read_labels(label_path(p), p, classes, size[0], size[1]):
            truth[k].setdefault(iid, []).append((x1, y1, x2, y2))
    return images, truth


# ---------------------------------------------------------------- detections -----------

def read_detections(path, images):
    """Detections of one result file as [(image id, score, (x1, y1, x2, y2))], in file
    order, converted from Darknet's 1-based clipped boxes (see the module docstring)."""
    dets = []
    try:
        lines = read_lines(path, "result file %s" % path)
    except InputError as e:
        raise InputError("%s (did `darknet detector valid` write it? see --results and --out)" % e)
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.rsplit(None, 5)  # the id may hold blanks; the five numbers do not
        try:
            if len(parts) != 6:
                raise ValueError
            score, x1, y1, x2, y2 = (float(v) for v in parts[1:])
        except ValueError:
            raise InputError("%s:%d: expected `IMAGE_ID SCORE XMIN YMIN XMAX YMAX`: %s"
                             % (path, n, line))
        if not all(math.isfinite(v) for v in (score, x1, y1, x2, y2)):
            raise InputError("%s:%d: not a finite number (a diverged network?): %s"
                             % (path, n, line))
        iid = parts[0]
        if iid not in images:
            raise InputError("%s:%d: image id %r is not in the valid list" % (path, n, iid))
        w, h = images[iid]
        box = (x1 - 1, y1 - 1, w if x2 >= w else x2 - 1, h if y2 >= h else y2 - 1)
        dets.append((iid, score, box))
    return dets


# ---------------------------------------------------------------- scoring --------------

def iou(a, b):
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 when disjoint."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    return inter / (area_a + area_b - inter)


def candidates(dets, truth):
    """For each detection (already ranked): (best IoU, index of that box in its image)
    among its image's ground truth of this class; (0, -1) when there is none."""
    out = []
    for iid, _, box in dets:
        best, jbest = 0.0, -1
        for j, g in enumerate(truth.get(iid, ())):
            o = iou(box, g)
            if o > best:  # strict: the first box wins on equal IoU
                best, jbest = o, j
        out.append((best, jbest))
    return out


def average_precision(hits, npos):
    """VOC all-point AP of a ranked list of hits (True = true positive), npos > 0."""
    tp = 0
    rec, prec = [], []
    for i, hit in enumerate(hits):
        tp += hit
        rec.append(tp / npos)
        prec.append(tp / (i + 1))
    mrec = [0.0] + rec + [1.0]
    mpre = [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]
               for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i])


def class_aps(dets, truth, thresholds):
    """AP of one class at each IoU threshold; dets in file order."""
    npos = sum(len(v) for v in truth.values())
    ranked = sorted(dets, key=lambda d: -d[1])  # stable: ties keep file order
    cands = candidates(ranked, truth)
    aps = []
    for t in thresholds:
        matched = set()
        hits = []
        for (iid, _, _), (o, j) in zip(ranked, cands):
            hit = j >= 0 and o >= t and (iid, j) not in matched
            if hit:
                matched.add((iid, j))
            hits.append(hit)
        aps.append(average_precision(hits, npos))
    return aps


# ---------------------------------------------------------------- main -----------------

def evaluate(args):
    """Return (rows, map50, map5095): rows are (name, npos, ndets, aps or None)."""
    opts = read_data_file(args.data)
    valid = args.valid or opts.get("valid")
    if not valid:
        raise InputError("%s has no valid= (or give --valid)" % args.data)
    names_file = args.names or opts.get("names") or opts.get("labels")
    if not names_file:
        raise InputError("%s has no names= (or give --names)" % args.data)
    names = read_list(names_file, "names file")
    if args.classes is not None:
        classes = args.classes
    elif "classes" in opts:
        try:
            classes = int(opts["classes"])
        except ValueError:
            raise InputError("%s: classes=%s is not a number" % (args.data, opts["classes"]))
    else:
        classes = len(names)
    if classes <= 0 or len(names) < classes:
        raise InputError("%s has %d names for %d classes" % (names_file, len(names), classes))
    results = args.results or opts.get("results") or DEFAULT_RESULTS
    sizes = read_sizes(args.sizes) if args.sizes else {}

    paths = read_list(valid, "valid list")
    log("reading the ground truth of %d images (%s)" % (len(paths), valid))
    images, truth = read_ground_truth(paths, classes, sizes)

    rows = []
    for k in range(classes):
        path = os.path.join(results, "%s%s.txt" % (args.out, names[k]))
        dets = read_detections(path, images)
        npos = sum(len(v) for v in truth[k].values())
        aps = class_aps(dets, truth[k], IOU_THRESHOLDS) if npos else None
        rows.append((names[k], npos, len(dets), aps))
    scored = [r[3] for r in rows if r[3] is not None]
    if not scored:
        raise InputError("no ground-truth boxes in any label file of %s: mAP is undefined"
                         % valid)
    map50 = sum(a[0] for a in scored) / len(scored)
    map5095 = sum(sum(a) for a in scored) / (len(scored) * len(IOU_THRESHOLDS))
    return rows, map50, map5095


def main():
    ap = argparse.ArgumentParser(
        description="mAP@0.5 and mAP@0.5:0.95 of `darknet detector valid` results "
                    "(see the module docstring for the conventions).")
    ap.add_argument("data", help="the .data file given to darknet detector valid")
    ap.add_argument("--results", help="result folder (default: the .data's results=, "
                    "else results)")
    ap.add_argument("--out", default=DEFAULT_OUT,
                    help="result file prefix, Darknet's -out (default %s)" % DEFAULT_OUT)
    ap.add_argument("--valid", help="image list (default: the .data's valid=)")
    ap.add_argument("--names", help="class names (default: the .data's names=)")
    ap.add_argument("--classes", type=int, help="number of classes (default: the .data's "
                    "classes=)")
    ap.add_argument("--sizes", help="file of `IMAGE WIDTH HEIGHT` lines")
    ap.add_argument("--precision", type=int, default=4, help="decimals printed (default 4)")
    args = ap.parse_args()
    try:
        rows, map50, map5095 = evaluate(args)
    except InputError as e:
        sys.stderr.write("kfac_map: error: %s\n" % e)
        sys.exit(1)

    p = args.precision
    i75 = IOU_THRESHOLDS.index(0.75)
    width = max([5] + [len(r[0]) for r in rows])
    heads = ("AP@0.5", "AP@0.75", "AP@0.5:0.95")
    cw = [max(len(h), p + 2) for h in heads]
    print("%d ground-truth boxes, %d detections, %d of %d classes with ground truth"
          % (sum(r[1] for r in rows), sum(r[2] for r in rows),
             sum(r[3] is not None for r in rows), len(rows)))
    print("%-*s %7s %8s  %s" % (width, "class", "gt", "dets",
                               " ".join("%*s" % (c, h) for c, h in zip(cw, heads))))
    for name, n, nd, aps in rows:
        if aps is None:
            vals = ["-"] * 3
        else:
            vals = ["%.*f" % (p, v) for v in (aps[0], aps[i75], sum(aps) / len(aps))]
        print("%-*s %7d %8d  %s" % (width, name, n, nd,
                                    " ".join("%*s" % (c, v) for c, v in zip(cw, vals))))
    print("mAP@0.5=%.*f mAP@0.5:0.95=%.*f" % (p, map50, p, map5095))


if __name__ == "__main__":
    main()
