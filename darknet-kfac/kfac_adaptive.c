/* darknet-kfac: Martens & Grosse's adaptive step (K-FAC paper, 2015, sections 6 and
 * 7; shared/DESIGN.md 4b), [kfac] step=adaptive.
 *
 * With h the mini-batch loss (mean over images) plus the weight decay (eta/2)|theta|^2
 * (Darknet's `decay`), Delta the K-FAC direction (minus the preconditioned gradient,
 * factors damped by gamma = sqrt(lambda + eta) with the pi correction of section 6.3)
 * and delta_0 the previous update, the update is
 *
 *     delta = alpha Delta + mu delta_0
 *
 * with alpha and mu minimizing the quadratic model
 *
 *     M(delta) = 1/2 delta^T C delta + grad^T delta,    C = F + (lambda + eta) I
 *
 * where F is the exact Fisher (generalized Gauss-Newton) of the probe batch (the last
 * subdivision's images): v^T F w = (1/b) sum_i (J_i v)^T F_R,i (J_i w), J_i v the
 * change of image i's outputs (the loss layers' inputs: one, or a detector's [yolo]
 * heads) along v and F_R their output Fisher.  J v comes from finite differences of Darknet's own forward pass at
 * theta + eps v, so no layer needs new code; every buffer the probe's forward writes
 * is saved before and put back after, so the probes leave no trace.  Every
 * KFAC_ADAPT_T1 updates lambda follows the Levenberg-Marquardt rule on the reduction
 * ratio rho = (h(theta + delta) - h(theta)) / M(delta), measured on the same images.
 *
 * alpha and mu replace Darknet's learning rate and momentum for the layers K-FAC
 * covers (the others keep Darknet's SGD); the policy still scales the step by its
 * rate relative to the cfg's learning_rate, so burn_in ramps it in and steps lower it.
 * Darknet's own update runs as usual and the covered weights are then set to
 * theta + delta (kfac_adaptive_updated). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kfac_internal.h"

/* step=auto on a softmax classifier: the adaptive step gives way to the KL-clipped
 * one after this many generalization ratios below 1/4 in a row */
#define KFAC_AUTO_SWITCH 2
/* lambda is adapted every T1 updates, by the factor omega1 = (19/20)^T1 (M&G 6.5) */
#define KFAC_ADAPT_T1 5
/* lambda stays within these bounds, so that a long run of bad or good ratios cannot
 * take it to 0 or to infinity */
#define KFAC_LAMBDA_MIN 1e-8f
#define KFAC_LAMBDA_MAX 1e8f
/* Finite differences for J v: central, (f(theta + eps v) - f(theta - eps v)) / 2 eps,
 * with eps v of relative size KFAC_PROBE_REL against the weights: the truncation error
 * is O(eps^2) and float32's rounding in the forward pass, about 1e-7 |f|, becomes
 * 1e-7 |f| / eps in J v, so eps at the cube root of float32's precision (5e-3)
 * balances the two (tests/test_adaptive.c measures the error against exact J v). */
#define KFAC_PROBE_REL 5e-3

/* what a forward pass writes in a layer: output, delta, batch norm's x, x_norm, mean,
 * variance, rolling_mean, rolling_variance, a loss layer's loss */
#define KFAC_PROBE_FIELDS 9

/* ---- the probes -------------------------------------------------------------------- */

static void probe_fields(const kfac_backend *be, const layer *l, float *ptr[KFAC_PROBE_FIELDS],
                         size_t len[KFAC_PROBE_FIELDS])
{
    kfac_darknet_buffers b;
    const size_t n = (size_t)l->outputs * l->batch;
    const int bn = l->type == BATCHNORM || (l->batch_normalize && (l->type == CONVOLUTIONAL || l->type == CONNECTED));
    const size_t ch = l->type == CONVOLUTIONAL ? (size_t)l->n : l->type == CONNECTED ? (size_t)l->outputs : (size_t)l->c;
    int f;
    be->ops->darknet_buffers(l, &b);
    float *p[KFAC_PROBE_FIELDS] = {b.output, b.delta, b.x, b.x_norm, b.mean, b.variance, b.rolling_mean,
                                   b.rolling_variance, b.loss};
    size_t m[KFAC_PROBE_FIELDS] = {n, n, bn ? n : 0, bn ? n : 0, bn ? ch : 0, bn ? ch : 0, bn ? ch : 0, bn ? ch : 0,
                                   (l->type == SOFTMAX || l->type == LOGXENT) ? n : 0};
    for (f = 0; f < KFAC_PROBE_FIELDS; ++f) {
        ptr[f] = p[f];
        len[f] = p[f] ? m[f] : 0;
    }
}

/* Grows the saved copies and the host arrays when resize_network (random=1 in
 * Darknet's trainers) has made the layers' outputs larger than at attach. */
