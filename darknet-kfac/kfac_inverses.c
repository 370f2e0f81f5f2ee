/* darknet-kfac: one layer's curvature: the eigendecompositions of its factors, their
 * damping (relative to the mean eigenvalue for step=kl_clip, Martens & Grosse's
 * factored Tikhonov damping for the adaptive step) and K-FAC's damped direction P.
 * Called by the decompositions (kfac_worker.c: on the worker's own backend, or at
 * once), the batch-norm blocks and EKFAC (the damping), and the choice of a layer's
 * scaling (kfac_ekfac.c: kfac_precondition_layer); calls only the backend, so nothing
 * it calls comes back to it. */
#include <math.h>
#include "kfac_internal.h"

/* ---- damping ---------------------------------------------------------------------------- */

kfac_damping kfac_damping_now(const kfac_net *k)
{
    kfac_damping d;
    d.tikhonov = kfac_adaptive_on(k);
    d.key = d.tikhonov ? kfac_adaptive_gamma(k) : k->cfg.damping;
    d.floor = k->cfg.damping;
    return d;
}

/* Mean of the eigenvalues d (n, >= 0) that are not rounding noise: the trace over the
 * numerical rank.  Dividing by n instead would let a factor estimated from fewer
 * samples than its dimension (a 1201-input connected layer fed 128 images) damp the
 * directions no sample reached by a tenth of what its data directions get, and those
 * directions then take over the step (measured: an MLP on the digits fell to 35%
 * test accuracy with the plain mean, 85% with this one). */
float kfac_eig_mean(const float *d, int n)
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
 * groups: out[g] = sqrt(damping) * mean(d_g), the mean over the numerically nonzero
 * eigenvalues.  Scaling each factor's damping by its own mean eigenvalue makes
 * `damping` independent of the loss scale, the input scale and the layer's size, so
 * one default carries from net to net.  Returns 0 when a group's factor is all zeros
 * (no curvature to precondition with). */
static int relative_of(kfac_backend *be, kfac_scratch *sc, const float *d, int dim, int groups, float sd, float *out)
{
    int g, ok = 1;
    be->ops->to_host(be, sc->host_d, d, (size_t)groups * dim);
    for (g = 0; g < groups; ++g) {
        out[g] = sd * kfac_eig_mean(sc->host_d + (size_t)g * dim, dim);
        ok &= out[g] > 0;
    }
    return ok;
}

/* step=adaptive: M&G's factored Tikhonov damping (section 6.3), lA = pi g and
 * lG = g / pi with pi = sqrt((tr A / dim A) / (tr G / dim G)) per group and
 * g = max(gamma, sqrt(damping) sqrt((tr A / dim A) (tr G / dim G))): each factor's
 * damping at least sqrt(damping) times its mean eigenvalue, into sc->lambda (A's
 * blocks) and sc->lambda_g (G's groups).
 *
 * The floor: gamma = sqrt(lambda + eta) falls with lambda, and lambda, set by the
 * reduction ratio on the step's own batch, falls to its bound when the model fits that
 * batch well.  With no weight decay (eta = 0) gamma then reached 1e-4, a factor damping
 * of 1e-3 of the mean eigenvalue on some layers, and the direction grew into what no
 * image of the batch constrains: measured on digits autoencoders with decay=0, the error
 * rose from its best 4.7 to 56 at update 1450 (batch 64) and from 7.5 to 73 at update
 * 1150 (a smaller one, batch 32), and never came back.  With the floor at the default
 * damping (0.1 of the mean) the same runs keep falling, and leave the plateau as fast
 * (BENCHMARKS.md, "The adaptive step with decay=0").  The mean over all eigenvalues,
 * not over the numerically nonzero ones as relative_of takes it: on factors of fewer
 * samples than their dimension that mean is several times larger, and it slowed the
 * small autoencoder (error 8.2 against 5.9 at update 1000).  M&G's own remedy, gamma
 * adapted on its own by the model's value (section 6.6), kept gamma near 1 there and
 * left the plateau at update 1200 instead of 250.  Returns 0 when a group's factor is
 * all zeros. */
