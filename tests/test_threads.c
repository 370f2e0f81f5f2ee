/* test_threads.c: K-FAC's three uses of the second core train bit for bit as without
 * them, and are used:
 *  - probe_thread=1 (the default): the adaptive step's momentum probe J delta_0 on a
 *    copy of the net (kfac_clone.c, kfac_adaptive.c);
 *  - backward_thread=1 (the default): Darknet's own backward pass of a statistics
 *    update on a copy of the net beside the true-Fisher pass (kfac_fisher.c,
 *    patches/0026);
 *  - probe_split=1 (off by default): the products of the adaptive step's forward passes
 *    on the training thread divided by rows with a helper (kfac_split.c,
 *    patches/0027; test_split checks single products).
 *
 * For each net, two copies from one seed train 12 updates on the same batches, one
 * with both threads and one with neither.  Checked:
 *  - every weight, bias, scale and rolling statistic equal bit for bit (a probe moved
 *    along the wrong direction, an eps not the update's own, a copy that wrote into
 *    the net's own deltas or statistics, a backward pass run twice or from deltas not
 *    cleared: each changes the weights);
 *  - the probe thread's J delta_0 taken on at least half the updates (kfac_adaptive's
 *    bg_taken: a launch whose layers or eps were not the update's is declined and
 *    made on the training thread, which would pass the first check alone), and the
 *    backward thread used on every subdivision (stats_interval=1), the split
 *    considered on every probe pass and products divided when it was taken; none of
 *    them without;
 *  - on the detector, the same number of "Region" lines on stdout either way: the
 *    copy's [yolo] heads keep quiet like the probes on the net itself.
 * Nets: the MLP with a [softmax] (connected layers only), the batch-norm net
 * (convolutional and connected batch norm, max pool, route, subdivisions=2: the
 * probe launch is after the second forward pass only, the backward thread runs on
 * both), the two-head detector ([yolo], route), and the KL-clipped step on a small
 * CNN (no probes; the backward thread on its statistics updates only). */
#include "kt.h"
#include "kfac_internal.h"

#define UPDATES 12

/* base with both options right after its [kfac] line, or the MLP's and the small
 * CNN's cfgs with a [kfac] section (and the MLP's with a [softmax]) */
static network *make(const char *base, int threads, unsigned seed)
{
    char path[160], text[8192], opts[96];
    snprintf(path, sizeof path, "build/tests/threads-%u-%d.cfg", seed, threads);
    snprintf(opts, sizeof opts, "probe_thread=%d\nprobe_split=%d\nbackward_thread=%d\n", threads, threads, threads);
    if (!strcmp(base, "tests/cfg/adaptive-mlp.cfg") || !strcmp(base, "tests/cfg/update.cfg")) {
        char extra[256];
        if (!strcmp(base, "tests/cfg/update.cfg"))
            snprintf(extra, sizeof extra, "[kfac]\nstep=kl_clip\nstats_interval=2\ninverse_interval=3\n%s", opts);
        else
            snprintf(extra, sizeof extra, "[softmax]\n\n[kfac]\nstep=adaptive\nstats_interval=1\ninverse_interval=1\n%s",
                     opts);
        return kt_net(kt_cfg_with(path, base, extra), seed);
    }
    FILE *in = fopen(base, "rb"), *out = fopen(path, "wb");
    if (!in || !out) {
        printf("FAIL harness: cannot read %s or write %s\n", base, path);
        exit(1);
    }
    size_t n = fread(text, 1, sizeof text - 1, in);
    text[n] = 0;
    fclose(in);
    char *kfac = strstr(text, "[kfac]\n");
    if (!kfac) {
        printf("FAIL harness: %s has no [kfac] section\n", base);
        exit(1);
    }
    kfac += strlen("[kfac]\n");
    fwrite(text, 1, (size_t)(kfac - text), out);
    fprintf(out, "%s%s", opts, kfac);
    fclose(out);
    return kt_net(path, seed);
}

