#!/usr/bin/env python3
"""Summary table and gnuplot plots of SGD vs K-FAC runs (tools/retrain_googlenet.sh,
tools/retrain_detect.sh).  Python standard library only; the plots need gnuplot.

Usage:

    python3 tools/retrain_report.py DIR --kind classify|detect --seeds 1,2,3
        --updates N --title TEXT [--opts sgd,kfac] [--no-plots] [--smooth W]

DIR holds, for each optimizer OPT of --opts (default sgd,kfac) and seed S:

  classify  DIR/OPT-seedS.csv: updates,seconds,loss,accuracy,test_loss,window_loss
            (one row per evaluation; loss = cross-entropy over the whole training
            set, accuracy = top-1 on the test set, window_loss = mean training loss
            of the updates since the previous row)
  detect    DIR/OPT-seedS.csv: updates,seconds,loss,map50,map5095 (one row per
            checkpoint; loss = mean training loss of the updates since the previous
            checkpoint) and DIR/OPT-seedS-loss.csv: updates,seconds,loss (every update,
            as `detector train` prints it)

seconds: training seconds only (no data loading, no evaluation), summed up to that
update.  A missing file is an error; a run that ends before N updates or has a
non-finite loss counts as non-finite.

The issue's measures, per seed (SGD and K-FAC of one seed start from the same
weights), then the median over seeds:
  - SGD's training loss after its N updates is the target; the updates K-FAC needs to
    reach it, over N (target: <= 0.5).  classify: the whole-training-set loss at the
    evaluations; detect: the mean loss of the last W updates (--smooth, default 100)
    against K-FAC's mean of W updates ending at each update.
  - SGD's final test accuracy (mAP@0.5) is the target; K-FAC's updates to reach it,
    at its evaluations (checkpoints), over N (target: <= 0.5).
  - final loss, accuracy / mAP@0.5 and mAP@0.5:0.95, seconds per update, K-FAC/SGD.
  - runs with a non-finite loss (target for K-FAC at SGD's rate: none).
With one optimizer only (--opts sgd, e.g. for a learning-rate check), its own figures.

Writes DIR/summary.txt (the table, also printed) and, unless --no-plots, the PNGs:
  classify  loss-updates.png, loss-seconds.png, accuracy-updates.png
  detect    map-updates.png, map-seconds.png, loss-updates.png
each with every seed as a thin line and the median over seeds as a thick one.
"""

import argparse
import csv
import math
import os
import shutil
import statistics
import subprocess
import sys

OPTS = (("sgd", "SGD"), ("kfac", "K-FAC"))
COLORS = {"sgd": ("#1f5fbf", "#a9c4ee"), "kfac": ("#c0392b", "#f0b3aa")}  # thick, thin


def die(msg):
    sys.stderr.write("retrain_report: error: %s\n" % msg)
    sys.exit(1)


def read_csv(path, columns):
    """Rows of a CSV as lists of floats in the order of columns (which it must have)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        die("cannot read %s: %s" % (path, e.strerror))
    if not rows:
        die("%s is empty" % path)
    head = rows[0]
    missing = [c for c in columns if c not in head]
    if missing:
        die("%s: no column %s (has %s)" % (path, ", ".join(missing), ", ".join(head)))
    idx = [head.index(c) for c in columns]
    out = []
    for n, r in enumerate(rows[1:], 2):
        try:
            out.append([float(r[i]) for i in idx])
        except (ValueError, IndexError):
            die("%s:%d: not numbers: %s" % (path, n, ",".join(r)))
    if not out:
        die("%s has no rows" % path)
    return out


def finite(x):
    return x is not None and not math.isnan(x) and not math.isinf(x)


def median(xs):
    """Median; inf counts as larger than everything (a seed that never got there)."""
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.median(xs) if xs else math.nan


def fmt(x, spec):
    if x is None or math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "never"
    return format(x, spec)


def ratio(a, b):
    if not (finite(a) and finite(b)) or b == 0:
        return "-"
    return "%.2f" % (a / b)


def trailing_means(rows, w):
    """[(update, mean of the loss over the w updates ending there)] from update w on."""
    out = []
    acc = 0.0
    for i, r in enumerate(rows):
        acc += r[2]
        if i >= w:
            acc -= rows[i - w][2]
        if i >= w - 1:
            out.append((r[0], acc / w))
    return out


class Run:
    """One optimizer's run for one seed."""

    def __init__(self, d, kind, opt, seed, smooth):
        base = os.path.join(d, "%s-seed%s" % (opt, seed))
        if kind == "classify":
            cols = ["updates", "seconds", "loss", "accuracy", "test_loss", "window_loss"]
            self.evals = read_csv(base + ".csv", cols)
            self.score = [(r[0], r[3]) for r in self.evals]
            self.score2 = None
            self.loss_at = [(r[0], r[2]) for r in self.evals]
            self.curve = None
            losses = [r[2] for r in self.evals[1:]] + [r[5] for r in self.evals[1:]]
        else:
            cols = ["updates", "seconds", "loss", "map50", "map5095"]
            self.evals = read_csv(base + ".csv", cols)
            self.score = [(r[0], r[3]) for r in self.evals]
            self.score2 = [(r[0], r[4]) for r in self.evals]
            self.curve = read_csv(base + "-loss.csv", ["updates", "seconds", "loss"])
            self.loss_at = trailing_means(self.curve, min(smooth, len(self.curve)))
            losses = [r[2] for r in self.curve]
        self.updates = self.evals[-1][0]
        self.seconds = self.evals[-1][1]
        self.nonfinite = sum(1 for x in losses if not finite(x))
        self.final_loss = self.loss_at[-1][1] if self.loss_at else math.nan
        self.final_score = self.score[-1][1]
        self.final_score2 = self.score2[-1][1] if self.score2 else math.nan


