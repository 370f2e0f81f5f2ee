/* darknet-kfac: K-FAC's share of training across ranks (Ba, Grosse & Martens 2017;
 * shared/DESIGN.md 6b).  kfac_dist.c averages the gradients; here:
 *
 *   - statistics: A_acc, G_acc and their image counts are summed over the ranks before
 *     they are folded (kfac_driver.c), so every rank folds the statistics of all N*B
 *     images into the same running factors, as one process at N*B would;
 *   - decompositions: each covered layer has an owner (kfac_owners_assign, the
 *     assignment of the multi-GPU replicas: largest factors first, each to the least
 *     loaded rank).  When decompositions fall due every rank stages the factors (the
 *     statistics are the same everywhere), but only a layer's owner decomposes it, at
 *     once or on its background worker (kfac_worker.c); where the driver installs them
 *     (at once, or at launch + inverse_lag, the same update on every rank) the results
 *     are broadcast from their owners first (kfac_dist_share_one, _share_job).  So the
 *     ranks split the decompositions and no rank waits for one unless its owner has
 *     not finished by the install;
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

void kfac_dist_factors_attach(kfac_net *k, kfac_dist *d)
{
    const int n = k->nlayers ? k->nlayers : 1, size = d->comm->size;
    int i, r;
    d->owner = (int *)kfac_calloc((size_t)n, sizeof(int));
    d->due = (int *)kfac_calloc((size_t)n, sizeof(int));
    d->flags = (double *)kfac_calloc(3 * (size_t)n, sizeof(double));
    d->shared_job = -1;
    kfac_owners_assign(k, size, d->owner);
    k->dist = d;
    if (size == 1 || d->comm->rank != 0) return;
    /* the start line: who decomposes what */
    char line[2048] = "";
    size_t len = 0;
    for (r = 0; r < size && len < sizeof line; ++r) {
        len += (size_t)snprintf(line + len, sizeof line - len, "%s rank %d:", r ? ";" : "", r);
        for (i = 0; i < k->nlayers && len < sizeof line; ++i)
            if (d->owner[i] == r) len += (size_t)snprintf(line + len, sizeof line - len, " %d", k->layers[i].index);
    }
    fprintf(stderr, "darknet-kfac: decompositions by layer owner:%s\n", line);
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

void kfac_dist_sum_statistics(kfac_net *k)
{
    kfac_dist *d = k->dist;
    kfac_comm *c = d->comm;
    int i;
    if (c->size == 1) return;
    double t = kfac_now();
    for (i = 0; i < k->nlayers; ++i) {
        d->flags[2 * i] = k->layers[i].n_acc_A;
        d->flags[2 * i + 1] = k->layers[i].n_acc_G;
    }
    c->ops->sum_double(c, d->flags, 2 * (size_t)k->nlayers);
    kfac_dist_count(d, 2 * (size_t)k->nlayers * sizeof(double));
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        const size_t nA = kfac_a_len(&kl->s), nG = (size_t)kl->s.groups * kl->s.M * kl->s.M;
        kl->n_acc_A = (int)d->flags[2 * i];
        kl->n_acc_G = (int)d->flags[2 * i + 1];
        if (kl->n_acc_A == 0 || kl->n_acc_G == 0) continue; /* every rank skips the same layers */
        /* whole matrices: only the upper triangles are read, but packing them would cost
         * a copy each way for half the bytes */
        if (d->device) {
            c->ops->device_sum(c, kl->A_acc, nA);
            c->ops->device_sum(c, kl->G_acc, nG);
        } else {
            c->ops->sum(c, kl->A_acc, nA);
            c->ops->sum(c, kl->G_acc, nG);
        }
        kfac_dist_count(d, (nA + nG) * sizeof(float));
    }
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

/* The next decompositions (kfac_layer.next) of the layers in mask from their owners:
 * first how each went (status, the damping its inverses were built with, inv_ok: one
 * sum over the ranks, to which each owner adds its layers'), then the buffers of those
 * that succeeded, so that every rank installs the same bits. */
static void share_next(kfac_net *k, const int *mask)
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
        if (e->status != 0) continue;
        share(d, e->EA, kfac_a_len(s), o);
        share(d, e->dA, (size_t)s->groups * s->K, o);
        share(d, e->EG, (size_t)s->groups * s->M * s->M, o);
        share(d, e->dG, (size_t)s->groups * s->M, o);
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
    share_next(k, d->due);
}

void kfac_dist_share_job(kfac_net *k)
{
    kfac_dist *d = k->dist;
    int i;
    if (d->comm->size == 1 || k->job_install_at < 0 || d->shared_job == k->job_install_at) return;
    kfac_worker_wait(k); /* this rank's share of the job */
    for (i = 0; i < k->nlayers; ++i) d->due[i] = k->layers[i].in_job;
    share_next(k, d->due);
    d->shared_job = k->job_install_at;
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
