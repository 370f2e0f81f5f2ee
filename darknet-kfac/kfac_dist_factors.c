/* darknet-kfac: K-FAC's share of training across ranks (Ba, Grosse & Martens 2017;
 * shared/DESIGN.md 6b).  kfac_dist.c averages the gradients; here:
 *
 *   - statistics: A_acc, G_acc, the batch-norm blocks' F_acc, EKFAC's S_acc and their
 *     image counts are summed over the ranks before they are folded (kfac_driver.c),
 *     so every rank folds the statistics of all N*B images into the same running
 *     factors, as one process at N*B would (batch norm's blocks: of the images as each
 *     rank normalized them);
 *   - decompositions: each covered layer has an owner (kfac_owners_assign, the
 *     assignment of the multi-GPU replicas: largest factors first, each to the least
 *     loaded rank).  When decompositions fall due every rank stages the factors (the
 *     statistics are the same everywhere), but only a layer's owner decomposes it, at
 *     once or on its background worker (kfac_worker.c); where the driver installs them
 *     (at once, or at launch + inverse_lag, the same update on every rank) the results
 *     are broadcast from their owners first (kfac_dist_share_one, _share_job).  So the
 *     ranks split the decompositions and no rank waits for one unless its owner has
 *     not finished by the install;
 *   - dist_precondition=owner (KAISA's trade, Pauloski et al. SC21; shared/DESIGN.md
 *     6b): a layer's decomposition stays with its owner, which preconditions the
 *     layer's gradient and broadcasts the result (kfac_dist_share_preconditioned)
 *     every update where the layer is preconditioned; the others receive only how
 *     each decomposition went (its status, damping and inv_ok: a few doubles), so
 *     that every rank knows which layers are preconditioned.  The gradient D is the
 *     same on every rank and P is the owner's bits everywhere, so everything computed
 *     from them afterwards (the KL clip's <P, D>, the adaptive step's dots and probes
 *     along P, the write-back, the momentum) is too: the run is the `everyone` run,
 *     bit for bit, with another traffic (tests/test_mpi.sh checks it).  A save gathers
 *     every decomposition from its owner first (kfac_dist_gather), so that rank 0's
 *     state file is the one `everyone` writes and resumes on any number of ranks in
 *     either mode.  The batch-norm blocks (2C x 2C at most, decomposed by every rank
 *     at once) send nothing either way.  With scaling=ekfac every rank projects its
 *     own images' gradients onto each layer's eigenbasis, so the bases must be
 *     everywhere: owner then falls back to everyone, and says so;
 *   - the schedule: with `auto` intervals each rank measures its own times, and rank
 *     0's choice is everyone's after every update (kfac_dist_agree_schedule), so that
 *     statistics, launches and installs stay at the same updates on all ranks;
 *   - the adaptive step: its gradient dots are already the same on every rank (the
 *     gradient is averaged); the Fisher products and the losses h0, h1 are each rank's
 *     means over its own probe images, and their mean over ranks is the mean over all
 *     N*b probe images (kfac_dist_mean), so alpha, mu, rho and lambda agree;
 *   - the true-Fisher sampler: each rank draws for its own images the labels one
 *     process would draw for them in the concatenated batch.
 *
 * With one rank (no mpirun) every call here runs on the single-process communicator:
 * the sums do nothing, rank 0 owns every layer, and the results are the bits K-FAC
 * computes without this file (tests/test_checksum.sh). */
#include <stdlib.h>
#include <string.h>
#include "kfac_internal.h"
#include "kfac_dist.h"

/* the clock and the bytes of every collective, for the progress line (kfac_dist.c
 * counts its own with them) */
double kfac_dist_tick(double t0, double *slot)
{
    double t = kfac_now();
    *slot += t - t0;
    return t;
}

void kfac_dist_count(kfac_dist *d, size_t bytes)
{
    if (d->comm->size > 1) d->times.bytes += (double)bytes;
}

