#!/usr/bin/env python3
"""tools/mpi_scaling_model.py: the paper scaling model of BENCHMARKS.md ("Training
across processes: a scaling model for 8 to 256 GPUs").  Prints markdown tables.

Per update and GPU, at a fixed batch per GPU (weak scaling), training across N GPUs
costs the GPU's own compute T_c plus:

  gradients      a ring all-reduce of the 4 P bytes of gradients (P floats, with the
                 batch-norm statistics kfac_dist.c averages too), every update;
  statistics     a ring all-reduce of K-FAC's factor sums, 4 sum(K^2 + M^2) bytes
                 (whole matrices, as kfac_dist_factors.c sends them), every
                 stats_interval updates;
  decompositions every inverse_interval updates each rank receives every layer's new
                 decomposition from its owner: 4 sum(2 (K^2 + M^2) + K + M) bytes (E and
                 d of A and G, and the damped inverses), one pipelined broadcast per
                 layer; their computation is spread over the owners and runs on each
                 rank's background worker, hidden while it finishes within inverse_lag
                 updates (on a GPU the worker's stream still takes GPU time);
  owner          [kfac] dist_precondition=owner (KAISA's trade): the owner
                 preconditions its layers and broadcasts the preconditioned gradients,
                 4 sum(M K) bytes every update (one broadcast per layer), instead of
                 the decompositions every inverse_interval; each rank then
                 preconditions only the layers it owns (the most loaded owner's share,
                 by kfac_owners_assign's assignment, sets the time).  It wins when the
                 broadcasts cost less than the preconditioning saved plus the
                 decompositions' sharing per update: below the break-even
                 inverse_interval the table prints (or always, where the saved
                 preconditioning alone pays for the broadcasts).

The stats_interval column keeps a statistics step's own work (STATS_EXTRA of T_c) and
its all-reduce under 10% of an update on average; inverse_interval keeps the sharing
under 10%; inverse_lag lets the most loaded owner's decompositions finish in time.

A ring all-reduce of n bytes on N ranks takes 2 (N - 1) (alpha + n / (N beta)); a
broadcast n / beta + ceil(log2 N) alpha.  Across nodes of 8 GPUs the collectives are
hierarchical (NCCL): within the node over NVLink, then across nodes, one ring per GPU
over that GPU's share of the node's network.

The byte counts are exact (they are what kfac_dist.c sends; BENCHMARKS.md checks them
against the measured bytes per update of the 2-rank runs).  alpha and beta of the
links are stated, typical figures, not measured here.  The GPU's compute per update
is not measured either (no GPU was lent): it is the training FLOPs (3 x forward) at
an assumed sustained FP32 rate, or Darknet's kernel launches where those dominate;
K-FAC's own work is scaled from the CPU measurements (BENCHMARKS.md): a statistics
step adds STATS_EXTRA of an SGD update (yolov3-tiny, CPU: +7.0 s on 22.7 s), and a
decomposition of all factors takes the CPU's one-core time over GPU_EIGH_SPEEDUP."""

import math

