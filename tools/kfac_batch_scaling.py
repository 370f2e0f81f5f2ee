#!/usr/bin/env python3
"""K-FAC's updates to fixed targets against the batch size: does a larger batch buy
fewer updates?  (Issue 11's "K-FAC's updates to the batch-64 target at batch 1024 <= 1/4
of its own at batch 64".)  tools/batch_study.py answers it beside SGD at many hours'
cost; this runs K-FAC, each run stopped at the lowest target, so it takes minutes,
and, with --sgd-grid, SGD beside it the same way (its rate swept at every batch).

Usage, from anywhere:

  tools/kfac_batch_scaling.py [--cfg cfg/digits-ae-sparse.cfg] [--batches 64,256,1024,2048]
      [--seeds 1,2,3] [--targets 13.66,9.922,5] [--max-updates 600] [--kfac 'key=value ...']
      [--sgd-grid 0.25,0.5,1] [--sgd-cfg CFG] [--sgd-max-updates N] [--sgd-eval N]
      [--out build/kfac-batch-scaling] [--compare build/kfac_compare] [--no-resume]

For each batch size B and seed: the cfg at batch=B, subdivisions=B/128 (one forward
pass of at most 128 images; the update stays B images) and an empty [kfac] (plus
--kfac's keys), trained by kfac_compare from the seed's initialization until the
whole training set's objective (an autoencoder's reconstruction error, a
classifier's cross-entropy) is at or below the lowest target, or --max-updates.
Evaluations every 10 updates and geometrically before (x1.25), so that updates to a
target are resolved to about 25% when few.

The default targets are the autoencoder's, from BENCHMARKS.md: SGD's error after 3000
updates at batch 64 (13.66, the issue's "batch-64 target") and at batch 1024
(9.922), both from cfg/digits-ae.cfg (SGD's better initialization), and a deeper 5.

With --sgd-grid M1,M2,...: SGD's side, so that its ratio stands beside K-FAC's
(the issue asks for "SGD's ratio from a swept rate").  At each batch B, SGD (the
plain cfg, no [kfac]) runs on the first seed at each rate r0 sqrt(B/b0) M (r0 and b0
the cfg's learning_rate and batch: batch_study's square-root rule as the centre), each
run stopped at the lowest target or after --sgd-max-updates (--sgd-cfg: SGD's own cfg,
the same net from another initialization, e.g. the autoencoder's dense one, which
serves SGD better than the sparse one K-FAC starts from); the rate with the fewest
updates to the first (highest) target wins, ties going to the fewest to the lowest
and then to the lower final objective; the other seeds then run at that rate.  A
winner at an end of the grid is said (widen it then).  Choosing by updates to the
target, not by a final objective, is what lets the runs stop early.

Writes under --out: runs/b<B>-seed<S>.tsv and .log (K-FAC), runs/sgd-b<B>-m<M>-seed<S>
(SGD), summary.csv (K-FAC), sgd.csv (SGD's chosen rate per batch, same columns plus
the rate), sweep.csv (every SGD rate's updates to each target), summary.md (per
target and batch: median updates and training images over seeds, each seed's, and
the ratio to the smallest batch; SGD's row under K-FAC's) and updates-to-target.png
(gnuplot; SGD dashed).  A finished run is kept unless --no-resume.
"""
import argparse
import math
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import batch_study as bs  # noqa: E402  (the study's cfg, TSV and gnuplot helpers)

ROOT = bs.ROOT


