/* darknet-kfac: synchronous data-parallel training across processes (mpirun), for
 * Darknet's SGD and K-FAC alike (shared/DESIGN.md 6b).
 *
 * N ranks each train on their own images with the cfg's `batch` (per rank); after
 * every update's backward passes each trainable array's NEW gradient is averaged over
 * the ranks, so every rank applies the same update and keeps the same weights.
 *
 * Why the average, with Darknet's update unchanged (DESIGN.md 3): one process at
 * batch N*B does  wu = m v + sum_{N B images} g;  wu -= decay N B w;
 * w += lr/(N B) wu;  v <- wu.  Rank r holds g_r, the sum over its B images.  With
 * wu = m v' + (1/N) sum_r g_r  and Darknet's own  wu -= decay B w;  w += lr/B wu,
 * the step is  lr/(N B) (N m v' + sum_r g_r - decay N B w): the same step when
 * v' = v/N, which holds at the start (v = v' = 0) and after every update (v' is 1/N
 * of v).  So N ranks at batch B are one process at batch N*B with the same cfg
 * learning_rate, momentum and decay, up to the order of float additions.  With N a
 * power of two the factor 1/N is exact; K-FAC's factors are means over images and
 * its KL term and adaptive step divide by the batch, so the same holds for them
 * (kfac_dist_factors.c).  Batch norm normalizes over each rank's own images (its
 * rolling statistics are averaged every update, so that the ranks keep the same);
 * that part is not one process at N*B.
 *
 * The new gradient alone: Darknet's *_updates arrays hold momentum * v after an update
 * and the gradients add into them.  kfac_dist_updated keeps what the update left
 * (stash) and zeroes the arrays, so that the next backward passes sum this rank's new
 * gradients from zero; kfac_dist_gradients, in the next update before K-FAC's
 * preconditioning, all-reduces them (one fused buffer) and writes stash + their mean
 * back.  K-FAC's snapshot (kfac_driver.c) then sees what it sees in one process.  A
 * save needs the momentum in the arrays (K-FAC's state file keeps it), so
 * kfac_dist_save puts the stash back first; the update after it, and the first one
 * after a start, take the new gradients as array - stash instead, which rounds at the
 * size of the momentum (measured on the demo CNN with momentum 0.9: summing from zero
 * keeps 2 ranks within 3e-7 of the largest weight of one process after 20 updates, the
 * subtraction at every update 9e-5).  Both runs of a save and resume take that same path, so a
 * resumed run stays bit for bit the uninterrupted one.
 *
 * Counting (Darknet's own multi-GPU convention, train_networks): `seen` counts this
 * rank's images, so get_current_batch() is the number of updates, and the learning-
 * rate policy, burn_in, steps and max_batches count updates as in one process;
 * classifier train's epochs (seen / training images, and its <cfg>_<epoch>.weights)
 * count one rank's images: N passes over the data per such epoch.  The learning rate
 * is not multiplied by N (Darknet's thread-per-GPU path does that): the update is the
 * N*B-image update of the same cfg.  A save holds `seen` of one rank, so a resumed run
 * with the same cfg continues at the same update on any number of ranks.
 *
 * Alone (no mpirun, or one rank) the same calls run on the single-process
 * communicator and the gradient arrays are left as Darknet accumulates them, bit for
 * bit (tests/test_checksum.sh runs through here). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef GPU
#include <cuda_runtime.h>
#endif
#include "kfac_internal.h"
#include "kfac_dist.h"

/* updates between two progress lines (rank 0, several ranks) */
#define KFAC_DIST_REPORT 100

/* ---- small helpers ------------------------------------------------------------------ */

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = (const unsigned char *)p;
    size_t i;
    for (i = 0; i < n; ++i) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}
#define KFAC_FNV_SEED 0xcbf29ce484222325ULL

/* hash of a file's bytes; 0 when it cannot be read */
static uint64_t file_hash(const char *path)
{
    FILE *f = fopen(path, "rb");
    unsigned char buf[1 << 16];
    size_t n;
    uint64_t h = KFAC_FNV_SEED;
    if (!f) return 0;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) h = fnv1a(h, buf, n);
    fclose(f);
    return h;
}

/* ---- the net's arrays ---------------------------------------------------------------- */

