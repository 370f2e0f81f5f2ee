#!/usr/bin/env python3
"""Hand-computed cases for tools/kfac_map.py; run by tests/test_map.sh.

Usage: python3 tests/map_cases.py WORKDIR [--darknet-helper BIN]

Each case writes a tiny data set under WORKDIR/<case> (images, Darknet label files, a
valid list, names, a .data file and result files in `detector valid`'s format), runs
the tool as a user would and compares its per-class APs and mAPs with values derived
by hand in the comments.  Prints `ok NAME` / `FAIL NAME: reason`; exits 1 if any case
failed.  KFAC_MAP in the environment names another copy of the tool (to check that a
deliberately broken copy fails here).

--darknet-helper: tests/dk_print_detections built against Darknet; the result files
of the `darknet_writer` case are then written by Darknet's own
print_detector_detections instead of by this script.

Conventions of the helpers below: boxes are (x1, y1, x2, y2) in continuous pixel
coordinates; `det` writes them as Darknet does (1 added, "%f"), `lab` as a normalized
label line.  Most images are 64x64, so that box corners on whole pixels give exact
normalized values (multiples of 1/64) and exact IoUs.
"""

import os
import re
import shutil
import struct
import subprocess
import sys
import zlib

TOOL = os.environ.get("KFAC_MAP", os.path.join("tools", "kfac_map.py"))
PREC = 6
TOL = 2e-6  # the tool prints 6 decimals: rounding leaves at most 5e-7
failures = 0


# ---------------------------------------------------------------- file writers ---------

def write_pgm(path, w, h, comment=False):
    head = b"P5\n# made by map_cases\n%d %d\n255\n" if comment else b"P5\n%d %d\n255\n"
    with open(path, "wb") as f:
        f.write(head % (w, h) + bytes(w * h))


def write_ppm_ascii(path, w, h):
    with open(path, "w") as f:
        f.write("P3\n%d\n%d\n255\n" % (w, h) + "0 0 0\n" * (w * h))


def write_png(path, w, h):
    def chunk(t, body):
        return struct.pack(">I", len(body)) + t + body + struct.pack(
            ">I", zlib.crc32(t + body) & 0xffffffff)
    raw = b"".join(b"\x00" + bytes(w) for _ in range(h))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def write_bmp(path, w, h):
    row = (w * 3 + 3) // 4 * 4
    pixels = bytes(row * h)
    head = struct.pack("<2sIHHI", b"BM", 54 + len(pixels), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, w, -h, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    with open(path, "wb") as f:
        f.write(head + info + pixels)


def write_jpeg_header(path, w, h):
    # Only the markers kfac_map reads (SOI, an APP0 segment, SOF0): not a decodable
    # JPEG, but the tool takes the size from the frame header and nothing else.
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, h, w, 1) + b"\x01\x11\x00"
    with open(path, "wb") as f:
        f.write(b"\xff\xd8" + app0 + sof0 + b"\xff\xd9")


WRITERS = {"pgm": write_pgm, "png": write_png, "ppm": write_ppm_ascii,
           "bmp": write_bmp, "jpg": write_jpeg_header}


def lab(k, box, w=64, h=64):
    """A label line for box (x1, y1, x2, y2) in a w x h image."""
    x1, y1, x2, y2 = box
    return "%d %r %r %r %r" % (k, (x1 + x2) / 2 / w, (y1 + y2) / 2 / h,
                               (x2 - x1) / w, (y2 - y1) / h)


def det(iid, score, box):
    """A result line as print_detector_detections writes it (no clipping needed)."""
    x1, y1, x2, y2 = box
    return "%s %f %f %f %f %f" % (iid, score, x1 + 1, y1 + 1, x2 + 1, y2 + 1)