static void fit_sizes(kfac_net *k, network *net)
{
    kfac_adaptive *ad = k->adapt;
    kfac_backend *be = k->be;
    int i, f;
    for (i = 0; i < net->n; ++i) {
        float *ptr[KFAC_PROBE_FIELDS];
        size_t len[KFAC_PROBE_FIELDS];
        probe_fields(be, &net->layers[i], ptr, len);
        for (f = 0; f < KFAC_PROBE_FIELDS; ++f) {
            const int j = i * KFAC_PROBE_FIELDS + f;
            if (len[f] <= ad->saved_len[j]) continue;
            be->ops->release(be, ad->saved[j]);
            ad->saved[j] = be->ops->alloc(be, len[f]);
            ad->saved_len[j] = len[f];
        }
    }
    size_t nout = 0, yw = 0;
    for (i = 0; i < ad->nloss; ++i) {
        const layer *l = &net->layers[ad->loss[i].index];
        ad->loss[i].off = nout;
        nout += (size_t)l->inputs * l->batch;
        if (ad->loss[i].kind == KFAC_LOSS_YOLO && (size_t)l->batch * l->n * l->w * l->h > yw)
            yw = (size_t)l->batch * l->n * l->w * l->h;
    }
    if (nout > ad->nout) {
        float **host[] = {&ad->zp, &ad->zm, &ad->p, &ad->d, &ad->hp, &ad->hd, &ad->jv[0], &ad->jv[1]};
        size_t h;
        for (h = 0; h < sizeof host / sizeof host[0]; ++h) {
            free(*host[h]);
            *host[h] = (float *)kfac_calloc(nout, sizeof(float));
        }
        ad->nout = nout;
    }
    if (yw > ad->yw_len) {
        free(ad->yw);
        ad->yw = (float *)kfac_calloc(yw, sizeof(float));
        ad->yw_len = yw;
    }
}

/* save (to_saved 1) or put back (0) everything a forward pass writes */
static void probe_state(kfac_net *k, network *net, int to_saved)
{
    kfac_adaptive *ad = k->adapt;
    kfac_backend *be = k->be;
    int i, f;
    if (to_saved) fit_sizes(k, net);
    for (i = 0; i < net->n; ++i) {
        layer *l = &net->layers[i];
        float *ptr[KFAC_PROBE_FIELDS];
        size_t len[KFAC_PROBE_FIELDS];
        probe_fields(be, l, ptr, len);
        for (f = 0; f < KFAC_PROBE_FIELDS; ++f) {
            float *s = ad->saved[i * KFAC_PROBE_FIELDS + f];
            if (!len[f]) continue;
            if (to_saved) be->ops->copy(be, s, ptr[f], len[f]);
            else be->ops->copy(be, ptr[f], s, len[f]);
        }
        if (l->cost) {
            if (to_saved) ad->costs[i] = l->cost[0];
            else l->cost[0] = ad->costs[i];
        }
    }
    if (to_saved) ad->costs[net->n] = *net->cost;
    else *net->cost = ad->costs[net->n];
    ad->probing = to_saved;
}

int kfac_network_quiet(const network *net)
{
    const kfac_net *k = kfac_of(net);
    return k && k->adapt && k->adapt->probing;
}

/* the covered weights back to the saved theta, exactly */
static void restore_weights(kfac_net *k, network *net)
{
    kfac_backend *be = k->be;
    int i;
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        kfac_darknet_buffers b;
        if (!kl->adaptive) continue;
        be->ops->darknet_buffers(&net->layers[kl->index], &b);
        be->ops->copy(be, b.weights, kl->w_save, (size_t)kl->s.groups * kl->s.M * kl->s.k_in);
        if (kl->s.has_bias) be->ops->copy(be, b.biases, kl->b_save, (size_t)kl->s.groups * kl->s.M);
    }
}

/* covered weights += scale * v[i] (v[i] groups x M x K, bias in the last column) */
static void move_weights(kfac_net *k, network *net, float *const *v, float scale)
{
    kfac_backend *be = k->be;
    int i;
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        kfac_darknet_buffers b;
        if (!kl->adaptive || !v[i]) continue;
        be->ops->darknet_buffers(&net->layers[kl->index], &b);
        be->ops->scatter(be, &kl->s, b.weights, b.biases, v[i], k->adapt->zeros, scale);
    }
}

/* the loss layers' inputs (the outputs of the layers before them: Darknet feeds each
 * layer its predecessor's) after a forward pass at the current weights, to the host */
static void forward_output(kfac_net *k, network *net, float *out)
{
    const kfac_adaptive *ad = k->adapt;
    int i;
    forward_network(net);
    for (i = 0; i < ad->nloss; ++i) {
        const layer *l = &net->layers[ad->loss[i].index];
        kfac_darknet_buffers b;
        k->be->ops->darknet_buffers(&net->layers[ad->loss[i].index - 1], &b);
        k->be->ops->to_host(k->be, out + ad->loss[i].off, b.output, (size_t)l->inputs * l->batch);
    }
}

/* the loss layers' outputs and deltas as the last forward pass left them, to the host */
static void loss_outputs(kfac_net *k, const network *net, float *p, float *d)
{
    const kfac_adaptive *ad = k->adapt;
    int i;
    for (i = 0; i < ad->nloss; ++i) {
        const layer *l = &net->layers[ad->loss[i].index];
        const size_t n = (size_t)l->outputs * l->batch;
        kfac_darknet_buffers b;
        k->be->ops->darknet_buffers(l, &b);
        k->be->ops->to_host(k->be, p + ad->loss[i].off, b.output, n);
        k->be->ops->to_host(k->be, d + ad->loss[i].off, b.delta, n);
    }
}

/* J v on the probe batch into out, by central differences with eps; the weights and
 * every buffer are put back afterwards by the caller's probe_state and here. */
