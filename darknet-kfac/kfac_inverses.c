/* darknet-kfac: one layer's curvature: the eigendecompositions of its factors, their
 * damping (relative to the mean eigenvalue for step=kl_clip, Martens & Grosse's
 * factored Tikhonov damping for the adaptive step) and the damped natural-gradient
 * direction P.  Called by the driver and by the adaptive step (which preconditions
 * again for each probe); calls only the backend. */
#include <math.h>
#include "kfac_internal.h"

/* ---- decompositions and damped inverses ------------------------------------------------ */

int kfac_inverse_refresh(kfac_net *k, kfac_layer *kl)
{
    kfac_backend *be = k->be;
    const kfac_shape *s = &kl->s;
    const size_t nA = kfac_a_len(s), nG = (size_t)s->groups * s->M * s->M;
    double bad[2];
    int info;
    if (!kl->have_factors) return 0;
    be->ops->flag_nonfinite(be, kl->A, nA, 0);
    be->ops->flag_nonfinite(be, kl->G, nG, 1);
    be->ops->results(be, bad, 2);
    if (bad[0] != 0 || bad[1] != 0) {
        if (!kl->bad_eig_logged++)
            kfac_log("layer %d: non-finite factor, decomposition skipped, keeping the last good inverse (logged once)", kl->index);
        return -1;
    }
    /* into scratch first, so that a failure leaves the last good inverse intact */
    info = be->ops->eigh(be, kl->A, kfac_a_dim(s), kfac_a_count(s), k->eig_E, k->eig_d);
    if (info == 0) {
        be->ops->copy(be, kl->EA, k->eig_E, nA);
        be->ops->copy(be, kl->dA, k->eig_d, (size_t)kfac_a_count(s) * kfac_a_dim(s));
        info = be->ops->eigh(be, kl->G, s->M, s->groups, k->eig_E, k->eig_d);
        if (info == 0) {
            be->ops->copy(be, kl->EG, k->eig_E, nG);
            be->ops->copy(be, kl->dG, k->eig_d, (size_t)s->groups * s->M);
        }
    }
    if (info != 0) {
        /* EA may now be newer than EG: harmless, both decompose good factors */
        if (!kl->bad_eig_logged++)
            kfac_log("layer %d: eigendecomposition failed (%s %s %d), keeping the last good inverse (logged once)",
                     kl->index, be->ops->name, info == KFAC_EIGH_NONFINITE ? "non-finite result" : "info", info);
        return -1;
    }
    kl->have_inverse = 1;
    kl->inv_damping = 0; /* the damped inverses are rebuilt from the new decomposition */
    return 0;
}

/* Mean of the eigenvalues d (n, >= 0) that are not rounding noise: the trace over the
 * numerical rank.  Dividing by n instead would let a factor estimated from fewer
 * samples than its dimension (a 1201-input connected layer fed 128 images) damp the
 * directions no sample reached by a tenth of what its data directions get, and those
 * directions then take over the step (measured: an MLP on the digits fell to 35%
 * test accuracy with the plain mean, 85% with this one). */
static float mean_of(const float *d, int n)
{
    double s = 0, mx = 0;
    int i, r = 0;
    for (i = 0; i < n; ++i) {
        s += d[i];
        if (d[i] > mx) mx = d[i];
    }
    for (i = 0; i < n; ++i) r += d[i] > KFAC_RANK_TOL * mx;
    return r ? (float)(s / r) : 0.0f;
}

/* Factored Tikhonov damping (Martens & Grosse 2015, section 6.3) of one factor's
 * groups: lambda_g = sqrt(damping) * mean(d_g), the mean over the numerically nonzero
 * eigenvalues.  Scaling each factor's damping by its own mean eigenvalue makes
 * `damping` independent of the loss scale, the input scale and the layer's size, so
 * one default carries from net to net.  Returns 0 when a group's factor is all zeros
 * (no curvature to precondition with). */
static int damping_of(kfac_net *k, const float *d, int dim, int groups, float sd)
{
    int g, ok = 1;
    k->be->ops->to_host(k->be, k->host_d, d, (size_t)groups * dim);
    for (g = 0; g < groups; ++g) {
        k->lambda[g] = sd * mean_of(k->host_d + (size_t)g * dim, dim);
        ok &= k->lambda[g] > 0;
    }
    return ok;
}

