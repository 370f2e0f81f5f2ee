/* darknet-kfac: eigendecompositions off the critical path (Ba, Grosse & Martens 2017:
 * inverses computed asynchronously and used a few updates stale).
 *
 * At an update where the schedule makes decompositions due, every layer's factors are
 * copied (kfac_inverse_stage) and handed to a worker thread, which decomposes them
 * and builds the damped inverses on a backend of its own (a second CPU backend; on
 * CUDA a second stream), while training goes on with the decompositions in force.  At
 * a fixed later update, launch + lag (kfac_schedule.c), the driver installs the new
 * decompositions, waiting for the worker if it has not finished.  What is used when
 * never depends on how fast the worker was, so a run is as deterministic with the
 * worker as without it, and a resumed run continues bit for bit (the state file keeps
 * a finished job that was not installed yet: kfac_state.c).
 *
 * A layer's first decomposition is made at once (there is nothing to use meanwhile),
 * and a lag of 0 makes every decomposition at once, on the main thread, as before
 * this file existed.  Replicas (kfac_sync.c) decompose at their sync instead. */
#include <pthread.h>
#include <stdlib.h>
#include "kfac_internal.h"

typedef struct kfac_worker {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int pending;            /* a job was handed over and is not finished */
    int quit;               /* the thread is to end */
    kfac_net *k;            /* whose layers (kfac_layer.in_job marks the job's) */
    kfac_backend *be;       /* the worker's own backend, a twin of k->be */
    kfac_scratch sc;        /* its host scratch for the damping */
    kfac_damping dmp;       /* the damping the job's inverses are built with */
    double busy;            /* seconds spent on jobs so far (read under the lock) */
    double last;            /* seconds of the last finished job */
} kfac_worker;

/* The thread: one job at a time, every layer of the job in net order. */
static void *worker_main(void *p)
{
    kfac_worker *w = (kfac_worker *)p;
    kfac_net *k = w->k;
    int i;
    w->be->ops->enter(w->be);
    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (!w->pending && !w->quit) pthread_cond_wait(&w->cond, &w->lock);
        if (w->quit) break;
        pthread_mutex_unlock(&w->lock);
        const double t0 = kfac_now();
        /* across ranks only the layers this rank owns (kfac_dist_factors.c) */
        for (i = 0; i < k->nlayers; ++i)
            if (k->layers[i].in_job && kfac_dist_owns(k, i)) kfac_inverse_compute(w->be, &w->sc, &k->layers[i], w->dmp);
        const double t = kfac_now() - t0;
        pthread_mutex_lock(&w->lock);
        w->busy += t;
        w->last = t;
        w->pending = 0;
        pthread_cond_broadcast(&w->cond);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

/* host scratch for the damping of every layer of k */
static void scratch_alloc(const kfac_net *k, kfac_scratch *sc)
{
    size_t d = 1, groups = 1;
    int i;
    for (i = 0; i < k->nlayers; ++i) {
        const kfac_shape *s = &k->layers[i].s;
        if ((size_t)s->groups * s->K > d) d = (size_t)s->groups * s->K;
        if ((size_t)s->groups * s->M > d) d = (size_t)s->groups * s->M;
        if ((size_t)kfac_a_count(s) > groups) groups = (size_t)kfac_a_count(s);
    }
    sc->host_d = (float *)kfac_calloc(d, sizeof(float));
    sc->lambda = (float *)kfac_calloc(groups, sizeof(float));
    sc->lambda_g = (float *)kfac_calloc(groups, sizeof(float));
}

static void scratch_free(kfac_scratch *sc)
{
    free(sc->host_d);
    free(sc->lambda);
    free(sc->lambda_g);
    sc->host_d = sc->lambda = sc->lambda_g = NULL;
}

void kfac_worker_attach(kfac_net *k)
{
    scratch_alloc(k, &k->scratch);
    k->job_install_at = -1;
    if (k->nlayers == 0 || k->sched.inverse_lag == 0 || !k->be->ops->twin) return;
    kfac_worker *w = (kfac_worker *)kfac_calloc(1, sizeof *w);
    w->k = k;
    /* two result slots: kfac_inverse_compute's finiteness flags */
    w->be = k->be->ops->twin(k->be, 2);
    scratch_alloc(k, &w->sc);
    if (pthread_mutex_init(&w->lock, NULL) != 0 || pthread_cond_init(&w->cond, NULL) != 0 ||
        pthread_create(&w->thread, NULL, worker_main, w) != 0)
        kfac_die(__FILE__, __LINE__, "cannot start K-FAC's decomposition thread");
    k->worker = w;
}

int kfac_worker_busy(kfac_net *k)
{
    kfac_worker *w = k->worker;
    if (!w) return 0;
    pthread_mutex_lock(&w->lock);
    const int busy = w->pending;
    pthread_mutex_unlock(&w->lock);
    return busy;
}

void kfac_worker_wait(kfac_net *k)
{
    kfac_worker *w = k->worker;
    if (!w) return;
    pthread_mutex_lock(&w->lock);
    while (w->pending) pthread_cond_wait(&w->cond, &w->lock);
    const double last = w->last;
    k->worker_seconds = w->busy;
    w->last = 0;
    pthread_mutex_unlock(&w->lock);
    if (last > 0) kfac_schedule_decomposed(k, last);
}

void kfac_worker_free(kfac_net *k)
{
    kfac_worker *w = k->worker;
    scratch_free(&k->scratch);
    if (!w) return;
    pthread_mutex_lock(&w->lock);
    w->quit = 1;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->thread, NULL);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
    scratch_free(&w->sc);
    w->be->ops->destroy(w->be);
    free(w);
    k->worker = NULL;
}