# ---- the nets: (K, M, blocks of A, output locations T) per covered layer; params: the
# floats kfac_dist.c all-reduces (its start line); kernels: Darknet's kernel launches per
# update (about 10 per layer, forward and backward); cpu_eig: one decomposition of all
# factors on one CPU core, seconds (BENCHMARKS.md) ------------------------------------------
NETS = {
    # cfg/digits-kfac.cfg, 20x20 input
    "demo CNN": dict(batch=64, params=13866, layers=[(76, 16, 1, 18 * 18), (145, 32, 1, 10 * 10), (801, 10, 1, 1)],
                     kernels=60, cpu_eig=0.066),
    # cfg/googlenet-digits.cfg + [kfac] (the start line's A and G, Darknet's layer table's T)
    "GoogLeNet-like": dict(batch=64, params=28510, kernels=300, cpu_eig=0.012, layers=[
        (28, 32, 1, 400), (33, 16, 1, 100), (33, 16, 1, 100), (145, 24, 1, 100), (33, 8, 1, 100), (73, 12, 1, 100),
        (109, 12, 1, 100), (33, 12, 1, 100), (65, 32, 1, 25), (65, 24, 1, 25), (217, 48, 1, 25), (65, 8, 1, 25),
        (73, 16, 1, 25), (145, 16, 1, 25), (65, 16, 1, 25), (113, 10, 1, 1)]),
    # tests/gpu/yolov3-tiny-kfac.cfg, 416x416, batch norm (no bias in A) but the heads
    "yolov3-tiny": dict(batch=64, params=8858734, kernels=240, cpu_eig=12.6, layers=[
        (27, 16, 1, 416 ** 2), (144, 32, 1, 208 ** 2), (288, 64, 1, 104 ** 2), (576, 128, 1, 52 ** 2),
        (1152, 256, 1, 26 ** 2), (2304, 512, 1, 13 ** 2), (4608, 1024, 2, 13 ** 2), (1024, 256, 1, 13 ** 2),
        (2304, 512, 1, 13 ** 2), (513, 255, 1, 13 ** 2), (256, 128, 1, 13 ** 2), (3456, 256, 1, 26 ** 2),
        (257, 255, 1, 26 ** 2)]),
}

# ---- assumptions --------------------------------------------------------------------------
GPU_FLOPS = 20e12        # sustained FP32 (no TF32: the project keeps FP32 math) on an H100
LAUNCH = 8e-6            # seconds per Darknet kernel launch and its small kernel
STATS_EXTRA = 0.31       # a statistics step's extra work, of an SGD update
GPU_EIGH_SPEEDUP = 50    # cuSOLVER syevd on an H100 against one CPU core (OpenBLAS ssyevd)
NODE = 8                 # GPUs per node
LINKS = {                # (alpha seconds, beta bytes/s per GPU) across nodes; NVLink within
    "NVLink": (10e-6, 400e9),            # NVLink 4 via NVSwitch: NCCL bus bandwidth ~400 GB/s
    "InfiniBand NDR": (5e-6, 45e9),      # 400 Gb/s, one NIC per GPU
    "100 GbE": (30e-6, 12.5e9 / NODE),   # one 100 Gb/s NIC per node of 8 GPUs
}


def ring(n, N, alpha, beta):
    return 0.0 if N < 2 else 2 * (N - 1) * (alpha + n / (N * beta))


def allreduce(n, N, link):
    """hierarchical: NVLink ring in the node, then one ring per GPU across the nodes"""
    a_nv, b_nv = LINKS["NVLink"]
    inner = min(N, NODE)
    t = ring(n, inner, a_nv, b_nv)
    nodes = N // NODE
    if nodes > 1:
        a, b = LINKS[link]
        t += ring(n / inner, nodes, a, b)
    return t


def broadcast(n, N, link):
    a, b = LINKS["NVLink" if N <= NODE else link]
    return 0.0 if N < 2 else n / b + math.ceil(math.log2(N)) * a


