/* darknet-kfac: the algorithm, written once for every backend.
 *
 * Darknet's hooks enter here during training (patches/0004, 0005, 0025):
 *
 *     train_network_datum kfac_network_train_begin   starts the update's clock
 *     backward_network    kfac_layer_backward        captures A and G on statistics steps
 *     update_network      kfac_network_precondition  folds the statistics, refreshes the
 *                                                    inverses, writes the preconditioned,
 *                                                    KL-clipped gradient back
 *                         kfac_network_updated       snapshots, step count, progress line
 *
 * Update integration (DESIGN.md 4): Darknet's *_updates buffers are both the gradient
 * accumulator and the momentum buffer.  Right after each update we snapshot them (they
 * then hold momentum*v); at the next update D = buffer - snapshot is the new gradient
 * alone, and we add nu*P - D, so Darknet's own update then applies decay, learning
 * rate (policy, burn_in, per-layer scale) and momentum to the preconditioned gradient.
 *
 * Below this file: kfac_schedule.c (what is due when, phase timing), kfac_inverses.c
 * (one layer's decompositions, damping, preconditioning), kfac_fisher.c (the
 * true-Fisher pass), kfac_adaptive.c (step=adaptive); none of them calls up here.
 *
 * Every number is computed by the net's backend (kfac_backend.h); this file decides
 * what is computed when, and reads back only small results: finiteness flags and dot
 * products (once per update), the solver's status, and the eigenvalues that set the
 * damping (once per decomposition). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kfac_internal.h"

/* ---- statistics ---------------------------------------------------------------------- */

void kfac_network_train_begin(network *net)
{
    kfac_schedule_began(kfac_of(net)); /* the update's own time starts at its first forward */
}

void kfac_layer_backward(network *net, int index, float *input)
{
    kfac_net *k = kfac_of(net);
    layer *l = &net->layers[index];
    kfac_layer *kl = (kfac_layer *)l->kfac;
    /* the batch norm of the layer below: its delta is complete now (kfac_bn.c) */
    if (k->nbn) kfac_bn_capture(k, net, index - 1);
    if (!kl || !k->capture) return;
    /* resize_network (random=1 in Darknet's trainers) changes a conv layer's output size */
    if (kl->s.type == CONVOLUTIONAL) kl->s.T = l->out_h * l->out_w;
    kfac_backend *be = k->be;
    kfac_phase_begin(k, KFAC_PHASE_STATS);
    if (k->capture & KFAC_CAPTURE_A) {
        be->ops->capture_A(be, &kl->s, l, input, kl->A_acc);
        kl->n_acc_A += l->batch;
    }
    if (k->capture & KFAC_CAPTURE_G) {
        kfac_darknet_buffers bufs;
        be->ops->darknet_buffers(l, &bufs);
        be->ops->capture_G(be, &kl->s, l, bufs.delta, kl->G_acc);
        kl->n_acc_G += l->batch;
        /* scaling=ekfac: the images' gradients in the layer's eigenbasis */
        if (kl->ek) kfac_ekfac_capture(k, kl, l, input, bufs.delta);
    }
    kfac_phase_end(k);
}

/* Weight of a new batch in the running averages: 1 - decay, but the plain mean of the
 * batches so far while there are fewer than 1/(1 - decay) of them.  Without this the
 * first batch keeps 0.95^n of the weight for dozens of statistics steps, and a layer
 * with more inputs than a batch has images keeps a factor of too low a rank. */
float kfac_fold_weight(const kfac_layer *kl, float decay)
{
    float mean = 1.0f / (float)(kl->have_factors + 1);
    return mean > 1.0f - decay ? mean : 1.0f - decay;
}

/* The statistics of the update just finished into the running averages (DESIGN.md 4),
 * X <- (1-w)*X + w*(acc/n); a batch with a non-finite value is dropped whole. */
static void fold_statistics(kfac_net *k)
{
    kfac_backend *be = k->be;
    int i, any = 0;
    if (k->dist) kfac_dist_sum_statistics(k); /* the ranks' images together */
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        if (kl->n_acc_A == 0 || kl->n_acc_G == 0) continue;
        be->ops->flag_nonfinite(be, kl->A_acc, kfac_a_len(&kl->s), 2 * i);
        be->ops->flag_nonfinite(be, kl->G_acc, (size_t)kl->s.groups * kl->s.M * kl->s.M, 2 * i + 1);
        any = 1;
    }
    if (!any) return;
    be->ops->results(be, k->results, 2 * k->nlayers);
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        const size_t nA = kfac_a_len(&kl->s), nG = (size_t)kl->s.groups * kl->s.M * kl->s.M;
        if (kl->n_acc_A == 0 || kl->n_acc_G == 0) continue;
        if (k->results[2 * i] != 0 || k->results[2 * i + 1] != 0) {
            if (!kl->bad_factors_logged++)
                kfac_log("layer %d: non-finite statistics, batch skipped (the factors keep their last good value; logged once)", kl->index);
            be->ops->zero(be, kl->A_acc, nA);
            be->ops->zero(be, kl->G_acc, nG);
        } else {
            float w = kfac_fold_weight(kl, k->cfg.decay);
            be->ops->fold(be, kl->A, kl->A_acc, kfac_a_dim(&kl->s), kfac_a_count(&kl->s), 1.0f - w, w,
                          1.0f / (float)kl->n_acc_A);
            be->ops->fold(be, kl->G, kl->G_acc, kl->s.M, kl->s.groups, 1.0f - w, w, 1.0f / (float)kl->n_acc_G);
            ++kl->have_factors;
        }
        kl->n_acc_A = kl->n_acc_G = 0;
    }
}