void kfac_dist_factors_attach(kfac_net *k, kfac_dist *d)
{
    const int n = k->nlayers ? k->nlayers : 1, size = d->comm->size;
    int i, r;
    d->owner = (int *)kfac_calloc((size_t)n, sizeof(int));
    d->due = (int *)kfac_calloc((size_t)n, sizeof(int));
    /* three values per covered layer, or two per layer, one per batch-norm block and
     * one per EKFAC scaling (kfac_dist_sum_statistics) */
    d->flags = (double *)kfac_calloc(3 * (size_t)n + (size_t)k->nbn, sizeof(double));
    d->shared_job = -1;
    kfac_owners_assign(k, size, d->owner);
    k->dist = d;
    const int owner_asked = k->cfg.dist_precondition == KFAC_DIST_OWNER;
    d->owner_precondition = size > 1 && owner_asked && k->cfg.scaling != KFAC_SCALING_EKFAC;
    if (size == 1 || d->comm->rank != 0) return;
    if (owner_asked && !d->owner_precondition)
        fprintf(stderr, "darknet-kfac: %s [kfac] dist_precondition=owner with scaling=ekfac: every rank measures the "
                "EKFAC scaling in each layer's eigenbasis, so the decompositions are broadcast and every rank "
                "preconditions, as with dist_precondition=everyone\n", k->cfg.cfgfile);
    /* the start line: who decomposes what */
    char line[2048] = "";
    size_t len = 0;
    for (r = 0; r < size && len < sizeof line; ++r) {
        len += (size_t)snprintf(line + len, sizeof line - len, "%s rank %d:", r ? ";" : "", r);
        for (i = 0; i < k->nlayers && len < sizeof line; ++i)
            if (d->owner[i] == r) len += (size_t)snprintf(line + len, sizeof line - len, " %d", k->layers[i].index);
    }
    fprintf(stderr, "darknet-kfac: decompositions by layer owner%s:%s\n",
            d->owner_precondition ? ", who also preconditions the layer and broadcasts its preconditioned gradient "
                                    "(dist_precondition=owner)" : "", line);
}

void kfac_dist_factors_free(kfac_dist *d)
{
    if (!d) return;
    free(d->owner);
    free(d->due);
    free(d->flags);
    d->owner = d->due = NULL;
    d->flags = NULL;
}

/* ---- statistics ------------------------------------------------------------------------ */

/* buffer p (n floats, K-FAC's backend memory) <- the sum over the ranks */
static void sum_floats(kfac_dist *d, float *p, size_t n)
{
    if (d->device) d->comm->ops->device_sum(d->comm, p, n);
    else d->comm->ops->sum(d->comm, p, n);
    kfac_dist_count(d, n * sizeof(float));
}

void kfac_dist_sum_statistics(kfac_net *k)
{
    kfac_dist *d = k->dist;
    kfac_comm *c = d->comm;
    const int nl = k->nlayers, ek = k->cfg.scaling == KFAC_SCALING_EKFAC;
    /* the image counts: A's and G's per layer, then each batch-norm block's, then each
     * EKFAC scaling's */
    double *nA = d->flags, *nG = d->flags + nl, *nbn = d->flags + 2 * nl, *nek = nbn + k->nbn;
    const size_t nflags = 2 * (size_t)nl + (size_t)k->nbn + (ek ? (size_t)nl : 0);
    int i;
    if (c->size == 1 || nflags == 0) return;
    double t = kfac_now();
    for (i = 0; i < nl; ++i) {
        nA[i] = k->layers[i].n_acc_A;
        nG[i] = k->layers[i].n_acc_G;
        if (ek) nek[i] = k->layers[i].ek->n_acc;
    }
    for (i = 0; i < k->nbn; ++i) nbn[i] = k->bn[i].n_acc;
    c->ops->sum_double(c, d->flags, nflags);
    kfac_dist_count(d, nflags * sizeof(double));
    /* every rank skips the same layers and blocks: the counts are the sums */
    for (i = 0; i < nl; ++i) {
        kfac_layer *kl = &k->layers[i];
        kl->n_acc_A = (int)nA[i];
        kl->n_acc_G = (int)nG[i];
        /* whole matrices: only the upper triangles are read, but packing them would cost
         * a copy each way for half the bytes */
        if (kl->n_acc_A != 0 && kl->n_acc_G != 0) {
            sum_floats(d, kl->A_acc, kfac_a_len(&kl->s));
            sum_floats(d, kl->G_acc, (size_t)kl->s.groups * kl->s.M * kl->s.M);
        }
        /* scaling=ekfac: each rank's images' gradients in the basis every rank holds */
        if (ek && (kl->ek->n_acc = (int)nek[i]) != 0)
            sum_floats(d, kl->ek->S_acc, (size_t)kl->s.groups * kl->s.M * kl->s.K);
    }
    for (i = 0; i < k->nbn; ++i)
        if ((k->bn[i].n_acc = (int)nbn[i]) != 0) sum_floats(d, k->bn[i].F_acc, kfac_a_len(&k->bn[i].s));
    kfac_dist_tick(t, &d->times.statistics);
}