def make_case(name, names, images, dets, sizes=None, write_images=True):
    """Write case `name`: images is [(id, fmt, (w, h), [label lines])], dets maps a class
    name to its result lines (a class left out gets an empty file; None: no file).
    Returns the .data path."""
    root = os.path.join(WORK, name)
    shutil.rmtree(root, ignore_errors=True)
    for sub in ("images", "labels", "results"):
        os.makedirs(os.path.join(root, sub))
    paths = []
    for iid, fmt, (w, h), labels in images:
        p = os.path.join(root, "images", "%s.%s" % (iid, fmt))
        if write_images:
            WRITERS[fmt](p, w, h)
        stem = "%s.%s" % (iid, fmt)
        # Darknet maps only .jpg/.png/.JPG/.JPEG to .txt; other names keep their
        # extension in the label path (labels/a.pgm holds a's labels), as the tool must.
        lname = stem[:-4] + ".txt" if fmt in ("png", "jpg") else stem
        if labels is not None:
            with open(os.path.join(root, "labels", lname), "w") as f:
                f.write("".join(l + "\n" for l in labels))
        paths.append(p)
    with open(os.path.join(root, "valid.txt"), "w") as f:
        f.write("".join(p + "\n" for p in paths))
    with open(os.path.join(root, "names"), "w") as f:
        f.write("".join(n + "\n" for n in names))
    for n in names:
        lines = dets.get(n, [])
        if lines is None:
            continue
        with open(os.path.join(root, "results", "comp4_det_test_%s.txt" % n), "w") as f:
            f.write("".join(l + "\n" for l in lines))
    data = os.path.join(root, "case.data")
    with open(data, "w") as f:
        f.write("classes=%d\nvalid=%s\nnames=%s\nresults=%s\n"
                % (len(names), os.path.join(root, "valid.txt"), os.path.join(root, "names"),
                   os.path.join(root, "results")))
    if sizes is not None:
        with open(os.path.join(root, "sizes.txt"), "w") as f:
            f.write("".join("%s %d %d\n" % s for s in sizes))
    return data


def run_tool(data, *extra):
    res = subprocess.run([sys.executable, TOOL, data, "--precision", str(PREC)] + list(extra),
                         capture_output=True, text=True)
    return res.returncode, res.stdout, res.stderr


def parse(out):
    """({class: (ap50, ap75, ap5095) or None}, map50, map5095) from the tool's output."""
    per = {}
    m = re.search(r"^mAP@0\.5=(\S+) mAP@0\.5:0\.95=(\S+)$", out.strip().split("\n")[-1])
    if not m:
        raise ValueError("no machine-readable last line in:\n" + out)
    for line in out.split("\n")[2:-1]:
        f = line.split()
        if len(f) == 6:
            per[f[0]] = None if f[3] == "-" else (float(f[3]), float(f[4]), float(f[5]))
    return per, float(m.group(1)), float(m.group(2))


def fail(name, why):
    global failures
    failures += 1
    print("FAIL %s: %s" % (name, why))


def check(name, data, want_map50, want_map5095, want_per=None, extra=()):
    """Run the tool on data; compare mAPs and the given per-class values (a class
    maps to (AP@0.5, AP@0.5:0.95), or None for `no ground truth`)."""
    rc, out, err = run_tool(data, *extra)
    if rc != 0:
        return fail(name, "exit status %d: %s" % (rc, err.strip()))
    try:
        per, m50, m5095 = parse(out)
    except ValueError as e:
        return fail(name, str(e))
    bad = []
    if abs(m50 - want_map50) > TOL:
        bad.append("mAP@0.5 %.6f, expected %.6f" % (m50, want_map50))
    if abs(m5095 - want_map5095) > TOL:
        bad.append("mAP@0.5:0.95 %.6f, expected %.6f" % (m5095, want_map5095))
    for k, want in (want_per or {}).items():
        got = per.get(k, "missing")
        if want is None or got is None or got == "missing":
            if got != want:
                bad.append("class %s: %s, expected %s" % (k, got, want))
        elif abs(got[0] - want[0]) > TOL or abs(got[2] - want[1]) > TOL:
            bad.append("class %s: AP@0.5 %.6f AP@0.5:0.95 %.6f, expected %.6f %.6f"
                       % (k, got[0], got[2], want[0], want[1]))
    if bad:
        fail(name, "; ".join(bad))
    else:
        print("ok %s" % name)


def check_error(name, data, needles, extra=()):
    """The tool must stop with status 1 and a message holding every needle."""
    rc, out, err = run_tool(data, *extra)
    if rc != 1:
        return fail(name, "exit status %d, expected 1 (stderr: %s)" % (rc, err.strip()))
    missing = [n for n in needles if n not in err]
    if missing:
        return fail(name, "message %r does not name %s" % (err.strip(), missing))
    print("ok %s" % name)


