#!/usr/bin/env python3
"""Summarize the darknet-kfac demo: SGD vs K-FAC runs of tools/kfac_compare.

Usage: python3 tools/demo_table.py --dir build/demo [--seeds 1,2,3]
           [--train-images 4000] [--batch 64] [--epochs 3]

Reads DIR/sgd-seed<S>.tsv and DIR/kfac-seed<S>.tsv (kfac_compare -out files) and
prints, per optimizer, the median over seeds of:
  - updates and training seconds until the test accuracy first reaches 90%, 95%, 97%
    (measured at kfac_compare's evaluation points; '-' when the median run never
    reached it)
  - the final test accuracy and training loss, and the mean seconds per update
and the K-FAC/SGD ratio of each. Then the optimization-speed criterion, paired by
seed: the training loss SGD has after --epochs epochs is that seed's target, and the
table gives the median over seeds of the updates and seconds each optimizer needs to
reach its seed's target (for SGD, by construction, about --epochs epochs).

The training loss is full_train_loss (the whole training set, exact) when the runs
were made with -full-train, else train_loss (the mean over the updates since the
previous evaluation, noisier). Python standard library only.
"""

import argparse
import math
import os
import statistics
import sys

THRESHOLDS = (0.90, 0.95, 0.97)
OPTIMIZERS = (("sgd", "SGD"), ("kfac", "K-FAC"))


def die(msg):
    sys.stderr.write("demo_table: error: %s\n" % msg)
    sys.exit(1)


def read_tsv(path):
    """Return the rows of a kfac_compare TSV as a list of dicts of floats."""
    try:
        with open(path) as f:
            lines = [l.rstrip("\n").split("\t") for l in f if l.strip()]
    except OSError as e:
        die("cannot read %s: %s" % (path, e))
    if len(lines) < 2:
        die("%s has no evaluation rows" % path)
    header = lines[0]
    for col in ("iter", "train_seconds", "train_loss", "test_acc"):
        if col not in header:
            die("%s: no column %s" % (path, col))
    return [{k: float(v) for k, v in zip(header, row)} for row in lines[1:]]


def loss_column(runs):
    """full_train_loss when every run has it, else train_loss."""
    for rows in runs:
        if not all("full_train_loss" in r and not math.isnan(r["full_train_loss"])
                   for r in rows):
            return "train_loss"
    return "full_train_loss"


def first_reaching(rows, key, ok):
    """(iter, seconds) of the first row where ok(row[key]), or (inf, inf)."""
    for r in rows:
        if not math.isnan(r[key]) and ok(r[key]):
            return r["iter"], r["train_seconds"]
    return math.inf, math.inf


def median(xs):
    # statistics.median handles inf: the median of (10, 20, inf) is 20, of
    # (10, inf, inf) inf, which is the meaning wanted (most runs never got there).
    return statistics.median(xs)


def fmt(x, spec):
    if x is None or math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "-"
    return format(x, spec)


def ratio(k, s):
    if any(v is None or math.isnan(v) or math.isinf(v) for v in (k, s)) or s == 0:
        return "-"
    return "%.2f" % (k / s)


def main():
    ap = argparse.ArgumentParser(description="Summarize the SGD vs K-FAC demo runs.")
    ap.add_argument("--dir", default=os.path.join("build", "demo"))
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--train-images", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=64, help="images per update")
    ap.add_argument("--epochs", type=float, default=3.0,
                    help="epochs after which SGD's training loss is the target")
    args = ap.parse_args()
    seeds = [s for s in args.seeds.split(",") if s]

    runs = {}
    for key, _ in OPTIMIZERS:
        runs[key] = [read_tsv(os.path.join(args.dir, "%s-seed%s.tsv" % (key, s)))
                     for s in seeds]
    lcol = loss_column(runs["sgd"] + runs["kfac"])

    # Rows of the table: (label, {optimizer: value}, format)
    table = []
    for t in THRESHOLDS:
        its, secs = {}, {}
        for key, _ in OPTIMIZERS:
            hits = [first_reaching(rows, "test_acc", lambda v, t=t: v >= t - 1e-9)
                    for rows in runs[key]]
            its[key] = median([h[0] for h in hits])
            secs[key] = median([h[1] for h in hits])
        table.append(("updates to %d%% test acc" % round(t * 100), its, ".0f"))
        table.append(("seconds to %d%% test acc" % round(t * 100), secs, ".2f"))
    final_acc, final_loss, per_update, final_iter = {}, {}, {}, {}
    for key, _ in OPTIMIZERS:
        final_acc[key] = median([rows[-1]["test_acc"] for rows in runs[key]])
        final_loss[key] = median([rows[-1][lcol] for rows in runs[key]])
        per_update[key] = median([rows[-1]["train_seconds"] / rows[-1]["iter"]
                                  if rows[-1]["iter"] else math.nan for rows in runs[key]])
        final_iter[key] = median([rows[-1]["iter"] for rows in runs[key]])
    table.append(("final test accuracy", final_acc, ".4f"))
    table.append(("final training loss", final_loss, ".4f"))
    table.append(("seconds per update", per_update, ".4f"))

    print("darknet-kfac demo: %d seeds (%s), medians over seeds; training loss = %s"
          % (len(seeds), ",".join(seeds), lcol))
    print("runs: SGD %s updates, K-FAC %s updates (a run stops early only on a NaN loss)"
          % (fmt(final_iter["sgd"], ".0f"), fmt(final_iter["kfac"], ".0f")))
    print()
    w = max(len(r[0]) for r in table) + 2
    print("%-*s %12s %12s %12s" % (w, "", "SGD", "K-FAC", "K-FAC/SGD"))
    for label, vals, spec in table:
        print("%-*s %12s %12s %12s" % (w, label, fmt(vals["sgd"], spec),
                                       fmt(vals["kfac"], spec), ratio(vals["kfac"], vals["sgd"])))

    # Optimization speed, paired by seed (same initial weights, same batches): SGD's
    # training loss at its first evaluation after args.epochs epochs is the target, and
    # each optimizer's first evaluation at or below it counts.
    at = args.epochs * args.train_images / args.batch
    targets = []
    for s, rows in zip(seeds, runs["sgd"]):
        row = next((r for r in rows if r["iter"] >= at), None)
        if row is None:
            die("SGD seed %s ends at update %d, before %g epochs (update %.1f)"
                % (s, rows[-1]["iter"], args.epochs, at))
        targets.append(row[lcol])
    print()
    print("optimization speed: per seed, SGD's training loss at its first evaluation at or "
          "after %g epochs (update %.1f) is the target: %s"
          % (args.epochs, at, ", ".join("%.4f" % t for t in targets)))
    reach = {}
    for key, _ in OPTIMIZERS:
        hits = [first_reaching(rows, lcol, lambda v, t=t: v <= t)
                for rows, t in zip(runs[key], targets)]
        reach[key] = (median([h[0] for h in hits]), median([h[1] for h in hits]))
    print("%-*s %12s %12s %12s" % (w, "", "SGD", "K-FAC", "K-FAC/SGD"))
    print("%-*s %12s %12s %12s" % (w, "updates to reach it", fmt(reach["sgd"][0], ".0f"),
                                   fmt(reach["kfac"][0], ".0f"),
                                   ratio(reach["kfac"][0], reach["sgd"][0])))
    print("%-*s %12s %12s %12s" % (w, "seconds to reach it", fmt(reach["sgd"][1], ".2f"),
                                   fmt(reach["kfac"][1], ".2f"),
                                   ratio(reach["kfac"][1], reach["sgd"][1])))

if __name__ == "__main__":
    main()