/* ---- decompositions -------------------------------------------------------------------- */

int kfac_dist_owns(const kfac_net *k, int i)
{
    return !k->dist || k->dist->owner[i] == k->dist->comm->rank;
}

/* buffer p (n floats, K-FAC's backend memory) <- the owner's */
static void share(kfac_dist *d, float *p, size_t n, int owner)
{
    if (d->device) d->comm->ops->device_broadcast(d->comm, p, n, owner);
    else d->comm->ops->broadcast(d->comm, p, n * sizeof(float), owner);
    kfac_dist_count(d, n * sizeof(float));
}

/* one decomposition's eigenvectors and eigenvalues (layer shape s) <- the owner's */
static void share_eigs(kfac_dist *d, const kfac_shape *s, float *EA, float *dA, float *EG, float *dG, int owner)
{
    share(d, EA, kfac_a_len(s), owner);
    share(d, dA, (size_t)s->groups * s->K, owner);
    share(d, EG, (size_t)s->groups * s->M * s->M, owner);
    share(d, dG, (size_t)s->groups * s->M, owner);
}

int kfac_dist_preconditions(const kfac_net *k, int i)
{
    return !k->dist || !k->dist->owner_precondition || k->dist->owner[i] == k->dist->comm->rank;
}

/* The next decompositions (kfac_layer.next) of the layers in mask from their owners:
 * first how each went (status, the damping its inverses were built with, inv_ok: one
 * sum over the ranks, to which each owner adds its layers'), then, when `whole` or
 * every rank preconditions, the buffers of those that succeeded, so that every rank
 * installs the same bits. */
static void share_next(kfac_net *k, const int *mask, int whole)
{
    kfac_dist *d = k->dist;
    kfac_comm *c = d->comm;
    int i;
    double t = kfac_now();
    for (i = 0; i < k->nlayers; ++i) {
        const kfac_eigs *e = &k->layers[i].next;
        const int mine = mask[i] && d->owner[i] == c->rank;
        d->flags[3 * i] = mine ? e->status : 0;
        d->flags[3 * i + 1] = mine ? e->damping : 0;
        d->flags[3 * i + 2] = mine ? e->inv_ok : 0;
    }
    c->ops->sum_double(c, d->flags, 3 * (size_t)k->nlayers);
    kfac_dist_count(d, 3 * (size_t)k->nlayers * sizeof(double));
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        kfac_eigs *e = &kl->next;
        const kfac_shape *s = &kl->s;
        const int o = d->owner[i];
        if (!mask[i]) continue;
        e->status = (int)d->flags[3 * i];
        e->damping = (float)d->flags[3 * i + 1];
        e->inv_ok = (int)d->flags[3 * i + 2];
        if (e->status != 0 || (d->owner_precondition && !whole)) continue;
        share_eigs(d, s, e->EA, e->dA, e->EG, e->dG, o);
        if (e->damping != 0 && e->inv_ok) { /* 0: built at the next preconditioning */
            share(d, e->Ainv, kfac_a_len(s), o);
            share(d, e->Ginv, (size_t)s->groups * s->M * s->M, o);
        }
    }
    kfac_dist_tick(t, &d->times.sharing);
}

void kfac_dist_share_one(kfac_net *k, const kfac_layer *kl)
{
    kfac_dist *d = k->dist;
    const int i = (int)(kl - k->layers);
    if (d->comm->size == 1) return;
    memset(d->due, 0, (size_t)k->nlayers * sizeof(int));
    d->due[i] = 1;
    share_next(k, d->due, 0);
}

