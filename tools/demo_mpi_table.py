#!/usr/bin/env python3
"""tools/demo_mpi_table.py OUT RANKS BATCH REPEAT [owner]: the table of tools/demo_mpi.sh.

Reads OUT/{sgd,kfac}-{1,RANKS}-r{1..REPEAT}.log (with `owner` also
OUT/kfac-owner-RANKS-r*.log, K-FAC with dist_precondition=owner) (rank 0's stdout of tools/kfac_compare
under `mpirun --tag-output`) and .err (every rank's stderr, tagged) and prints, per
run, the medians over the repeats of the seconds per update and their split, the
bytes handed to the collectives, the largest share of an update any rank waited for
its background decompositions, and the final test accuracy and loss; then the
distributed runs' seconds per update over the one process's, the parallel
efficiency (of the medians, and of the fastest runs, the nearest to an idle machine
on a shared one), and K-FAC's schedule."""
import re
import statistics
import sys

NUM = r"([0-9.e+-]+)"


def untag(text, stream):
    """the lines of one stream of `mpirun --tag-output`: {rank: [lines]}"""
    by = {}
    for line in text.splitlines():
        m = re.match(r"\[\d+,(\d+)\]<%s>:(.*)" % stream, line)
        if m:
            by.setdefault(int(m.group(1)), []).append(m.group(2))
    return by


def parse(out, name):
    log = "\n".join(untag(open("%s/%s.log" % (out, name)).read(), "stdout").get(0, []))

    def num(pat):
        m = re.search(pat, log)
        return [float(x) for x in m.groups()] if m else None

    r = {"total": num(r"mean seconds per update: " + NUM)[0]}
    r["kfac"] = num(r"K-FAC seconds per update: statistics %s, decompositions %s, preconditioning and step %s"
                    % (NUM, NUM, NUM)) or [0.0] * 3
    r["coll"] = num(r"collectives seconds per update \(\d+ ranks\): waiting %s, gradients %s, statistics %s, "
                    r"decompositions from their owners %s, preconditioned gradients from their owners %s, loss and "
                    r"scalars %s; bytes per update %s" % ((NUM,) * 7)) or [0.0] * 7
    last = [l for l in log.splitlines() if l.startswith("iter ")][-1]
    r["acc"] = float(re.search(r"test_acc ([0-9.]+)", last).group(1))
    r["loss"] = float(re.search(r"test_loss ([0-9.]+)", last).group(1))
    # every rank's last K-FAC progress line: its wait for the background decompositions
    r["bgwait"], r["sched"] = 0.0, ""
    for rank, lines in untag(open("%s/%s.err" % (out, name)).read(), "stderr").items():
        prog = [l for l in lines if re.search(r"K-FAC: update \d+: seconds per update", l)]
        if not prog:
            continue
        m = re.search(r"waiting for the background " + NUM, prog[-1])
        if m:
            r["bgwait"] = max(r["bgwait"], float(m.group(1)) / r["total"])
        m = re.search(r"(statistics every [^;]*later[^;]*)", prog[-1])
        if m and rank == 0:
            r["sched"] = m.group(1)
    return r


def main():
    out, ranks, batch, repeat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    owner = len(sys.argv) > 5 and sys.argv[5] == "owner"
    res = {}
    rows = [("sgd", 1), ("sgd", ranks), ("kfac", 1), ("kfac", ranks)] + ([("kfac-owner", ranks)] if owner else [])
    for opt, np_ in rows:
        runs = [parse(out, "%s-%d-r%d" % (opt, np_, k)) for k in range(1, repeat + 1)]
        med = dict(runs[0])
        for key in ("total", "acc", "loss", "bgwait"):
            med[key] = statistics.median(x[key] for x in runs)
        for key in ("kfac", "coll"):
            med[key] = [statistics.median(x[key][j] for x in runs) for j in range(len(runs[0][key]))]
        med["all"] = [x["total"] for x in runs]
        res["%s-%d" % (opt, np_)] = med

    print("\nglobal batch %d; %d ranks at %d each against one process; seconds per update (training only)%s\n" %
          (batch, ranks, batch // ranks, ", medians of %d runs" % repeat if repeat > 1 else ""))
    print("| run | s/update | forward+backward | waiting | gradient all-reduce | K-FAC statistics (all-reduce) "
          "| decompositions (from the owners) | preconditioning + step (preconditioned gradients from the owners) "
          "| bytes/update | background decompositions: most any rank waited | test acc | test loss |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    names = {"sgd": "SGD", "kfac": "K-FAC", "kfac-owner": "K-FAC owner"}
    for opt, np_ in rows:
        r = res["%s-%d" % (opt, np_)]
        st, dec, pre = r["kfac"]
        w, g, sst, share, pgrad, _, by = r["coll"]
        rest = r["total"] - st - dec - pre - w - g
        print("| %s, %d %s | %.4f | %.4f | %.4f | %.4f | %.4f (%.4f) | %.4f (%.4f) | %.4f (%.4f) | %.0f | %s | %.3f | %.4f |"
              % (names[opt], np_, "process" if np_ == 1 else "ranks", r["total"], rest, w, g, st, sst, dec, share, pre,
                 pgrad, by, "%.1f%%" % (100 * r["bgwait"]) if opt != "sgd" else "-", r["acc"], r["loss"]))
    print()
    for opt in ("sgd", "kfac"):
        one, dist = res["%s-1" % opt], res["%s-%d" % (opt, ranks)]
        print("%s: %d ranks take %.2f x the one process's seconds per update; parallel efficiency %.0f%% "
              "(every run: one process %s; %d ranks %s)" % (
                  "SGD" if opt == "sgd" else "K-FAC", ranks, dist["total"] / one["total"],
                  100 * one["total"] / (ranks * dist["total"]), " ".join("%.4f" % x for x in one["all"]), ranks,
                  " ".join("%.4f" % x for x in dist["all"])))
    # on a shared machine the fastest run of each is the nearest to an idle one
    for opt in ("sgd", "kfac"):
        one, dist = min(res["%s-1" % opt]["all"]), min(res["%s-%d" % (opt, ranks)]["all"])
        print("%s, fastest runs: %d ranks %.4f against one process %.4f: %.2f x, parallel efficiency %.0f%%" % (
            "SGD" if opt == "sgd" else "K-FAC", ranks, dist, one, dist / one, 100 * one / (ranks * dist)))
    k1, s1 = res["kfac-1"]["total"], res["sgd-1"]["total"]
    kn, sn = res["kfac-%d" % ranks]["total"], res["sgd-%d" % ranks]["total"]
    print("K-FAC / SGD seconds per update: one process %.2f, %d ranks %.2f" % (k1 / s1, ranks, kn / sn))
    print("K-FAC's schedule (rank 0's last progress line): one process: %s; %d ranks: %s" % (
        res["kfac-1"]["sched"] or "-", ranks, res["kfac-%d" % ranks]["sched"] or "-"))
    if owner:
        ev, ow = res["kfac-%d" % ranks], res["kfac-owner-%d" % ranks]
        print("K-FAC on %d ranks, dist_precondition=owner against everyone: %.2f x the seconds per update (fastest "
              "runs %.4f against %.4f), %.0f against %.0f bytes per update; owner's schedule: %s" % (
                  ranks, ow["total"] / ev["total"], min(ow["all"]), min(ev["all"]), ow["coll"][6], ev["coll"][6],
                  ow["sched"] or "-"))


if __name__ == "__main__":
    main()