/* UPDATES updates; returns the "Region" lines printed meanwhile */
static int train(network *net, int yolo, uint64_t stream)
{
    kt_stdout c = kt_stdout_begin();
    int u, s;
    for (u = 0; u < UPDATES; ++u) {
        for (s = 0; s < net->subdivisions; ++s) {
            const uint64_t step = (uint64_t)u * net->subdivisions + s;
            if (yolo) kt_yolo_batch(net, stream, step);
            else kt_batch(net, stream, step);
            train_network_datum(net);
        }
    }
    return kt_stdout_lines(c, "Region ");
}

/* adaptive: the probe thread is expected; every_sub: the backward thread on every
 * subdivision (statistics every update), else on some */
static void check_net(const char *name, const char *base, int yolo, int adaptive, int every_sub, unsigned seed)
{
    network *with = make(base, 1, seed), *without = make(base, 0, seed);
    const kfac_net *kw = kfac_of(with), *kn = kfac_of(without);
    char what[96];
    const long split0 = kfac_split_products();
    const int lines_with = train(with, yolo, seed + 100);
    const long split1 = kfac_split_products();
    const int lines_without = train(without, yolo, seed + 100);
    const long split2 = kfac_split_products();
    snprintf(what, sizeof what, "%s_same_bits", name);
    kt_check(what, kt_nets_same_bits(with, without), "the nets differ after %d updates", UPDATES);
    if (adaptive) {
        const kfac_adaptive *a = kw->adapt, *b = kn->adapt;
        snprintf(what, sizeof what, "%s_probe_thread_taken", name);
        kt_check(what, a->clone && a->bg_taken >= UPDATES / 2 && !b->clone && b->bg_taken == 0,
                 "with the thread %ld of %d updates took its J delta_0 (%ld declined); without it %ld", a->bg_taken,
                 UPDATES, a->bg_missed, b->bg_taken);
        printf("  %s: the probe thread's J delta_0 taken on %ld of %d updates, declined on %ld\n", name, a->bg_taken,
               UPDATES, a->bg_missed);
        /* the probe along Delta alone is a forward pass of every update's; a pass is
         * split unless the decomposition worker or the probe thread holds the other
         * core, which depends on the clock: every pass must have made the choice, and
         * a split pass must have divided products */
        snprintf(what, sizeof what, "%s_probe_split_used", name);
        kt_check(what, a->split && a->split_passes[0] + a->split_passes[1] >= UPDATES &&
                           (split1 - split0 > 0) == (a->split_passes[1] > 0) && !b->split && split2 == split1,
                 "with probe_split %ld passes split, %ld not, %ld products divided over %d updates; without it %ld",
                 a->split_passes[1], a->split_passes[0], split1 - split0, UPDATES, split2 - split1);
        printf("  %s: %ld of %ld probe passes split, %ld products on two threads\n", name, a->split_passes[1],
               a->split_passes[0] + a->split_passes[1], split1 - split0);
    }
    const long subs = (long)UPDATES * with->subdivisions;
    snprintf(what, sizeof what, "%s_backward_thread_used", name);
    kt_check(what, (every_sub ? kw->bwd_taken == subs : kw->bwd_taken > 0 && kw->bwd_taken < subs) && kn->bwd_taken == 0,
             "the backward thread ran %ld of %ld subdivisions' backward passes (%s); without it %ld", kw->bwd_taken, subs,
             every_sub ? "all expected" : "some expected", kn->bwd_taken);
    printf("  %s: Darknet's backward on the second thread on %ld of %ld subdivisions\n", name, kw->bwd_taken, subs);
    if (yolo) {
        snprintf(what, sizeof what, "%s_clone_quiet", name);
        kt_check(what, lines_with == lines_without && lines_without > 0,
                 "%d Region lines with the thread, %d without", lines_with, lines_without);
    }
    free_network(with);
    free_network(without);
}

int main(void)
{
    kfac_split_set_min_work(1); /* the nets are small: every product of two rows or more */
    check_net("mlp", "tests/cfg/adaptive-mlp.cfg", 0, 1, 1, 3);
    check_net("bn", "tests/cfg/adaptive-bn.cfg", 0, 1, 1, 5);
    check_net("yolo", "tests/cfg/adaptive-yolo.cfg", 1, 1, 1, 31);
    check_net("kl_clip", "tests/cfg/update.cfg", 0, 0, 0, 7);
    return kt_exit();
}