# ---------------------------------------------------------------- the cases ------------

def cases(helper):
    A, B = (8, 8, 24, 24), (40, 40, 56, 56)

    # Every box found exactly (IoU 1 >= 0.95), whatever the scores: AP 1 for each class
    # at each threshold, so both means are 1.
    d = make_case("perfect", ["zero", "one"],
                  [("a", "pgm", (64, 64), [lab(0, A), lab(1, (30, 30, 60, 50))]),
                   ("b", "pgm", (64, 64), [lab(0, (0, 0, 64, 64))]),
                   ("c", "pgm", (64, 64), [lab(1, (10, 40, 20, 60)), lab(1, B)])],
                  {"zero": [det("a", 0.3, A), det("b", 0.9, (0, 0, 63, 63))],
                   "one": [det("c", 0.2, (10, 40, 20, 60)), det("a", 0.7, (30, 30, 60, 50)),
                           det("c", 0.5, B)]})
    # b's box covers the whole image: Darknet writes it as 1 1 64 64 (xmax clipped to
    # w), which is what det() gives for (0, 0, 63, 63), and the tool reads 64 as the
    # edge: IoU 1.
    check("map_perfect_detector", d, 1.0, 1.0, {"zero": (1, 1), "one": (1, 1)})

    # Two boxes A, B; detections ranked A (0.9), A again (0.8), B (0.7).  The second A
    # is a duplicate of a matched box: false positive.  Hits T, F, T with 2 boxes:
    # recall 1/2, 1/2, 1; precision 1, 1/2, 2/3.  Monotone precision: 1 up to recall
    # 1/2, 2/3 up to 1.  AP = 1/2 * 1 + 1/2 * 2/3 = 5/6 at every threshold (IoU 1).
    d = make_case("duplicates", ["zero"],
                  [("a", "pgm", (64, 64), [lab(0, A), lab(0, B)])],
                  {"zero": [det("a", 0.9, A), det("a", 0.8, A), det("a", 0.7, B)]})
    check("map_duplicate_is_false_positive", d, 5 / 6, 5 / 6, {"zero": (5 / 6, 5 / 6)})

    # Class one has a box and an empty result file: AP 0.  Class zero is perfect: AP 1.
    # Mean (1 + 0) / 2 = 0.5 at 0.5 and over 0.5:0.95.
    d = make_case("no_detections", ["zero", "one"],
                  [("a", "pgm", (64, 64), [lab(0, A), lab(1, B)])],
                  {"zero": [det("a", 0.9, A)]})
    check("map_class_without_detections_ap0", d, 0.5, 0.5, {"zero": (1, 1), "one": (0, 0)})

    # Class two has no box anywhere but one detection: it has no AP and stays out of
    # the mean.  zero: AP 1.  one: a false positive in a (no `one` there) ranked above
    # the exact hit in b: hits F, T, recall 0, 1, precision 0, 1/2: AP = 1 * 1/2.
    # mAP = (1 + 1/2) / 2 = 0.75 (0.5 if class two counted as 0).
    d = make_case("no_ground_truth", ["zero", "one", "two"],
                  [("a", "pgm", (64, 64), [lab(0, A)]),
                   ("b", "pgm", (64, 64), [lab(1, B)])],
                  {"zero": [det("a", 0.9, A)],
                   "one": [det("a", 0.9, B), det("b", 0.8, B)],
                   "two": [det("a", 0.9, A)]})
    check("map_class_without_ground_truth_left_out", d, 0.75, 0.75,
          {"zero": (1, 1), "one": (0.5, 0.5), "two": None})

    # One 32x32 box G = (16, 16, 48, 48) per class, one detection each.  A detection
    # G shifted right by s overlaps it (32 - s) x 32 of a union (32 + s) x 32: IoU =
    # (32 - s) / (32 + s).
    #   above: s = 10.6: 21.4 / 42.6 = 0.50235 >= 0.5: AP@0.5 1; true positive at 0.50
    #          only, so AP@0.5:0.95 = 1/10
    #   below: s = 10.7: 21.3 / 42.7 = 0.49883 < 0.5: AP 0 everywhere
    #   equal: (16, 16, 48, 32), G's upper half: 512 / 1024 = 0.5 exactly (every number
    #          is exact in binary): matches at 0.5 because the test is IoU >= t: AP@0.5 1,
    #          AP@0.5:0.95 1/10
    #   three_quarters: (16, 16, 48, 40): 768 / 1024 = 0.75 exactly: true positive at
    #          0.50, 0.55, ..., 0.75 (6 thresholds): AP@0.5:0.95 = 6/10
    # mAP@0.5 = (1 + 0 + 1 + 1) / 4 = 0.75; mAP@0.5:0.95 = (0.1 + 0 + 0.1 + 0.6) / 4 = 0.2
    G = (16, 16, 48, 48)
    d = make_case("iou_threshold", ["above", "below", "equal", "three_quarters"],
                  [("a", "pgm", (64, 64), [lab(k, G) for k in range(4)])],
                  {"above": [det("a", 0.9, (26.6, 16, 58.6, 48))],
                   "below": [det("a", 0.9, (26.7, 16, 58.7, 48))],
                   "equal": [det("a", 0.9, (16, 16, 48, 32))],
                   "three_quarters": [det("a", 0.9, (16, 16, 48, 40))]})
    check("map_iou_just_above_below_and_at_threshold", d, 0.75, 0.2,
          {"above": (1, 0.1), "below": (0, 0), "equal": (1, 0.1), "three_quarters": (1, 0.6)})

    # Equal scores keep the result file's order.  Both classes have box A in a and a
    # detection of A in b (no box there: false positive) with the same score as the
    # exact hit in a.  first lists b's first: hits F, T: AP = 1 * 1/2.  second lists
    # a's first: T, F: AP 1.  mAP = 0.75 either way round, hence the per-class check.
    d = make_case("ties", ["first", "second"],
                  [("a", "pgm", (64, 64), [lab(0, A), lab(1, A)]),
                   ("b", "pgm", (64, 64), [])],
                  {"first": [det("b", 0.5, A), det("a", 0.5, A)],
                   "second": [det("a", 0.5, A), det("b", 0.5, A)]})
    check("map_score_ties_keep_file_order", d, 0.75, 0.75,
          {"first": (0.5, 0.5), "second": (1, 1)})

    # Boxes everywhere, every result file empty: every AP is 0.
    d = make_case("empty", ["zero", "one"],
                  [("a", "pgm", (64, 64), [lab(0, A), lab(1, B)]),
                   ("b", "pgm", (64, 64), [lab(0, B)])], {})
    check("map_empty_detections", d, 0.0, 0.0, {"zero": (0, 0), "one": (0, 0)})

    # Three boxes in three images (a: P, Q; b: R; c: none).  Ranked: P in a (TP), P's
    # coordinates in c (FP: matching is per image), R in b (TP), Q in a (TP).
    # Recall 1/3, 1/3, 2/3, 1; precision 1, 1/2, 2/3, 3/4.  Made monotone, the precision
    # is 1 up to recall 1/3 and 3/4 above (3/4 at recall 1 lifts 2/3 at recall 2/3):
    # AP = 1/3 * 1 + 1/3 * 3/4 + 1/3 * 3/4 = 5/6 = 0.833333.  Without the monotone
    # step it would be 1/3 + 2/9 + 1/4 = 0.805556; VOC2007's 11 points give 0.840909.
    P, Q, R = (4, 4, 20, 20), (36, 36, 60, 60), (10, 30, 30, 50)
    d = make_case("several", ["zero"],
                  [("a", "pgm", (64, 64), [lab(0, P), lab(0, Q)]),
                   ("b", "pgm", (64, 64), [lab(0, R)]),
                   ("c", "pgm", (64, 64), [])],
                  {"zero": [det("a", 0.9, P), det("c", 0.8, P), det("b", 0.7, R),
                            det("a", 0.6, Q)]})
    check("map_several_images_monotone_precision", d, 5 / 6, 5 / 6, {"zero": (5 / 6, 5 / 6)})

    # Boxes G1 = (16, 16, 48, 48) and G2 = (24, 16, 56, 48).  D1 = G1 (0.9) takes G1.
    # D2 = (19, 16, 51, 48) (0.8): IoU with G1 29/35 = 0.83, with G2 27/37 = 0.73; its
    # candidate is G1, already taken: false positive (VOC's rule; COCO's matcher would
    # give it G2).  Hits T, F over 2 boxes: AP = 1/2 * 1 at every threshold.
    d = make_case("taken_candidate", ["zero"],
                  [("a", "pgm", (64, 64), [lab(0, (16, 16, 48, 48)), lab(0, (24, 16, 56, 48))])],
                  {"zero": [det("a", 0.9, (16, 16, 48, 48)), det("a", 0.8, (19, 16, 51, 48))]})
    check("map_best_box_already_matched_is_false_positive", d, 0.5, 0.5, {"zero": (0.5, 0.5)})

    # Boxes touching the image's edges, as Darknet writes them: E1 = (48, 48, 64, 64)
    # becomes 49 49 65 65 clipped to 64 64 (print_detector_detections clips xmax to w),
    # E2 = (0, 0, 16, 16) becomes 1 1 17 17.  Read back as the edge, both have IoU 1: AP
    # 1 everywhere.  Read as 64 - 1 = 63, E1's IoU would be 15*15 / 256 = 0.88: at the
    # 8 thresholds up to 0.85 hits T, T (AP 1), at 0.90 and 0.95 F, T (recall 1/2 at
    # precision 1/2: AP 1/4), so AP@0.5:0.95 = (8 + 2/4) / 10 = 0.85.
    d = make_case("edges", ["zero"],
                  [("a", "pgm", (64, 64), [lab(0, (48, 48, 64, 64)), lab(0, (0, 0, 16, 16))])],
                  {"zero": ["a 0.900000 49.000000 49.000000 64.000000 64.000000",
                            "a 0.800000 1.000000 1.000000 17.000000 17.000000"]})
    check("map_darknet_edge_clip_read_as_edge", d, 1.0, 1.0, {"zero": (1, 1)})

    # Image sizes from five header formats, none square, so that a swapped or wrong
    # size moves the ground truth off the detection.  Each image has one box, the
    # middle half (label 0.5 0.5 0.5 0.5), and one exact detection in pixels of the
    # true size: AP 1.  With w and h swapped, the 40x30 PNG's box (10, 7.5, 30, 22.5)
    # would become (7.5, 10, 22.5, 30): IoU 156.25 / 443.75 = 0.35, a miss.
    imgs, dets = [], []
    for iid, fmt, (w, h) in (("p", "png", (40, 30)), ("g", "pgm", (50, 20)),
                             ("q", "ppm", (30, 60)), ("m", "bmp", (20, 40)),
                             ("j", "jpg", (70, 10))):
        imgs.append((iid, fmt, (w, h), ["0 0.5 0.5 0.5 0.5"]))
        dets.append(det(iid, 0.5, (w / 4, h / 4, 3 * w / 4, 3 * h / 4)))
    d = make_case("formats", ["zero"], imgs, {"zero": dets})
    check("map_image_sizes_png_pgm_ppm_bmp_jpeg", d, 1.0, 1.0, {"zero": (1, 1)})

    # --sizes: no image files at all; one size given by path, one by image id.  Box and
    # detection as in the formats case: AP 1 only if both sizes were taken.
    root = os.path.join(WORK, "sizes_option")
    d = make_case("sizes_option", ["zero"],
                  [("s", "png", (40, 30), ["0 0.5 0.5 0.5 0.5"]),
                   ("t", "png", (20, 60), ["0 0.5 0.5 0.5 0.5"])],
                  {"zero": [det("s", 0.5, (10, 7.5, 30, 22.5)), det("t", 0.4, (5, 15, 15, 45))]},
                  sizes=[(os.path.join(root, "images", "s.png"), 40, 30), ("t", 20, 60)],
                  write_images=False)
    check("map_sizes_option", d, 1.0, 1.0, {"zero": (1, 1)},
          extra=("--sizes", os.path.join(root, "sizes.txt")))

    if helper:
        darknet_writer(helper)

    # Bad input: exit status 1 and the file (and line) named.
    root = os.path.join(WORK, "err_missing_result")
    d = make_case("err_missing_result", ["zero", "one"],
                  [("a", "pgm", (64, 64), [lab(0, A)])], {"zero": [], "one": None})
    check_error("map_error_missing_result_file", d,
                [os.path.join(root, "results", "comp4_det_test_one.txt")])

    root = os.path.join(WORK, "err_label_class")
    d = make_case("err_label_class", ["zero"],
                  [("a", "pgm", (64, 64), [lab(0, A), lab(3, B)])], {"zero": []})
    check_error("map_error_label_class_out_of_range", d,
                [os.path.join(root, "labels", "a.pgm") + ":2:"])

    root = os.path.join(WORK, "err_unknown_image")
    d = make_case("err_unknown_image", ["zero"],
                  [("a", "pgm", (64, 64), [lab(0, A)])],
                  {"zero": [det("a", 0.9, A), det("zz", 0.8, A)]})
    check_error("map_error_unknown_image_id", d,
                [os.path.join(root, "results", "comp4_det_test_zero.txt") + ":2:", "zz"])

    root = os.path.join(WORK, "err_bad_line")
    d = make_case("err_bad_line", ["zero"],
                  [("a", "pgm", (64, 64), [lab(0, A)])],
                  {"zero": [det("a", 0.9, A), "a 0.8 1 2 3"]})
    check_error("map_error_malformed_result_line", d,
                [os.path.join(root, "results", "comp4_det_test_zero.txt") + ":2:"])

    root = os.path.join(WORK, "err_no_label")
    d = make_case("err_no_label", ["zero"], [("a", "png", (64, 64), None)], {"zero": []})
    check_error("map_error_missing_label_file", d, [os.path.join(root, "labels", "a.txt")])

    root = os.path.join(WORK, "err_same_id")
    d = make_case("err_same_id", ["zero"],
                  [("a", "pgm", (64, 64), [lab(0, A)]), ("a", "png", (64, 64), [lab(0, A)])],
                  {"zero": []})
    check_error("map_error_duplicate_image_id", d,
                [os.path.join(root, "images", "a.pgm"), os.path.join(root, "images", "a.png")])


