#!/usr/bin/env python3
"""`darknet detector train`'s log and the checkpoints' mAPs as the CSVs that
tools/retrain_report.py reads (python3 standard library only).

Usage:

    python3 tools/detect_curves.py TRAIN_LOG MAPS OUT_BASE

TRAIN_LOG  the output of `darknet detector train` (stdout and stderr); every update
           prints `N: LOSS, AVG avg, RATE rate, SECONDS seconds, IMAGES images`
           (examples/detector.c), SECONDS being the training step alone (the data of
           the batch was loaded before the clock started)
MAPS       one line per evaluated checkpoint: `UPDATES MAP50 MAP5095` (nan when a
           checkpoint could not be scored)

Writes OUT_BASE-loss.csv (updates,seconds,loss: every update, seconds summed) and
OUT_BASE.csv (updates,seconds,loss,map50,map5095: every checkpoint, loss = mean of the
updates since the previous checkpoint, nan at update 0).  Exit status 1 with a
message when the log has no update lines, skips an update, or a checkpoint lies
beyond the last update.
"""

import math
import re
import sys

LINE = re.compile(r"^(\d+): (\S+), (\S+) avg, (\S+) rate, (\S+) seconds, (\d+) images$")


def die(msg):
    sys.stderr.write("detect_curves: error: %s\n" % msg)
    sys.exit(1)


def main():
    if len(sys.argv) != 4:
        die("usage: detect_curves.py TRAIN_LOG MAPS OUT_BASE")
    log, maps, base = sys.argv[1:]
    updates = []  # (update, cumulative seconds, loss)
    total = 0.0
    try:
        with open(log, errors="replace") as f:
            for line in f:
                m = LINE.match(line.strip())
                if not m:
                    continue
                u = int(m.group(1))
                if u != len(updates) + 1:
                    die("%s: update %d follows update %d" % (log, u, len(updates)))
                total += float(m.group(5))
                updates.append((u, total, float(m.group(2))))
    except OSError as e:
        die("cannot read %s: %s" % (log, e.strerror))
    if not updates:
        die("%s has no update lines (did detector train run?)" % log)
    points = []
    try:
        with open(maps) as f:
            for n, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                try:
                    points.append((int(parts[0]), float(parts[1]), float(parts[2])))
                except (ValueError, IndexError):
                    die("%s:%d: expected `UPDATES MAP50 MAP5095`: %s" % (maps, n, line.strip()))
    except OSError as e:
        die("cannot read %s: %s" % (maps, e.strerror))
    points.sort()
    with open(base + "-loss.csv", "w") as f:
        f.write("updates,seconds,loss\n")
        for u, s, l in updates:
            f.write("%d,%.4f,%.6g\n" % (u, s, l))
    with open(base + ".csv", "w") as f:
        f.write("updates,seconds,loss,map50,map5095\n")
        prev = 0
        for u, m50, m95 in points:
            if u > len(updates):
                die("checkpoint at update %d, but %s ends at update %d" % (u, log, len(updates)))
            window = [l for _, _, l in updates[prev:u]]
            loss = sum(window) / len(window) if window else math.nan
            secs = updates[u - 1][1] if u > 0 else 0.0
            f.write("%d,%.4f,%.6g,%.6g,%.6g\n" % (u, secs, loss, m50, m95))
            prev = u


if __name__ == "__main__":
    main()
