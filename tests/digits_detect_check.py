#!/usr/bin/env python3
"""Checks of one tools/digits_detect.py output; run by tests/test_digits_detect.sh.

Usage: python3 tests/digits_detect_check.py OUT DIGITS TRAIN TEST MAX_DIGITS [DARKNET_DUMP]

OUT: the generator's output folder, made with --train TRAIN --test TEST --max-digits
MAX_DIGITS from the digits in DIGITS.  DARKNET_DUMP: tests/dk_load_detection's output
for some of OUT's images.  Prints `ok NAME` / `FAIL NAME: reason`; exits 1 if any
check failed.

The images are decoded with tools/digits_prepare.py's PNG reader, written
independently of the generator's PNG writer.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
from digits_prepare import png_read_gray8  # noqa: E402

INK = 64          # the generator's ink threshold on the scaled digit (of 255)
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
EPS = 1e-6        # labels are written with 7 decimals
failures = 0


def result(name, problems):
    global failures
    if problems:
        failures += 1
        more = " (and %d more)" % (len(problems) - 3) if len(problems) > 3 else ""
        print("FAIL %s: %s%s" % (name, "; ".join(problems[:3]), more))
    else:
        print("ok %s" % name)


def read_lines(path):
    with open(path) as f:
        return [l.rstrip("\n") for l in f if l.strip()]


def label_path(p):
    """Darknet's rule (fill_truth_detection), written out again rather than imported
    from the tools so that a shared mistake cannot hide."""
    for a, b in (("images", "labels"), ("JPEGImages", "labels"), ("raw", "labels"),
                 (".jpg", ".txt"), (".png", ".txt"), (".JPG", ".txt"), (".JPEG", ".txt")):
        i = p.find(a)
        if i >= 0:
            p = p[:i] + b + p[i + len(a):]
    return p


def main():
    out, digits = sys.argv[1], sys.argv[2]
    counts = {"train": int(sys.argv[3]), "test": int(sys.argv[4])}
    max_digits = int(sys.argv[5])
    dump = sys.argv[6] if len(sys.argv) > 6 else None

    # Lists, and each image with its label file where Darknet will look for it.
    lists, problems = {}, []
    for split in ("train", "test"):
        lists[split] = read_lines(os.path.join(out, split + ".txt"))
        if len(lists[split]) != counts[split]:
            problems.append("%s.txt has %d images, expected %d"
                            % (split, len(lists[split]), counts[split]))
        for p in lists[split]:
            for f in (p, label_path(p)):
                if not os.path.isfile(f):
                    problems.append("%s missing" % f)
    result("digits_detect_lists_and_label_paths", problems)

    # Every image decodes, at the canvas size of the first.
    images, problems = {}, []
    for split in ("train", "test"):
        for p in lists[split]:
            try:
                images[p] = png_read_gray8(p)
            except SystemExit:
                problems.append("%s does not decode" % p)
    sizes = {(w, h) for w, h, _ in images.values()}
    if len(sizes) != 1:
        problems.append("canvas sizes differ: %s" % sorted(sizes))
    result("digits_detect_png_decodes", problems)
    if problems:
        return

    # Labels: class 0..9, box of positive size inside the canvas, 1..max_digits a canvas.
    labels, problems = {}, []
    for p in images:
        boxes = []
        for n, line in enumerate(read_lines(label_path(p)), 1):
            f = line.split()
            try:
                k, cx, cy, bw, bh = int(f[0]), *map(float, f[1:])
            except ValueError:
                problems.append("%s:%d: malformed: %s" % (label_path(p), n, line))
                continue
            if not 0 <= k < len(NAMES):
                problems.append("%s:%d: class %d" % (label_path(p), n, k))
            if not (bw > 0 and bh > 0 and cx - bw / 2 >= -EPS and cx + bw / 2 <= 1 + EPS
                    and cy - bh / 2 >= -EPS and cy + bh / 2 <= 1 + EPS):
                problems.append("%s:%d: box outside the canvas: %s" % (label_path(p), n, line))
            boxes.append((k, cx, cy, bw, bh))
        if not 1 <= len(boxes) <= max_digits:
            problems.append("%s: %d boxes" % (label_path(p), len(boxes)))
        labels[p] = boxes
    result("digits_detect_labels_in_range_and_inside", problems)

    # Sources: train canvases from train digits only, test from test only, the label's
    # class the source digit's class, one source line per label line.
    src = {}
    rows = read_lines(os.path.join(out, "sources.tsv"))[1:]
    for r in rows:
        image, k, source, size, x, y, level, background = r.split("\t")
        src.setdefault(image, []).append((int(k), source, int(size), int(x), int(y),
                                          int(level), int(background)))
    digit_lists = {s: set(read_lines(os.path.join(digits, s + ".list")))
                   for s in ("train", "test")}
    labs = read_lines(os.path.join(digits, "labels.txt"))
    used, problems = {"train": set(), "test": set()}, []
    for split in ("train", "test"):
        for p in lists[split]:
            image = os.path.basename(p)[:-4]
            objs = src.get(image, [])
            if [o[0] for o in objs] != [b[0] for b in labels[p]]:
                problems.append("%s: sources classes %s, labels %s"
                                % (image, [o[0] for o in objs], [b[0] for b in labels[p]]))
            for o in objs:
                used[split].add(o[1])
                if o[1] not in digit_lists[split]:
                    problems.append("%s (%s) drew %s, not a %s digit" % (image, split, o[1], split))
                if labs[o[0]] not in os.path.basename(o[1]):
                    problems.append("%s: class %d from %s" % (image, o[0], o[1]))
    both = used["train"] & used["test"]
    if both:
        problems.append("digits in both splits: %s" % sorted(both)[:3])
    if not used["train"] or not used["test"]:
        problems.append("no sources recorded")
    result("digits_detect_train_test_sources_disjoint", problems)

    # Boxes tight around the ink.  A pixel of digit d (brightness L on background b)
    # is b + (L - b) * v // 255 for the scaled digit's value v, brighter pixels of
    # other digits winning.  Each edge row and column of a box holds ink (v >= INK),
    # so the box is no larger than the ink; in canvases of one digit every pixel
    # outside the box has v < INK, so it is no smaller.  (The two bounds are those
    # pixel values for v = INK and v = INK - 1.)
    problems = []
    for p, (w, h, px) in images.items():
        objs = src[os.path.basename(p)[:-4]]
        for (k, cx, cy, bw, bh), (_, _, _, _, _, level, bg) in zip(labels[p], objs):
            x1, x2 = round((cx - bw / 2) * w), round((cx + bw / 2) * w)
            y1, y2 = round((cy - bh / 2) * h), round((cy + bh / 2) * h)
            ink = bg + (level - bg) * INK // 255
            edges = {"left": [px[y * w + x1] for y in range(y1, y2)],
                     "right": [px[y * w + x2 - 1] for y in range(y1, y2)],
                     "top": [px[y1 * w + x] for x in range(x1, x2)],
                     "bottom": [px[(y2 - 1) * w + x] for x in range(x1, x2)]}
            for side, vals in edges.items():
                if max(vals) < ink:
                    problems.append("%s: class %d box's %s edge has no ink" % (p, k, side))
            if len(objs) == 1:
                faint = bg + (level - bg) * (INK - 1) // 255
                outside = [px[y * w + x] for y in range(h) for x in range(w)
                           if not (x1 <= x < x2 and y1 <= y < y2)]
                if max(outside) > faint:
                    problems.append("%s: ink outside the box (pixel %d > %d)"
                                    % (p, max(outside), faint))
    result("digits_detect_boxes_tight_around_ink", problems)

    # Names and .data.
    problems = []
    names = read_lines(os.path.join(out, "digits-detect.names"))
    if names != NAMES:
        problems.append("names %s" % names)
    for a in names:
        for b in names:
            if a != b and a in b:
                problems.append("%s is a substring of %s" % (a, b))
        hits = [p for s in lists.values() for p in s if a in p]
        if hits:
            problems.append("name %s in path %s" % (a, hits[0]))
    data = dict(l.split("=", 1) for l in read_lines(os.path.join(out, "digits-detect.data")))
    want = {"classes": "10", "train": os.path.join(out, "train.txt"),
            "valid": os.path.join(out, "test.txt"),
            "names": os.path.join(out, "digits-detect.names"),
            "results": os.path.join(out, "results")}
    for key, val in want.items():
        if data.get(key) != val:
            problems.append("%s=%s, expected %s" % (key, data.get(key), val))
    for key in ("backup", "results"):
        if not os.path.isdir(data.get(key, "")):
            problems.append("%s=%s is not a folder" % (key, data.get(key)))
    result("digits_detect_names_and_data_file", problems)

    # Anchors: one cfg line, positive pairs, sorted by area, no larger than the canvas.
    problems = []
    lines = [l for l in read_lines(os.path.join(out, "anchors.txt")) if not l.startswith("#")]
    try:
        key, val = lines[0].split("=")
        nums = [float(v) for v in val.split(",")]
        pairs = list(zip(nums[0::2], nums[1::2]))
        if key.strip() != "anchors" or len(nums) != 12:
            problems.append("expected `anchors = ` and 6 pairs: %s" % lines[0])
        areas = [a * b for a, b in pairs]
        if areas != sorted(areas):
            problems.append("not sorted by area: %s" % lines[0])
        w, h = next(iter(sizes))
        if not all(0 < a <= w and 0 < b <= h for a, b in pairs):
            problems.append("an anchor outside (0, canvas]: %s" % lines[0])
    except (ValueError, IndexError):
        problems.append("cannot read anchors.txt: %s" % lines)
    result("digits_detect_anchors_sorted", problems)

    if dump:
        check_darknet(dump, images, labels)


def check_darknet(dump, images, labels):
    """Darknet's own loaders see the pixels and boxes the generator wrote."""
    problems, seen = [], 0
    cur = None
    boxes = {}
    for line in read_lines(dump):
        f = line.split()
        if f[0] == "image":
            cur = f[1]
            seen += 1
            w, h, px = images[cur]
            if (int(f[2]), int(f[3]), int(f[4])) != (w, h, 3):
                problems.append("%s: Darknet loads %sx%sx%s" % (cur, f[2], f[3], f[4]))
            boxes[cur] = []
        elif f[0] == "channel":
            if [int(v) for v in f[2:]] != list(images[cur][2]):
                problems.append("%s: channel %s differs from the PNG's pixels" % (cur, f[1]))
        elif f[0] == "box":
            boxes[cur].append((int(f[1]), *map(float, f[2:])))
    for p, got in boxes.items():
        want = sorted(labels[p])
        got = sorted(got)
        if len(got) != len(want) or any(
                g[0] != e[0] or max(abs(a - b) for a, b in zip(g[1:], e[1:])) > 1e-5
                for g, e in zip(got, want)):
            problems.append("%s: Darknet's boxes %s, labels %s" % (p, got, want))
    if not seen:
        problems.append("no image in %s" % dump)
    result("digits_detect_darknet_loads_images_and_labels", problems)


if __name__ == "__main__":
    if len(sys.argv) not in (6, 7):
        sys.stderr.write(__doc__)
        sys.exit(2)
    main()
    sys.exit(1 if failures else 0)