static int tikhonov_of(kfac_backend *be, kfac_scratch *sc, const kfac_shape *s, const kfac_eigs *e, float gamma,
                       float sd)
{
    const int nb = kfac_a_blocks(s);
    int g, i, ok = 1;
    /* tr A / dim A over all of a group's blocks: one pi per group, since its blocks
     * share one G */
    be->ops->to_host(be, sc->host_d, e->dA, (size_t)s->groups * s->K);
    for (g = 0; g < s->groups; ++g) {
        double t = 0;
        for (i = 0; i < s->K; ++i) t += sc->host_d[(size_t)g * s->K + i];
        sc->lambda_g[g] = (float)(t / s->K);
    }
    be->ops->to_host(be, sc->host_d, e->dG, (size_t)s->groups * s->M);
    for (g = 0; g < s->groups; ++g) {
        double t = 0;
        for (i = 0; i < s->M; ++i) t += sc->host_d[(size_t)g * s->M + i];
        const double mean_a = sc->lambda_g[g], mean_g = t / s->M;
        if (!(mean_a > 0) || !(mean_g > 0)) {
            ok = 0;
            continue;
        }
        const double pi = sqrt(mean_a / mean_g), gf = fmax(gamma, sd * sqrt(mean_a * mean_g));
        for (i = 0; i < nb; ++i) sc->lambda[g * nb + i] = (float)(pi * gf);
        sc->lambda_g[g] = (float)(gf / pi);
    }
    return ok;
}

int kfac_damping_values(kfac_backend *be, kfac_scratch *sc, const kfac_shape *s, const kfac_eigs *e, kfac_damping dmp)
{
    if (dmp.tikhonov) return tikhonov_of(be, sc, s, e, dmp.key, sqrtf(dmp.floor));
    const float sd = sqrtf(dmp.key);
    return relative_of(be, sc, e->dA, kfac_a_dim(s), kfac_a_count(s), sd, sc->lambda) &&
           relative_of(be, sc, e->dG, s->M, s->groups, sd, sc->lambda_g);
}

/* Ainv = (A + lA I)^-1 and Ginv = (G + lG I)^-1 from the decompositions in e.  Because
 * this damping is separable, the two damped inverses are formed once per decomposition
 * (and damping) and each update costs two products instead of four. */
static void damped_inverses(kfac_backend *be, kfac_scratch *sc, const kfac_shape *s, kfac_eigs *e, kfac_damping dmp)
{
    const int ok = kfac_damping_values(be, sc, s, e, dmp);
    if (ok) {
        be->ops->damped_inverse(be, e->EA, e->dA, kfac_a_dim(s), kfac_a_count(s), sc->lambda, e->Ainv);
        be->ops->damped_inverse(be, e->EG, e->dG, s->M, s->groups, sc->lambda_g, e->Ginv);
    }
    e->damping = dmp.key;
    e->inv_ok = ok;
}

/* ---- decompositions -------------------------------------------------------------------- */

void kfac_inverse_stage(kfac_net *k, kfac_layer *kl)
{
    kfac_backend *be = k->be;
    be->ops->copy(be, kl->next.EA, kl->A, kfac_a_len(&kl->s));
    be->ops->copy(be, kl->next.EG, kl->G, (size_t)kl->s.groups * kl->s.M * kl->s.M);
    kl->next.status = 0;
    kl->next.damping = 0;
}

