/* darknet-kfac: replicas of one net (Darknet's multi-GPU training: one process, one
 * thread per GPU, weights averaged through host memory by sync_nets every few
 * batches).  Darknet's sync_nets calls kfac_networks_sync after averaging the weights
 * (patches/0005), while no replica is training:
 *
 *   - the running factors are averaged over the replicas: the average over their
 *     batches is the estimate of a batch n times larger, as Darknet's weight averaging
 *     treats the replicas;
 *   - when an inverse refresh fell due since the last sync (a replica in a group does
 *     not decompose by itself: kfac_driver.c), each replica decomposes its share of
 *     the layers, largest first to the least loaded replica, in one thread per replica,
 *     and the decompositions are copied to the others (Ba, Grosse & Martens 2017).
 *
 * The copies and sums are the backend's (cudaMemcpyPeer on CUDA: NVLink or PCIe peer
 * to peer where the GPUs allow it, staged by the driver otherwise); this file decides
 * who does what.  It works for any backend, so tests run it on CPU replicas. */
#include <pthread.h>
#include <stdlib.h>
#include "kfac_internal.h"

typedef struct {
    kfac_net *k;
    const int *owner;       /* nlayers: replica that decomposes each layer */
    int me;
} share_job;

static void *decompose_share(void *p)
{
    share_job *job = (share_job *)p;
    kfac_net *k = job->k;
    int i;
    k->be->ops->enter(k->be);
    for (i = 0; i < k->nlayers; ++i)
        if (job->owner[i] == job->me && k->layers[i].have_factors) kfac_inverse_refresh(k, &k->layers[i]);
    k->be->ops->synchronize(k->be);
    return NULL;
}

void kfac_networks_sync(network **nets, int n)
{
    kfac_net *k0 = kfac_of(nets[0]);
    int i, j, due;
    if (n < 2 || !k0) return;
    kfac_net **ks = (kfac_net **)kfac_calloc((size_t)n, sizeof(kfac_net *));
    kfac_backend **bs = (kfac_backend **)kfac_calloc((size_t)n, sizeof(kfac_backend *));
    float **bufs = (float **)kfac_calloc((size_t)n, sizeof(float *));
    for (i = 0; i < n; ++i) {
        ks[i] = kfac_of(nets[i]);
        if (!ks[i] || ks[i]->nlayers != k0->nlayers || ks[i]->be->ops != k0->be->ops)
            kfac_die(__FILE__, __LINE__, "kfac_networks_sync: replica %d is not a K-FAC net like replica 0", i);
        bs[i] = ks[i]->be;
    }
    const int prev = bs[0]->ops->enter(bs[0]);
    double t0 = kfac_now();
    /* the first sync of a group: the replicas' inverses so far are their own */
    due = k0->replicas != n;
    for (i = 0; i < n; ++i) {
        bs[i]->ops->enter(bs[i]);
        bs[i]->ops->synchronize(bs[i]);
        ks[i]->replicas = n;
    }

    for (j = 0; j < k0->nlayers; ++j) {
        const kfac_shape *s = &k0->layers[j].s;
        int all = 1;
        for (i = 0; i < n; ++i) all &= ks[i]->layers[j].have_factors != 0;
        if (!all) continue;
        for (i = 0; i < n; ++i) bufs[i] = ks[i]->layers[j].A;
        bs[0]->ops->average(bs, bufs, n, kfac_a_len(s));
        for (i = 0; i < n; ++i) bufs[i] = ks[i]->layers[j].G;
        bs[0]->ops->average(bs, bufs, n, (size_t)s->groups * s->M * s->M);
    }
    double t1 = kfac_now();

    /* inverses: due when a replica hit a refresh step, or a layer has none yet */
    for (i = 0; i < n; ++i) due |= ks[i]->inverse_due;
    for (j = 0; j < k0->nlayers; ++j) due |= k0->layers[j].have_factors && !k0->layers[j].have_inverse;
    due |= kfac_bn_need_inverse(k0);
    /* the batch-norm blocks: averaged, and decomposed by every replica when due */
    kfac_bn_sync(ks, bs, n, due && !k0->identity);
    if (due && !k0->identity) {
        int *owner = (int *)kfac_calloc((size_t)(k0->nlayers ? k0->nlayers : 1), sizeof(int));
        pthread_t *threads = (pthread_t *)kfac_calloc((size_t)n, sizeof(pthread_t));
        share_job *jobs = (share_job *)kfac_calloc((size_t)n, sizeof(share_job));
        kfac_owners_assign(k0, n, owner);
        for (i = 0; i < n; ++i) {
            jobs[i].k = ks[i];
            jobs[i].owner = owner;
            jobs[i].me = i;
            if (pthread_create(&threads[i], NULL, decompose_share, &jobs[i]) != 0)
                kfac_die(__FILE__, __LINE__, "cannot start the decomposition thread of replica %d", i);
        }
        for (i = 0; i < n; ++i) pthread_join(threads[i], NULL);
        for (j = 0; j < k0->nlayers; ++j) {
            kfac_layer *src = &ks[owner[j]]->layers[j];
            const kfac_shape *s = &src->s;
            const size_t len[4] = {kfac_a_len(s), (size_t)s->groups * s->K,
                                   (size_t)s->groups * s->M * s->M, (size_t)s->groups * s->M};
            int a;
            for (i = 0; i < n; ++i) {
                ks[i]->layers[j].have_inverse = src->have_inverse;
                ks[i]->layers[j].inv_damping = 0; /* damped inverses rebuilt from the shared decomposition */
            }
            if (!src->have_inverse) continue;
            for (i = 0; i < n; ++i) ++ks[i]->layers[j].basis_gen; /* scaling=ekfac: a new basis */
            for (a = 0; a < 4; ++a) {
                for (i = 0; i < n; ++i) {
                    kfac_layer *kl = &ks[i]->layers[j];
                    float *arr[4] = {kl->EA, kl->dA, kl->EG, kl->dG};
                    bufs[i] = arr[a];
                }
                bs[0]->ops->broadcast(bs, bufs, n, owner[j], len[a]);
            }
        }
        for (i = 0; i < n; ++i) {
            bs[i]->ops->enter(bs[i]);
            bs[i]->ops->synchronize(bs[i]);
            ks[i]->inverse_due = 0;
        }
        free(threads);
        free(jobs);
        free(owner);
    }
    /* the sync's time: statistics (averaging) and decompositions, charged to every
     * replica's progress line through its backend-independent counters */
    double t2 = kfac_now();
    for (i = 0; i < n; ++i) {
        ks[i]->sync_seconds[KFAC_PHASE_STATS] += t1 - t0;
        ks[i]->sync_seconds[KFAC_PHASE_INVERSE] += t2 - t1;
    }
    bs[0]->ops->leave(bs[0], prev);
    free(ks);
    free(bs);
    free(bufs);
}