def darknet_writer(helper):
    """The result files written by Darknet's print_detector_detections itself."""
    # Boxes in a 64x48 image (not square, so that x and y cannot be confused): inside,
    # touching the right and bottom edges, touching the left and top edges.  Darknet
    # gets each as center and size (what get_network_boxes returns); exact detections
    # must score AP 1 at every threshold.  The edge boxes overhang the image by 2
    # pixels in the network's prediction, as a real detector's box may: Darknet clips
    # them, and after clipping they coincide with the ground truth.
    boxes = [(0, (8, 8, 24, 40)), (0, (40, 30, 64, 48)), (1, (0, 0, 20, 12))]
    preds = [(8, 8, 24, 40), (40, 30, 66, 50), (-2, -2, 20, 12)]
    name = "darknet_writer"
    d = make_case(name, ["zero", "one"],
                  [("img", "png", (64, 48), [lab(k, b, 64, 48) for k, b in boxes])], {})
    prefix = os.path.join(WORK, name, "results", "comp4_det_test_")
    spec = "".join("img 64 48 %d %f %f %f %f %f\n" % (k, 0.9 - 0.1 * i, (x1 + x2) / 2,
                                                       (y1 + y2) / 2, x2 - x1, y2 - y1)
                   for i, ((k, _), (x1, y1, x2, y2)) in enumerate(zip(boxes, preds)))
    res = subprocess.run([helper, prefix, "zero", "one"], input=spec, text=True,
                         capture_output=True)
    if res.returncode != 0:
        return fail("map_reads_darknet_print_detector_detections",
                    "%s failed: %s" % (helper, res.stderr.strip()))
    check("map_reads_darknet_print_detector_detections", d, 1.0, 1.0,
          {"zero": (1, 1), "one": (1, 1)})


if __name__ == "__main__":
    if len(sys.argv) not in (2, 4) or (len(sys.argv) == 4 and sys.argv[2] != "--darknet-helper"):
        sys.stderr.write(__doc__)
        sys.exit(2)
    WORK = sys.argv[1]
    os.makedirs(WORK, exist_ok=True)
    cases(sys.argv[3] if len(sys.argv) == 4 else None)
    sys.exit(1 if failures else 0)