def sizes(net):
    """forward FLOPs per image, the bytes of gradients, statistics and decompositions,
    each layer's decomposition cost (K^3 + M^3) and the preconditioning FLOPs per update"""
    fwd = sum(2 * K * M * T for K, M, nb, T in net["layers"])
    stats = 4 * sum(K * K // nb + M * M for K, M, nb, T in net["layers"])
    dec = 4 * sum(2 * (K * K // nb + M * M) + K + M for K, M, nb, T in net["layers"])
    cube = [(K ** 3 // nb ** 2 + M ** 3) for K, M, nb, T in net["layers"]]
    pre = sum(2 * (K * K // nb * M + M * M * K) for K, M, nb, T in net["layers"])
    return fwd, 4 * net["params"], stats, dec, cube, pre


def assign(cube, N):
    """kfac_owners_assign: largest first (stable), each to the least loaded; the owner of each layer"""
    load, owner = [0.0] * N, [0] * len(cube)
    for j in sorted(range(len(cube)), key=lambda j: -cube[j]):
        owner[j] = load.index(min(load))
        load[owner[j]] += cube[j]
    return owner


def owners(cube, N):
    """the most loaded rank's share of the decompositions"""
    own = assign(cube, N)
    return max(sum(c for c, o in zip(cube, own) if o == r) for r in range(N)) / sum(cube)


def precondition_time(layers):
    """the preconditioning of these layers per update: FLOPs or kernel launches"""
    flops = sum(2 * (K * K // nb * M + M * M * K) for K, M, nb, T in layers)
    return max(flops / GPU_FLOPS, len(layers) * 2 * LAUNCH) if layers else 0.0


def owner_mode(net, cube, N, link, tdec):
    """dist_precondition=owner per update: the broadcasts of the preconditioned gradients,
    the preconditioning it saves (every layer on every rank against the most loaded
    owner's), and the break-even inverse_interval below which it wins (0: never, inf:
    always)"""
    own = assign(cube, N)
    layers = net["layers"]
    bcast = sum(broadcast(4 * M * K, N, link) for K, M, nb, T in layers)
    mine = max(precondition_time([l for l, o in zip(layers, own) if o == r]) for r in range(N))
    saved = precondition_time(layers) - mine
    if bcast <= saved:
        return bcast, saved, math.inf
    return bcast, saved, tdec / (bcast - saved)


def main():
    Ns = [8, 32, 64, 128, 256]
    print("| net | batch per GPU | gradient bytes | statistics bytes | decomposition bytes | T_c (model) | "
          "decompositions of all factors, one GPU (model) | preconditioning per update (model) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, net in NETS.items():
        fwd, g, s, d, cube, pre = sizes(net)
        tc = max(3 * fwd * net["batch"] / GPU_FLOPS, net["kernels"] * LAUNCH)
        print("| %s | %d | %.3g MB | %.3g MB | %.3g MB | %.3g ms | %.3g ms | %.3g ms |" % (
            name, net["batch"], g / 1e6, s / 1e6, d / 1e6, 1e3 * tc, 1e3 * net["cpu_eig"] / GPU_EIGH_SPEEDUP,
            1e3 * max(pre / GPU_FLOPS, len(net["layers"]) * 2 * LAUNCH)))
    print()
    for name, net in NETS.items():
        fwd, g, s, d, cube, pre = sizes(net)
        tc = max(3 * fwd * net["batch"] / GPU_FLOPS, net["kernels"] * LAUNCH)
        t_eig = net["cpu_eig"] / GPU_EIGH_SPEEDUP
        print("%s, T_c %.3g ms per update:\n" % (name, 1e3 * tc))
        print("| GPUs | link across nodes | gradients ms (of T_c) | statistics all-reduce ms | stats_interval >= | "
              "decompositions from the owners ms | inverse_interval >= | most loaded owner's eigh ms | "
              "inverse_lag >= | owner: preconditioned gradients broadcast / preconditioning saved, ms per update | "
              "owner wins below inverse_interval |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for N in Ns:
            for link in (["NVLink"] if N <= NODE else ["InfiniBand NDR", "100 GbE"]):
                tg = allreduce(g, N, link)
                ts = allreduce(s, N, link)
                tdec = sum(broadcast(4 * (2 * (K * K // nb + M * M) + K + M), N, link)
                           for K, M, nb, T in net["layers"])
                own = owners(cube, N) * t_eig
                bcast, saved, even = owner_mode(net, cube, N, link, tdec)
                print("| %d | %s | %.3g (%.0f%%) | %.3g | %d | %.3g | %d | %.3g | %d | %.3g / %.3g | %s |" % (
                    N, link if N > NODE else "(one node)", 1e3 * tg, 100 * tg / tc, 1e3 * ts,
                    max(1, math.ceil((STATS_EXTRA * tc + ts) / (0.1 * tc))), 1e3 * tdec,
                    max(1, math.ceil(tdec / (0.1 * tc))), 1e3 * own, max(1, math.ceil(own / tc)),
                    1e3 * bcast, 1e3 * saved, "always" if even == math.inf else "%.3g" % even))
        print()


if __name__ == "__main__":
    main()
