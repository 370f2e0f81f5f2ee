/* test_dist: training across ranks (mpirun, the MPI build) against one process;
 * driven by tests/test_mpi.sh, which runs it under `mpirun -np N`:
 *
 *   test_dist equal NAME CFG KFAC U DIR
 *       N ranks at the cfg's batch b, U updates, against one process at batch N*b
 *       on the same images (rank r takes images [r b, (r+1) b) of each global batch):
 *       the factors after the first update (K-FAC), every rank's weights identical,
 *       the weights within the tolerance below; control: one process on rank 0's
 *       images alone ends farther away than ten times that tolerance.
 *   test_dist save CFG KFAC U0 U DIR
 *       N ranks: U0 updates, save DIR/dist.weights (and .kfac); U more updates, save
 *       DIR/straight.weights.
 *   test_dist resume CFG KFAC U0 U DIR N0
 *       M ranks: load DIR/dist.weights (saved by N0 ranks), U more updates.  M == N0:
 *       the weights and state equal DIR/straight.weights bit for bit.  Any M: within
 *       the tolerance of one process at N0*b for U0 updates, saved, then at M*b for U;
 *       control: that chain without the change of global batch ends farther away.
 *   test_dist modes NAME CFG KFAC U0 U DIR
 *       N ranks train the same run twice, with [kfac] dist_precondition=everyone and
 *       =owner appended to KFAC: each run's ranks identical, and the two runs the
 *       same bits (the owner's preconditioned gradient is what every rank computes
 *       from the decomposition it broadcasts), their saves after U0 (a background
 *       job in flight) and after U updates the same files, weights and K-FAC state
 *       (the owners' decompositions gathered for rank 0); the traffic: owner sends
 *       preconditioned gradients, everyone none (with scaling=ekfac owner falls back
 *       to everyone: the same traffic).
 *   test_dist relag NAME CFG KFAC U0 U DIR
 *       N ranks: U0 updates, then the schedule as the auto schedule may change it
 *       (decompositions every update, used one later), U more: every rank's weights
 *       identical, within the save-and-resume tolerance of one process at N*b.
 *   test_dist diverge CFG DIR
 *       rank 1's weights are changed, then a save: every rank stops (exit status 1)
 *       naming rank 1, and no file is written.
 *
 * KFAC is a [kfac] section (\n for newlines) or "none"; DIR takes the cfgs and weights
 * the program writes.  Only rank 0 prints (the other
 * ranks' stdout goes to /dev/null, kfac_dist_init); it exits 1 on a failed check,
 * which ends the job.
 *
 * Tolerances.  N ranks and one process at N*b compute the same sums in another order:
 * each rank sums its b images and the all-reduce adds the N partial sums, where one
 * process adds all N b images in one sequence (K-FAC's factors likewise).  Each sum
 * then differs by a few float32 roundings of the magnitude of its terms, at every
 * update, and the training dynamics carry such differences on: K-FAC's adaptive step
 * amplifies them (its lambda rule compares the reduction ratio with 1/4 and 3/4, a
 * ratio near one of them goes either way, a step it finds failed is not taken, and
 * its one-sided probes divide rounding by the probe's size), SGD and the KL-clipped
 * step hardly.  So the tolerance is measured on the same run: rank 0 also trains the
 * one process with its first weight moved by one float32 ulp, a difference of the size
 * rounding makes, and the ranks must stay within KFAC_ULP_FACTOR times that run's
 * drift (at least KFAC_TOL_FLOOR) of the one process.  Measured here (tests/test_mpi.sh
 * prints every figure): the one-ulp drift 2e-7 (SGD), 1e-6 (KL clip) after 50 updates,
 * 4e-5 to 7e-5 after 12 adaptive updates (6e-3 after 20: the test runs it for 12); the
 * ranks 0.5-2 times that.
 * A mistake in the averaging (the sum instead of the mean, the momentum lost, another
 * rank's images missing, the sampler's labels misaligned) moves the weights by 0.1 of
 * their size and more; the control checks that margin on every run.  The factors
 * after one update are sums of N b x 36 outer products in another order: KFAC_TOL_F =
 * 1e-5 of the largest entry (about 100 float32 roundings) bounds the reordering, and a
 * misaligned label or a missing rank changes G by its whole size. */