def main():
    ap = argparse.ArgumentParser(description="K-FAC's updates to fixed targets against the batch size "
                                 "(see the file's docstring)")
    ap.add_argument("--cfg", default="cfg/digits-ae-sparse.cfg")
    ap.add_argument("--batches", default="64,256,1024,2048")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--targets", default="13.66,9.922,5",
                    help="objective levels, comma-separated (default: the autoencoder's)")
    ap.add_argument("--max-updates", type=int, default=600)
    ap.add_argument("--pass-images", type=int, default=128)
    ap.add_argument("--kfac", default="", help="[kfac] keys, space-separated key=value")
    ap.add_argument("--sgd-grid", default="",
                    help="SGD's rates as multipliers of the square-root-scaled cfg rate, comma-separated "
                    "(default: no SGD runs)")
    ap.add_argument("--sgd-cfg", default="", help="SGD's plain cfg (default --cfg)")
    ap.add_argument("--sgd-max-updates", type=int, default=0, help="default --max-updates")
    ap.add_argument("--sgd-eval", type=int, default=10,
                    help="SGD's evaluations every this many updates (default 10, as K-FAC's)")
    ap.add_argument("--out", default=os.path.join("build", "kfac-batch-scaling"))
    ap.add_argument("--compare", default=os.environ.get("KFAC_COMPARE", os.path.join("build", "kfac_compare")))
    ap.add_argument("--no-resume", action="store_true")
    args = ap.parse_args()
    os.chdir(ROOT)
    batches = [int(b) for b in args.batches.split(",")]
    seeds = args.seeds.split(",")
    targets = sorted((float(t) for t in args.targets.split(",")), reverse=True)
    kfac = args.kfac.split()
    try:
        grid = [float(m) for m in args.sgd_grid.split(",")] if args.sgd_grid else []
    except ValueError:
        bs.die("--sgd-grid: expected numbers separated by commas, got %r" % args.sgd_grid)
    if any(not m > 0 for m in grid):
        bs.die("--sgd-grid: every multiplier must be positive")
    if args.sgd_eval < 1:
        bs.die("--sgd-eval: must be at least 1")
    sgd_updates = args.sgd_max_updates or args.max_updates
    if any("=" not in k for k in kfac):
        bs.die("--kfac: expected key=value pairs")
    sgd_cfg = args.sgd_cfg or args.cfg
    for c in (args.cfg, sgd_cfg):
        if not os.path.exists(c):
            bs.die("no cfg %s" % c)
    sgd_text = open(sgd_cfg).read()
    sgd_nopt = bs.read_net_options(sgd_text, sgd_cfg)
    sgd_r0, sgd_b0 = float(sgd_nopt.get("learning_rate", "0.001")), int(sgd_nopt.get("batch", "1"))
    bs.check_tools(args.compare)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    text = open(args.cfg).read()
    nopt = bs.read_net_options(text, args.cfg)
    rate = float(nopt.get("learning_rate", "0.001"))
    b0 = int(nopt.get("batch", "1"))
    for sub in ("runs", "cfg"):
        os.makedirs(os.path.join(args.out, sub), exist_ok=True)

    # no time-left estimate: it would count every run to --max-updates, and runs stop at the target
    runner = bs.Runner(args.compare, not args.no_resume, estimate=False)
    net = "kfac"
    runner.total = len(batches) * len(seeds) + len(batches) * (len(grid) + len(seeds) - 1 if grid else 0)
    runner.todo[net] = sum(b * args.max_updates for b in batches) * len(seeds)
    runner.todo["sgd"] = sum(b * sgd_updates for b in batches) * (len(grid) + len(seeds) - 1 if grid else 0)

    res = {}  # (batch, seed) -> [updates to each target]
    for b in batches:
        _, sub = bs.passes(b, 1, args.pass_images)
        cfg = os.path.join(args.out, "cfg", "b%d.cfg" % b)
        with open(cfg, "w") as f:
            f.write(bs.cfg_with(text, b, sub, rate, args.max_updates, kfac))
        for s in seeds:
            tsv = os.path.join(args.out, "runs", "b%d-seed%s.tsv" % (b, s))
            rows = runner.run(net, cfg, tsv, s, args.max_updates, 10, 1.25, b,
                              "batch %d seed %s" % (b, s), stop_below=targets[-1])
            res[b, s] = [bs.to_target(rows, t)[0] for t in targets]

    sgd, sgd_rate, sweep_rows = sgd_side(args, runner, sgd_text, sgd_r0, sgd_b0, batches, seeds, targets, grid,
                                         sgd_updates)

    def med(t, b, who=res):
        return bs.median([who[b, s][t] for s in seeds])

    def table_row(who, i, t, note, extra):
        """One target's row of the table (cells) and of the CSV (rows) for one optimizer's
        results: per batch the median, each seed's, the ratio to the smallest batch and
        note(b, median); extra(b) ends the CSV row."""
        cells, rows = [], []
        for b in batches:
            m = med(i, b, who)
            r = bs.ratio(m, med(i, batches[0], who))
            cells.append("%s [%s] (x%s; %s)" % (bs.fmt(m, ".0f"), " ".join(bs.fmt(who[b, s][i], ".0f") for s in seeds),
                                                bs.fmt_ratio(r), note(b, m)))
            rows.append((t, b, m, m * b if not math.isinf(m) else math.inf, r) + extra(b))
        return cells, rows

    csv_rows, sgd_rows, md = [], [], ["%s, K-FAC (%s), seeds %s: updates to each target (median over seeds; "
                        "each seed's in brackets) and the ratio to batch %d; '-': not reached in %d "
                        "updates." % (args.cfg, " ".join(kfac) or "empty [kfac]", ",".join(seeds),
                                      batches[0], args.max_updates), "",
                        "| target | " + " | ".join("batch %d" % b for b in batches) + " |",
                        "|---|" + "---|" * len(batches)]
    for i, t in enumerate(targets):
        cells, rows = table_row(res, i, t, lambda b, m: "%s images" % bs.fmt(m * b, ".0f"), lambda b: ())
        md.append("| %g | %s |" % (t, " | ".join(cells)))
        csv_rows += rows
        if grid:
            cells, rows = table_row(sgd, i, t, lambda b, m: "rate %.4g" % sgd_rate[b], lambda b: (sgd_rate[b],))
            md.append("| %g, SGD | %s |" % (t, " | ".join(cells)))
            sgd_rows += rows
    header = ["target", "batch", "median_updates", "median_images", "updates_over_smallest_batch"]
    bs.write_csv(os.path.join(args.out, "summary.csv"), header, csv_rows)
    if grid:
        md += ["", "SGD (%s, no [kfac]): the rate per batch chosen from x%s of the square-root-scaled "
               "%g at batch %d by the fewest updates to %g on seed %s, each run stopped at %g or after %d "
               "updates." % (sgd_cfg, ",".join("%g" % m for m in grid), sgd_r0, sgd_b0, targets[0], seeds[0],
                             targets[-1], sgd_updates)]
        bs.write_csv(os.path.join(args.out, "sgd.csv"), header + ["rate"], sgd_rows)
        bs.write_csv(os.path.join(args.out, "sweep.csv"), ["batch", "multiplier", "rate"] +
                     ["updates_to_%g" % t for t in targets] + ["final_objective", "chosen"], sweep_rows)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md), flush=True)

    if shutil.which("gnuplot"):
        dat = os.path.join(args.out, "updates-to-target.dat")
        with open(dat, "w") as f:
            f.write("# batch " + " ".join("t%g_median t%g_min t%g_max" % (t, t, t) for t in targets) +
                    "".join(" sgd_t%g_median sgd_t%g_min sgd_t%g_max" % (t, t, t) for t in targets if grid) + "\n")
            for b in batches:
                vals = []
                for who in ((res, sgd) if grid else (res,)):
                    for i in range(len(targets)):
                        per = [who[b, s][i] for s in seeds]
                        vals += [bs.median(per), bs.finite_min(per), bs.finite_max(per)]
                f.write("%d %s\n" % (b, " ".join(bs.gp_value(v) for v in vals)))
        png = os.path.join(args.out, "updates-to-target.png")
        colors = ("#1f5fbf", "#c0392b", "#17a589", "#d4ac0d", "#8e44ad", "#e67e22")
        plots = ["%s using 1:%d:%d:%d with yerrorlines lw 2 pt 7 lc rgb %s title %s"
                 % (bs.gp_str(dat), 2 + 3 * i, 3 + 3 * i, 4 + 3 * i, bs.gp_str(colors[i % len(colors)]),
                    bs.gp_str("K-FAC to %g" % t if grid else "to %g" % t)) for i, t in enumerate(targets)]
        n = len(targets)
        plots += ["%s using 1:%d:%d:%d with yerrorlines lw 2 pt 6 dashtype 2 lc rgb %s title %s"
                  % (bs.gp_str(dat), 2 + 3 * (n + i), 3 + 3 * (n + i), 4 + 3 * (n + i),
                     bs.gp_str(colors[i % len(colors)]), bs.gp_str("SGD to %g" % t))
                  for i, t in enumerate(targets) if grid]
        m0 = med(0, batches[0])
        if not math.isinf(m0):
            plots.append("%s * %d / x with lines dashtype 2 lc rgb 'gray50' title %s"
                         % (bs.gp_value(m0), batches[0], bs.gp_str("updates x 1/batch from batch %d, first target"
                                                                   % batches[0])))
        script = """set terminal pngcairo size 1000,650 font ",11" noenhanced
set output %s
set title %s
set xlabel "batch size (images per update)"
set ylabel "updates to target"
set logscale xy 2
set xtics (%s)
set xrange [%g:%g]
set grid
set key top right box
set datafile missing "NaN"
plot %s
""" % (bs.gp_str(png), bs.gp_str("%s: %s updates to each target against the batch size\n"
                                  "median over seeds %s; bars: their range" % (args.cfg, "K-FAC's and SGD's (dashed)" if grid
                                                               else "K-FAC's", ",".join(seeds))),
               ", ".join('"%d" %d' % (b, b) for b in batches), batches[0] / 1.4, batches[-1] * 1.4,
               ", \\\n     ".join(plots))
        bs.gnuplot(script, dat[:-4] + ".gp")
        print("plot: %s" % png)