/* one layer's arrays in the memory the net trains in */
typedef struct {
    float *w, *wu, *b, *bu, *s, *su, *rm, *rv;
    size_t nw, nb;
} layer_arrays;

/* Fills a with layer l's trainable arrays and batch-norm statistics (NULL where it
 * has none); stops naming the layer when it has trainable arrays this file does not
 * know (the recurrent layers keep theirs in sub-layers). */
static void arrays_of(const char *cfgfile, int index, const layer *l, int device, layer_arrays *a)
{
    const int bn = l->batch_normalize;
    memset(a, 0, sizeof *a);
    switch (l->type) {
    case CONVOLUTIONAL:
    case DECONVOLUTIONAL: a->nw = (size_t)l->nweights; a->nb = (size_t)l->n; break;
    case CONNECTED: a->nw = (size_t)l->inputs * l->outputs; a->nb = (size_t)l->outputs; break;
    case LOCAL: a->nw = (size_t)l->size * l->size * l->c * l->n * l->out_w * l->out_h; a->nb = (size_t)l->outputs; break;
    case BATCHNORM: a->nb = (size_t)l->c; break;
    default:
        if (l->update)
            kfac_user_error("%s layer %d: training across ranks averages the gradients of [convolutional], "
                            "[deconvolutional], [connected] and [local] layers; this layer type keeps its weights in "
                            "sub-layers (recurrent), which it does not reach", cfgfile, index);
        return;
    }
#ifdef GPU
    if (device) {
        if (a->nw) { a->w = l->weights_gpu; a->wu = l->weight_updates_gpu; a->b = l->biases_gpu; a->bu = l->bias_updates_gpu; }
        if (bn || l->type == BATCHNORM) { a->s = l->scales_gpu; a->rm = l->rolling_mean_gpu; a->rv = l->rolling_variance_gpu; }
        if (bn) a->su = l->scale_updates_gpu;
        return;
    }
#endif
    (void)device;
    if (a->nw) { a->w = l->weights; a->wu = l->weight_updates; a->b = l->biases; a->bu = l->bias_updates; }
    if (bn || l->type == BATCHNORM) { a->s = l->scales; a->rm = l->rolling_mean; a->rv = l->rolling_variance; }
    if (bn) a->su = l->scale_updates;
}

static void span_add(kfac_dist_span **spans, int *n, float *buf, size_t len)
{
    if (!buf || !len) return;
    *spans = (kfac_dist_span *)realloc(*spans, (size_t)(*n + 1) * sizeof **spans);
    if (!*spans) kfac_die(__FILE__, __LINE__, "out of memory");
    (*spans)[*n].buf = buf;
    (*spans)[*n].len = len;
    (*spans)[*n].off = 0;
    ++*n;
}

/* the span lists and their offsets in the fusion buffer: gradients, then statistics */
static void collect_spans(kfac_dist *d, const network *net, const char *cfgfile)
{
    int i, j;
    size_t off = 0, most = 0;
    for (i = 0; i < net->n; ++i) {
        layer_arrays a;
        arrays_of(cfgfile, i, &net->layers[i], d->device, &a);
        span_add(&d->grad, &d->ngrad, a.wu, a.nw);
        span_add(&d->grad, &d->ngrad, a.bu, a.nb);
        span_add(&d->grad, &d->ngrad, a.su, a.nb);
        span_add(&d->stat, &d->nstat, a.rm, a.nb);
        span_add(&d->stat, &d->nstat, a.rv, a.nb);
        span_add(&d->param, &d->nparam, a.w, a.nw);
        span_add(&d->param, &d->nparam, a.b, a.nb);
        span_add(&d->param, &d->nparam, a.s, a.nb);
        span_add(&d->param, &d->nparam, a.rm, a.nb);
        span_add(&d->param, &d->nparam, a.rv, a.nb);
    }
    for (j = 0; j < d->ngrad; ++j) { d->grad[j].off = off; off += d->grad[j].len; }
    d->grad_len = off;
    for (j = 0; j < d->nstat; ++j) { d->stat[j].off = off; off += d->stat[j].len; }
    d->fusion_len = off;
    for (j = 0; j < d->nparam; ++j) if (d->param[j].len > most) most = d->param[j].len;
    d->host_len = most;
    d->host = (float *)kfac_calloc(most ? most : 1, sizeof(float));
}

