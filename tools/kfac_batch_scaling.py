#!/usr/bin/env python3
"""K-FAC's updates to fixed targets against the batch size: does a larger batch buy
fewer updates?  (Issue 11's "K-FAC's updates to the batch-64 target at batch 1024 <= 1/4
of its own at batch 64".)  tools/batch_study.py answers it beside SGD at many hours'
cost; this runs K-FAC alone, each run stopped at the lowest target, so it takes
minutes.

Usage, from anywhere:

  tools/kfac_batch_scaling.py [--cfg cfg/digits-ae-sparse.cfg] [--batches 64,256,1024,2048]
      [--seeds 1,2,3] [--targets 13.66,9.922,5] [--max-updates 600] [--kfac 'key=value ...']
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

Writes under --out: runs/b<B>-seed<S>.tsv and .log, summary.csv, summary.md (per
target and batch: median updates and training images over seeds, each seed's,
and the ratio to the smallest batch) and updates-to-target.png (gnuplot).  A finished
run is kept unless --no-resume.
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
    ap.add_argument("--out", default=os.path.join("build", "kfac-batch-scaling"))
    ap.add_argument("--compare", default=os.environ.get("KFAC_COMPARE", os.path.join("build", "kfac_compare")))
    ap.add_argument("--no-resume", action="store_true")
    args = ap.parse_args()
    os.chdir(ROOT)
    batches = [int(b) for b in args.batches.split(",")]
    seeds = args.seeds.split(",")
    targets = sorted((float(t) for t in args.targets.split(",")), reverse=True)
    kfac = args.kfac.split()
    if any("=" not in k for k in kfac):
        bs.die("--kfac: expected key=value pairs")
    if not os.path.exists(args.cfg):
        bs.die("no cfg %s" % args.cfg)
    bs.check_tools(args.compare)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    text = open(args.cfg).read()
    rate = float(bs.read_net_options(text, args.cfg).get("learning_rate", "0.001"))
    for sub in ("runs", "cfg"):
        os.makedirs(os.path.join(args.out, sub), exist_ok=True)

    # no time-left estimate: it would count every run to --max-updates, and runs stop at the target
    runner = bs.Runner(args.compare, not args.no_resume, estimate=False)
    net = "kfac"
    runner.total = len(batches) * len(seeds)
    runner.todo[net] = sum(b * args.max_updates for b in batches) * len(seeds)

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

    def med(t, b):
        return bs.median([res[b, s][t] for s in seeds])

    csv_rows, md = [], ["%s, K-FAC (%s), seeds %s: updates to each target (median over seeds; "
                        "each seed's in brackets) and the ratio to batch %d; '-': not reached in %d "
                        "updates." % (args.cfg, " ".join(kfac) or "empty [kfac]", ",".join(seeds),
                                      batches[0], args.max_updates), "",
                        "| target | " + " | ".join("batch %d" % b for b in batches) + " |",
                        "|---|" + "---|" * len(batches)]
    for i, t in enumerate(targets):
        cells = []
        for b in batches:
            m, m0 = med(i, b), med(i, batches[0])
            r = bs.ratio(m, m0)
            cells.append("%s [%s] (x%s; %s images)" % (
                bs.fmt(m, ".0f"), " ".join(bs.fmt(res[b, s][i], ".0f") for s in seeds),
                bs.fmt_ratio(r), bs.fmt(m * b, ".0f")))
            csv_rows.append((t, b, m, m * b if not math.isinf(m) else math.inf, r))
        md.append("| %g | %s |" % (t, " | ".join(cells)))
    bs.write_csv(os.path.join(args.out, "summary.csv"),
                 ["target", "batch", "median_updates", "median_images", "updates_over_smallest_batch"], csv_rows)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md), flush=True)

    if shutil.which("gnuplot"):
        dat = os.path.join(args.out, "updates-to-target.dat")
        with open(dat, "w") as f:
            f.write("# batch " + " ".join("t%g_median t%g_min t%g_max" % (t, t, t) for t in targets) + "\n")
            for b in batches:
                vals = []
                for i in range(len(targets)):
                    per = [res[b, s][i] for s in seeds]
                    vals += [med(i, b), bs.finite_min(per), bs.finite_max(per)]
                f.write("%d %s\n" % (b, " ".join(bs.gp_value(v) for v in vals)))
        png = os.path.join(args.out, "updates-to-target.png")
        colors = ("#1f5fbf", "#c0392b", "#17a589", "#d4ac0d")
        plots = ["%s using 1:%d:%d:%d with yerrorlines lw 2 pt 7 lc rgb %s title %s"
                 % (bs.gp_str(dat), 2 + 3 * i, 3 + 3 * i, 4 + 3 * i, bs.gp_str(colors[i % len(colors)]),
                    bs.gp_str("to %g" % t)) for i, t in enumerate(targets)]
        m0 = med(0, batches[0])
        if not math.isinf(m0):
            plots.append("%s * %d / x with lines dashtype 2 lc rgb 'gray50' title %s"
                         % (bs.gp_value(m0), batches[0], bs.gp_str("updates x 1/batch from batch %d, first target"
                                                                   % batches[0])))
        script = """set terminal pngcairo size 1000,650 font ",11" noenhanced
set output %s
set title %s
set xlabel "batch size (images per update)"
set ylabel "K-FAC updates to target"
set logscale xy 2
set xtics (%s)
set xrange [%g:%g]
set grid
set key top right box
set datafile missing "NaN"
plot %s
""" % (bs.gp_str(png), bs.gp_str("%s: K-FAC's updates to each target against the batch size\n"
                                  "median over seeds %s; bars: their range" % (args.cfg, ",".join(seeds))),
               ", ".join('"%d" %d' % (b, b) for b in batches), batches[0] / 1.4, batches[-1] * 1.4,
               ", \\\n     ".join(plots))
        bs.gnuplot(script, dat[:-4] + ".gp")
        print("plot: %s" % png)


if __name__ == "__main__":
    main()