def sgd_side(args, runner, text, r0, b0, batches, seeds, targets, grid, updates):
    """SGD's updates to each target per (batch, seed) at the rate the first seed's sweep
    chose per batch (the module's docstring); empty when grid is."""
    res, chosen, sweep_rows = {}, {}, []
    if not grid:
        return res, chosen, sweep_rows

    def one(b, m, seed):
        rate = r0 * math.sqrt(b / b0) * m
        _, sub = bs.passes(b, 1, args.pass_images)
        cfg = os.path.join(args.out, "cfg", "sgd-b%d-m%g.cfg" % (b, m))
        with open(cfg, "w") as f:
            f.write(bs.cfg_with(text, b, sub, rate, updates, None))
        tsv = os.path.join(args.out, "runs", "sgd-b%d-m%g-seed%s.tsv" % (b, m, seed))
        rows = runner.run("sgd", cfg, tsv, seed, updates, args.sgd_eval, 1.25, b,
                          "SGD batch %d rate %.4g (x%g) seed %s" % (b, rate, m, seed), stop_below=targets[-1])
        return rate, [bs.to_target(rows, t)[0] for t in targets], bs.final_objective(rows)

    for b in batches:
        tried = []
        for m in grid:
            rate, ups, fin = one(b, m, seeds[0])
            tried.append((ups[0], ups[-1], fin, m, rate, ups))
        best = min(tried, key=lambda x: x[:3])
        m = best[3]
        chosen[b] = best[4]
        res[b, seeds[0]] = best[5]
        for _, _, fin, mm, rate, ups in tried:
            sweep_rows.append((b, mm, rate) + tuple(ups) + (fin, int(mm == m)))
        edge = " (at the edge of the grid: widen --sgd-grid)" if len(grid) > 1 and m in (min(grid), max(grid)) else ""
        bs.say("SGD batch %d: rate %.4g (x%g), %s updates to %g%s" % (b, best[4], m, bs.fmt(best[0], ".0f"),
                                                                    targets[0], edge))
        for s in seeds[1:]:
            res[b, s] = one(b, m, s)[1]
    return res, chosen, sweep_rows


if __name__ == "__main__":
    main()
