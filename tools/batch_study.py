#!/usr/bin/env python3
"""The batch-size study: SGD (its best rate swept per batch size) against K-FAC over
batch sizes, on the demo CNN and the digits autoencoder, through tools/kfac_compare.

Usage, from anywhere (`make study` runs it with its defaults):

  tools/batch_study.py [--cfg cfg/digits.cfg --cfg cfg/digits-ae.cfg]
      [--batches 64,128,256,512,1024,2048] [--seeds 1,2,3] [--updates N]
      [--sweep-updates N] [--grid 0.25,0.5,1,2,4] [--pass-images 128]
      [--kfac 'key=value ...'] [--kfac-stop-at-target] [--target-batch B]
      [--evals N] [--eval-growth R] [--out DIR] [--compare PATH] [--quick]
      [--no-resume] [--ranks N]

For each cfg (a classifier ending in [softmax], or an autoencoder ending in
[logistic]: kfac_compare's two tasks), trained on the demo digits
(build/data/digits, made by tools/digits_prepare.py), and each batch size B:

 1. Rate sweep (SGD, first seed): rates r0 * sqrt(B / b0) * m for m in --grid, where
    r0 and b0 are the cfg's own learning_rate and batch (the square-root scaling
    rule as the centre; the default grid, a factor 4 either way, also holds the
    linear rule up to B = 16 b0).  Each runs --sweep-updates updates; the lowest
    final training objective wins (a NaN run counts as worst).  A winner at either
    end of the grid is reported: widen the grid then.
 2. SGD at that rate and K-FAC (the same cfg plus `[kfac]` and the --kfac keys, at
    the same rate) for every seed, --updates updates each (SGD's first seed is the
    sweep's winning run itself when --sweep-updates equals --updates).  Per seed both
    start from the same weights and see the same batches (kfac_compare).  With
    --kfac-stop-at-target a K-FAC run stops at its first evaluation at or below both
    of its targets (kfac_compare -stop-below), which saves most of its time when it
    is fast; its curve then ends there.  Evaluations (test set and whole training
    set) come every --updates/--evals updates and, before that, geometrically
    (kfac_compare -eval-growth), so that updates to a target are resolved to about
    25% when they are few and to --updates/--evals when they are many.
 3. Targets, on the training objective: the classifier's mean cross-entropy over the
    whole training set (full_train_loss), the autoencoder's reconstruction error over
    the whole training set (full_train_error, Martens & Grosse's "training error"):
    - the reference target, one value per net: the median over seeds of SGD's
      objective after --updates updates at --target-batch (default the smallest
      batch).  Updates-to-target and seconds-to-target against batch size use it,
      the same level at every batch size, so that they show how each optimizer's
      updates scale with the batch ("K-FAC's updates-to-target at batch 1024 <= 1/4
      of its own at batch 64, while SGD's flatten");
    - the per-batch target, per seed: SGD's objective after --updates updates at the
      same batch size and seed; K-FAC's updates and seconds to it over SGD's give
      the issue's per-batch ratios ("SGD's error after 3000 updates in <= 1/10 of
      the updates and <= 1/3 of SGD's seconds").
    An optimizer reaches a target at its first evaluation at or below it; a run that
    never does counts as infinite, and a median that is infinite is left out of the
    plots ("-" in the tables).
 4. Writes, under --out (default build/study):
      <net>/runs/<sgd|kfac>-b<B>-seed<S>.tsv, .log   each run (kfac_compare's TSV)
      <net>/runs/sweep-b<B>-m<m>.tsv, .log           the sweep's runs
      <net>/cfg/                                      the generated cfgs
      <net>/sweep.csv      batch, multiplier, rate, final objective, chosen
      <net>/runs.csv       one row per run: rate, final objective, seconds per
                           update, updates and seconds to each target
      <net>/summary.csv    per batch size: medians over seeds, K-FAC/SGD ratios
      <net>/summary.md     the same as a Markdown table, with the targets
      <net>-updates-to-target.png, <net>-seconds-to-target.png
                           against batch size (log2 x, log y, both optimizers,
                           median and the range over seeds; dashed, perfect
                           scaling from SGD at the smallest batch: updates
                           falling as 1/batch, seconds constant)
      <net>-b<B>-curves.png  the objective against updates and against seconds,
                           every seed of both optimizers, with both targets
      <net>-examples-to-target.png
                           training images (updates x batch) to the reference
                           target against batch size: Ba, Grosse & Martens's
                           figure (c); perfect scaling is a flat line
      <net>-curves.png     the first seed's objective against training images and
                           against updates, every batch size, both optimizers:
                           their figure (b)

With --ranks N every run is a data-parallel one: `mpirun -np N` of the MPI build's
kfac_compare (build/kfac_compare-cpu-mpi, `make MPI=1`), each rank training on its
slice of the same global batch, so batch B is N ranks x B/N images (the cfgs hold
the per-rank batch B/N, subdivisions B/N/P).  The updates are those of one process at
B up to the collectives' summation order (tests/test_mpi.sh), so the study measures
the same thing; on a machine with N free cores it takes less wall time.

The generated cfgs differ from the given one only in [net]: batch=B and
subdivisions=B/P (P = --pass-images, the images of one forward pass; Darknet divides
the cfg's batch by subdivisions and updates once per batch, so B stays the update
size), learning_rate, policy=constant and max_batches.  A constant rate, so that a
budget of updates means the same at every batch size.

Seconds are kfac_compare's training time only (no evaluation), with
OPENBLAS_NUM_THREADS=1; runs go one at a time.  On a machine shared with other work
they are noisy; update counts are not.  A finished run (its .done file records the
command and the cfg's text) is not run again unless --no-resume, so a stopped study
continues where it stopped and a second call only redraws.  The plan (runs, training
images per net) is printed first, and each run's line ends with an estimate of the
time left.

--quick: batches 64,256, one seed, budgets 40 updates (classifier) and 100
(autoencoder), grid 0.5,1,2, 4 regular evaluations per run and growth 2, output
in build/study-quick: a smoke test of the whole pipeline (minutes, see
BENCHMARKS.md), not a measurement.

Needs gnuplot (Debian's gnuplot-nox: `tools/setup.sh gnuplot` as root) and python3;
standard library only.
"""