static void jv_central(kfac_net *k, network *net, float *const *v, float eps, float *out)
{
    kfac_adaptive *ad = k->adapt;
    const size_t n = ad->nout;
    size_t j;
    move_weights(k, net, v, eps);
    forward_output(k, net, ad->zp);
    restore_weights(k, net);
    move_weights(k, net, v, -eps);
    forward_output(k, net, ad->zm);
    restore_weights(k, net);
    for (j = 0; j < n; ++j) out[j] = (float)(((double)ad->zp[j] - ad->zm[j]) / (2.0 * eps));
}

/* the step size of a probe along v: eps v of relative size KFAC_PROBE_REL against the
 * covered weights, both measured as root mean squares */
static float probe_eps(double theta_sq, double v_sq)
{
    double t = sqrt(theta_sq), r = sqrt(v_sq);
    if (!(r > 0)) return 0;
    if (!(t > 0)) t = r; /* all-zero weights: relative to v itself */
    return (float)(KFAC_PROBE_REL * t / r);
}

/* ---- the output Fisher and the loss -------------------------------------------------- */

/* A [yolo] layer's output Fisher and loss, entry by entry.  Darknet's delta for the
 * entries that carry a term (the assigned box's coordinates and classes, with weight
 * s = 2 - w h for the coordinates; every objectness not ignored) is the negative
 * gradient, with respect to the layer's input, of
 *
 *     x, y      s CE(t, p)        p the sigmoid output, t = p + delta / s
 *     w, h      (s/2) (t - x)^2   = delta^2 / (2 s)
 *     obj, cls  CE(t, p)          t = p + delta, 0 or 1
 *
 * (Darknet hands the sigmoid outputs' deltas back without the sigmoid's derivative,
 * which makes them cross-entropy gradients), and the output Fisher of that loss is
 * diagonal: s p (1 - p), s, p (1 - p).  An objectness with delta 0 and no box was
 * ignored (IoU above ignore_thresh) and carries nothing.  The weights come from the
 * truth and the anchors alone, so theta and a probe share them; the ignored set is
 * the forward pass's own. */
static double cross_entropy(double t, double p)
{
    /* a float sigmoid saturates at exactly 0 or 1: bounded at float resolution */
    if (p < 1e-7) p = 1e-7;
    if (p > 1 - 1e-7) p = 1 - 1e-7;
    return -(t * log(p) + (1 - t) * log(1 - p));
}

/* mode 0: sum over the layer's entries of F u w (u, w given); mode 1: the loss */
static double yolo_terms(const kfac_adaptive *ad, const network *net, const layer *l, const float *p,
                         const float *d, const float *u, const float *w, int mode)
{
    const int T = l->w * l->h, E = 4 + 1 + l->classes;
    double total = 0;
    int b, n, loc, e;
    kfac_yolo_assignments(l, net, ad->yw);
    for (b = 0; b < l->batch; ++b)
        for (n = 0; n < l->n; ++n)
            for (loc = 0; loc < T; ++loc) {
                const double s = ad->yw[((size_t)b * l->n + n) * T + loc];
                const int obj_term = d[kfac_yolo_index(l, b, n, loc, 4)] != 0 || s > 0;
                for (e = 0; e < E; ++e) {
                    const size_t x = kfac_yolo_index(l, b, n, loc, e);
                    const double px = p[x], dx = d[x];
                    double f = 0, h = 0;
                    if (e < 2) {
                        if (s > 0) { f = s * px * (1 - px); h = s * cross_entropy(px + dx / s, px); }
                    } else if (e < 4) {
                        if (s > 0) { f = s; h = dx * dx / (2 * s); }
                    } else if (e == 4 ? obj_term : s > 0) {
                        f = px * (1 - px);
                        h = cross_entropy(px + dx, px);
                    }
                    total += mode ? h : f * u[x] * w[x];
                }
            }
    return total;
}

/* (1/b) sum_i u_i^T F_R,i w_i over the probe batch (u, w: the loss layers' inputs,
 * one after the other, batch x inputs each), with the outputs p and deltas d at theta */
static double fisher_dot(const kfac_adaptive *ad, const network *net, const float *u, const float *w)
{
    double total = 0;
    int li, i, j;
    for (li = 0; li < ad->nloss; ++li) {
        const layer *l = &net->layers[ad->loss[li].index];
        const size_t off = ad->loss[li].off;
        const int n = l->inputs, B = l->batch;
        if (ad->loss[li].kind == KFAC_LOSS_YOLO) {
            total += yolo_terms(ad, net, l, ad->p + off, ad->d + off, u + off, w + off, 0) / B;
            continue;
        }
        for (i = 0; i < B; ++i) {
            const float *pi = ad->p + off + (size_t)i * n, *ui = u + off + (size_t)i * n, *wi = w + off + (size_t)i * n;
            double t = 0;
            if (ad->loss[li].kind == KFAC_LOSS_SOFTMAX) {
                /* diag(p) - p p^T */
                double pu = 0, pw = 0, puw = 0;
                for (j = 0; j < n; ++j) {
                    pu += (double)pi[j] * ui[j];
                    pw += (double)pi[j] * wi[j];
                    puw += (double)pi[j] * ui[j] * wi[j];
                }
                t = puw - pu * pw;
            } else if (ad->loss[li].kind == KFAC_LOSS_LOGISTIC) {
                for (j = 0; j < n; ++j) t += (double)pi[j] * (1.0 - pi[j]) * ui[j] * wi[j];
            } else { /* Gaussian of variance 1/scale; masked outputs carry no term */
                for (j = 0; j < n; ++j)
                    if (!(l->cost_type == MASKED && net->truth[(size_t)i * n + j] == SECRET_NUM))
                        t += (double)l->scale * ui[j] * wi[j];
            }
            total += t / B;
        }
    }
    return total;
}