#include <sys/stat.h>
#include "kt.h"
#include "kfac.h"
#include "kfac_internal.h"
#include "kfac_comm.h"

#define KFAC_ULP_FACTOR 30
#define KFAC_TOL_FLOOR 1e-6
/* save and resume: the KL-clipped step over 12 updates, whose one-ulp drift is 1e-6 */
#define KFAC_TOL_W 1e-4
#define KFAC_TOL_F 1e-5
#define SEED 7      /* weights initialization */
#define STREAM 11   /* the data */

static int rank, ranks;
static kfac_comm *comm;

/* Writes `out`: cfg `base` with its `batch=` line set to batch, followed by the
 * [kfac] section kfac (unless "none"); every rank reads it after rank 0 wrote it. */
static const char *cfg_variant(char *out, size_t len, const char *dir, const char *base, int batch, const char *kfac)
{
    snprintf(out, len, "%s/b%d-%s.cfg", dir, batch, strcmp(kfac, "none") ? "kfac" : "sgd");
    if (rank == 0) {
        FILE *in = fopen(base, "r"), *o = fopen(out, "w");
        char line[1024];
        if (!in || !o) {
            printf("FAIL harness: cannot read %s or write %s\n", base, out);
            exit(1);
        }
        while (fgets(line, sizeof line, in)) {
            if (!strncmp(line, "batch=", 6)) fprintf(o, "batch=%d\n", batch);
            else fputs(line, o);
        }
        if (strcmp(kfac, "none")) {
            const char *p;
            fputc('\n', o);
            for (p = kfac; *p; ++p) {
                if (p[0] == '\\' && p[1] == 'n') { fputc('\n', o); ++p; }
                else fputc(*p, o);
            }
            fputc('\n', o);
        }
        fclose(in);
        if (fclose(o) != 0) {
            printf("FAIL harness: cannot write %s\n", out);
            exit(1);
        }
    }
    comm->ops->barrier(comm);
    return out;
}

/* Pass `step` of the data: the nb images kt_batch makes for a net of batch nb; rows
 * [first, first + net->batch) into the net. */
static void fill_slice(network *net, uint64_t step, int nb, int first)
{
    kt_rng r = kt_rng_make(STREAM, step);
    const size_t ni = (size_t)net->inputs, nt = (size_t)net->truths;
    float *x = (float *)calloc((size_t)nb * ni, sizeof(float)), *y = (float *)calloc((size_t)nb * nt, sizeof(float));
    size_t i;
    int b;
    for (i = 0; i < ni * nb; ++i) x[i] = (float)(2 * kt_uniform(&r) - 1);
    for (b = 0; b < nb; ++b) {
        int c = (int)(kt_uniform(&r) * nt);
        if (c >= (int)nt) c = (int)nt - 1;
        y[(size_t)b * nt + c] = 1;
    }
    memcpy(net->input, x + (size_t)first * ni, (size_t)net->batch * ni * sizeof(float));
    memcpy(net->truth, y + (size_t)first * nt, (size_t)net->batch * nt * sizeof(float));
    free(x);
    free(y);
}

/* updates [u0, u0 + n) with global batches of nb images per pass, this net's slice
 * starting at image `first` */
static void train(network *net, int u0, int n, int nb, int first)
{
    int u, s;
    for (u = u0; u < u0 + n; ++u)
        for (s = 0; s < net->subdivisions; ++s) {
            fill_slice(net, (uint64_t)u * net->subdivisions + s, nb, first);
            train_network_datum(net);
        }
}