/* step=adaptive: M&G's factored Tikhonov damping (section 6.3) tied to lambda,
 * lA = pi gamma and lG = gamma / pi with gamma = sqrt(lambda + eta) and
 * pi = sqrt((tr A / dim A) / (tr G / dim G)) per group.  Returns 0 when a group's
 * factor is all zeros. */
static int tikhonov_of(kfac_net *k, const kfac_layer *kl, float gamma)
{
    const kfac_shape *s = &kl->s;
    const int nb = kfac_a_blocks(s);
    int g, i, ok = 1;
    /* tr A / dim A over all of a group's blocks: one pi per group, since its blocks
     * share one G */
    k->be->ops->to_host(k->be, k->host_d, kl->dA, (size_t)s->groups * s->K);
    for (g = 0; g < s->groups; ++g) {
        double t = 0;
        for (i = 0; i < s->K; ++i) t += k->host_d[(size_t)g * s->K + i];
        k->lambda_g[g] = (float)(t / s->K);
    }
    k->be->ops->to_host(k->be, k->host_d, kl->dG, (size_t)s->groups * s->M);
    for (g = 0; g < s->groups; ++g) {
        double t = 0;
        for (i = 0; i < s->M; ++i) t += k->host_d[(size_t)g * s->M + i];
        const double mean_a = k->lambda_g[g], mean_g = t / s->M;
        if (!(mean_a > 0) || !(mean_g > 0)) {
            ok = 0;
            continue;
        }
        const double pi = sqrt(mean_a / mean_g);
        for (i = 0; i < nb; ++i) k->lambda[g * nb + i] = (float)(pi * gamma);
        k->lambda_g[g] = (float)(gamma / pi);
    }
    return ok;
}

/* The damping key the inverses are built for: the relative damping (step=kl_clip) or
 * gamma (step=adaptive). */
static float damping_key(const kfac_net *k)
{
    return kfac_adaptive_on(k) ? sqrtf(k->adapt->lambda + k->eta) : k->cfg.damping;
}

/* Ainv = (A + lA I)^-1 and Ginv = (G + lG I)^-1 from the decompositions.  Because this
 * damping is separable, the two damped inverses are formed once per decomposition (and
 * damping) and each update costs two products instead of four. */
static void damped_inverses(kfac_net *k, kfac_layer *kl)
{
    kfac_backend *be = k->be;
    const kfac_shape *s = &kl->s;
    const float key = damping_key(k);
    int ok;
    if (kfac_adaptive_on(k)) {
        ok = tikhonov_of(k, kl, key);
        if (ok) {
            be->ops->damped_inverse(be, kl->EA, kl->dA, kfac_a_dim(s), kfac_a_count(s), k->lambda, kl->Ainv);
            be->ops->damped_inverse(be, kl->EG, kl->dG, s->M, s->groups, k->lambda_g, kl->Ginv);
        }
    } else {
        const float sd = sqrtf(key);
        ok = damping_of(k, kl->dA, kfac_a_dim(s), kfac_a_count(s), sd);
        if (ok) be->ops->damped_inverse(be, kl->EA, kl->dA, kfac_a_dim(s), kfac_a_count(s), k->lambda, kl->Ainv);
        ok = ok && damping_of(k, kl->dG, s->M, s->groups, sd);
        if (ok) be->ops->damped_inverse(be, kl->EG, kl->dG, s->M, s->groups, k->lambda, kl->Ginv);
    }
    kl->inv_damping = key;
    kl->inv_ok = ok;
}

/* P = (G + lG I)^-1 D (A + lA I)^-1 per group
 *   = Q_G [ (Q_G^T D Q_A) / ((d_G + lG) (d_A + lA)^T) ] Q_A^T   (DESIGN.md 4) */
void kfac_precondition_layer(kfac_net *k, kfac_layer *kl)
{
    kfac_backend *be = k->be;
    if (kl->inv_damping != damping_key(k)) damped_inverses(k, kl);
    if (!kl->inv_ok) {
        be->ops->copy(be, kl->P, kl->D, (size_t)kl->s.groups * kl->s.M * kl->s.K);
        return;
    }
    be->ops->precondition(be, &kl->s, kl->Ginv, kl->Ainv, kl->D, kl->tmp, kl->P);
}