/* ---- the step --------------------------------------------------------------------------- */

/* KL clip: nu = min(1, sqrt(bound / quad)).  The bound is kl_clip at the cfg's
 * learning_rate and follows Darknet's policy (burn_in, steps, poly, ...) as
 * (rate / learning_rate)^2, so a clipped step still shrinks when the rate does. */
static float kl_scale(kfac_net *k, const network *net, const update_args *a, double quad)
{
    if (k->identity || k->cfg.kl_clip <= 0 || !(quad > 0) || !(net->learning_rate > 0)) return 1.0f;
    double rel = a->learning_rate / net->learning_rate;
    double r = sqrt(k->cfg.kl_clip * rel * rel / quad);
    float nu = r < 1 ? (float)r : 1.0f;
    ++k->nu_count;
    k->nu_clipped += nu < 1.0f;
    k->nu_sum += nu;
    return nu;
}

/* The KL-clipped step (DESIGN.md 4): every layer with an inverse preconditioned, the
 * whole step scaled by one nu.  Sets k->mode for each layer and returns nu. */
static float kl_clip_step(kfac_net *k, network *net, const update_args *a)
{
    kfac_backend *be = k->be;
    const int on = k->step >= k->cfg.warmup;
    int i;
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        const layer *l = &net->layers[kl->index];
        const size_t len = (size_t)kl->s.groups * kl->s.M * kl->s.K;
        const int plain = !k->identity && (!on || !kl->have_inverse);
        kfac_darknet_buffers bufs;
        be->ops->darknet_buffers(l, &bufs);
        be->ops->gather(be, &kl->s, bufs.weight_updates, kl->w_snap, bufs.bias_updates, kl->b_snap, kl->D);
        if (k->identity || plain) be->ops->copy(be, kl->P, kl->D, len);
        else if (kfac_dist_preconditions(k, i)) kfac_precondition_layer(k, kl);
        k->mode[i] = plain ? KFAC_MODE_PLAIN : KFAC_MODE_SCALED;
    }
    /* dist_precondition=owner: the other layers' P from their owners, before anything
     * is computed from them, so that nu and the write-back agree on every rank */
    if (!k->identity) kfac_dist_share_preconditioned(k, KFAC_MODE_SCALED);
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        const size_t len = (size_t)kl->s.groups * kl->s.M * kl->s.K;
        be->ops->dot(be, kl->P, kl->D, len, KFAC_SLOTS_PER_LAYER * i);
        be->ops->flag_nonfinite(be, kl->D, len, KFAC_SLOTS_PER_LAYER * i + 1);
        be->ops->flag_nonfinite(be, kl->P, len, KFAC_SLOTS_PER_LAYER * i + 2);
    }
    kfac_bn_step(k, net, on, KFAC_SLOTS_PER_LAYER * k->nlayers);
    /* the one read-back of the update: <P, D> and finiteness of every layer and block */
    if (k->nlayers + k->nbn) be->ops->results(be, k->results, KFAC_SLOTS_PER_LAYER * (k->nlayers + k->nbn));
    double quad = 0; /* sum over layers of kfac_kl_term */
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        const double *r = k->results + KFAC_SLOTS_PER_LAYER * i;
        if (r[1] != 0) {
            if (!kl->bad_grad_logged++)
                kfac_log("layer %d: non-finite gradient, this update's gradient dropped for the layer (logged once)", kl->index);
            k->mode[i] = KFAC_MODE_SNAPSHOT;
        } else if (k->mode[i] == KFAC_MODE_SCALED && !k->identity) {
            if (r[2] != 0) {
                if (!kl->bad_grad_logged++)
                    kfac_log("layer %d: non-finite preconditioned gradient, plain SGD for this update (logged once)", kl->index);
                be->ops->copy(be, kl->P, kl->D, (size_t)kl->s.groups * kl->s.M * kl->s.K);
                k->mode[i] = KFAC_MODE_PLAIN;
            } else {
                quad += kfac_kl_term(a, &net->layers[kl->index], r[0]);
            }
        }
    }
    quad += kfac_bn_step_results(k, net, a, k->results + KFAC_SLOTS_PER_LAYER * k->nlayers);
    return kl_scale(k, net, a, quad);
}