void kfac_inverse_compute(kfac_backend *be, kfac_scratch *sc, kfac_layer *kl, kfac_damping dmp)
{
    const kfac_shape *s = &kl->s;
    kfac_eigs *e = &kl->next;
    double bad[2];
    be->ops->flag_nonfinite(be, e->EA, kfac_a_len(s), 0);
    be->ops->flag_nonfinite(be, e->EG, (size_t)s->groups * s->M * s->M, 1);
    be->ops->results(be, bad, 2);
    if (bad[0] != 0 || bad[1] != 0) {
        e->status = KFAC_FACTOR_NONFINITE;
        return;
    }
    /* in place: the staged copies of A and G become their eigenvectors */
    e->status = be->ops->eigh(be, e->EA, kfac_a_dim(s), kfac_a_count(s), e->EA, e->dA);
    if (e->status == 0) e->status = be->ops->eigh(be, e->EG, s->M, s->groups, e->EG, e->dG);
    if (e->status == 0) damped_inverses(be, sc, s, e, dmp);
    be->ops->synchronize(be);
}

int kfac_inverse_install(kfac_net *k, kfac_layer *kl)
{
    kfac_eigs *e = &kl->next;
    float *t;
    kl->in_job = 0;
    if (e->status != 0) {
        if (!kl->bad_eig_logged++) {
            if (e->status == KFAC_FACTOR_NONFINITE)
                kfac_log("layer %d: non-finite factor, decomposition skipped, keeping the last good inverse (logged once)", kl->index);
            else
                kfac_log("layer %d: eigendecomposition failed (%s %s %d), keeping the last good inverse (logged once)",
                         kl->index, k->be->ops->name, e->status == KFAC_EIGH_NONFINITE ? "non-finite result" : "info",
                         e->status);
        }
        return -1;
    }
    /* the new buffers in, the old ones out to be written by the next launch */
#define KFAC_SWAP(f) (t = kl->f, kl->f = e->f, e->f = t)
    KFAC_SWAP(EA);
    KFAC_SWAP(dA);
    KFAC_SWAP(EG);
    KFAC_SWAP(dG);
    KFAC_SWAP(Ainv);
    KFAC_SWAP(Ginv);
#undef KFAC_SWAP
    kl->inv_damping = e->damping; /* 0: built at the next preconditioning */
    kl->inv_ok = e->inv_ok;
    kl->have_inverse = 1;
    ++kl->basis_gen; /* scaling=ekfac: a scaling measured in the old basis no longer applies */
    return 0;
}

/* ---- preconditioning -------------------------------------------------------------------- */

int kfac_inverse_current(kfac_net *k, kfac_layer *kl)
{
    const kfac_damping dmp = kfac_damping_now(k);
    if (kl->inv_damping != dmp.key) {
        kfac_eigs cur = {kl->EA, kl->dA, kl->EG, kl->dG, kl->Ainv, kl->Ginv, 0, 0, 0};
        damped_inverses(k->be, &k->scratch, &kl->s, &cur, dmp);
        kl->inv_damping = cur.damping;
        kl->inv_ok = cur.inv_ok;
    }
    return kl->inv_ok;
}

/* P = (G + lG I)^-1 D (A + lA I)^-1 per group
 *   = Q_G [ (Q_G^T D Q_A) / ((d_G + lG) (d_A + lA)^T) ] Q_A^T   (DESIGN.md 4) */
void kfac_precondition_kron(kfac_net *k, kfac_layer *kl)
{
    k->be->ops->precondition(k->be, &kl->s, kl->Ginv, kl->Ainv, kl->D, kl->tmp, kl->P);
}

/* One layer's share of the KL-clip quadratic, lr_eff^2 <P/B, D/B> (DESIGN.md 4),
 * here below the driver and the batch-norm blocks (kfac_bn.c), which both add shares;
 * lr_eff = lr/(1 - momentum): the step that momentum builds from a steady gradient.
 * Without that factor a clipped step is taken again and again by the momentum buffer
 * (measured: momentum 0.9 on the demo CNN diverged within 40 updates at any rate). */
double kfac_kl_term(const update_args *a, const layer *l, double p_dot_d)
{
    double lr = (double)a->learning_rate * l->learning_rate_scale / (1.0 - fmin(a->momentum, 0.999));
    double B = (double)a->batch;
    return lr * lr * p_dot_d / (B * B);
}
