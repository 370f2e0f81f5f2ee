/* darknet-kfac: when K-FAC does what (statistics steps, decompositions) and where its
 * time goes (phases, timed by the backend).  Below the driver, the true-Fisher pass
 * and the adaptive step, which all ask it; it asks no one but the backend. */
#include "kfac_internal.h"

/* ---- schedule -------------------------------------------------------------------- */

int kfac_stats_step(const kfac_net *k)
{
    return k->step % k->cfg.stats_interval == 0;
}

/* Inverses every inverse_interval updates; during the first inverse_interval updates
 * also on every statistics step, since the curvature moves fastest at the start and
 * the first factors come from a single batch at the initial weights.  This costs at
 * most inverse_interval/stats_interval extra decompositions, once. */
int kfac_inverse_due(const kfac_net *k)
{
    int since = k->step - k->cfg.warmup;
    if (since < 0) return 0;
    return since % k->cfg.inverse_interval == 0 ||
           (since < k->cfg.inverse_interval && kfac_stats_step(k));
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

void kfac_network_timing(const network *net, double *stats, double *inverse, double *precond)
{
    const kfac_net *k = kfac_of(net);
    double t[KFAC_NPHASES];
    k->be->ops->seconds(k->be, t);
    *stats = t[KFAC_PHASE_STATS] + k->sync_seconds[KFAC_PHASE_STATS];
    *inverse = t[KFAC_PHASE_INVERSE] + k->sync_seconds[KFAC_PHASE_INVERSE];
    *precond = t[KFAC_PHASE_PRECOND] + k->sync_seconds[KFAC_PHASE_PRECOND];
}