/* largest |a - b| and |b| over every weight and bias of two nets of one cfg */
static void weights_diff(const network *a, const network *b, double *diff, double *mag)
{
    int i;
    size_t j;
    *diff = *mag = 0;
    for (i = 0; i < a->n; ++i) {
        const layer *x = &a->layers[i], *y = &b->layers[i];
        if (x->type != CONVOLUTIONAL && x->type != CONNECTED) continue;
        const size_t nw = kt_nweights(x), nb = x->type == CONNECTED ? (size_t)x->outputs : (size_t)x->n;
        for (j = 0; j < nw; ++j) {
            *diff = fmax(*diff, fabs((double)x->weights[j] - y->weights[j]));
            *mag = fmax(*mag, fabs((double)y->weights[j]));
        }
        for (j = 0; j < nb; ++j) {
            *diff = fmax(*diff, fabs((double)x->biases[j] - y->biases[j]));
            *mag = fmax(*mag, fabs((double)y->biases[j]));
        }
    }
}

/* FNV-1a over every weight and bias */
static uint64_t weights_hash(const network *net)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    int i;
    size_t j;
    for (i = 0; i < net->n; ++i) {
        const layer *l = &net->layers[i];
        if (l->type != CONVOLUTIONAL && l->type != CONNECTED) continue;
        const size_t nw = kt_nweights(l), nb = l->type == CONNECTED ? (size_t)l->outputs : (size_t)l->n;
        const unsigned char *p = (const unsigned char *)l->weights;
        for (j = 0; j < nw * sizeof(float); ++j) h = (h ^ p[j]) * 0x100000001b3ULL;
        p = (const unsigned char *)l->biases;
        for (j = 0; j < nb * sizeof(float); ++j) h = (h ^ p[j]) * 0x100000001b3ULL;
    }
    return h;
}