/* h on the probe batch after a forward pass: the losses their deltas differentiate,
 * mean over images (Darknet's cost for softmax and logistic; for [cost] the
 * (s/2)|t - x|^2 its delta belongs to, not the sum of squares it reports; for [yolo]
 * the loss of yolo_terms, not the squared delta Darknet reports) */
static double loss_value(kfac_net *k, const network *net)
{
    kfac_adaptive *ad = k->adapt;
    double total = 0;
    int li;
    size_t j;
    loss_outputs(k, net, ad->hp, ad->hd);
    for (li = 0; li < ad->nloss; ++li) {
        const layer *l = &net->layers[ad->loss[li].index];
        const size_t off = ad->loss[li].off, n = (size_t)l->outputs * l->batch;
        if (ad->loss[li].kind == KFAC_LOSS_SOFTMAX || ad->loss[li].kind == KFAC_LOSS_LOGISTIC) {
            total += (double)l->cost[0] / l->batch;
        } else if (ad->loss[li].kind == KFAC_LOSS_YOLO) {
            total += yolo_terms(ad, net, l, ad->hp + off, ad->hd + off, NULL, NULL, 1) / l->batch;
        } else {
            double q = 0;
            for (j = 0; j < n; ++j) q += (double)ad->hd[off + j] * ad->hd[off + j];
            total += 0.5 * l->scale * q / l->batch;
        }
    }
    return total;
}

/* ---- the step ---------------------------------------------------------------------------- */

/* slots of the per-layer results */
enum { S_GD, S_GP, S_DD, S_DP, S_PP, S_TT, S_BAD_D, S_BAD_P };
enum { S_TDELTA, S_DELTA2 };

void kfac_adaptive_jv(kfac_net *k, network *net, float *const *v, double rel, float *out)
{
    kfac_adaptive *ad = k->adapt;
    kfac_backend *be = k->be;
    double theta_sq = 0, v_sq = 0;
    int i;
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        kfac_darknet_buffers b;
        const size_t len = (size_t)kl->s.groups * kl->s.M * kl->s.K;
        kl->adaptive = v[i] != NULL;
        if (!kl->adaptive) continue;
        be->ops->darknet_buffers(&net->layers[kl->index], &b);
        be->ops->copy(be, kl->w_save, b.weights, (size_t)kl->s.groups * kl->s.M * kl->s.k_in);
        if (kl->s.has_bias) be->ops->copy(be, kl->b_save, b.biases, (size_t)kl->s.groups * kl->s.M);
        be->ops->gather(be, &kl->s, b.weights, ad->zeros, kl->s.has_bias ? b.biases : NULL, ad->zeros, kl->theta);
        be->ops->dot(be, kl->theta, kl->theta, len, KFAC_SLOTS_PER_LAYER * i + S_TT);
        be->ops->dot(be, v[i], v[i], len, KFAC_SLOTS_PER_LAYER * i + S_DD);
    }
    be->ops->results(be, k->results, KFAC_SLOTS_PER_LAYER * k->nlayers);
    for (i = 0; i < k->nlayers; ++i) {
        theta_sq += k->results[KFAC_SLOTS_PER_LAYER * i + S_TT];
        v_sq += k->results[KFAC_SLOTS_PER_LAYER * i + S_DD];
    }
    float eps = probe_eps(theta_sq, v_sq);
    if (rel > 0) eps = (float)(eps * rel / KFAC_PROBE_REL);
    probe_state(k, net, 1);
    jv_central(k, net, v, eps, out);
    probe_state(k, net, 0);
}

double kfac_adaptive_fisher_dot(kfac_net *k, const network *net, const float *u, const float *w)
{
    fit_sizes(k, (network *)net);
    loss_outputs(k, net, k->adapt->p, k->adapt->d);
    return fisher_dot(k->adapt, net, u, w);
}

double kfac_adaptive_loss(kfac_net *k, const network *net)
{
    fit_sizes(k, (network *)net);
    return loss_value(k, net);
}

float kfac_adaptive_gamma(const kfac_net *k)
{
    return sqrtf(k->adapt->lambda + k->eta);
}

float kfac_adaptive_lambda_rule(float lambda, double rho)
{
    const float omega1 = powf(19.0f / 20.0f, (float)KFAC_ADAPT_T1);
    if (!isfinite(rho) || rho < 0.25) lambda /= omega1;
    else if (rho > 0.75) lambda *= omega1;
    if (lambda < KFAC_LAMBDA_MIN) lambda = KFAC_LAMBDA_MIN;
    if (lambda > KFAC_LAMBDA_MAX) lambda = KFAC_LAMBDA_MAX;
    return lambda;
}

/* Solves the 2 x 2 (or, without delta_0, 1 x 1) system of M&G section 7 for alpha and
 * mu; returns 0 when the model is unusable (not positive along Delta, non-finite). */