/* FNV-1a over every parameter array and `seen`, as the host reads them */
static uint64_t params_hash(kfac_dist *d, const network *net)
{
    uint64_t h = KFAC_FNV_SEED, seen = (uint64_t)*net->seen;
    int j;
    for (j = 0; j < d->nparam; ++j) {
        d->be->ops->to_host(d->be, d->host, d->param[j].buf, d->param[j].len);
        h = fnv1a(h, d->host, d->param[j].len * sizeof(float));
    }
    return fnv1a(h, &seen, sizeof seen);
}

/* what the update left in the *_updates arrays (momentum * v), kept; zero: the arrays
 * start from 0 (after an update), else they keep it (at a start: folded) */
static void stash_updates(kfac_dist *d, int zero)
{
    int j;
    for (j = 0; j < d->ngrad; ++j) {
        d->be->ops->copy(d->be, d->stash + d->grad[j].off, d->grad[j].buf, d->grad[j].len);
        if (zero) d->be->ops->zero(d->be, d->grad[j].buf, d->grad[j].len);
    }
    d->folded = !zero;
}

/* ---- start: the ranks must agree ---------------------------------------------------- */

/* What each rank started with, compared with rank 0's before any training. */
typedef struct {
    uint64_t build;         /* GPU/cuDNN flags, Darknet's struct sizes, compiler, MPI library */
    uint64_t cfg;           /* the cfg file's bytes */
    uint64_t kfac;          /* the [kfac] options as parsed (0: no [kfac]) */
    uint64_t weights;       /* the weights as loaded, with seen (0: no weights file) */
    uint64_t state;         /* the K-FAC state file's bytes (0: none) */
    int32_t device;         /* 1: trains on a GPU */
    int32_t pad;
    char cfgfile[96];
    char host[64];
} start_record;

static uint64_t build_hash(const kfac_comm *c)
{
    char b[512];
    int gpu = 0, cudnn = 0;
#ifdef GPU
    gpu = 1;
#endif
#ifdef CUDNN
    cudnn = 1;
#endif
    /* the transport's name and library, without its rank count */
    const char *comma = strrchr(c->description, ',');
    snprintf(b, sizeof b, "GPU=%d CUDNN=%d layer=%zu network=%zu compiler=%s comm=%s %.*s", gpu, cudnn,
             sizeof(layer), sizeof(network), __VERSION__, c->ops->name,
             comma ? (int)(comma - c->description) : (int)strlen(c->description), c->description);
    return fnv1a(KFAC_FNV_SEED, b, strlen(b));
}

static uint64_t kfac_options_hash(const network *net)
{
    const kfac_net *k = kfac_of(net);
    char *text = NULL;
    size_t len = 0;
    if (!k) return 0;
    FILE *m = open_memstream(&text, &len);
    if (!m) kfac_die(__FILE__, __LINE__, "open_memstream: %s", strerror(errno));
    kfac_config_print(&k->cfg, m);
    fclose(m);
    uint64_t h = fnv1a(KFAC_FNV_SEED, text, len);
    free(text);
    return fnv1a(h, k->cfg.layer_on, (size_t)k->cfg.nlayers * sizeof(int));
}

static void fill_record(kfac_dist *d, const network *net, const char *cfgfile, const char *weightfile,
                        start_record *r)
{
    memset(r, 0, sizeof *r);
    r->build = build_hash(d->comm);
    r->cfg = file_hash(cfgfile);
    r->kfac = kfac_options_hash(net);
    if (weightfile && weightfile[0]) {
        char state[4096];
        r->weights = params_hash(d, net);
        snprintf(state, sizeof state, "%s.kfac", weightfile);
        if (net->kfac) r->state = file_hash(state);
    }
    r->device = d->device;
    snprintf(r->cfgfile, sizeof r->cfgfile, "%s", cfgfile);
    gethostname(r->host, sizeof r->host - 1);
}