import argparse
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join("build", "data", "digits", "digits.data")
OPTS = (("sgd", "SGD"), ("kfac", "K-FAC"))


def die(msg):
    sys.stderr.write("batch_study: error: %s\n" % msg)
    sys.exit(1)


def say(msg):
    print("batch_study: " + msg, flush=True)


# ------------------------------------------------------------------ cfgs -----------

def read_net_options(text, path):
    """The [net] section's key=value pairs of a cfg's text, as a dict of strings."""
    opts, in_net = {}, False
    for line in text.splitlines():
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        if s.startswith("["):
            if in_net:
                break
            in_net = s in ("[net]", "[network]")
            continue
        if in_net and "=" in s:
            k, v = s.split("=", 1)
            opts[k.strip()] = v.strip()
    if not opts:
        die("%s has no [net] section" % path)
    return opts


def cfg_task(text):
    """'autoencoder' when the last section is [logistic] (kfac_compare's rule, which
    also checks the sizes), else 'classifier'."""
    sections = re.findall(r"^\s*\[([a-z]+)\]", text, re.M)
    sections = [s for s in sections if s != "kfac"]
    return "autoencoder" if sections and sections[-1] == "logistic" else "classifier"


def cfg_with(text, batch, subdivisions, rate, updates, kfac):
    """The cfg's text with [net]'s batch, subdivisions, learning_rate, policy and
    max_batches replaced (or added) and, when kfac is not None, a [kfac] section with
    those lines appended."""
    new = {"batch": str(batch), "subdivisions": str(subdivisions),
           "learning_rate": repr(rate), "policy": "constant", "max_batches": str(updates)}
    out, in_net, done = [], False, set()
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("["):
            if in_net:
                out.extend("%s=%s" % (k, v) for k, v in new.items() if k not in done)
                done.update(new)
            in_net = s in ("[net]", "[network]")
        elif in_net and "=" in s and not s.startswith("#"):
            k = s.split("=", 1)[0].strip()
            if k in new:
                line = "%s=%s" % (k, new[k])
                done.add(k)
        out.append(line)
    if in_net:
        out.extend("%s=%s" % (k, v) for k, v in new.items() if k not in done)
    if re.search(r"^\s*\[kfac\]", text, re.M):
        die("the cfg already has a [kfac] section: give the plain SGD cfg")
    if kfac is not None:
        out += ["", "[kfac]"] + kfac
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ runs -----------

def read_tsv(path):
    """kfac_compare's TSV as a list of dicts of floats."""
    with open(path) as f:
        lines = [l.rstrip("\n").split("\t") for l in f if l.strip()]
    if len(lines) < 2:
        die("%s has no evaluation rows" % path)
    return [{k: float(v) for k, v in zip(lines[0], row)} for row in lines[1:]]