def first_update(points, ok):
    """The first update of (update, value) points whose value satisfies ok, or inf."""
    for u, v in points:
        if finite(v) and ok(v):
            return u
    return math.inf


def seconds_at(run, update):
    """A run's training seconds at update (its per-update curve where it has one, else
    its evaluations): inf when the update was never reached, nan when unknown."""
    if not finite(update):
        return update if update == math.inf else math.nan
    for r in (run.curve or run.evals):
        if r[0] >= update:
            return r[1]
    return math.inf


def summarize(args, runs, seeds):
    n = args.updates
    score_name = "test accuracy" if args.kind == "classify" else "mAP@0.5"
    lines = []
    out = lines.append
    out("%s: %d seed(s) (%s), %d updates per run; medians over seeds"
        % (args.title, len(seeds), ",".join(seeds), n))
    if args.kind == "detect":
        out("training loss: mean of the last %d updates (detector train's per-update loss)"
            % args.smooth)
    else:
        out("training loss: cross-entropy over the whole training set")
    out("")
    per_seed = []
    reach_loss, reach_score, secs_loss, secs_score = [], [], [], []
    both = len(args.optlist) == 2
    for s in (seeds if both else []):
        sgd, kf = runs["sgd"][s], runs["kfac"][s]
        t_loss, t_score = sgd.final_loss, sgd.final_score
        ul = first_update(kf.loss_at, lambda v, t=t_loss: v <= t) if finite(t_loss) else math.nan
        # SGD ending no better than the common start (update 0) sets no target
        void = not finite(t_score) or t_score <= sgd.score[0][1]
        us = math.nan if void else first_update(kf.score[1:], lambda v, t=t_score: v >= t - 1e-9)
        reach_loss.append(ul)
        reach_score.append(us)
        # seconds: K-FAC's to the target over SGD's for its whole run (the target is
        # SGD's state at its end), what a user watching the clock compares
        for xs, u in ((secs_loss, ul), (secs_score, us)):
            t = seconds_at(kf, u)
            xs.append(t / sgd.seconds if finite(t) and sgd.seconds > 0 else t)
        per_seed.append("  seed %s: SGD's final loss %s reached by K-FAC at update %s; SGD's "
                        "final %s %s %s"
                        % (s, fmt(t_loss, ".4f"), fmt(ul, ".0f"), score_name,
                           fmt(t_score, ".4f"),
                           "(no better than at update 0: no target)" if void
                           else "at update %s" % fmt(us, ".0f")))
    rows = []

    def row(label, key, spec):
        vals = {o: median([key(runs[o][s]) for s in seeds]) for o, _ in args.optlist}
        rows.append([label] + [fmt(vals[o], spec) for o, _ in args.optlist]
                    + ([ratio(vals["kfac"], vals["sgd"])] if both else []))

    row("updates run", lambda r: r.updates, ".0f")
    row("final training loss", lambda r: r.final_loss, ".4f")
    row("final " + score_name, lambda r: r.final_score, ".4f")
    if args.kind == "detect":
        row("final mAP@0.5:0.95", lambda r: r.final_score2, ".4f")
    row("seconds per update", lambda r: r.seconds / r.updates if r.updates else math.nan, ".4f")
    nf = {o: sum(1 for s in seeds if runs[o][s].nonfinite or runs[o][s].updates < n)
          for o, _ in args.optlist}
    rows.append(["runs with a non-finite loss or cut short"]
                + ["%d of %d" % (nf[o], len(seeds)) for o, _ in args.optlist]
                + ([""] if both else []))
    w = max(len(r[0]) for r in rows) + 2
    heads = [l for _, l in args.optlist] + (["K-FAC/SGD"] if both else [])
    out("%-*s" % (w, "") + "".join(" %12s" % h for h in heads))
    for r in rows:
        out("%-*s" % (w, r[0]) + "".join(" %12s" % v for v in r[1:]))
    if not both:
        return "\n".join(lines) + "\n"
    out("")
    ml, ms = median(reach_loss), median(reach_score)
    out("K-FAC's updates to SGD's result after %d updates (paired by seed; target <= %d = N/2):"
        % (n, n // 2))
    out("%-*s %12s %12s %12s" % (w, "", "updates", "/ N", "target met"))
    for label, m in (("to SGD's final training loss", ml), ("to SGD's final " + score_name, ms)):
        out("%-*s %12s %12s %12s" % (w, label, fmt(m, ".0f"), ratio(m, n),
                                     "yes" if finite(m) and m <= n / 2 else "no"))
    out("")
    out("K-FAC's seconds to SGD's result over SGD's seconds for its %d updates (paired by seed, median; "
        "target < 1):" % n)
    for label, xs in (("to SGD's final training loss", secs_loss), ("to SGD's final " + score_name, secs_score)):
        m = median(xs)
        out("%-*s %12s %12s %12s" % (w, label, fmt(m, ".2f"), "", "yes" if finite(m) and m < 1 else "no"))
    lines.extend(per_seed)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- plots ----------------

def write_median(path, series):
    """series: list of [(x, y)] of equal length per seed (same updates); writes the
    pointwise median of x and y as a two-column CSV; returns False when empty."""
    series = [s for s in series if s]
    if not series:
        return False
    m = min(len(s) for s in series)
    with open(path, "w") as f:
        f.write("x,y\n")
        for i in range(m):
            xs = [s[i][0] for s in series]
            ys = [s[i][1] for s in series if finite(s[i][1])]
            if ys:
                f.write("%.6g,%.6g\n" % (statistics.median(xs), statistics.median(ys)))
    return True


def gq(text):
    """text as a gnuplot double-quoted string (titles are set noenhanced)."""
    return '"%s"' % text.replace("\\", "\\\\").replace('"', '\\"')


def write_xy(path, pts):
    with open(path, "w") as f:
        f.write("x,y\n")
        for x, y in pts:
            if finite(y):
                f.write("%.6g,%.6g\n" % (x, y))


def plot(args, runs, seeds, name, title, xlabel, ylabel, curves, logy=False, key="top right",
         yzero=False):
    """curves: [(label suffix, dash type, fn(run) -> [(x, y)])]; one PNG DIR/name.png;
    key: where the legend goes inside the graph (away from where the curves end);
    yzero: the y axis starts at 0 (accuracy, mAP)."""
    d = os.path.join(args.dir, "plot-data")
    os.makedirs(d, exist_ok=True)
    cmds = []
    for ci, (suffix, dt, fn) in enumerate(curves):
        for o, label in args.optlist:
            thick, thin = COLORS[o]
            for s in (seeds if len(seeds) > 1 else []):  # one seed: its median is it
                p = os.path.join(d, "%s-%d-%s-seed%s.csv" % (name, ci, o, s))
                write_xy(p, fn(runs[o][s]))
                cmds.append("%s using 1:2 with lines lw 1 dt %d lc rgb '%s' notitle"
                            % (gq(p), dt, thin))
            p = os.path.join(d, "%s-%d-%s-median.csv" % (name, ci, o))
            if write_median(p, [fn(runs[o][s]) for s in seeds]):
                t = "%s%s%s" % (label, suffix, " (median of %d seeds)" % len(seeds)
                                if len(seeds) > 1 else " (seed %s)" % seeds[0])
                cmds.append("%s using 1:2 with lines lw 2.5 dt %d lc rgb '%s' title %s"
                            % (gq(p), dt, thick, gq(t)))
    png = os.path.join(args.dir, name + ".png")
    gp = os.path.join(d, name + ".gp")
    with open(gp, "w") as f:
        f.write("set terminal pngcairo size 960,640 font 'sans,11'\n")
        f.write("set output %s\n" % gq(png))
        f.write("set datafile separator ','\n")
        if len(seeds) > 1:
            title += " (thin lines: each seed)"
        f.write("set title %s noenhanced\n" % gq(title))
        f.write("set xlabel %s noenhanced\nset ylabel %s noenhanced\n" % (gq(xlabel), gq(ylabel)))
        f.write("set grid\nset key inside %s box opaque noenhanced\n" % key)
        f.write("set xrange [0:*]\n")
        if logy:
            f.write("set logscale y\n")
        if yzero:
            f.write("set yrange [0:*]\n")
        f.write("plot " + ", \\\n     ".join(cmds) + "\n")
    res = subprocess.run(["gnuplot", gp], capture_output=True, text=True)
    if res.returncode != 0:
        die("gnuplot failed on %s:\n%s" % (gp, res.stderr))
    return png


def plots(args, runs, seeds):
    made = []
    t = args.title
    if args.kind == "classify":
        loss_u = lambda r: [(e[0], e[2]) for e in r.evals]
        loss_s = lambda r: [(e[1], e[2]) for e in r.evals]
        acc_u = lambda r: [(e[0], e[3]) for e in r.evals]
        made.append(plot(args, runs, seeds, "loss-updates", t + ": training loss",
                         "updates", "cross-entropy, whole training set",
                         [("", 1, loss_u)], logy=True))
        made.append(plot(args, runs, seeds, "loss-seconds", t + ": training loss against time",
                         "training seconds", "cross-entropy, whole training set",
                         [("", 1, loss_s)], logy=True))
        made.append(plot(args, runs, seeds, "accuracy-updates", t + ": test accuracy",
                         "updates", "top-1 test accuracy", [("", 1, acc_u)],
                         key="bottom right", yzero=True))
    else:
        m50u = lambda r: [(e[0], e[3]) for e in r.evals]
        m95u = lambda r: [(e[0], e[4]) for e in r.evals]
        m50s = lambda r: [(e[1], e[3]) for e in r.evals]
        m95s = lambda r: [(e[1], e[4]) for e in r.evals]
        w = args.smooth
        loss_u = lambda r: trailing_means(r.curve, min(w, len(r.curve)))
        made.append(plot(args, runs, seeds, "map-updates", t + ": test mAP against updates",
                         "updates", "mAP (test set)",
                         [(" mAP@0.5", 1, m50u), (" mAP@0.5:0.95", 2, m95u)],
                         key="bottom right", yzero=True))
        made.append(plot(args, runs, seeds, "map-seconds", t + ": test mAP against time",
                         "training seconds", "mAP (test set)",
                         [(" mAP@0.5", 1, m50s), (" mAP@0.5:0.95", 2, m95s)],
                         key="bottom right", yzero=True))
        made.append(plot(args, runs, seeds, "loss-updates",
                         t + ": training loss (mean of the last %d updates)" % w,
                         "updates", "detector train's loss", [("", 1, loss_u)], logy=True))
    return made


def main():
    ap = argparse.ArgumentParser(description="SGD vs K-FAC summary and plots "
                                 "(see the module docstring).")
    ap.add_argument("dir")
    ap.add_argument("--kind", choices=("classify", "detect"), required=True)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--updates", type=int, required=True, help="updates per run (N)")
    ap.add_argument("--title", required=True)
    ap.add_argument("--smooth", type=int, default=100,
                    help="detect: updates averaged for the training loss (default 100)")
    ap.add_argument("--opts", default="sgd,kfac",
                    help="optimizers run: sgd,kfac (default), sgd or kfac")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args()
    names = [o for o in args.opts.split(",") if o]
    if not names or any(o not in dict(OPTS) for o in names) or len(set(names)) != len(names):
        die("--opts %s: a comma-separated subset of sgd,kfac" % args.opts)
    args.optlist = [(o, l) for o, l in OPTS if o in names]
    if args.updates < 1 or args.smooth < 1:
        die("--updates and --smooth must be >= 1")
    seeds = [s for s in args.seeds.split(",") if s]
    if not seeds:
        die("no seeds")
    runs = {o: {s: Run(args.dir, args.kind, o, s, args.smooth) for s in seeds}
            for o, _ in args.optlist}
    text = summarize(args, runs, seeds)
    with open(os.path.join(args.dir, "summary.txt"), "w") as f:
        f.write(text)
    sys.stdout.write(text)
    if not args.no_plots:
        if not shutil.which("gnuplot"):
            die("gnuplot not found: install it with `tools/setup.sh gnuplot` (as root; it "
                "installs gnuplot-nox), or pass --no-plots")
        for p in plots(args, runs, seeds):
            print("retrain_report: wrote %s" % p)


if __name__ == "__main__":
    main()
