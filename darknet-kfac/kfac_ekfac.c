/* darknet-kfac: eigenvalue-corrected K-FAC, [kfac] scaling=ekfac (George, Laurent,
 * Bouthillier, Ballas & Vincent, NeurIPS 2018; shared/DESIGN.md 6b; issue 13).
 *
 * K-FAC's block A (x) G has the eigenbasis Q_A (x) Q_G and the eigenvalues d_G d_A^T,
 * exact only where the Kronecker assumption holds.  EKFAC keeps the basis (the rows of
 * E_A, E_G that K-FAC decomposes anyway) and replaces the eigenvalues by the second
 * moments of the per-image gradients in it,
 *
 *     S_ij = E_n[(E_G dW_n E_A^T)_ij^2],   dW_n = sum_t g_t a_t^T   (M x K per group),
 *
 * each image's gradient summed over its positions (the images of the statistics
 * steps, as a running average like A and G: George et al.'s amortized re-estimation).
 * It is on the scale of d_G d_A^T: A (x) G approximates the same E_n[vec dW_n vec
 * dW_n^T] (DESIGN.md 4).  The rest of the step is K-FAC's:
 *
 *     P = E_G^T [ (E_G D E_A^T) / (S + lA d_G 1^T + lG 1 d_A^T + lA lG) ] E_A,
 *
 * the denominators being K-FAC's damped (d_G + lG)(d_A + lA)^T with the product
 * d_G d_A^T replaced by S, lA and lG the factors' own damping as K-FAC sets it: the
 * relative damping (step=kl_clip: sqrt(damping) times each factor's mean eigenvalue)
 * and the adaptive step's gamma with the pi split carry over unchanged, with the same
 * meaning, and S = d_G d_A^T gives K-FAC exactly.  (George et al. add one scalar;
 * that would make `damping` mean another thing for EKFAC than for K-FAC, and the KL
 * clip and the adaptive step's gamma would need retuning.)
 *
 * S belongs to the basis it was measured in.  A new decomposition starts it afresh
 * (until the next statistics step K-FAC's d_G d_A^T is used), so on a statistics
 * step the driver's decomposition step (kfac_worker.c: installing the background
 * job due, launching the next) runs at its start, from the factors of the steps
 * before (kfac_ekfac_begin_update): that step's S is then measured in the basis it
 * preconditions with, at the price of factors one statistics step older than
 * K-FAC's.  A job installed on another update leaves K-FAC's scaling in force until
 * the next statistics step.  Layers' basis_gen counts the decompositions installed
 * (kfac_inverse_install); S and its accumulator carry the generation they were
 * measured in.
 *
 * Every covered layer's direction is chosen here (kfac_precondition_layer): EKFAC's
 * scaling where it is measured, K-FAC's (kfac_inverses.c) otherwise, so that the
 * Kronecker code below never calls back up into this file. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kfac_internal.h"

void kfac_ekfac_attach(kfac_net *k)
{
    kfac_backend *be = k->be;
    int i;
    k->ek_step = -1;
    if (k->cfg.scaling != KFAC_SCALING_EKFAC) return;
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        const size_t n = (size_t)kl->s.groups * kl->s.M * kl->s.K;
        kfac_ekfac *e = (kfac_ekfac *)kfac_calloc(1, sizeof *e);
        e->S = be->ops->alloc(be, n);
        e->S_acc = be->ops->alloc(be, n);
        e->R = be->ops->alloc(be, n);
        kl->ek = e;
    }
}

void kfac_ekfac_free(kfac_net *k)
{
    kfac_backend *be = k->be;
    int i;
    for (i = 0; i < k->nlayers; ++i) {
        kfac_ekfac *e = k->layers[i].ek;
        if (!e) continue;
        be->ops->release(be, e->S);
        be->ops->release(be, e->S_acc);
        be->ops->release(be, e->R);
        free(e);
        k->layers[i].ek = NULL;
    }
}

/* ---- the schedule ---------------------------------------------------------------------- */

void kfac_ekfac_begin_update(kfac_net *k)
{
    int i;
    /* the first of the update's subdivisions only */
    if (k->cfg.scaling != KFAC_SCALING_EKFAC || k->ek_step == k->step) return;
    k->ek_step = -1;
    /* before the first fold kfac_network_precondition makes the first decompositions */
    for (i = 0; i < k->nlayers; ++i)
        if (!k->layers[i].have_factors) return;
    k->ek_step = k->step;
    kfac_phase_begin(k, KFAC_PHASE_INVERSE);
    kfac_decompositions_step(k);
    kfac_phase_end(k);
}