def passes(b, ranks, pass_images):
    """(images per rank, subdivisions) of an update of b images over ranks ranks in
    forward passes of at most pass_images; dies when they do not divide."""
    if b % ranks:
        die("batch %d is not a multiple of --ranks %d" % (b, ranks))
    rb = b // ranks
    if rb > pass_images and rb % pass_images:
        die("batch %d (%d per rank) is not a multiple of --pass-images %d" % (b, rb, pass_images))
    return rb, max(1, rb // pass_images)


def check_tools(compare, ranks=1):
    """Dies unless kfac_compare (and mpirun for ranks > 1) can run; makes the demo data."""
    if ranks > 1 and not shutil.which("mpirun"):
        die("--ranks %d: mpirun not found (tools/setup.sh mpi installs Open MPI)" % ranks)
    if not os.access(compare, os.X_OK):
        die("%s not found: run make first%s" % (compare, " MPI=1" if ranks > 1 else ""))
    if subprocess.call([sys.executable, "tools/digits_prepare.py", "--out",
                        os.path.join("build", "data", "digits")], stdout=subprocess.DEVNULL) != 0:
        die("tools/digits_prepare.py failed")


class Runner:
    """Runs kfac_compare one run at a time, skipping finished runs (resume), and
    prints progress with, when estimate is on, an estimate of what is left: the
    images still to train (planned by the caller, per net) at the wall seconds per
    image measured so far on that net (on all nets before the first run of a net)."""

    def __init__(self, compare, resume=True, ranks=1, estimate=True):
        self.compare = compare
        self.ranks = ranks
        self.resume = resume
        self.estimate = estimate
        self.total = 0       # runs planned (set by the caller)
        self.done = 0        # runs finished, kept or reused
        self.todo = {}       # net -> images still to train (set by the caller)
        self.wall = {}       # net -> [wall seconds, images] of the runs actually run

    def account(self, net, images):
        """One planned run is done (run, kept or reused): count it."""
        self.done += 1
        self.todo[net] -= images

    def eta(self):
        tw = sum(w for w, _ in self.wall.values())
        ti = sum(i for _, i in self.wall.values())
        if not ti or not self.estimate:
            return ""
        left = sum(n * (self.wall[k][0] / self.wall[k][1] if k in self.wall and self.wall[k][1]
                        else tw / ti) for k, n in self.todo.items())
        return ", about %s left" % hms(left)

    def run(self, net, cfg_path, tsv, seed, updates, eval_every, growth, images_per_update, label,
            stop_below=None):
        """Trains cfg_path for updates updates (fewer with stop_below: kfac_compare
        -stop-below); returns the TSV's rows."""
        cmd = [self.compare, "-data", DATA, "-cfg", cfg_path, "-seed", str(seed),
               "-iters", str(updates), "-eval", str(eval_every), "-eval-growth", str(growth),
               "-full-train", "-out", tsv]
        if self.ranks > 1:
            cmd = ["mpirun", "--oversubscribe", "-np", str(self.ranks)] + cmd
        if stop_below is not None and not math.isinf(stop_below):
            cmd += ["-stop-below", "%.9g" % stop_below]
        done_file = tsv + ".done"
        key = " ".join(cmd) + "\n" + open(cfg_path).read()
        images = updates * images_per_update
        self.account(net, images)
        if self.resume and os.path.exists(done_file) and os.path.exists(tsv):
            with open(done_file) as f:
                if f.read() == key:
                    say("[%d/%d] %s: done before, kept" % (self.done, self.total, label))
                    return read_tsv(tsv)
        log = tsv[:-4] + ".log"
        t = time.time()
        with open(log, "w") as f:
            rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        if rc != 0:
            die("%s failed (status %d): see %s" % (" ".join(cmd), rc, log))
        with open(done_file, "w") as f:
            f.write(key)
        rows = read_tsv(tsv)
        wall = time.time() - t
        w = self.wall.setdefault(net, [0.0, 0])
        w[0] += wall
        w[1] += rows[-1]["iter"] * images_per_update or images
        last = rows[-1]
        say("[%d/%d] %s: %d updates, objective %s, %.3f s/update, %.0f s%s"
            % (self.done, self.total, label, last["iter"], fmt(objective(last), ".4g"),
               last["train_seconds"] / max(last["iter"], 1), wall, self.eta()))
        return rows


def hms(s):
    s = int(s)
    return "%dh%02dm" % (s // 3600, s % 3600 // 60) if s >= 3600 else "%dm%02ds" % (s // 60, s % 60)


def objective(row):
    """The training objective of a TSV row: the autoencoder's whole-training-set
    reconstruction error, else the classifier's whole-training-set loss."""
    return row["full_train_error"] if "full_train_error" in row else row["full_train_loss"]


def final_objective(rows, updates=None):
    """The objective at the last evaluation; inf when it is NaN or when the run
    stopped before updates (kfac_compare stops on a NaN loss: diverged)."""
    v = objective(rows[-1])
    if math.isnan(v) or (updates is not None and rows[-1]["iter"] < updates):
        return math.inf
    return v


def objective_at(rows, update):
    """The objective at the first evaluation at or after update (inf if none)."""
    for r in rows:
        if r["iter"] >= update:
            return math.inf if math.isnan(objective(r)) else objective(r)
    return math.inf


def to_target(rows, target):
    """(updates, seconds) at the first evaluation whose objective is <= target."""
    for r in rows:
        v = objective(r)
        if not math.isnan(v) and v <= target:
            return r["iter"], r["train_seconds"]
    return math.inf, math.inf


def fmt(x, spec):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    if math.isinf(x):
        return "-"
    return format(x, spec)


def fmt_ratio(x, spec=".2f"):
    """A ratio for the tables: '-' when either side never reached its target."""
    return "-" if math.isnan(x) else format(x, spec)


def ratio(a, b):
    if any(math.isinf(v) or math.isnan(v) for v in (a, b)) or b == 0:
        return math.nan
    return a / b


def finite_min(xs):
    """The least finite value of xs (nan when none): the range bars of the plots span
    the seeds that reached a target."""
    f = [x for x in xs if not (math.isinf(x) or math.isnan(x))]
    return min(f) if f else math.nan


def finite_max(xs):
    f = [x for x in xs if not (math.isinf(x) or math.isnan(x))]
    return max(f) if f else math.nan


def median(xs):
    return statistics.median(xs) if xs else math.nan


def csv_value(x):
    if isinstance(x, float):
        return "" if math.isnan(x) or math.isinf(x) else "%.6g" % x
    return str(x)


def write_csv(path, header, rows):
    with open(path, "w") as f:
        f.write(",".join(header) + "\n")
        for r in rows:
            f.write(",".join(csv_value(v) for v in r) + "\n")


def gp_value(x):
    """A value for gnuplot's data files: NaN (skipped) for missing or infinite."""
    return "NaN" if math.isnan(x) or math.isinf(x) else "%.6g" % x


# ------------------------------------------------------------------ plots ----------

def gnuplot(script, path):
    with open(path, "w") as f:
        f.write(script)
    r = subprocess.run(["gnuplot", path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True)
    if r.returncode != 0:
        die("gnuplot %s failed:\n%s" % (path, r.stdout))


def gp_str(s):
    """A gnuplot double-quoted string (newlines become line breaks)."""
    return '"%s"' % s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def log_tics(values):
    """Tic marks for a log axis spanning the finite positive values: 1-2-5 per decade
    (1-2-3-5-7 when they span less than a decade, powers of ten from four decades),
    so that a short range still gets labels; '' when there is nothing to span."""
    vs = [v for v in values if v > 0 and not (math.isinf(v) or math.isnan(v))]
    if not vs:
        return ""
    lo, hi = min(vs), max(vs)
    decades = math.log10(hi / lo) if hi > lo else 0
    mant = (1, 2, 3, 5, 7) if decades < 1 else (1, 2, 5) if decades < 4 else (1,)
    tics = []
    e = math.floor(math.log10(lo)) - 1
    while 10 ** e <= hi * 10:
        tics += [m * 10 ** e for m in mant]
        e += 1
    # one tic beyond each end, so that the autoscaled range ends on a label
    below = [t for t in tics if t <= lo]
    above = [t for t in tics if t >= hi]
    tics = [t for t in tics if (below and t >= below[-1] or not below) and (above and t <= above[0] or not above)]
    # the range a little wider than the end tics, so that gnuplot keeps their labels
    return "set ytics (%s)\nset yrange [%g:%g]\n" % (", ".join("%g" % t for t in tics),
                                                     tics[0] / 1.03, tics[-1] * 1.03)


# per-seed point types: circle, square, triangle, diamond, then gnuplot's own
POINTS = (7, 5, 9, 13, 11, 3, 1, 2)


def plot_scaling(out, net, what, col, unit, batches, summary, target_text):
    """<net>-<what>-to-target.png: median and range over seeds against batch size."""
    dat = os.path.join(out, net, "%s-to-target.dat" % what)
    values = []
    with open(dat, "w") as f:
        f.write("# batch  sgd_median sgd_min sgd_max  kfac_median kfac_min kfac_max\n")
        for b in batches:
            s = summary[b]
            row = [s[o][col][k] for o in ("sgd", "kfac") for k in ("median", "min", "max")]
            values += row
            f.write("%d  %s\n" % (b, "  ".join(gp_value(v) for v in row)))
    ref = summary[batches[0]]["sgd"][col]["median"]
    png = os.path.join(out, "%s-%s-to-target.png" % (net, what))
    ideal, ideal_values = "", []
    if not (math.isinf(ref) or math.isnan(ref)):
        if what == "updates":
            # updates falling as 1/batch
            ideal = (", %s * %d / x with lines dashtype 2 lc rgb 'gray50' title "
                     "'perfect scaling from SGD at batch %d (updates x 1/batch)'"
                     % (gp_value(ref), batches[0], batches[0]))
            ideal_values = [ref * batches[0] / batches[-1]]
        else:
            # updates falling as 1/batch: the images they take stay the same, and so do
            # the seconds at a cost per update growing as the batch
            ideal = (", %s with lines dashtype 2 lc rgb 'gray50' title "
                     "'perfect scaling from SGD at batch %d (%s constant)'"
                     % (gp_value(ref), batches[0], "images" if what == "examples" else "seconds"))
    missing = [name for key, name in OPTS
               if any(math.isinf(summary[b][key][col]["median"]) for b in batches)]
    note = ""
    if missing:
        note = "\n(no point: the median run did not reach the target in its budget: %s)" % ", ".join(
            "%s at batch %s" % (name, ", ".join(str(b) for b in batches
                                                if math.isinf(summary[b][key][col]["median"])))
            for key, name in OPTS if name in missing)
    script = """set terminal pngcairo size 1100,700 font ",11" noenhanced
set output %(png)s
set title %(title)s
set xlabel "batch size (images per update)"
set ylabel %(ylabel)s
set logscale x 2
set logscale y
set xtics (%(xtics)s)
set xrange [%(xmin)g:%(xmax)g]
%(ytics)sset grid
set key outside center bottom horizontal box maxrows 2
set bmargin 7
set datafile missing "NaN"
plot %(dat)s using 1:2:3:4 with yerrorlines lw 2 pt 7 lc rgb "#1f5fbf" title "SGD (best rate per batch size)", \\
     %(dat)s using 1:5:6:7 with yerrorlines lw 2 pt 5 lc rgb "#c0392b" title "K-FAC (SGD's rate)"%(ideal)s
""" % {"png": gp_str(png),
       "title": gp_str("%s: %s to the reference target (median over seeds; bars: range over "
                       "the seeds that reached it)\n%s%s" % (
                           net, {"updates": "updates", "examples": "training images"}.get(
                               what, "training seconds"), target_text, note)),
       "ylabel": gp_str("%s to target" % unit),
       "xtics": ", ".join('"%d" %d' % (b, b) for b in batches),
       "xmin": batches[0] / 1.4, "xmax": batches[-1] * 1.4, "dat": gp_str(dat), "ideal": ideal,
       "ytics": log_tics(values + ideal_values)}
    gnuplot(script, dat[:-4] + ".gp")
    return png


def plot_curves(out, net, b, subdivisions, ranks, runs, targets, objective_name):
    """<net>-b<B>-curves.png: the objective against updates and against seconds."""
    series, values = [], []
    for key, name in OPTS:
        for i, (seed, rows) in enumerate(runs[key]):
            dat = os.path.join(out, net, "curve-%s-b%d-seed%s.dat" % (key, b, seed))
            with open(dat, "w") as f:
                f.write("# iter train_seconds objective\n")
                for r in rows:
                    f.write("%d %.4f %s\n" % (r["iter"], r["train_seconds"], gp_value(objective(r))))
                    values.append(objective(r))
            series.append((dat, "%s seed %s" % (name, seed), "#1f5fbf" if key == "sgd" else "#c0392b",
                           POINTS[i % len(POINTS)]))
    png = os.path.join(out, "%s-b%d-curves.png" % (net, b))
    lines = []
    for i, (label, value, color, _) in enumerate(targets):
        if not (math.isinf(value) or math.isnan(value)):
            values.append(value)
            lines.append("%s with lines dashtype %d lw 1.5 lc rgb %s title %s"
                         % (gp_value(value), 2 + i, gp_str(color), gp_str("%s %.4g" % (label, value))))

    def plot_cmd(xcol):
        parts = ["%s using %d:3 with linespoints lw 1.5 pt %d ps 0.6 lc rgb %s title %s"
                 % (gp_str(d), xcol, pt, gp_str(c), gp_str(t)) for d, t, c, pt in series]
        return "plot " + ", \\\n     ".join(parts + lines) + "\n"

    two_panels(png, "%s, batch %d (%s%d x %d images per pass): training objective of each run\n"
               "dashed: %s; dotted: %s" % (net, b, "%d ranks x " % ranks if ranks > 1 else "",
                                           subdivisions, b // ranks // subdivisions, targets[0][3], targets[1][3]),
               objective_name, values, [("", "updates", plot_cmd(1)),
                                        ("", "training seconds (kfac_compare's own, no evaluation)", plot_cmd(2))],
               0.76, os.path.join(out, net, "curves-b%d.gp" % b))
    return png


def two_panels(png, title, ylabel, values, panels, right, gp_path):
    """Two plots side by side, log y, one key at the right outside both; panels:
    (extra gnuplot lines, x label, plot command) each."""
    script = """set terminal pngcairo size 1600,620 font ",11" noenhanced
set output %s
set multiplot layout 1,2 title %s margins 0.05,%g,0.11,0.88 spacing 0.07
set logscale y
%sset grid
set datafile missing "NaN"
set ylabel %s
unset key
""" % (gp_str(png), gp_str(title), right, log_tics(values), gp_str(ylabel))
    for i, (extra, xlabel, cmd) in enumerate(panels):
        if i == 1:
            script += "set key at screen %g,0.88 left top box spacing 1.1 reverse Left\n" % (right + 0.015)
        script += "%sset xlabel %s\n%s" % (extra, gp_str(xlabel), cmd)
    gnuplot(script + "unset multiplot\n", gp_path)


# one colour per batch size, dark to light as the batch grows
BATCH_COLORS = ("#1b4f72", "#2e86c1", "#17a589", "#d4ac0d", "#ca6f1e", "#922b21", "#6c3483", "#566573")


def plot_all_curves(out, net, batches, seed, runs, ref_target, target_text, objective_name):
    """<net>-curves.png: one seed's objective against training images and against
    updates, every batch size, SGD solid and K-FAC dashed."""
    series, values = [], []
    for i, b in enumerate(batches):
        for key, name in OPTS:
            rows = dict(runs[b][key]).get(seed)
            if rows is None:
                continue
            dat = os.path.join(out, net, "all-%s-b%d.dat" % (key, b))
            with open(dat, "w") as f:
                f.write("# iter images objective\n")
                for r in rows:
                    f.write("%d %d %s\n" % (r["iter"], r["iter"] * b, gp_value(objective(r))))
                    values.append(objective(r))
            series.append((dat, "%s, batch %d" % (name, b), BATCH_COLORS[i % len(BATCH_COLORS)],
                           1 if key == "sgd" else 2, POINTS[0] if key == "sgd" else POINTS[1]))
    png = os.path.join(out, "%s-curves.png" % net)
    target = ""
    if not (math.isinf(ref_target) or math.isnan(ref_target)):
        values.append(ref_target)
        target = ", \\\n     %s with lines dashtype 3 lw 1.5 lc rgb 'black' title %s" % (
            gp_value(ref_target), gp_str("reference target %.4g" % ref_target))

    def plot_cmd(xcol):
        parts = ["%s using %d:3 with linespoints dashtype %d lw 1.5 pt %d ps 0.5 lc rgb %s title %s"
                 % (gp_str(d), xcol, dt, pt, gp_str(c), gp_str(t)) for d, t, c, dt, pt in series]
        return "plot " + ", \\\n     ".join(parts) + target + "\n"

    two_panels(png, "%s, seed %s: training objective against images and against updates at every "
               "batch size (SGD solid, K-FAC dashed)\n%s" % (net, seed, target_text),
               objective_name, values, [("set logscale x\n", "training images (updates x batch)", plot_cmd(2)),
                                        ("unset logscale x\n", "updates", plot_cmd(1))],
               0.78, os.path.join(out, net, "curves-all.gp"))
    return png


# ------------------------------------------------------------------ study ----------

def study_net(args, runner, cfg_path):
    text = open(os.path.join(ROOT, cfg_path)).read()
    net = os.path.splitext(os.path.basename(cfg_path))[0]
    task = cfg_task(text)
    nopt = read_net_options(text, cfg_path)
    r0 = float(nopt.get("learning_rate", "0.001"))
    b0 = int(nopt.get("batch", "1"))
    updates, sweep_updates = budgets(args, task)
    eval_every = max(1, updates // args.evals)
    objective_name = ("reconstruction error, whole training set" if task == "autoencoder"
                      else "cross-entropy, whole training set")
    d = os.path.join(args.out, net)
    for sub in ("runs", "cfg"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    say("== %s (%s): cfg rate %g at batch %d; %d updates per run (sweep %d), evaluations "
        "every %d updates and geometrically (x%g) before; objective: %s"
        % (net, task, r0, b0, updates, sweep_updates, eval_every, args.eval_growth, objective_name))

    def write_cfg(b, rate, kfac, name):
        # the cfg holds one rank's share; subdivisions split that share into passes
        rb, sub = passes(b, args.ranks, args.pass_images)
        path = os.path.join(d, "cfg", name)
        with open(path, "w") as f:
            f.write(cfg_with(text, rb, sub, rate, max(updates, sweep_updates), kfac))
        return path, sub

    # 1. rate sweep, first seed
    seed0 = args.seeds[0]
    best, sweep_rows = {}, []
    for b in args.batches:
        results = []
        for m in args.grid:
            rate = r0 * math.sqrt(b / b0) * m
            cfg, _ = write_cfg(b, rate, None, "sweep-b%d-m%g.cfg" % (b, m))
            tsv = os.path.join(d, "runs", "sweep-b%d-m%g.tsv" % (b, m))
            rows = runner.run(net, cfg, tsv, seed0, sweep_updates, eval_every, args.eval_growth, b,
                              "%s batch %d sweep rate %.4g (x%g) seed %s" % (net, b, rate, m, seed0))
            results.append((final_objective(rows, sweep_updates), m, rate, tsv))
        fin, m, rate, tsv = min(results)
        best[b] = (rate, m, tsv)
        for r in results:
            sweep_rows.append((b, r[1], r[2], r[0], int(r[1] == m)))
        edge = ""
        if len(args.grid) > 1 and m in (args.grid[0], args.grid[-1]):
            edge = " (at the edge of the grid: widen --grid)"
        say("%s batch %d: SGD's best rate %.4g (x%g of the square-root-scaled %.4g), "
            "objective %s after %d updates%s" % (net, b, rate, m, r0 * math.sqrt(b / b0),
                                                  fmt(fin, ".4g"), sweep_updates, edge))
    write_csv(os.path.join(d, "sweep.csv"), ["batch", "multiplier", "rate", "final_objective", "chosen"],
              sweep_rows)

    # 2. SGD at the best rate, every seed (the sweep's own run when it is the same run)
    runs = {b: {"sgd": [], "kfac": []} for b in args.batches}
    subdiv, cfgs = {}, {}
    for b in args.batches:
        rate = best[b][0]
        for key, _ in OPTS:
            cfgs[b, key], subdiv[b] = write_cfg(b, rate, args.kfac if key == "kfac" else None,
                                                "%s-b%d.cfg" % (key, b))
        for seed in args.seeds:
            tsv = os.path.join(d, "runs", "sgd-b%d-seed%s.tsv" % (b, seed))
            label = "%s batch %d SGD rate %.4g seed %s" % (net, b, rate, seed)
            if seed == seed0 and sweep_updates == updates:
                # same cfg text, seed and schedule as the sweep's winner: the same run
                for ext in (".tsv", ".log"):
                    shutil.copyfile(best[b][2][:-4] + ext, tsv[:-4] + ext)
                runner.done += 1
                say("[%d/%d] %s: the sweep's run" % (runner.done, runner.total, label))
                rows = read_tsv(tsv)
            else:
                rows = runner.run(net, cfgs[b, "sgd"], tsv, seed, updates, eval_every,
                                  args.eval_growth, b, label)
            runs[b]["sgd"].append((seed, rows))

    # the targets (3. below) are known once SGD has run: K-FAC may stop at them
    tb = args.target_batch or args.batches[0]
    if tb not in runs:
        die("--target-batch %d is not one of the batch sizes" % tb)
    ref_target = median([objective_at(rows, updates) for _, rows in runs[tb]["sgd"]])

    # K-FAC at SGD's rate, every seed
    for b in args.batches:
        for seed, sgd_rows in runs[b]["sgd"]:
            tsv = os.path.join(d, "runs", "kfac-b%d-seed%s.tsv" % (b, seed))
            stop = None
            if args.kfac_stop_at_target:
                stop = min(ref_target, objective_at(sgd_rows, updates))
            rows = runner.run(net, cfgs[b, "kfac"], tsv, seed, updates, eval_every, args.eval_growth, b,
                              "%s batch %d K-FAC rate %.4g seed %s" % (net, b, best[b][0], seed),
                              stop_below=stop)
            runs[b]["kfac"].append((seed, rows))

    # 3. targets
    target_text = ("SGD's %s after %d updates at batch %d: %.4g (median over seeds)"
                   % (objective_name.split(",")[0], updates, tb, ref_target))
    run_rows, summary = [], {}
    for b in args.batches:
        per_seed_target = {seed: objective_at(rows, updates) for seed, rows in runs[b]["sgd"]}
        summary[b] = {}
        for key, _ in OPTS:
            # a run that stopped early diverged, unless it stopped at its target
            full = None if key == "kfac" and args.kfac_stop_at_target else updates
            cols = {"updates": [], "examples": [], "seconds": [], "b_updates": [], "b_seconds": []}
            for seed, rows in runs[b][key]:
                u, s = to_target(rows, ref_target)
                bu, bs = to_target(rows, per_seed_target[seed])
                cols["updates"].append(u)
                cols["examples"].append(u * b)
                cols["seconds"].append(s)
                cols["b_updates"].append(bu)
                cols["b_seconds"].append(bs)
                last = rows[-1]
                run_rows.append((b, subdiv[b], key, seed, best[b][0], last["iter"],
                                 final_objective(rows, full), last["train_seconds"] / max(last["iter"], 1),
                                 ref_target, u, s, per_seed_target[seed], bu, bs))
            summary[b][key] = {c: {"median": median(v), "min": finite_min(v), "max": finite_max(v)}
                               for c, v in cols.items()}
            summary[b][key]["final"] = median([final_objective(r, full) for _, r in runs[b][key]])
            summary[b][key]["spu"] = median([r[-1]["train_seconds"] / max(r[-1]["iter"], 1)
                                             for _, r in runs[b][key]])
        summary[b]["target"] = median(list(per_seed_target.values()))
    write_csv(os.path.join(d, "runs.csv"),
              ["batch", "subdivisions", "optimizer", "seed", "rate", "updates_run", "final_objective",
               "seconds_per_update", "reference_target", "updates_to_reference", "seconds_to_reference",
               "batch_target", "updates_to_batch_target", "seconds_to_batch_target"], run_rows)
    srows = []
    for b in args.batches:
        s, k = summary[b]["sgd"], summary[b]["kfac"]
        srows.append((b, subdiv[b], best[b][0], s["updates"]["median"], k["updates"]["median"],
                      s["seconds"]["median"], k["seconds"]["median"], summary[b]["target"],
                      s["b_updates"]["median"], k["b_updates"]["median"],
                      ratio(k["b_updates"]["median"], s["b_updates"]["median"]),
                      s["b_seconds"]["median"], k["b_seconds"]["median"],
                      ratio(k["b_seconds"]["median"], s["b_seconds"]["median"]),
                      s["final"], k["final"], s["spu"], k["spu"]))
    write_csv(os.path.join(d, "summary.csv"),
              ["batch", "subdivisions", "sgd_rate", "sgd_updates_to_reference", "kfac_updates_to_reference",
               "sgd_seconds_to_reference", "kfac_seconds_to_reference", "batch_target",
               "sgd_updates_to_batch_target", "kfac_updates_to_batch_target", "kfac_over_sgd_updates",
               "sgd_seconds_to_batch_target", "kfac_seconds_to_batch_target", "kfac_over_sgd_seconds",
               "sgd_final", "kfac_final", "sgd_seconds_per_update", "kfac_seconds_per_update"], srows)

    # 4. tables and plots
    md = ["%s (%s), %d updates per run, seeds %s; objective: %s." % (
              net, task, updates, ",".join(args.seeds), objective_name),
          "Reference target: %s." % target_text, "",
          "| batch | SGD rate | updates to ref. SGD | K-FAC | seconds to ref. SGD | K-FAC "
          "| per-batch target | K-FAC/SGD updates | K-FAC/SGD seconds | final SGD | final K-FAC "
          "| s/update SGD | K-FAC |",
          "|" + "---|" * 13]
    for r in srows:
        md.append("| %d | %.4g | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r[0], r[2], fmt(r[3], ".0f"), fmt(r[4], ".0f"), fmt(r[5], ".2f"), fmt(r[6], ".2f"),
            fmt(r[7], ".4g"), fmt_ratio(r[10]), fmt_ratio(r[13]), fmt(r[14], ".4g"),
            fmt(r[15], ".4g"), fmt(r[16], ".4f"), fmt(r[17], ".4f")))
    lo, hi = args.batches[0], args.batches[-1]
    for key, name in OPTS:
        a, z = summary[lo][key]["updates"]["median"], summary[hi][key]["updates"]["median"]
        md.append("")
        md.append("%s: updates to the reference target at batch %d over batch %d: %s; training images "
                  "to it: %s at batch %d, %s at batch %d (x%s)"
                  % (name, hi, lo, fmt_ratio(ratio(z, a), ".3f"), fmt(a * lo, ".0f"), lo,
                     fmt(z * hi, ".0f"), hi, fmt_ratio(ratio(z * hi, a * lo), ".2f")))
    with open(os.path.join(d, "summary.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md), flush=True)

    pngs = [plot_scaling(args.out, net, "updates", "updates", "updates", args.batches, summary, target_text),
            plot_scaling(args.out, net, "examples", "examples", "training images", args.batches, summary,
                         target_text),
            plot_scaling(args.out, net, "seconds", "seconds", "training seconds", args.batches, summary,
                         target_text)]
    for b in args.batches:
        targets = [("reference target", ref_target, "black",
                    "the reference target, SGD after %d updates at batch %d" % (updates, tb)),
                   ("per-batch target", summary[b]["target"], "gray40",
                    "the per-batch target, SGD after %d updates at this batch size (median over seeds)"
                    % updates)]
        pngs.append(plot_curves(args.out, net, b, subdiv[b], args.ranks, runs[b], targets, objective_name))
    pngs.append(plot_all_curves(args.out, net, args.batches, args.seeds[0], runs, ref_target, target_text,
                                objective_name))
    return updates, sweep_updates, pngs


def budgets(args, task):
    """(updates per run, updates per sweep run) for a cfg of this task."""
    updates = args.updates or (args.quick_updates[task] if args.quick else args.default_updates[task])
    return updates, args.sweep_updates or updates


def main():
    ap = argparse.ArgumentParser(description="SGD against K-FAC over batch sizes (see the file's "
                                 "docstring for the method and the outputs).")
    ap.add_argument("--cfg", action="append", help="a plain SGD cfg (repeatable; default "
                    "cfg/digits.cfg and cfg/digits-ae.cfg)")
    ap.add_argument("--batches", help="batch sizes, comma-separated (default 64,...,2048)")
    ap.add_argument("--seeds", help="seeds, comma-separated (default 1,2,3); the first one sweeps")
    ap.add_argument("--updates", type=int, help="updates per run (default 500 for a classifier, "
                    "3000 for an autoencoder)")
    ap.add_argument("--sweep-updates", type=int, help="updates per sweep run (default --updates)")
    ap.add_argument("--grid", help="multipliers of the square-root-scaled rate (default "
                    "0.25,0.5,1,2,4)")
    ap.add_argument("--pass-images", type=int, default=128,
                    help="images per forward pass: subdivisions = batch / this (default 128)")
    ap.add_argument("--kfac", default="", help="[kfac] keys for the K-FAC runs, space-separated "
                    "key=value (default none: K-FAC's defaults)")
    ap.add_argument("--target-batch", type=int, help="batch size of the reference target "
                    "(default the smallest)")
    ap.add_argument("--evals", type=int, help="regular evaluations per run: kfac_compare -eval "
                    "updates/this (default 30, quick 4)")
    ap.add_argument("--eval-growth", type=float, help="kfac_compare -eval-growth: geometric "
                    "evaluations before the regular ones (default 1.25, quick 2)")
    ap.add_argument("--kfac-stop-at-target", action="store_true",
                    help="stop each K-FAC run at the lower of its two targets (kfac_compare "
                    "-stop-below): its curves end there, its 'final' is that point")
    ap.add_argument("--out", help="output folder (default build/study, quick build/study-quick)")
    ap.add_argument("--compare", default=os.environ.get("KFAC_COMPARE", os.path.join("build", "kfac_compare")))
    ap.add_argument("--quick", action="store_true", help="smoke test: batches 64,256, seed 1, "
                    "40/100 updates, grid 0.5,1,2, fewer evaluations")
    ap.add_argument("--no-resume", action="store_true", help="rerun runs that finished before")
    ap.add_argument("--ranks", type=int, default=1, help="data-parallel ranks per run (mpirun -np N of "
                    "the MPI build's kfac_compare; default 1, no mpirun): batch B is N x B/N")
    args = ap.parse_args()

    os.chdir(ROOT)
    if not shutil.which("gnuplot"):
        die("gnuplot not found: install Debian's gnuplot-nox (as root: tools/setup.sh gnuplot; "
            "otherwise: sudo apt-get install gnuplot-nox)")
    if args.ranks < 1:
        die("--ranks must be at least 1")
    if args.ranks > 1:
        if args.compare == ap.get_default("compare"):
            args.compare = os.path.join("build", "kfac_compare-cpu-mpi")
        if os.getuid() == 0:
            # Open MPI refuses root unless told twice
            os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
            os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    args.cfg = args.cfg or ["cfg/digits.cfg", "cfg/digits-ae.cfg"]
    args.batches = [int(x) for x in (args.batches or ("64,256" if args.quick else
                                                      "64,128,256,512,1024,2048")).split(",")]
    args.seeds = (args.seeds or ("1" if args.quick else "1,2,3")).split(",")
    args.grid = [float(x) for x in (args.grid or ("0.5,1,2" if args.quick else "0.25,0.5,1,2,4")).split(",")]
    args.kfac = args.kfac.split()
    args.out = args.out or os.path.join("build", "study-quick" if args.quick else "study")
    args.evals = args.evals or (4 if args.quick else 30)
    args.eval_growth = args.eval_growth or (2 if args.quick else 1.25)
    args.default_updates = {"classifier": 500, "autoencoder": 3000}
    args.quick_updates = {"classifier": 40, "autoencoder": 100}
    if sorted(args.batches) != args.batches or any(b <= 0 for b in args.batches):
        die("--batches must be positive and increasing")
    for k in args.kfac:
        if "=" not in k:
            die("--kfac %s: expected key=value" % k)
    for c in args.cfg:
        if not os.path.exists(c):
            die("no cfg %s" % c)
    check_tools(args.compare, args.ranks)
    os.makedirs(args.out, exist_ok=True)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

    runner = Runner(args.compare, not args.no_resume, args.ranks)
    # the plan, for progress and the estimate of what is left (in images trained)
    for c in args.cfg:
        net = os.path.splitext(os.path.basename(c))[0]
        u, su = budgets(args, cfg_task(open(c).read()))
        runner.total += len(args.batches) * (len(args.grid) + 2 * len(args.seeds))
        runner.todo[net] = sum(b * (su * len(args.grid) + 2 * u * len(args.seeds)) for b in args.batches)
        if su == u:  # SGD's first seed is the sweep's winner, not run again
            runner.todo[net] -= sum(b * u for b in args.batches)
    say("plan: %d runs, %s training images (%s); %s" % (
        runner.total, "%.1fM" % (sum(runner.todo.values()) / 1e6),
        ", ".join("%s %.1fM" % (k, v / 1e6) for k, v in runner.todo.items()),
        "runs finished before are kept" if not args.no_resume else "every run from scratch"))
    t0 = time.time()
    pngs = []
    for c in args.cfg:
        pngs += study_net(args, runner, c)[2]
    say("done in %s; plots:" % hms(time.time() - t0))
    for p in pngs:
        print("  " + p)


if __name__ == "__main__":
    main()
