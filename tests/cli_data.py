"""tests/cli_data.py DIR: the tiny classifier data set of the end-to-end tests
(test_cli.sh, test_crash_save.sh, test_valgrind.sh).

Eight 8x8 gray PGM images in DIR/img, four per class: `lbzero` is bright on the left,
`lbone` on the right (Darknet finds a label by substring search over the path, so
neither name may occur in the other or in the folders).  Writes DIR/train.list,
DIR/labels.txt and DIR/cli.data (backup folder DIR/backup, which it creates)."""
import os
import random
import sys

w = sys.argv[1]
os.makedirs(w + "/img", exist_ok=True)
os.makedirs(w + "/backup", exist_ok=True)
rnd = random.Random(1)
paths = []
for i in range(8):
    label = ("lbzero", "lbone")[i % 2]
    px = bytearray()
    for y in range(8):
        for x in range(8):
            bright = (x < 4) if label == "lbzero" else (x >= 4)
            px.append(min(255, (200 if bright else 40) + rnd.randrange(40)))
    p = "%s/img/%02d_%s.pgm" % (w, i, label)
    with open(p, "wb") as f:
        f.write(b"P5\n8 8\n255\n" + bytes(px))
    paths.append(p)
open(w + "/train.list", "w").write("\n".join(paths) + "\n")
open(w + "/labels.txt", "w").write("lbzero\nlbone\n")
open(w + "/cli.data", "w").write(
    "classes=2\ntrain=%s/train.list\nvalid=%s/train.list\nlabels=%s/labels.txt\nbackup=%s/backup\ntop=1\n" % (w, w, w, w))
