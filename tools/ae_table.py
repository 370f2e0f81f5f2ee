"""ae_table.py --dir DIR --seeds 1,2,3 [--batch B]: the autoencoder rows of the CPU
benchmark (tools/bench.sh, section 4).

In DIR, sgd-seedS.tsv and kfac-seedS.tsv from tools/kfac_compare's autoencoder task
(columns iter, train_seconds, train_loss, test_error, test_loss, full_train_error,
full_train_loss).  The target of seed S is SGD's whole-training-set reconstruction
error at its last row; for each optimizer the updates and training seconds to the
first evaluation at or below it (linear in between is not assumed: the evaluation
grid is the resolution).  Prints the medians over seeds and K-FAC/SGD."""
import argparse
import statistics
import sys


def rows(path):
    with open(path) as f:
        head = f.readline().split()
        out = []
        for line in f:
            v = line.split()
            out.append({k: float(x) for k, x in zip(head, v)})
    return out


def first_at_or_below(runs, target):
    for r in runs:
        if r["iter"] > 0 and r["full_train_error"] <= target:
            return r["iter"], r["train_seconds"]
    return None, None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--seeds", required=True)
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args()
    seeds = a.seeds.split(",")
    table = {"sgd": [], "kfac": []}
    print("| seed | SGD's final error (target) | SGD updates / s | K-FAC updates / s | K-FAC's error at its last row |")
    print("|---|---|---|---|---|")
    for s in seeds:
        sgd = rows("%s/sgd-seed%s.tsv" % (a.dir, s))
        kf = rows("%s/kfac-seed%s.tsv" % (a.dir, s))
        target = sgd[-1]["full_train_error"]
        su, ss = first_at_or_below(sgd, target)
        ku, ks = first_at_or_below(kf, target)
        table["sgd"].append((su, ss))
        table["kfac"].append((ku, ks))
        kfs = "%d / %.1f" % (ku, ks) if ku is not None else "not reached"
        print("| %s | %.3f | %d / %.1f | %s | %.3f |" % (s, target, su, ss, kfs, kf[-1]["full_train_error"]))
    reached = [k for k in table["kfac"] if k[0] is not None]
    if len(reached) < len(seeds):
        print("\nK-FAC reached SGD's final error on %d of %d seeds" % (len(reached), len(seeds)))
    if not reached:
        return 0
    mu_s = statistics.median(u for u, _ in table["sgd"])
    ms_s = statistics.median(t for _, t in table["sgd"])
    mu_k = statistics.median(u for u, _ in reached)
    ms_k = statistics.median(t for _, t in reached)
    print("\nbatch %d, medians over seeds: updates to SGD's final error %g (SGD) and %g (K-FAC), K-FAC/SGD %.3f; "
          "seconds %.1f and %.1f, K-FAC/SGD %.3f" % (a.batch, mu_s, mu_k, mu_k / mu_s, ms_s, ms_k, ms_k / ms_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