int kfac_adaptive_solve(double cdd, double cdp, double cpp, double gd, double gp, int have_prev, double *alpha,
                      double *mu)
{
    *alpha = 0;
    *mu = 0;
    if (!(cdd > 0) || !isfinite(gd)) return 0;
    if (have_prev && cpp > 0 && isfinite(cdp) && isfinite(gp)) {
        double det = cdd * cpp - cdp * cdp;
        /* Delta nearly parallel to delta_0: the 2 x 2 system is singular to rounding,
         * the momentum term adds nothing the 1 x 1 one does not have */
        if (det > 1e-10 * cdd * cpp) {
            *alpha = (-gd * cpp + gp * cdp) / det;
            *mu = (-gp * cdd + gd * cdp) / det;
            return isfinite(*alpha) && isfinite(*mu);
        }
    }
    *alpha = -gd / cdd;
    return isfinite(*alpha);
}

static void rho_next_batch(kfac_net *k, network *net);

void kfac_adaptive_step(kfac_net *k, network *net, const update_args *a)
{
    kfac_adaptive *ad = k->adapt;
    kfac_backend *be = k->be;
    const double B = (double)a->batch, eta = a->decay;
    const int on = k->step >= k->cfg.warmup;
    int i, any = 0;

    if (ad->pending) rho_next_batch(k, net);
    if (!ad->active) { /* the KL-clipped step takes this update */
        for (i = 0; i < k->nlayers; ++i) k->layers[i].pend = 0;
        return;
    }

    /* the direction: Delta = (F^ + damping)^-1 (-grad h), grad h with the decay */
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        const layer *l = &net->layers[kl->index];
        const size_t len = (size_t)kl->s.groups * kl->s.M * kl->s.K;
        const int slot = KFAC_SLOTS_PER_LAYER * i;
        kfac_darknet_buffers b;
        be->ops->darknet_buffers(l, &b);
        be->ops->gather(be, &kl->s, b.weight_updates, kl->w_snap, b.bias_updates, kl->b_snap, kl->D);
        kl->adaptive = on && kl->have_inverse;
        be->ops->flag_nonfinite(be, kl->D, len, slot + S_BAD_D);
        if (!kl->adaptive) {
            be->ops->copy(be, kl->P, kl->D, len);
            continue;
        }
        be->ops->copy(be, kl->w_save, b.weights, (size_t)kl->s.groups * kl->s.M * kl->s.k_in);
        if (kl->s.has_bias) be->ops->copy(be, kl->b_save, b.biases, (size_t)kl->s.groups * kl->s.M);
        /* theta with a zero bias column: Darknet decays weights only */
        be->ops->gather(be, &kl->s, b.weights, ad->zeros, kl->s.has_bias ? ad->zeros : NULL, ad->zeros, kl->theta);
        /* D holds -B grad of the data loss: with the decay, D - B eta theta */
        be->ops->axpy(be, (float)(-B * eta), kl->theta, kl->D, len);
        kfac_precondition_layer(k, kl);
        be->ops->scale(be, (float)(1.0 / B), kl->P, len); /* P is now Delta */
        be->ops->flag_nonfinite(be, kl->P, len, slot + S_BAD_P);
        be->ops->dot(be, kl->D, kl->P, len, slot + S_GD);
        be->ops->dot(be, kl->D, kl->prev, len, slot + S_GP);
        be->ops->dot(be, kl->P, kl->P, len, slot + S_DD);
        be->ops->dot(be, kl->P, kl->prev, len, slot + S_DP);
        be->ops->dot(be, kl->prev, kl->prev, len, slot + S_PP);
        be->ops->dot(be, kl->theta, kl->theta, len, slot + S_TT);
    }
    be->ops->results(be, k->results, KFAC_SLOTS_PER_LAYER * k->nlayers);

    double gd = 0, gp = 0, dd = 0, dp = 0, pp = 0, tt = 0;
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        const double *r = k->results + KFAC_SLOTS_PER_LAYER * i;
        if (r[S_BAD_D] != 0) {
            if (!kl->bad_grad_logged++)
                kfac_log("layer %d: non-finite gradient, this update's gradient dropped for the layer (logged once)", kl->index);
            k->mode[i] = KFAC_MODE_SNAPSHOT;
            kl->adaptive = 0;
            continue;
        }
        if (!kl->adaptive) {
            k->mode[i] = KFAC_MODE_PLAIN;
            continue;
        }
        if (r[S_BAD_P] != 0) {
            if (!kl->bad_grad_logged++)
                kfac_log("layer %d: non-finite preconditioned gradient, plain SGD for this update (logged once)", kl->index);
            be->ops->copy(be, kl->P, kl->D, (size_t)kl->s.groups * kl->s.M * kl->s.K);
            k->mode[i] = KFAC_MODE_PLAIN;
            kl->adaptive = 0;
            continue;
        }
        k->mode[i] = KFAC_MODE_ADAPTIVE;
        any = 1;
        /* grad = -D/B */
        gd -= r[S_GD] / B;
        gp -= r[S_GP] / B;
        dd += r[S_DD];
        dp += r[S_DP];
        pp += r[S_PP];
        tt += r[S_TT];
    }
    if (!any) return;

    /* the curvature along Delta and delta_0, on the probe batch */
    fit_sizes(k, net);
    loss_outputs(k, net, ad->p, ad->d);
    const double h0 = loss_value(k, net);
    const int have_prev = ad->have_prev && pp > 0;
    float **dir = (float **)kfac_calloc((size_t)k->nlayers, sizeof(float *));
    probe_state(k, net, 1);
    for (i = 0; i < k->nlayers; ++i) dir[i] = k->layers[i].adaptive ? k->layers[i].P : NULL;
    jv_central(k, net, dir, probe_eps(tt, dd), ad->jv[0]);
    if (have_prev) {
        for (i = 0; i < k->nlayers; ++i) dir[i] = k->layers[i].adaptive ? k->layers[i].prev : NULL;
        jv_central(k, net, dir, probe_eps(tt, pp), ad->jv[1]);
    }
    probe_state(k, net, 0);
    const double ld = (double)ad->lambda + eta;
    const double cdd = fisher_dot(ad, net, ad->jv[0], ad->jv[0]) + ld * dd;
    const double cdp = have_prev ? fisher_dot(ad, net, ad->jv[0], ad->jv[1]) + ld * dp : 0;
    const double cpp = have_prev ? fisher_dot(ad, net, ad->jv[1], ad->jv[1]) + ld * pp : 0;
    double alpha, mu;
    if (!kfac_adaptive_solve(cdd, cdp, cpp, gd, gp, have_prev, &alpha, &mu)) {
        kfac_log("update %d: the quadratic model is not usable (curvature %g along Delta), no K-FAC step", k->step, cdd);
        for (i = 0; i < k->nlayers; ++i)
            if (k->layers[i].adaptive) be->ops->zero(be, k->layers[i].prev, (size_t)k->layers[i].s.groups * k->layers[i].s.M * k->layers[i].s.K);
        ad->have_prev = 0;
        free(dir);
        return;
    }
    /* the policy's rate relative to the cfg's scales the step: r delta* has the model
     * value M(delta*) (2r - r^2), since delta*^T C delta* = -grad^T delta* */
    double r = net->learning_rate > 0 ? a->learning_rate / net->learning_rate : 1.0;
    if (!(r >= 0)) r = 0;
    const double m_opt = 0.5 * (alpha * gd + mu * gp);
    const double m_step = m_opt * (2 * r - r * r);

    /* delta = r (alpha Delta + mu delta_0), formed in prev */
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        const size_t len = (size_t)kl->s.groups * kl->s.M * kl->s.K;
        if (!kl->adaptive) continue;
        be->ops->scale(be, (float)(r * mu), kl->prev, len);
        be->ops->axpy(be, (float)(r * alpha), kl->P, kl->prev, len);
    }
    ad->have_prev = r > 0;
    ad->alpha_sum += alpha;
    ad->mu_sum += mu;
    ++ad->steps;

    /* every T1 updates: the reduction ratio on the same images, and lambda */
    if (ad->updates++ % KFAC_ADAPT_T1 == 0 && m_step < 0) {
        double td = 0, d2 = 0;
        for (i = 0; i < k->nlayers; ++i) {
            kfac_layer *kl = &k->layers[i];
            const size_t len = (size_t)kl->s.groups * kl->s.M * kl->s.K;
            if (!kl->adaptive) continue;
            be->ops->dot(be, kl->theta, kl->prev, len, KFAC_SLOTS_PER_LAYER * i + S_TDELTA);
            be->ops->dot(be, kl->prev, kl->prev, len, KFAC_SLOTS_PER_LAYER * i + S_DELTA2);
        }
        be->ops->results(be, k->results, KFAC_SLOTS_PER_LAYER * k->nlayers);
        for (i = 0; i < k->nlayers; ++i) {
            td += k->results[KFAC_SLOTS_PER_LAYER * i + S_TDELTA];
            d2 += k->results[KFAC_SLOTS_PER_LAYER * i + S_DELTA2];
        }
        if (ad->may_switch) {
            ad->pending = 1;
            ad->pend_m = m_step;
            ad->pend_decay = eta * (td + 0.5 * d2);
            for (i = 0; i < k->nlayers; ++i) k->layers[i].pend = k->layers[i].adaptive;
        }
        probe_state(k, net, 1);
        for (i = 0; i < k->nlayers; ++i) dir[i] = k->layers[i].adaptive ? k->layers[i].prev : NULL;
        move_weights(k, net, dir, 1.0f);
        forward_network(net);
        const double h1 = loss_value(k, net);
        restore_weights(k, net);
        probe_state(k, net, 0);
        const double rho = (h1 - h0 + eta * (td + 0.5 * d2)) / m_step;
        ad->rho_last = rho;
        ad->lambda = kfac_adaptive_lambda_rule(ad->lambda, rho);
    }
    free(dir);
}