/* 1 when both files can be read and hold the same bytes */
static int files_same(const char *a, const char *b)
{
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int same = fa && fb, ca, cb;
    while (same) {
        ca = fgetc(fa);
        cb = fgetc(fb);
        same = ca == cb;
        if (ca == EOF || cb == EOF) break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return same;
}

/* every rank's weights bit for bit rank 0's */
static void check_ranks_identical(const char *name, const network *net)
{
    uint64_t h = weights_hash(net), *all = (uint64_t *)calloc((size_t)ranks, sizeof *all);
    int i, same = 1;
    comm->ops->allgather(comm, &h, all, sizeof h);
    for (i = 1; i < ranks; ++i) same &= all[i] == all[0];
    if (rank == 0) kt_check(name, same, "the %d ranks' weights differ (rank 0 %016llx)", ranks, (unsigned long long)all[0]);
    free(all);
}

static void check_close(const char *name, const network *got, const network *ref, double tol)
{
    double diff, mag;
    weights_diff(got, ref, &diff, &mag);
    printf("# %s: max |difference| %.3g, largest weight %.3g (%.3g of it)\n", name, diff, mag, diff / mag);
    kt_check(name, diff <= tol * mag, "max |difference| %.3g > %.3g x largest weight %.3g", diff, tol, mag);
}

/* the control: a run that should differ, farther than 10 x the tolerance */
static void check_far(const char *name, const network *got, const network *other, double tol)
{
    double diff, mag;
    weights_diff(got, other, &diff, &mag);
    printf("# %s: max |difference| %.3g (%.3g of the largest weight)\n", name, diff, diff / mag);
    kt_check(name, diff > 10 * tol * mag, "only %.3g apart (%.3g of the largest weight): the tolerance %.3g could not "
             "tell this run from the reference", diff, diff / mag, tol);
}

static void check_factors(const char *name, const network *got, const network *ref)
{
    int i;
    for (i = 0; i < got->n; ++i) {
        const float *A, *G, *Ar, *Gr;
        int groups, ka, kg, gr, kar, kgr;
        char what[256];
        if (!kfac_layer_factors(got, i, &A, &G, &groups, &ka, &kg)) continue;
        kfac_layer_factors(ref, i, &Ar, &Gr, &gr, &kar, &kgr);
        const size_t nA = (size_t)groups * ka * ka, nG = (size_t)groups * kg * kg;
        double *r = (double *)calloc(nA > nG ? nA : nG, sizeof(double));
        size_t j;
        for (j = 0; j < nA; ++j) r[j] = Ar[j];
        snprintf(what, sizeof what, "%s_A_layer%d", name, i);
        kt_close_f(what, A, r, nA, KFAC_TOL_F * kt_maxabs(r, nA), KFAC_TOL_F);
        for (j = 0; j < nG; ++j) r[j] = Gr[j];
        snprintf(what, sizeof what, "%s_G_layer%d", name, i);
        kt_close_f(what, G, r, nG, KFAC_TOL_F * kt_maxabs(r, nG), KFAC_TOL_F);
        free(r);
    }
}

/* ---- modes ---------------------------------------------------------------------------- */

static void mode_equal(const char *name, const char *base, const char *kfac, int U, const char *dir)
{
    char cb[512], cn[512], what[160];
    const char *cfg = cfg_variant(cb, sizeof cb, dir, base, 4, kfac);
    network *net = kt_net(cfg, SEED);
    const int b = net->batch, nb = ranks * b;
    kfac_dist_start(net, cfg, NULL, 1);
    network *ref = NULL, *ctl = NULL, *ulp = NULL;
    const char *cfg_n = cfg_variant(cn, sizeof cn, dir, base, nb, kfac);
    if (rank == 0) {
        ref = kt_net(cfg_n, SEED);
        ctl = kt_net(cfg, SEED);
        ulp = kt_net(cfg_n, SEED);
        ulp->layers[0].weights[0] = nextafterf(ulp->layers[0].weights[0], INFINITY);
        snprintf(what, sizeof what, "%s_same_start", name);
        kt_check(what, kt_nets_same_bits(net, ref), "the one-process reference starts from other weights");
    }
    train(net, 0, 1, nb, rank * b);
    if (rank == 0) {
        train(ref, 0, 1, nb, 0);
        train(ctl, 0, 1, nb, 0);
        train(ulp, 0, 1, nb, 0);
        if (net->kfac) {
            snprintf(what, sizeof what, "%s_factors", name);
            check_factors(what, net, ref);
        }
    }
    train(net, 1, U - 1, nb, rank * b);
    snprintf(what, sizeof what, "%s_ranks_identical", name);
    check_ranks_identical(what, net);
    if (rank == 0) {
        double drift, mag;
        train(ref, 1, U - 1, nb, 0);
        train(ctl, 1, U - 1, nb, 0);
        train(ulp, 1, U - 1, nb, 0);
        weights_diff(ulp, ref, &drift, &mag);
        const double tol = fmax(KFAC_TOL_FLOOR, KFAC_ULP_FACTOR * drift / mag);
        printf("# %s: %d updates; one process with one weight moved by one ulp drifts %.3g of the largest weight: "
               "tolerance %.3g\n", name, U, drift / mag, tol);
        snprintf(what, sizeof what, "%s_equals_one_process", name);
        check_close(what, net, ref, tol);
        snprintf(what, sizeof what, "%s_control_rank0_images_alone", name);
        check_far(what, net, ctl, tol);
        free_network(ref);
        free_network(ctl);
        free_network(ulp);
    }
    free_network(net);
}

static void mode_save(const char *base, const char *kfac, int U0, int U, const char *dir)
{
    char cb[512], path[512];
    const char *cfg = cfg_variant(cb, sizeof cb, dir, base, 4, kfac);
    network *net = kt_net(cfg, SEED);
    const int nb = ranks * net->batch;
    kfac_dist_start(net, cfg, NULL, 1);
    train(net, 0, U0, nb, rank * net->batch);
    snprintf(path, sizeof path, "%s/dist.weights", dir);
    save_weights(net, path);
    train(net, U0, U, nb, rank * net->batch);
    snprintf(path, sizeof path, "%s/straight.weights", dir);
    save_weights(net, path);
    if (rank == 0) kt_ok("dist_save");
    free_network(net);
}

/* Darknet's and K-FAC's momentum of a net resumed at another batch, rescaled: they hold
 * sums over a batch's images (kfac_dist.c), here saved at batch n0 and used at n */
static void rescale_momentum(network *net, double f)
{
    kfac_net *k = kfac_of(net);
    int i;
    for (i = 0; i < net->n; ++i) {
        layer *l = &net->layers[i];
        if (l->type != CONVOLUTIONAL && l->type != CONNECTED) continue;
        scal_cpu((int)kt_nweights(l), (float)f, l->weight_updates, 1);
        scal_cpu(l->type == CONNECTED ? l->outputs : l->n, (float)f, l->bias_updates, 1);
    }
    for (i = 0; k && i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        scal_cpu(kl->s.groups * kl->s.M * kl->s.k_in, (float)f, kl->w_snap, 1);
        if (kl->s.has_bias) scal_cpu(kl->s.groups * kl->s.M, (float)f, kl->b_snap, 1);
    }
}

static void mode_resume(const char *base, const char *kfac, int U0, int U, const char *dir, int N0)
{
    char cb[512], c0[512], cm[512], path[512], out[512], ref_path[512], what[128];
    const char *cfg = cfg_variant(cb, sizeof cb, dir, base, 4, kfac);
    snprintf(path, sizeof path, "%s/dist.weights", dir);
    network *net = load_network((char *)cfg, path, 0);
    const int b = net->batch, nb = ranks * b;
    kfac_dist_start(net, cfg, path, 1);
    train(net, U0, U, nb, rank * b);
    snprintf(out, sizeof out, "%s/resumed-%d.weights", dir, ranks);
    save_weights(net, out);
    snprintf(what, sizeof what, "resume_%d_on_%d_ranks_identical", N0, ranks);
    check_ranks_identical(what, net);
    if (rank == 0) {
        if (ranks == N0) {
            char a[512], b1[600], b2[600];
            snprintf(a, sizeof a, "%s/straight.weights", dir);
            snprintf(what, sizeof what, "resume_%d_on_%d_weights_equal_uninterrupted", N0, ranks);
            kt_check(what, files_same(out, a), "%s and %s differ: the run resumed on the same %d ranks is not bit "
                     "for bit the uninterrupted one", out, a, ranks);
            snprintf(b1, sizeof b1, "%s.kfac", out);
            snprintf(b2, sizeof b2, "%s.kfac", a);
            snprintf(what, sizeof what, "resume_%d_on_%d_state_equals_uninterrupted", N0, ranks);
            if (net->kfac) kt_check(what, files_same(b1, b2), "%s and %s differ", b1, b2);
        }
        /* one process: N0 b images per update for U0 updates, saved, then M b */
        const char *cfg0 = cfg_variant(c0, sizeof c0, dir, base, N0 * b, kfac);
        network *r1 = kt_net(cfg0, SEED);
        train(r1, 0, U0, N0 * b, 0);
        snprintf(ref_path, sizeof ref_path, "%s/ref.weights", dir);
        save_weights(r1, ref_path);
        free_network(r1);
        const char *cfgm = cfg_variant(cm, sizeof cm, dir, base, nb, kfac);
        network *r2 = load_network((char *)cfgm, ref_path, 0);
        rescale_momentum(r2, (double)nb / (N0 * b));
        train(r2, U0, U, nb, 0);
        snprintf(what, sizeof what, "resume_%d_on_%d_equals_one_process", N0, ranks);
        check_close(what, net, r2, KFAC_TOL_W);
        free_network(r2);
        if (ranks != N0) {
            /* control: the chain that keeps N0 b images per update after the save */
            network *r3 = load_network((char *)cfg0, ref_path, 0);
            train(r3, U0, U, N0 * b, 0);
            snprintf(what, sizeof what, "resume_%d_on_%d_control_old_batch", N0, ranks);
            check_far(what, net, r3, KFAC_TOL_W);
            free_network(r3);
        }
    } else {
        /* rank 0's one-process references call no collective; the others wait here */
        cfg_variant(c0, sizeof c0, dir, base, N0 * b, kfac);
        cfg_variant(cm, sizeof cm, dir, base, nb, kfac);
    }
    free_network(net);
}

static void mode_modes(const char *name, const char *base, const char *kfac, int U0, int U, const char *dir)
{
    static const char *mode[2] = {"everyone", "owner"};
    char sub[2][512], kf[2][1024], cb[2][512], path[2][2][600], what[200];
    network *net[2];
    kfac_dist_times t[2];
    int m, j, in_flight[2];
    for (m = 0; m < 2; ++m) {
        snprintf(sub[m], sizeof sub[m], "%s/%s", dir, mode[m]);
        if (rank == 0) mkdir(sub[m], 0755);
        snprintf(kf[m], sizeof kf[m], "%s\\ndist_precondition=%s", kfac, mode[m]);
        const char *cfg = cfg_variant(cb[m], sizeof cb[m], sub[m], base, 4, kf[m]);
        net[m] = kt_net(cfg, SEED);
        kfac_dist_start(net[m], cfg, NULL, 1);
        const int nb = ranks * net[m]->batch;
        train(net[m], 0, U0, nb, rank * net[m]->batch);
        in_flight[m] = kfac_of(net[m])->job_install_at >= 0;
        snprintf(path[m][0], sizeof path[m][0], "%s/mid.weights", sub[m]);
        save_weights(net[m], path[m][0]);
        train(net[m], U0, U - U0, nb, rank * net[m]->batch);
        snprintf(path[m][1], sizeof path[m][1], "%s/end.weights", sub[m]);
        save_weights(net[m], path[m][1]);
        kfac_dist_timing(net[m], &t[m]);
    }
    snprintf(what, sizeof what, "%s_owner_ranks_identical", name);
    check_ranks_identical(what, net[1]);
    if (rank == 0) {
        const int ekfac = kfac_of(net[1])->cfg.scaling == KFAC_SCALING_EKFAC;
        printf("# %s: bytes per update to the collectives: everyone %.0f, owner %.0f; seconds per update receiving "
               "preconditioned gradients: everyone %.3g, owner %.3g\n", name, t[0].bytes / U, t[1].bytes / U,
               t[0].preconditioned / U, t[1].preconditioned / U);
        snprintf(what, sizeof what, "%s_owner_equals_everyone_bits", name);
        kt_check(what, kt_nets_same_bits(net[0], net[1]), "after %d updates the weights of the two runs differ", U);
        snprintf(what, sizeof what, "%s_mid_save_job_in_flight", name);
        kt_check(what, in_flight[0] && in_flight[1], "no background job in flight after %d updates (%d, %d): the "
                 "saves do not cover it", U0, in_flight[0], in_flight[1]);
        for (j = 0; j < 2; ++j) {
            char a[620], b[620];
            snprintf(what, sizeof what, "%s_%s_save_weights_same", name, j ? "end" : "mid");
            kt_check(what, files_same(path[0][j], path[1][j]), "%s and %s differ", path[0][j], path[1][j]);
            snprintf(a, sizeof a, "%.600s.kfac", path[0][j]);
            snprintf(b, sizeof b, "%.600s.kfac", path[1][j]);
            snprintf(what, sizeof what, "%s_%s_save_state_same", name, j ? "end" : "mid");
            kt_check(what, files_same(a, b), "%s and %s differ", a, b);
        }
        snprintf(what, sizeof what, "%s_traffic", name);
        if (ekfac)
            kt_check(what, t[1].bytes == t[0].bytes && t[1].preconditioned == 0,
                     "scaling=ekfac: owner sent %.0f bytes (everyone %.0f) and received preconditioned gradients "
                     "for %.3g s: it should fall back to everyone", t[1].bytes, t[0].bytes, t[1].preconditioned);
        else
            kt_check(what, t[1].bytes != t[0].bytes && t[0].preconditioned == 0 && t[1].preconditioned > 0,
                     "bytes everyone %.0f, owner %.0f; seconds receiving preconditioned gradients everyone %.3g, "
                     "owner %.3g", t[0].bytes, t[1].bytes, t[0].preconditioned, t[1].preconditioned);
    }
    free_network(net[0]);
    free_network(net[1]);
}

/* the auto schedule's change as every rank takes it (kfac_dist_agree_schedule): the
 * decompositions every update, installed one update after their launch */
static void shorten_schedule(network *net)
{
    kfac_net *k = kfac_of(net);
    k->sched.inverse_interval = 1;
    k->sched.inverse_lag = 1;
}

/* A lag that auto shortens: the job launched before the change and the job launched
 * after it can both be due at the same update (the first installed early, since a new
 * launch needs its buffers); each must be shared from its owners.  U0 updates with the
 * cfg's schedule, then the change, U more: the ranks identical, and within KFAC_TOL_W
 * of one process at N*b that takes the same change at the same update. */
static void mode_relag(const char *name, const char *base, const char *kfac, int U0, int U, const char *dir)
{
    char cb[512], cn[512], what[160];
    const char *cfg = cfg_variant(cb, sizeof cb, dir, base, 4, kfac);
    network *net = kt_net(cfg, SEED);
    const int b = net->batch, nb = ranks * b;
    kfac_dist_start(net, cfg, NULL, 1);
    const char *cfg_n = cfg_variant(cn, sizeof cn, dir, base, nb, kfac);
    train(net, 0, U0, nb, rank * b);
    shorten_schedule(net);
    train(net, U0, U, nb, rank * b);
    snprintf(what, sizeof what, "%s_ranks_identical", name);
    check_ranks_identical(what, net);
    if (rank == 0) {
        network *ref = kt_net(cfg_n, SEED);
        train(ref, 0, U0, nb, 0);
        shorten_schedule(ref);
        train(ref, U0, U, nb, 0);
        snprintf(what, sizeof what, "%s_equals_one_process", name);
        check_close(what, net, ref, KFAC_TOL_W);
        free_network(ref);
    }
    free_network(net);
}

static void mode_diverge(const char *base, const char *dir)
{
    char cb[512], path[512];
    const char *cfg = cfg_variant(cb, sizeof cb, dir, base, 4, "none");
    network *net = kt_net(cfg, SEED);
    kfac_dist_start(net, cfg, NULL, 1);
    train(net, 0, 2, ranks * net->batch, rank * net->batch);
    if (rank == 1) net->layers[0].weights[0] += 1e-3f;
    snprintf(path, sizeof path, "%s/diverged.weights", dir);
    save_weights(net, path); /* stops every rank */
    if (rank == 0) kt_fail("diverge_stops", "the save went through with rank 1's weights changed");
    free_network(net);
}

int main(int argc, char **argv)
{
    kfac_dist_init(-1);
    comm = kfac_comm_world();
    rank = comm->rank;
    ranks = comm->size;
    if (argc == 7 && !strcmp(argv[1], "equal")) mode_equal(argv[2], argv[3], argv[4], atoi(argv[5]), argv[6]);
    else if (argc == 7 && !strcmp(argv[1], "save")) mode_save(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]), argv[6]);
    else if (argc == 8 && !strcmp(argv[1], "resume"))
        mode_resume(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]), argv[6], atoi(argv[7]));
    else if (argc == 8 && !strcmp(argv[1], "modes"))
        mode_modes(argv[2], argv[3], argv[4], atoi(argv[5]), atoi(argv[6]), argv[7]);
    else if (argc == 8 && !strcmp(argv[1], "relag"))
        mode_relag(argv[2], argv[3], argv[4], atoi(argv[5]), atoi(argv[6]), argv[7]);
    else if (argc == 4 && !strcmp(argv[1], "diverge")) mode_diverge(argv[2], argv[3]);
    else {
        printf("FAIL harness: usage: test_dist equal NAME CFG KFAC U DIR | save CFG KFAC U0 U DIR | "
               "resume CFG KFAC U0 U DIR N0 | modes NAME CFG KFAC U0 U DIR | relag NAME CFG KFAC U0 U DIR | "
               "diverge CFG DIR\n");
        return 1;
    }
    return rank == 0 ? kt_exit() : 0;
}