void kfac_dist_share_job(kfac_net *k, int whole)
{
    kfac_dist *d = k->dist;
    int i;
    if (d->comm->size == 1 || k->job_install_at < 0 || d->shared_job == k->job_serial) return;
    for (i = 0; i < k->nlayers; ++i) d->due[i] = k->layers[i].in_job;
    share_next(k, d->due, whole);
    d->shared_job = k->job_serial;
}

void kfac_dist_gather(kfac_net *k)
{
    kfac_dist *d = k->dist;
    int i;
    if (!d->owner_precondition) return;
    double t = kfac_now();
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        /* what the state file keeps; the damped inverses are rebuilt from them */
        if (kl->have_inverse) share_eigs(d, &kl->s, kl->EA, kl->dA, kl->EG, kl->dG, d->owner[i]);
    }
    kfac_dist_tick(t, &d->times.sharing);
}

void kfac_dist_share_preconditioned(kfac_net *k, int mode)
{
    kfac_dist *d = k->dist;
    int i;
    if (!d || !d->owner_precondition) return;
    double t = kfac_now();
    for (i = 0; i < k->nlayers; ++i)
        if (k->mode[i] == mode)
            share(d, k->layers[i].P, (size_t)k->layers[i].s.groups * k->layers[i].s.M * k->layers[i].s.K, d->owner[i]);
    kfac_dist_tick(t, &d->times.preconditioned);
}

void kfac_dist_agree_schedule(kfac_net *k)
{
    kfac_dist *d = k->dist;
    struct kfac_sched *s = &k->sched;
    if (d->comm->size == 1 || !(s->auto_stats || s->auto_inverse || s->auto_lag)) return;
    int32_t v[3] = {s->stats_interval, s->inverse_interval, s->inverse_lag};
    double t = kfac_now();
    d->comm->ops->broadcast(d->comm, v, sizeof v, 0);
    kfac_dist_count(d, sizeof v);
    kfac_dist_tick(t, &d->times.scalars);
    s->stats_interval = v[0];
    s->inverse_interval = v[1];
    s->inverse_lag = v[2];
}

/* ---- the adaptive step's scalars -------------------------------------------------------- */

void kfac_dist_mean(const kfac_net *k, double *x, int n)
{
    kfac_dist *d = k->dist;
    int i;
    if (!d || d->comm->size == 1) return;
    double t = kfac_now();
    d->comm->ops->sum_double(d->comm, x, (size_t)n);
    kfac_dist_count(d, (size_t)n * sizeof(double));
    for (i = 0; i < n; ++i) x[i] /= d->comm->size;
    kfac_dist_tick(t, &d->times.scalars);
}

/* ---- the true-Fisher sampler ------------------------------------------------------------ */

/* uniform draws the sampler of loss layer l makes per image (image after image), or 0
 * when the count depends on the image */
static size_t draws_per_image(const layer *l, kfac_loss_kind kind)
{
    const kfac_loss_ops *op = kfac_loss_ops_of(kind);
    return op->draws_per_image ? op->draws_per_image(l) : 0;
}

static void skip(uint64_t *rng, size_t n)
{
    size_t i;
    for (i = 0; i < n; ++i) kfac_rng_next(rng);
}

void kfac_dist_sample_begin(kfac_net *k, const layer *l, kfac_loss_kind kind)
{
    kfac_dist *d = k->dist;
    const size_t per = draws_per_image(l, kind);
    if (d->comm->size == 1) return;
    if (per) {
        skip(&k->rng, (size_t)d->comm->rank * l->batch * per); /* the ranks before this one */
        return;
    }
    /* a stream of this rank's own, split from the shared state by a splitmix64 step */
    d->rng_saved = k->rng;
    uint64_t z = k->rng + 0x9E3779B97F4A7C15ULL * (uint64_t)(d->comm->rank + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    k->rng = (z ^ (z >> 31)) | 1;
}

void kfac_dist_sample_end(kfac_net *k, const layer *l, kfac_loss_kind kind)
{
    kfac_dist *d = k->dist;
    const size_t per = draws_per_image(l, kind);
    if (d->comm->size == 1) return;
    if (per) {
        skip(&k->rng, (size_t)(d->comm->size - 1 - d->comm->rank) * l->batch * per); /* the ranks after it */
        return;
    }
    k->rng = d->rng_saved;
    kfac_rng_next(&k->rng);
}