void kfac_network_precondition(network *net, update_args *a)
{
    kfac_net *k = kfac_of(net);
    kfac_backend *be = k->be;
    int i;
    k->capture = KFAC_CAPTURE_NONE;
    kfac_phase_begin(k, KFAC_PHASE_STATS);
    if (kfac_stats_step(k)) {
        fold_statistics(k);
        kfac_bn_fold(k);
        kfac_ekfac_fold(k);
    }
    kfac_phase_end(k);

    /* during warmup, and for a layer without an inverse yet, the plain gradient goes
     * through (checked for NaN like the rest) */
    kfac_phase_begin(k, KFAC_PHASE_INVERSE);
    /* (scaling=ekfac takes a statistics step's decompositions at its start) */
    if (!kfac_ekfac_refreshed(k)) kfac_decompositions_step(k);
    /* the batch-norm blocks decompose at once, on the factors' schedule (kfac_bn.c) */
    if (k->step >= k->cfg.warmup) kfac_bn_refresh(k, kfac_inverse_due(k));
    kfac_phase_end(k);

    kfac_phase_begin(k, KFAC_PHASE_PRECOND);
    float nu = 1.0f;
    if (kfac_adaptive_on(k)) kfac_adaptive_step(k, net, a);
    kfac_adaptive_settle(k); /* Darknet's update is about to change the weights */
    /* step=kl_clip, or step=auto once (or as soon as) it has given the adaptive step up */
    if (!kfac_adaptive_on(k)) nu = kl_clip_step(k, net, a);
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        kfac_darknet_buffers bufs;
        be->ops->darknet_buffers(&net->layers[kl->index], &bufs);
        if (k->mode[i] == KFAC_MODE_SNAPSHOT) {
            /* copied: adding 0 - D would leave NaN + (0 - NaN) = NaN */
            be->ops->copy(be, bufs.weight_updates, kl->w_snap, (size_t)kl->s.groups * kl->s.M * kl->s.k_in);
            if (kl->s.has_bias) be->ops->copy(be, bufs.bias_updates, kl->b_snap, (size_t)kl->s.groups * kl->s.M);
        } else if (k->mode[i] != KFAC_MODE_ADAPTIVE) {
            be->ops->scatter(be, &kl->s, bufs.weight_updates, bufs.bias_updates, kl->P, kl->D,
                             k->mode[i] == KFAC_MODE_SCALED ? nu : 1.0f);
        }
    }
    kfac_bn_write_back(k, net, nu);
    kfac_phase_end(k);
}

/* A user comparing K-FAC with SGD on their own net wants to see where K-FAC's time
 * goes (to choose the intervals) and whether the KL bound is what sets the step:
 * every inverse_interval updates when the cfg sets it, else every
 * KFAC_REPORT_EVERY. */
#define KFAC_REPORT_EVERY 100
static void report(network *net)
{
    kfac_net *k = kfac_of(net);
    double t[KFAC_NPHASES];
    const int every = k->cfg.inverse_interval > 0 ? k->cfg.inverse_interval : KFAC_REPORT_EVERY;
    if (++k->report_updates < every) return;
    kfac_network_timing(net, &t[0], &t[1], &t[2]);
    const int n = k->report_updates;
    char clip[400] = "no step preconditioned", sched[160], bg[120] = "";
    if (kfac_adaptive_on(k))
        kfac_adaptive_report(k, clip, sizeof clip);
    else if (k->nu_count)
        snprintf(clip, sizeof clip, "KL clip scaled %d of %d steps (mean factor %.3g)", k->nu_clipped, k->nu_count,
                 k->nu_sum / k->nu_count);
    kfac_schedule_describe(k, sched, sizeof sched);
    if (k->worker)
        snprintf(bg, sizeof bg, " (of it waiting for the background %.4f; background busy %.4f)",
                 (k->wait_seconds - k->wait_reported) / n, (k->worker_seconds - k->worker_reported) / n);
    kfac_log("update %d: seconds per update over the last %d: statistics %.4f, decompositions %.4f%s, "
             "preconditioning and step %.4f; %s; %s", k->step, n, (t[0] - k->t_reported[0]) / n,
             (t[1] - k->t_reported[1]) / n, bg, (t[2] - k->t_reported[2]) / n, sched, clip);
    memcpy(k->t_reported, t, sizeof t);
    k->wait_reported = k->wait_seconds;
    k->worker_reported = k->worker_seconds;
    k->report_updates = 0;
    k->nu_count = k->nu_clipped = 0;
    k->nu_sum = 0;
}

void kfac_network_updated(network *net)
{
    kfac_net *k = kfac_of(net);
    kfac_backend *be = k->be;
    int i;
    if (k->adapt) kfac_adaptive_updated(k, net);
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        kfac_darknet_buffers bufs;
        be->ops->darknet_buffers(&net->layers[kl->index], &bufs);
        be->ops->copy(be, kl->w_snap, bufs.weight_updates, (size_t)kl->s.groups * kl->s.M * kl->s.k_in);
        if (kl->s.has_bias) be->ops->copy(be, kl->b_snap, bufs.bias_updates, (size_t)kl->s.groups * kl->s.M);
    }
    kfac_bn_snapshot(k, net);
    ++k->step;
    kfac_schedule_updated(k);
    report(net);
}
