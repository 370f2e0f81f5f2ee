/* test_probe_thread.c: the adaptive step's momentum probe J delta_0 on a second thread
 * (probe_thread=1, the default; kfac_clone.c and kfac_adaptive.c) trains bit for bit
 * as the same probe on the training thread (probe_thread=0), and is taken.
 *
 * For each net, two copies from one seed train 12 updates on the same batches, one
 * with each setting.  Checked:
 *  - every weight, bias, scale and rolling statistic equal bit for bit (a probe moved
 *    along the wrong direction, a clone that wrote into the net's own delta or
 *    statistics during its backward pass, or an eps not the update's own, all change
 *    mu and so the weights);
 *  - the thread's J delta_0 taken on at least half the updates (kfac_adaptive's
 *    bg_taken: a launch whose layers or eps were not the update's is declined and
 *    made on the training thread, which would pass the first check alone), never
 *    with probe_thread=0;
 *  - on the detector, the same number of "Region" lines on stdout either way: the
 *    clone's [yolo] heads keep quiet like the probes on the net itself.
 * Nets: the MLP with a [softmax] (connected layers only), the batch-norm net
 * (convolutional and connected batch norm, max pool, route, subdivisions=2: the
 * launch is after the second forward pass only), the two-head detector ([yolo],
 * route). */
#include <unistd.h>

#include "kt.h"
#include "kfac_internal.h"

#define UPDATES 12

/* base with "probe_thread=N" right after its [kfac] line, or the MLP's cfg with a
 * [softmax] and a [kfac] section */
static network *make(const char *base, int thread, unsigned seed)
{
    char path[160], text[8192];
    snprintf(path, sizeof path, "build/tests/probe-thread-%u-%d.cfg", seed, thread);
    if (!strcmp(base, "tests/cfg/adaptive-mlp.cfg")) {
        char extra[160];
        snprintf(extra, sizeof extra, "[softmax]\n\n[kfac]\nstep=adaptive\nstats_interval=1\ninverse_interval=1\nprobe_thread=%d\n",
                 thread);
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
    fprintf(out, "probe_thread=%d\n%s", thread, kfac);
    fclose(out);
    return kt_net(path, seed);
}

/* UPDATES updates; returns the "Region" lines printed meanwhile */
static int train(network *net, int yolo, uint64_t stream)
{
    FILE *tmp = tmpfile();
    char line[512];
    int u, s, saved, count = 0;
    fflush(stdout);
    saved = dup(1);
    dup2(fileno(tmp), 1);
    for (u = 0; u < UPDATES; ++u) {
        for (s = 0; s < net->subdivisions; ++s) {
            const uint64_t step = (uint64_t)u * net->subdivisions + s;
            if (yolo) kt_yolo_batch(net, stream, step);
            else kt_batch(net, stream, step);
            train_network_datum(net);
        }
    }
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    rewind(tmp);
    while (fgets(line, sizeof line, tmp))
        if (!strncmp(line, "Region ", 7)) ++count;
    fclose(tmp);
    return count;
}

static void check_net(const char *name, const char *base, int yolo, unsigned seed)
{
    network *with = make(base, 1, seed), *without = make(base, 0, seed);
    const kfac_adaptive *a = kfac_of(with)->adapt, *b = kfac_of(without)->adapt;
    char what[96];
    const int lines_with = train(with, yolo, seed + 100), lines_without = train(without, yolo, seed + 100);
    snprintf(what, sizeof what, "%s_same_bits", name);
    kt_check(what, kt_nets_same_bits(with, without), "the nets differ after %d updates", UPDATES);
    snprintf(what, sizeof what, "%s_thread_taken", name);
    kt_check(what, a->clone && a->bg_taken >= UPDATES / 2 && !b->clone && b->bg_taken == 0,
             "with the thread %ld of %d updates took its J delta_0 (%ld declined); without it %ld", a->bg_taken,
             UPDATES, a->bg_missed, b->bg_taken);
    printf("  %s: the thread's J delta_0 taken on %ld of %d updates, declined on %ld\n", name, a->bg_taken, UPDATES,
           a->bg_missed);
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
    check_net("mlp", "tests/cfg/adaptive-mlp.cfg", 0, 3);
    check_net("bn", "tests/cfg/adaptive-bn.cfg", 0, 5);
    check_net("yolo", "tests/cfg/adaptive-yolo.cfg", 1, 31);
    return kt_exit();
}
