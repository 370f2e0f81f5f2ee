/* darknet-kfac: when K-FAC does what (statistics steps, decompositions), who
 * decomposes which layer where several share the work (replicas, ranks), and where
 * its time goes (phases, timed by the backend).  Below the driver, the true-Fisher
 * pass, the adaptive step, the worker, the replicas and the ranks, which all ask it;
 * it asks no one but the backend.
 *
 * The intervals are the cfg's, or with `auto` (the default) chosen from what this run
 * measures, so that K-FAC's extra work stays a small part of an update on any net and
 * at any batch size:
 *
 *   stats_interval    the statistics (the true-Fisher pass, A and G) cost at most
 *                     KFAC_STATS_BUDGET of an update: t_stats / stats_interval <=
 *                     0.1 t_update;
 *   inverse_interval  a decomposition of every layer costs at most KFAC_INVERSE_BUDGET
 *                     of an update where it competes with training (on the GPU, on a
 *                     one-core CPU), and keeps the worker busy at most half the time
 *                     where it has a core of its own (Darknet's CPU training uses one);
 *                     a multiple of stats_interval (new factors come no more often);
 *   inverse_lag       the worker's measured time for one decomposition, in updates,
 *                     with a quarter to spare, so that the driver rarely waits.
 *
 * Each cost is the median of its last KFAC_WALL_RING measurements (t_update: an
 * update's wall time from its first forward pass, patches/0025, to its end, less
 * K-FAC's statistics and decompositions in it, so that what a trainer does between
 * two updates, an evaluation, a checkpoint, a wait for the data loader, never counts
 * as training; measured from the end of the last update, such work after nearly every
 * early update made the budgets several times too large).  The choice is
 * made after updates 2, 5 and 10, then every KFAC_RECHOOSE updates, and a value
 * changes only when the need it answers moves a quarter beyond what it allows
 * (settle), so that the schedule does not flicker with the clock (a line in the log
 * says each change).  Measured times make
 * an auto run depend on the machine's speed; a run with every interval set is a
 * function of its cfg and data alone (the tests set them). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kfac_internal.h"

/* statistics: at most this fraction of an update.  With the preconditioning's few
 * percent, it keeps K-FAC within the 1.2x SGD per update the project aims at; and
 * the updates to a target barely change between statistics every update and every 10
 * on the demo CNN (BENCHMARKS.md, the 2026-11-27 sweep of stats_interval) */
#define KFAC_STATS_BUDGET 0.1
/* decompositions that compete with training: at most this fraction of an update */
#define KFAC_INVERSE_BUDGET 0.1
/* the worker on a core of its own: busy at most this fraction of the time */
#define KFAC_WORKER_DUTY 0.5
/* the choice is made again every this many updates (and after updates 2, 5, 10) */
#define KFAC_RECHOOSE 20
/* the intervals auto may choose */
#define KFAC_AUTO_MAX_STATS 100
#define KFAC_AUTO_MAX_INVERSE 1000

/* ---- schedule -------------------------------------------------------------------- */

void kfac_schedule_init(kfac_net *k)
{
    struct kfac_sched *s = &k->sched;
    s->auto_stats = k->cfg.stats_interval == 0;
    s->auto_inverse = k->cfg.inverse_interval == 0;
    s->auto_lag = k->cfg.inverse_lag < 0;
    /* auto's first guesses, until an update has been measured: statistics and
     * decompositions every update, used one update later */
    s->stats_interval = s->auto_stats ? 1 : k->cfg.stats_interval;
    s->inverse_interval = s->auto_inverse ? s->stats_interval : k->cfg.inverse_interval;
    /* with both intervals set, a decomposition is used at the next statistics step,
     * when new factors arrive anyway: a fixed lag, so the run stays a function of its
     * cfg and data */
    if (!s->auto_lag) {
        s->inverse_lag = k->cfg.inverse_lag;
    } else if (!s->auto_stats && !s->auto_inverse) {
        s->inverse_lag = s->stats_interval;
        s->auto_lag = 0;
    } else {
        s->inverse_lag = 1;
    }
}

int kfac_stats_step_at(const kfac_net *k, int step)
{
    return step >= 0 && step % k->sched.stats_interval == 0;
}

int kfac_stats_step(const kfac_net *k)
{
    return kfac_stats_step_at(k, k->step);
}