/* the reduction ratio of the last T1 update's step, measured on this update's batch */
static void rho_next_batch(kfac_net *k, network *net)
{
    kfac_adaptive *ad = k->adapt;
    kfac_backend *be = k->be;
    int i;
    fit_sizes(k, net);
    const double h1 = loss_value(k, net);
    probe_state(k, net, 1);
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        kfac_darknet_buffers b;
        if (!kl->pend) continue;
        be->ops->darknet_buffers(&net->layers[kl->index], &b);
        be->ops->copy(be, kl->w_save, b.weights, (size_t)kl->s.groups * kl->s.M * kl->s.k_in);
        be->ops->copy(be, b.weights, kl->w_pre, (size_t)kl->s.groups * kl->s.M * kl->s.k_in);
        if (kl->s.has_bias) {
            be->ops->copy(be, kl->b_save, b.biases, (size_t)kl->s.groups * kl->s.M);
            be->ops->copy(be, b.biases, kl->b_pre, (size_t)kl->s.groups * kl->s.M);
        }
    }
    forward_network(net);
    const double h0 = loss_value(k, net);
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        kfac_darknet_buffers b;
        if (!kl->pend) continue;
        be->ops->darknet_buffers(&net->layers[kl->index], &b);
        be->ops->copy(be, b.weights, kl->w_save, (size_t)kl->s.groups * kl->s.M * kl->s.k_in);
        if (kl->s.has_bias) be->ops->copy(be, b.biases, kl->b_save, (size_t)kl->s.groups * kl->s.M);
        kl->pend = 0;
    }
    probe_state(k, net, 0);
    const double ratio = (h1 - h0 + ad->pend_decay) / ad->pend_m;
    ad->gen_last = ratio;
    ad->pending = 0;
    ad->low_ratios = isfinite(ratio) && ratio >= 0.25 ? 0 : ad->low_ratios + 1;
    if (ad->low_ratios >= KFAC_AUTO_SWITCH) {
        ad->active = 0;
        kfac_log("update %d: step=auto: the adaptive steps no longer carry over to new batches (the last %d "
                 "ratios of the loss reduction on the next batch to the model's below 1/4, the last %.3g): "
                 "KL-clipped steps from here on", k->step, KFAC_AUTO_SWITCH, ratio);
    }
}