/* Rank 0 names every difference; then every rank stops (exit status 1: the job ends). */
static void check_records(kfac_dist *d, const start_record *all, const char *weightfile)
{
    const start_record *r0 = &all[0];
    int i, bad = 0;
    for (i = 1; i < d->comm->size; ++i) {
        const start_record *r = &all[i];
        char what[1024] = "";
        size_t n = 0;
#define KFAC_DIFF(...) n += (size_t)snprintf(what + n, n < sizeof what ? sizeof what - n : 0, __VA_ARGS__)
        if (r->build != r0->build) KFAC_DIFF("; the build (GPU/cuDNN, Darknet's structs, compiler or MPI library)");
        if (r->device != r0->device) KFAC_DIFF("; trains on the %s, rank 0 on the %s", r->device ? "GPU" : "CPU", r0->device ? "GPU" : "CPU");
        if (r->cfg != r0->cfg) KFAC_DIFF("; the cfg text (%s, rank 0: %s)", r->cfgfile, r0->cfgfile);
        if (r->kfac != r0->kfac) KFAC_DIFF("; the [kfac] options%s", !r->kfac || !r0->kfac ? " (one of the cfgs has no [kfac])" : "");
        if (r->weights != r0->weights) KFAC_DIFF("; the weights loaded from %s", weightfile);
        if (r->state != r0->state) KFAC_DIFF("; the K-FAC state %s.kfac", weightfile);
#undef KFAC_DIFF
        if (!n) continue;
        bad = 1;
        if (d->comm->rank == 0)
            fprintf(stderr, "darknet-kfac: rank %d (%s) differs from rank 0 (%s) in%s\n", i, r->host, r0->host, what + 1);
    }
    if (!bad) return;
    if (d->comm->rank == 0)
        fprintf(stderr, "darknet-kfac: every rank must start with the same build, cfg, [kfac] options, weights and "
                "K-FAC state; stopping before training\n");
    fflush(stderr);
    d->comm->ops->barrier(d->comm); /* rank 0's message is out before any rank ends the job */
    exit(1);
}

/* ---- the hooks --------------------------------------------------------------------------- */

int kfac_dist_init(int gpu)
{
    kfac_comm *c = kfac_comm_init();
    if (c->size < 2) return gpu;
    /* one progress line per update, not N */
    if (c->rank > 0 && !freopen("/dev/null", "w", stdout))
        kfac_die(__FILE__, __LINE__, "rank %d: cannot silence stdout: %s", c->rank, strerror(errno));
#ifdef GPU
    if (gpu >= 0) {
        int n = 0;
        if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1)
            kfac_user_error("darknet-kfac: rank %d: no CUDA device (use -nogpu to train on the CPU)", c->rank);
        gpu = (gpu + c->local_rank) % n;
    }
#endif
    return gpu;
}

int kfac_dist_rank(void) { return kfac_comm_world()->rank; }
int kfac_dist_size(void) { return kfac_comm_world()->size; }

/* A net joins its job (several ranks): the arrays to average, the ranks' agreement,
 * rank 0's weights, per-rank loader seeds, the stash. */
static void join(kfac_dist *d, network *net, const char *cfgfile, const char *weightfile)
{
    kfac_comm *c = d->comm;
    int j;
#ifdef GPU
    d->device = net->gpu_index >= 0;
    if (d->device) d->be = kfac_backend_cuda_create(net->gpu_index, 1);
#ifdef KFAC_MPI
    if (d->device) kfac_comm_nccl_attach(c, net->gpu_index);
#endif
#endif
    if (!d->be) d->be = kfac_backend_cpu_create(1);
    collect_spans(d, net, cfgfile);

    /* the ranks agree on everything but the random initialization... */
    start_record mine, *all = (start_record *)kfac_calloc((size_t)c->size, sizeof *all);
    fill_record(d, net, cfgfile, weightfile, &mine);
    c->ops->allgather(c, &mine, all, sizeof mine);
    check_records(d, all, weightfile);
    free(all);
    /* ...which is rank 0's */
    for (j = 0; j < d->nparam; ++j) {
        if (d->device) c->ops->device_broadcast(c, d->param[j].buf, d->param[j].len, 0);
        else c->ops->broadcast(c, d->param[j].buf, d->param[j].len * sizeof(float), 0);
    }
    /* each rank's loaders draw their own images (Darknet seeds them from the clock) */
    unsigned seed = (unsigned)time(NULL);
    c->ops->broadcast(c, &seed, sizeof seed, 0);
    srand(seed + 7919u * (unsigned)c->rank);
    d->stash = d->be->ops->alloc(d->be, d->grad_len);
    d->fusion = d->be->ops->alloc(d->be, d->fusion_len);
    /* what the weights came with (a resumed K-FAC state's momentum), left in place as
     * after a save */
    stash_updates(d, 0);
}