/* Inverses every inverse_interval updates; during the first inverse_interval updates
 * also on every statistics step, since the curvature moves fastest at the start and
 * the first factors come from a single batch at the initial weights.  This costs at
 * most inverse_interval/stats_interval extra decompositions, once. */
int kfac_inverse_due(const kfac_net *k)
{
    int since = k->step - k->cfg.warmup;
    if (since < 0) return 0;
    return since % k->sched.inverse_interval == 0 ||
           (since < k->sched.inverse_interval && kfac_stats_step(k));
}

int kfac_inverse_lag(const kfac_net *k)
{
    return k->sched.inverse_lag;
}

/* The interval for a measured need x (the interval, in updates, at which the cost is
 * exactly its budget): the smallest multiple of `step` in [lo, hi] that is at least x.
 * `*cur` stays while x is within a quarter of what it allows: x <= 1.25 cur (a cost
 * at most a quarter over its budget) and x > (cur - step) / 1.25 (the next smaller
 * interval would still be a quarter over).  The quarter is applied to x, not to the
 * rounded intervals: between 1 and 2 every change is a factor 2, so a need hovering
 * near 1 flipped the interval at every choice (nine times in 500 updates of the
 * autoencoder at batch 1024).  Returns 1 on a change. */
static int settle(int *cur, double x, int lo, int hi, int step)
{
    const int c = *cur;
    if (c >= lo && c <= hi && c % step == 0 && x <= 1.25 * c && (c - step < lo || x > (c - step) / 1.25)) return 0;
    int v = hi; /* also for NaN */
    if (x < hi) {
        v = (int)ceil(x / step) * step;
        if (v < lo) v = lo;
        if (v > hi) v = hi;
    }
    if (v == c) return 0;
    *cur = v;
    return 1;
}

