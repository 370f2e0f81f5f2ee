#!/usr/bin/env python3
"""Updates and seconds to SGD's result, run against run (issue 13's benchmarks).

  tools/issue13_table.py --seeds 1,2,3 --sgd DIR/sgd --run NAME=DIR/PREFIX ... \
      [--ratio A/B ...] [--score accuracy|map50] [--at N]

Each DIR/PREFIX-seedS.csv holds rows `updates,seconds,loss,score,...` (the retraining
flows' CSVs: tools/retrain_googlenet.sh, tools/retrain_detect.sh; tools/bench_issue13.sh
converts kfac_compare's TSVs to it).  Per seed, SGD's last row (with --at N, its
first row at or after update N) is the target: its training loss and its score (test
accuracy or mAP@0.5).  For every run: the first
evaluated update at or below the loss, at or above the score, the training seconds
there, seconds per update, its final loss and score; medians over the seeds.  A run
that never reaches a target counts as its last update (marked '>').  --ratio A/B
prints A's figures over B's (the seed medians' ratio).
"""
import argparse
import csv
import statistics
import sys


def read(path):
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            rows.append({k: float(v) for k, v in r.items() if v not in ("", None)})
    if not rows:
        sys.exit(f"issue13_table: {path}: no rows")
    return rows


def first(rows, key, ok):
    for r in rows:
        if ok(r[key]):
            return r["updates"], r["seconds"], True
    return rows[-1]["updates"], rows[-1]["seconds"], False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", required=True)
    ap.add_argument("--sgd", required=True)
    ap.add_argument("--run", action="append", default=[])
    ap.add_argument("--ratio", action="append", default=[])
    ap.add_argument("--score", default="accuracy")
    ap.add_argument("--at", type=float, default=None)
    a = ap.parse_args()
    seeds = a.seeds.split(",")
    runs = [("sgd", a.sgd)] + [tuple(r.split("=", 1)) for r in a.run]
    res = {}
    for name, prefix in runs:
        per = []
        for s in seeds:
            ref = read(f"{a.sgd}-seed{s}.csv")
            rows = read(f"{prefix}-seed{s}.csv")
            tgt = ref[-1] if a.at is None else next((r for r in ref if r["updates"] >= a.at), ref[-1])
            tl, ts = tgt["loss"], tgt[a.score]
            ul, sl, rl = first(rows, "loss", lambda v: v <= tl)
            us, ss, rs = first(rows, a.score, lambda v: v >= ts)
            last = rows[-1]
            per.append(dict(ul=ul, sl=sl, rl=rl, us=us, ss=ss, rs=rs, spu=last["seconds"] / last["updates"],
                            loss=last["loss"], score=last[a.score], n=last["updates"], tl=tl, ts=ts))
        res[name] = per
    med = lambda name, k: statistics.median(p[k] for p in res[name])
    where = "final" if a.at is None else f"at update {a.at:g}"
    print(f"seeds {a.seeds}; target per seed: SGD's {where} training loss and {a.score} "
          f"({', '.join('%.4g / %.4g' % (p['tl'], p['ts']) for p in res['sgd'])})")
    print(f"{'run':<14}{'updates':>9}{'upd->loss':>11}{'s->loss':>10}{'upd->' + a.score[:5]:>12}{'s->' + a.score[:5]:>10}"
          f"{'s/update':>10}{'final loss':>12}{'final ' + a.score[:5]:>12}")
    for name, _ in runs:
        reached_l = "" if all(p["rl"] for p in res[name]) else ">"
        reached_s = "" if all(p["rs"] for p in res[name]) else ">"
        print(f"{name:<14}{med(name, 'n'):>9.0f}{reached_l + '%.0f' % med(name, 'ul'):>11}{med(name, 'sl'):>10.1f}"
              f"{reached_s + '%.0f' % med(name, 'us'):>12}{med(name, 'ss'):>10.1f}{med(name, 'spu'):>10.4f}"
              f"{med(name, 'loss'):>12.4g}{med(name, 'score'):>12.4g}")
    for r in a.ratio:
        x, y = r.split("/")
        f = lambda k: med(x, k) / med(y, k) if med(y, k) else float("nan")
        print(f"{x}/{y}: updates to SGD's loss {f('ul'):.2f}, to its {a.score} {f('us'):.2f}; seconds to SGD's loss "
              f"{f('sl'):.2f}, to its {a.score} {f('ss'):.2f}; seconds per update {f('spu'):.3f}")
    for name, _ in runs:
        print(f"  {name} per seed: " + "; ".join(
            f"seed {s}: loss at {p['ul']:.0f}{'' if p['rl'] else ' (not reached)'}, "
            f"{a.score} at {p['us']:.0f}{'' if p['rs'] else ' (not reached)'}" for s, p in zip(seeds, res[name])))


if __name__ == "__main__":
    main()
