#!/usr/bin/env python3
"""tests/mpi/weights_diff.py A.weights B.weights: how far apart two Darknet weights
files of one cfg are.  Prints `max_abs_diff max_abs_value n` (floats after the
header: major, minor, revision, seen) and exits 0; exits 2 when the files do not
hold the same number of floats."""
import struct
import sys


def floats(path):
    data = open(path, "rb").read()
    major, minor, _ = struct.unpack_from("<3i", data, 0)
    off = 12 + (8 if major * 10 + minor >= 2 else 4)
    n = (len(data) - off) // 4
    return struct.unpack_from("<%df" % n, data, off)


a, b = floats(sys.argv[1]), floats(sys.argv[2])
if len(a) != len(b):
    print("different sizes: %d and %d floats" % (len(a), len(b)))
    sys.exit(2)
diff = max((abs(x - y) for x, y in zip(a, b)), default=0.0)
print("%.9g %.9g %d" % (diff, max((abs(x) for x in b), default=0.0), len(a)))