/* median of the n (<= KFAC_WALL_RING) values in ring */
static double median_of(const double *ring, int n)
{
    double v[KFAC_WALL_RING];
    int i, j;
    memcpy(v, ring, (size_t)n * sizeof(double));
    for (i = 1; i < n; ++i)
        for (j = i; j > 0 && v[j - 1] > v[j]; --j) {
            double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void kfac_schedule_choose(kfac_net *k)
{
    struct kfac_sched *s = &k->sched;
    const double tu = s->t_update;
    int changed = 0;
    if (!(tu > 0)) return;
    if (s->auto_stats && s->t_stats > 0)
        changed |= settle(&s->stats_interval, s->t_stats / (KFAC_STATS_BUDGET * tu), 1, KFAC_AUTO_MAX_STATS, 1);
    if (s->auto_inverse && s->t_decomp > 0) {
        const double share = k->worker && k->be->worker_free ? KFAC_WORKER_DUTY : KFAC_INVERSE_BUDGET;
        /* a multiple of stats_interval: new factors come no more often */
        const int m = s->stats_interval, most = (KFAC_AUTO_MAX_INVERSE + m - 1) / m * m;
        changed |= settle(&s->inverse_interval, s->t_decomp / (share * tu), m, most, m);
    }
    if (s->auto_lag && k->worker && s->t_decomp > 0)
        changed |= settle(&s->inverse_lag, 1.25 * s->t_decomp / tu, 1, s->inverse_interval, 1);
    s->changes += changed;
    if (changed) {
        char d[160];
        kfac_schedule_describe(k, d, sizeof d);
        kfac_log("update %d: %s (measured: an update %.3g s, a statistics step %.3g s, a decomposition of every "
                 "layer %.3g s)", k->step, d, tu, s->t_stats, s->t_decomp);
    }
}

/* a measurement into one of the rings: their medians are the costs kfac_schedule_choose uses */
static double ring_add(double *ring, int *n, double v)
{
    ring[(*n)++ % KFAC_WALL_RING] = v;
    return median_of(ring, *n < KFAC_WALL_RING ? *n : KFAC_WALL_RING);
}

void kfac_schedule_began(kfac_net *k)
{
    if (!(k->sched.update_began > 0)) k->sched.update_began = kfac_now();
}

void kfac_schedule_updated(kfac_net *k)
{
    struct kfac_sched *s = &k->sched;
    double t[KFAC_NPHASES], stats, inverse, precond;
    const double now = kfac_now();
    kfac_network_timing_of(k, &stats, &inverse, &precond);
    t[KFAC_PHASE_STATS] = stats;
    t[KFAC_PHASE_INVERSE] = inverse;
    t[KFAC_PHASE_PRECOND] = precond;
    const double d_stats = t[KFAC_PHASE_STATS] - s->phase_mark[KFAC_PHASE_STATS];
    const double d_inverse = t[KFAC_PHASE_INVERSE] - s->phase_mark[KFAC_PHASE_INVERSE];
    /* the update just finished was step - 1 */
    if (kfac_stats_step_at(k, k->step - 1) && d_stats > 0) s->t_stats = ring_add(s->stats_ring, &s->nstats, d_stats);
    /* without the hook (a trainer that does not go through train_network_datum), from
     * the end of the last update */
    const double from = s->update_began > 0 ? s->update_began : s->last_updated;
    if (from > 0) s->t_update = ring_add(s->wall, &s->nwall, now - from - d_stats - d_inverse);
    s->last_updated = now;
    s->update_began = 0;
    memcpy(s->phase_mark, t, sizeof t);
    if (k->step == 2 || k->step == 5 || k->step == 10 || k->step % KFAC_RECHOOSE == 0) kfac_schedule_choose(k);
}

void kfac_schedule_decomposed(kfac_net *k, double seconds)
{
    struct kfac_sched *s = &k->sched;
    s->t_decomp = ring_add(s->decomp_ring, &s->ndecomp, seconds);
}

void kfac_schedule_describe(const kfac_net *k, char *buf, size_t len)
{
    const struct kfac_sched *s = &k->sched;
    snprintf(buf, len, "statistics every %d%s, decompositions every %d%s used %d later%s", s->stats_interval,
             s->auto_stats ? " (auto)" : "", s->inverse_interval, s->auto_inverse ? " (auto)" : "", s->inverse_lag,
             s->auto_lag ? " (auto)" : "");
}

/* ---- timing ------------------------------------------------------------------------ */

void kfac_phase_begin(kfac_net *k, int phase)
{
    if (k->phase_depth++ == 0) {
        k->phase_now = phase;
        k->be->ops->phase(k->be, phase, 1);
    }
}

void kfac_phase_end(kfac_net *k)
{
    KFAC_ASSERT(k->phase_depth > 0);
    if (--k->phase_depth == 0) k->be->ops->phase(k->be, k->phase_now, 0);
}

void kfac_network_timing_of(const kfac_net *k, double *stats, double *inverse, double *precond)
{
    double t[KFAC_NPHASES];
    k->be->ops->seconds(k->be, t);
    *stats = t[KFAC_PHASE_STATS] + k->sync_seconds[KFAC_PHASE_STATS];
    *inverse = t[KFAC_PHASE_INVERSE] + k->sync_seconds[KFAC_PHASE_INVERSE];
    *precond = t[KFAC_PHASE_PRECOND] + k->sync_seconds[KFAC_PHASE_PRECOND];
}

void kfac_network_timing(const network *net, double *stats, double *inverse, double *precond)
{
    kfac_network_timing_of(kfac_of(net), stats, inverse, precond);
}

/* ---- who decomposes what ---------------------------------------------------------- */

/* The replicas' (kfac_sync.c) and the ranks' (kfac_dist_factors.c) split of the
 * decompositions, by their cost ~ dim^3. */
void kfac_owners_assign(const kfac_net *k0, int n, int *owner)
{
    const int nl = k0->nlayers;
    int *order = (int *)kfac_calloc((size_t)nl, sizeof(int));
    double *load = (double *)kfac_calloc((size_t)n, sizeof(double));
    double *cost = (double *)kfac_calloc((size_t)nl, sizeof(double));
    int i, j;
    for (j = 0; j < nl; ++j) {
        const kfac_shape *s = &k0->layers[j].s;
        const double ka = kfac_a_dim(s);
        cost[j] = (double)kfac_a_count(s) * ka * ka * ka + (double)s->groups * s->M * s->M * s->M;
        order[j] = j;
    }
    for (j = 1; j < nl; ++j) { /* insertion sort, descending cost, stable */
        int x = order[j], m = j;
        while (m > 0 && cost[order[m - 1]] < cost[x]) { order[m] = order[m - 1]; --m; }
        order[m] = x;
    }
    for (j = 0; j < nl; ++j) {
        int best = 0;
        for (i = 1; i < n; ++i) if (load[i] < load[best]) best = i;
        owner[order[j]] = best;
        load[best] += cost[order[j]];
    }
    free(order);
    free(load);
    free(cost);
}