int kfac_ekfac_refreshed(const kfac_net *k)
{
    return k->cfg.scaling == KFAC_SCALING_EKFAC && k->ek_step == k->step;
}

/* ---- statistics ---------------------------------------------------------------------------- */

void kfac_ekfac_capture(kfac_net *k, kfac_layer *kl, const layer *l, const float *input, const float *delta)
{
    kfac_ekfac *e = kl->ek;
    kfac_backend *be = k->be;
    if (!e || !kl->have_inverse) return;
    if (e->n_acc && e->acc_gen != kl->basis_gen) {
        be->ops->zero(be, e->S_acc, (size_t)kl->s.groups * kl->s.M * kl->s.K);
        e->n_acc = 0;
    }
    e->acc_gen = kl->basis_gen;
    be->ops->capture_ekfac(be, &kl->s, l, input, delta, kl->EG, kl->EA, e->S_acc);
    e->n_acc += l->batch;
}

void kfac_ekfac_fold(kfac_net *k)
{
    kfac_backend *be = k->be;
    int i, any = 0;
    if (k->cfg.scaling != KFAC_SCALING_EKFAC) return;
    for (i = 0; i < k->nlayers; ++i) {
        kfac_ekfac *e = k->layers[i].ek;
        if (!e->n_acc) continue;
        be->ops->flag_nonfinite(be, e->S_acc, (size_t)k->layers[i].s.groups * k->layers[i].s.M * k->layers[i].s.K, i);
        any = 1;
    }
    if (!any) return;
    be->ops->results(be, k->results, k->nlayers);
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        kfac_ekfac *e = kl->ek;
        const size_t n = (size_t)kl->s.groups * kl->s.M * kl->s.K;
        if (!e->n_acc) continue;
        if (k->results[i] != 0) {
            if (!e->bad_logged++)
                kfac_log("layer %d: non-finite EKFAC scaling statistics, batch skipped (logged once)", kl->index);
        } else if (e->acc_gen == kl->basis_gen) {
            /* a new basis starts S afresh; then kfac_fold_weight's rule */
            if (e->gen != kl->basis_gen) {
                e->gen = kl->basis_gen;
                e->batches = 0;
            }
            const float mean = 1.0f / (float)(e->batches + 1), w = mean > 1.0f - k->cfg.decay ? mean : 1.0f - k->cfg.decay;
            be->ops->scale(be, 1.0f - w, e->S, n);
            be->ops->axpy(be, w / (float)e->n_acc, e->S_acc, e->S, n);
            ++e->batches;
            e->R_ok = 0;
        }
        /* (taken in a basis replaced since: dropped) */
        be->ops->zero(be, e->S_acc, n);
        e->n_acc = 0;
    }
}

/* ---- preconditioning -------------------------------------------------------------------------- */

/* P in the layer's basis with EKFAC's scaling; 0 while that scaling is not measured in
 * the decomposition in force (K-FAC's scaling is used then) */
static int ekfac_precondition(kfac_net *k, kfac_layer *kl)
{
    kfac_ekfac *e = kl->ek;
    kfac_backend *be = k->be;
    if (!e || !e->batches || e->gen != kl->basis_gen) return 0;
    const kfac_damping dmp = kfac_damping_now(k);
    if (!e->R_ok || e->R_gen != kl->basis_gen || e->R_key != dmp.key) {
        /* the factors' own damping (kfac_inverses.c) of the decomposition in force */
        kfac_eigs cur = {kl->EA, kl->dA, kl->EG, kl->dG, kl->Ainv, kl->Ginv, 0, 0, 0};
        if (!kfac_damping_values(be, &k->scratch, &kl->s, &cur, dmp)) return 0;
        be->ops->ekfac_scale(be, &kl->s, e->S, kl->dG, kl->dA, k->scratch.lambda_g, k->scratch.lambda, e->R);
        e->R_ok = 1;
        e->R_gen = kl->basis_gen;
        e->R_key = dmp.key;
    }
    be->ops->precondition_eigen(be, &kl->s, kl->EG, kl->EA, e->R, kl->D, kl->tmp, kl->P);
    return 1;
}

void kfac_precondition_layer(kfac_net *k, kfac_layer *kl)
{
    if (!kfac_inverse_current(k, kl))
        k->be->ops->copy(k->be, kl->P, kl->D, (size_t)kl->s.groups * kl->s.M * kl->s.K);
    else if (!ekfac_precondition(k, kl))
        kfac_precondition_kron(k, kl);
}