void kfac_adaptive_updated(kfac_net *k, network *net)
{
    kfac_backend *be = k->be;
    int i;
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        kfac_darknet_buffers b;
        if (k->mode[i] != KFAC_MODE_ADAPTIVE) continue;
        be->ops->darknet_buffers(&net->layers[kl->index], &b);
        if (kl->pend) {
            be->ops->copy(be, kl->w_pre, kl->w_save, (size_t)kl->s.groups * kl->s.M * kl->s.k_in);
            if (kl->s.has_bias) be->ops->copy(be, kl->b_pre, kl->b_save, (size_t)kl->s.groups * kl->s.M);
        }
        /* Darknet's update of these weights (decay, its rate, its momentum) is replaced
         * by theta + delta, and its accumulator starts the next update from 0 */
        be->ops->zero(be, b.weights, (size_t)kl->s.groups * kl->s.M * kl->s.k_in);
        if (kl->s.has_bias) be->ops->zero(be, b.biases, (size_t)kl->s.groups * kl->s.M);
        be->ops->scatter(be, &kl->s, b.weights, kl->s.has_bias ? b.biases : NULL, kl->prev, k->adapt->zeros, 1.0f);
        be->ops->axpy(be, 1.0f, kl->w_save, b.weights, (size_t)kl->s.groups * kl->s.M * kl->s.k_in);
        if (kl->s.has_bias) be->ops->axpy(be, 1.0f, kl->b_save, b.biases, (size_t)kl->s.groups * kl->s.M);
        be->ops->zero(be, b.weight_updates, (size_t)kl->s.groups * kl->s.M * kl->s.k_in);
        if (kl->s.has_bias) be->ops->zero(be, b.bias_updates, (size_t)kl->s.groups * kl->s.M);
    }
}

void kfac_adaptive_report(kfac_net *k, char *buf, size_t len)
{
    kfac_adaptive *ad = k->adapt;
    if (!ad->steps) {
        snprintf(buf, len, "no adaptive step yet; lambda %.3g", ad->lambda);
        return;
    }
    snprintf(buf, len, "adaptive steps: mean alpha %.3g, mean mu %.3g; lambda %.3g, last rho %.3g", ad->alpha_sum / ad->steps,
             ad->mu_sum / ad->steps, ad->lambda, ad->rho_last);
    ad->alpha_sum = ad->mu_sum = 0;
    ad->steps = 0;
}

/* ---- attach ------------------------------------------------------------------------------ */

/* the kind of quadratic-model term a loss layer gives, KFAC_LOSS_NONE when its output
 * Fisher is not known here */
static kfac_loss_kind model_kind(const layer *l)
{
    if (l->type == SOFTMAX && !l->softmax_tree && l->groups <= 1 && !l->spatial && l->temperature == 1)
        return KFAC_LOSS_SOFTMAX;
    if (l->type == LOGXENT) return KFAC_LOSS_LOGISTIC;
    if (l->type == COST && (l->cost_type == SSE || l->cost_type == MASKED) && l->ratio == 0 && l->scale > 0)
        return KFAC_LOSS_GAUSSIAN;
    /* truth_thresh < 1 adds terms for every anchor above it, which yolo_terms lacks */
    if (l->type == YOLO && l->truth_thresh >= 1) return KFAC_LOSS_YOLO;
    return KFAC_LOSS_NONE;
}

/* 1 when no layer after loss layer i reads its output (a detector's [yolo] head is
 * followed by a [route] back to an earlier layer) */
static int output_unused(const network *net, int i)
{
    int j, m;
    if (i + 1 < net->n && net->layers[i + 1].type != ROUTE) return 0;
    for (j = i + 1; j < net->n; ++j) {
        const layer *l = &net->layers[j];
        if (l->type == ROUTE)
            for (m = 0; m < l->n; ++m)
                if (l->input_layers[m] == i) return 0;
        if (l->type == SHORTCUT && l->index == i) return 0;
    }
    return 1;
}