int kfac_inverse_refresh(kfac_net *k, kfac_layer *kl)
{
    if (!kl->have_factors) return 0;
    kfac_inverse_stage(k, kl);
    /* across ranks, the layer's owner decomposes it and the others receive it */
    if (kfac_dist_owns(k, (int)(kl - k->layers))) kfac_inverse_compute(k->be, &k->scratch, kl, kfac_damping_now(k));
    if (k->dist) kfac_dist_share_one(k, kl);
    return kfac_inverse_install(k, kl);
}

/* ---- the driver's step --------------------------------------------------------------- */

/* Installs every layer of the job in flight, waiting for the worker first. */
static void install_job(kfac_net *k)
{
    int i;
    const double t0 = kfac_now();
    kfac_worker_wait(k);
    if (k->dist) kfac_dist_share_job(k, 0); /* the other ranks' layers from their owners */
    k->wait_seconds += kfac_now() - t0;
    for (i = 0; i < k->nlayers; ++i)
        if (k->layers[i].in_job) kfac_inverse_install(k, &k->layers[i]);
    k->job_install_at = -1;
}

void kfac_decompositions_step(kfac_net *k)
{
    const int due = kfac_inverse_due(k);
    int i;
    if (k->identity || k->step < k->cfg.warmup) return;
    /* with replicas the decompositions are shared out at the next sync */
    if (k->replicas > 1) {
        for (i = 0; i < k->nlayers; ++i)
            if (k->layers[i].have_factors && (due || !k->layers[i].have_inverse)) k->inverse_due = 1;
        return;
    }
    /* the job in flight: at its update, or before a new launch needs its buffers */
    if (k->job_install_at >= 0 && (k->step >= k->job_install_at || due)) install_job(k);
    const int lag = due && k->worker ? kfac_inverse_lag(k) : 0;
    int now = 0, later = 0;
    const double t0 = kfac_now();
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        if (!kl->have_factors || kl->in_job) continue;
        /* a first decomposition cannot wait: the layer has nothing to use meanwhile */
        if (!kl->have_inverse || (due && lag == 0)) {
            kfac_inverse_refresh(k, kl);
            ++now;
        } else if (due) {
            kfac_inverse_stage(k, kl);
            ++later;
            kl->in_job = 1;
        }
    }
    /* every layer at once: what a decomposition of the net costs */
    if (now && !later && now == k->nlayers) kfac_schedule_decomposed(k, kfac_now() - t0);
    if (!later) return;
    kfac_worker *w = k->worker;
    k->be->ops->synchronize(k->be); /* the staged copies are complete before the worker reads them */
    pthread_mutex_lock(&w->lock);
    w->dmp = kfac_damping_now(k);
    w->pending = 1;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
    k->job_install_at = k->step + lag;
    ++k->job_serial;
}