void kfac_dist_start(network *net, const char *cfgfile, const char *weightfile, int ngpus)
{
    kfac_comm *c = kfac_comm_world();
    if (net->dist) return;
    if (ngpus > 1) {
        if (c->size == 1) return; /* Darknet's thread per GPU, kfac_sync.c */
        kfac_user_error("darknet-kfac: %d ranks with -gpus (%d GPUs each): across ranks each rank takes one GPU "
                        "(its local rank); drop -gpus", c->size, ngpus);
    }
    kfac_dist *d = (kfac_dist *)kfac_calloc(1, sizeof *d);
    d->comm = c;
    /* alone, only K-FAC's side runs (on the single-process communicator) */
    if (c->size > 1) join(d, net, cfgfile, weightfile);
    d->t_start = kfac_now(); /* times and bytes count from the first update on */
    net->dist = d;
    if (net->kfac) kfac_dist_factors_attach(kfac_of(net), d);
    if (c->size > 1 && c->rank == 0)
        fprintf(stderr, "darknet-kfac: rank 0 of %d (%s): batch %d x %d per rank, %d images per update; %zu floats "
                "all-reduced per update%s\n", c->size, c->description, net->batch, net->subdivisions,
                net->batch * net->subdivisions * c->size, d->fusion_len,
                net->kfac ? ", K-FAC's statistics and decompositions shared (below)" : "");
}

void kfac_dist_gradients(network *net)
{
    kfac_dist *d = (kfac_dist *)net->dist;
    kfac_comm *c = d->comm;
    kfac_backend *be = d->be;
    const float inv = 1.0f / (float)c->size;
    int j;
    if (c->size == 1) return; /* nothing to average: Darknet's own accumulation stays */
    double t = kfac_now();
    /* the slowest rank's backward: timed apart from the transfer, so that the line
     * says whether the ranks are balanced (one barrier's latency per update) */
    be->ops->synchronize(be);
    c->ops->barrier(c);
    t = kfac_dist_tick(t, &d->times.waiting);
    for (j = 0; j < d->ngrad; ++j) {
        be->ops->copy(be, d->fusion + d->grad[j].off, d->grad[j].buf, d->grad[j].len);
        if (d->folded) be->ops->axpy(be, -1.0f, d->stash + d->grad[j].off, d->fusion + d->grad[j].off, d->grad[j].len);
    }
    d->folded = 0;
    for (j = 0; j < d->nstat; ++j) be->ops->copy(be, d->fusion + d->stat[j].off, d->stat[j].buf, d->stat[j].len);
    if (d->device) c->ops->device_sum(c, d->fusion, d->fusion_len);
    else c->ops->sum(c, d->fusion, d->fusion_len);
    kfac_dist_count(d, d->fusion_len * sizeof(float));
    /* wu = what the last update left + the mean of the ranks' new gradients */
    for (j = 0; j < d->ngrad; ++j) {
        be->ops->copy(be, d->grad[j].buf, d->stash + d->grad[j].off, d->grad[j].len);
        be->ops->axpy(be, inv, d->fusion + d->grad[j].off, d->grad[j].buf, d->grad[j].len);
    }
    for (j = 0; j < d->nstat; ++j) {
        be->ops->copy(be, d->stat[j].buf, d->fusion + d->stat[j].off, d->stat[j].len);
        be->ops->scale(be, inv, d->stat[j].buf, d->stat[j].len);
    }
    be->ops->synchronize(be);
    kfac_dist_tick(t, &d->times.gradients);
}