int kfac_adaptive_attach(kfac_net *k, network *net, char *why, size_t why_len)
{
    kfac_backend *be = k->be;
    int i, f, nloss = 0;
    kfac_model_loss *loss = (kfac_model_loss *)kfac_calloc((size_t)net->n, sizeof *loss);
    for (i = 0; i < net->n; ++i) {
        const layer *l = &net->layers[i];
        if (l->type == DROPOUT) {
            snprintf(why, why_len, "layer %d is a [dropout]: the probes' forward passes would draw new masks", i);
            free(loss);
            return 0;
        }
        if (!l->cost) continue;
        const kfac_loss_kind kind = model_kind(l);
        if (kind == KFAC_LOSS_NONE || i == 0) {
            snprintf(why, why_len, "layer %d is a loss whose output Fisher is not known here (the adaptive step takes "
                     "[softmax] without groups or temperature, [logistic], [cost] sse or masked, [yolo] with "
                     "truth_thresh >= 1)", i);
            free(loss);
            return 0;
        }
        if (i < net->n - 1 && !output_unused(net, i)) {
            snprintf(why, why_len, "layer %d is a loss whose output a later layer reads: the quadratic model takes "
                     "losses at the ends of the net", i);
            free(loss);
            return 0;
        }
        loss[nloss].index = i;
        loss[nloss++].kind = kind;
    }
    if (!nloss) {
        snprintf(why, why_len, "the net has no loss layer");
        free(loss);
        return 0;
    }
    kfac_adaptive *ad = (kfac_adaptive *)kfac_calloc(1, sizeof *ad);
    ad->active = 1;
    ad->gen_last = NAN;
    /* step=auto: the switch to the KL clip is for softmax classifiers.  On them the
     * adaptive step's steps stop carrying over to new batches after some 25 updates
     * and it then stalls (measured: the demo CNN, the BN CNN and the MLP end at 2-4x
     * the loss of the switched rule after 200 updates); on the autoencoder's
     * per-pixel loss, 400 outputs per image, its steps keep carrying over once the
     * plateau is left, and switching there cost a factor 20 in the error after 1000
     * updates (15.5 against 0.66; BENCHMARKS.md, "The step rule") */
    ad->may_switch = k->cfg.step == KFAC_STEP_AUTO && nloss == 1 && loss[0].kind == KFAC_LOSS_SOFTMAX;
    ad->lambda = k->cfg.lambda;
    ad->loss = loss;
    ad->nloss = nloss;
    ad->rho_last = NAN;
    size_t most = 1;
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        const size_t g = (size_t)kl->s.groups, M = (size_t)kl->s.M, K = (size_t)kl->s.K;
        kl->theta = be->ops->alloc(be, g * M * K);
        kl->prev = be->ops->alloc(be, g * M * K);
        kl->w_save = be->ops->alloc(be, g * M * (size_t)kl->s.k_in);
        kl->w_pre = be->ops->alloc(be, g * M * (size_t)kl->s.k_in);
        if (kl->s.has_bias) kl->b_save = be->ops->alloc(be, g * M);
        if (kl->s.has_bias) kl->b_pre = be->ops->alloc(be, g * M);
        if (g * M * K > most) most = g * M * K;
    }
    ad->zeros = be->ops->alloc(be, most);
    ad->nsaved = net->n * KFAC_PROBE_FIELDS;
    ad->saved = (float **)kfac_calloc((size_t)ad->nsaved, sizeof(float *));
    ad->saved_len = (size_t *)kfac_calloc((size_t)ad->nsaved, sizeof(size_t));
    for (i = 0; i < net->n; ++i) {
        float *ptr[KFAC_PROBE_FIELDS];
        size_t len[KFAC_PROBE_FIELDS];
        probe_fields(be, &net->layers[i], ptr, len);
        for (f = 0; f < KFAC_PROBE_FIELDS; ++f) {
            ad->saved[i * KFAC_PROBE_FIELDS + f] = be->ops->alloc(be, len[f]);
            ad->saved_len[i * KFAC_PROBE_FIELDS + f] = len[f];
        }
    }
    ad->costs = (float *)kfac_calloc((size_t)net->n + 1, sizeof(float));
    k->adapt = ad;
    fit_sizes(k, net); /* the loss layers' offsets and the host arrays */
    return 1;
}

void kfac_adaptive_free(kfac_net *k)
{
    kfac_adaptive *ad = k->adapt;
    kfac_backend *be = k->be;
    int i;
    if (!ad) return;
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        be->ops->release(be, kl->theta);
        be->ops->release(be, kl->prev);
        be->ops->release(be, kl->w_save);
        be->ops->release(be, kl->b_save);
        be->ops->release(be, kl->w_pre);
        be->ops->release(be, kl->b_pre);
        kl->theta = kl->prev = kl->w_save = kl->b_save = kl->w_pre = kl->b_pre = NULL;
    }
    be->ops->release(be, ad->zeros);
    for (i = 0; i < ad->nsaved; ++i) be->ops->release(be, ad->saved[i]);
    free(ad->saved);
    free(ad->saved_len);
    free(ad->costs);
    free(ad->zp);
    free(ad->zm);
    free(ad->p);
    free(ad->d);
    free(ad->hp);
    free(ad->hd);
    free(ad->jv[0]);
    free(ad->jv[1]);
    free(ad->yw);
    free(ad->loss);
    free(ad);
    k->adapt = NULL;
}