/* Every KFAC_DIST_REPORT updates (rank 0): where an update's time went. */
static void report(kfac_dist *d)
{
    const kfac_dist_times *a = &d->times, *b = &d->reported;
    const int n = a->updates - b->updates;
    if (d->comm->size == 1 || n < KFAC_DIST_REPORT) return;
    const double now = kfac_now(), total = (now - d->t_start) / n;
    const double wait = (a->waiting - b->waiting) / n, grad = (a->gradients - b->gradients) / n,
                 stats = (a->statistics - b->statistics) / n, share = (a->sharing - b->sharing) / n,
                 pre = (a->preconditioned - b->preconditioned) / n, sc = (a->scalars - b->scalars) / n;
    if (d->comm->rank == 0)
        fprintf(stderr, "darknet-kfac: update %d: seconds per update over the last %d on %d ranks: %.4f, of which "
                "waiting for the slowest rank %.4f, gradient all-reduce %.4f, statistics all-reduce %.4f, "
                "decompositions from their owners %.4f, preconditioned gradients from their owners %.4f, loss, step "
                "scalars and schedule %.4f, the rest (forward, backward, K-FAC's own work) %.4f; %.0f bytes per update "
                "to the collectives\n",
                a->updates, n, d->comm->size, total, wait, grad, stats, share, pre, sc,
                total - wait - grad - stats - share - pre - sc, (a->bytes - b->bytes) / n);
    d->reported = *a;
    d->t_start = now;
}

void kfac_dist_updated(network *net)
{
    kfac_dist *d = (kfac_dist *)net->dist;
    if (net->kfac) kfac_dist_agree_schedule(kfac_of(net));
    if (d->comm->size > 1) stash_updates(d, 1);
    ++d->times.updates;
    report(d);
}

float kfac_dist_loss(network *net, float loss)
{
    kfac_dist *d = (kfac_dist *)net->dist;
    double x = loss, t = kfac_now();
    if (d->comm->size == 1) return loss;
    d->comm->ops->sum_double(d->comm, &x, 1);
    kfac_dist_count(d, sizeof x);
    kfac_dist_tick(t, &d->times.scalars);
    return (float)(x / d->comm->size);
}

int kfac_dist_save(network *net, const char *filename)
{
    kfac_dist *d = (kfac_dist *)net->dist;
    kfac_comm *c = d->comm;
    int i, bad = 0;
    if (c->size == 1) return 1;
    /* the momentum back where Darknet and K-FAC's state file keep it */
    if (!d->folded) {
        for (i = 0; i < d->ngrad; ++i) d->be->ops->axpy(d->be, 1.0f, d->stash + d->grad[i].off, d->grad[i].buf, d->grad[i].len);
        d->folded = 1;
    }
    /* a background job in flight is saved with the state: rank 0 needs all of it, and
     * with dist_precondition=owner the decompositions in force too */
    if (net->kfac) {
        kfac_worker_wait(kfac_of(net)); /* this rank's share of the job */
        kfac_dist_share_job(kfac_of(net), 1);
        kfac_dist_gather(kfac_of(net));
    }
    double t = kfac_now();
    uint64_t h = params_hash(d, net), *all = (uint64_t *)kfac_calloc((size_t)c->size, sizeof *all);
    c->ops->allgather(c, &h, all, sizeof h);
    kfac_dist_count(d, sizeof h);
    kfac_dist_tick(t, &d->times.scalars);
    for (i = 1; i < c->size; ++i) {
        if (all[i] == all[0]) continue;
        bad = 1;
        if (c->rank == 0)
            fprintf(stderr, "darknet-kfac: saving %s after update %d: rank %d's weights differ from rank 0's "
                    "(checksum %016llx, rank 0 %016llx)\n", filename, d->times.updates, i, (unsigned long long)all[i],
                    (unsigned long long)all[0]);
    }
    free(all);
    if (bad) {
        if (c->rank == 0)
            fprintf(stderr, "darknet-kfac: the ranks no longer train the same net; stopping (the last save on disk "
                    "is whole)\n");
        fflush(stderr);
        c->ops->barrier(c);
        exit(1);
    }
    return c->rank == 0;
}

void kfac_dist_free(network *net)
{
    kfac_dist *d = (kfac_dist *)net->dist;
    if (net->kfac) kfac_of(net)->dist = NULL;
    kfac_dist_factors_free(d);
    if (d->be) {
        d->be->ops->release(d->be, d->stash);
        d->be->ops->release(d->be, d->fusion);
        d->be->ops->destroy(d->be);
    }
    free(d->grad);
    free(d->stat);
    free(d->param);
    free(d->host);
    free(d);
    net->dist = NULL;
}

void kfac_dist_timing(const network *net, kfac_dist_times *t)
{
    const kfac_dist *d = (const kfac_dist *)net->dist;
    if (d) *t = d->times;
    else memset(t, 0, sizeof *t);
}
