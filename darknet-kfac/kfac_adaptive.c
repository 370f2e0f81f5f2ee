/* darknet-kfac: Martens & Grosse's adaptive step (K-FAC paper, 2015, sections 6 and
 * 7; shared/DESIGN.md 4b), [kfac] step=adaptive.
 *
 * With h the mini-batch loss (mean over images) plus the weight decay (eta/2)|theta|^2
 * (Darknet's `decay`), Delta the K-FAC direction (minus the preconditioned gradient,
 * factors damped by gamma = sqrt(lambda + eta) with the pi correction of section 6.3,
 * each factor at least sqrt(damping) times its mean eigenvalue: kfac_inverses.c says
 * why) and delta_0 the previous update, the update is
 *
 *     delta = alpha Delta + mu delta_0
 *
 * with alpha and mu minimizing the quadratic model
 *
 *     M(delta) = 1/2 delta^T C delta + grad^T delta,    C = F + (lambda + eta) I
 *
 * where F is the exact Fisher (generalized Gauss-Newton) of the probe batch: v^T F w =
 * (1/b) sum_i (J_i v)^T F_R,i (J_i w), J_i v the change of image i's outputs (the loss
 * layers' inputs: one, or a detector's [yolo] heads) along v and F_R their output
 * Fisher (each kind's entry in kfac_losses.c).  The probe batch is the last
 * subdivision's images (or its first probe_batch: probe_images).  J v comes from a
 * one-sided difference of Darknet's own forward pass at theta + eps v against the
 * outputs the training forward left at theta (on a net with batch norm, whose outputs
 * couple the images, a forward pass at theta on the probe images first), so no layer
 * needs new code; every buffer a probe's forward writes is saved before and put back
 * after, so the probes leave no trace.
 *
 * Every KFAC_ADAPT_T1 updates lambda follows the Levenberg-Marquardt rule on the
 * reduction ratio rho = (h(theta + delta) - h(theta)) / M(delta), measured on the probe
 * images.  A step whose loss or model is not finite, or whose rho is negative (the
 * loss rose on its own images), is not taken: lambda rises by 1/omega1^2, the next
 * step has no momentum term and measures rho again (step_failed; logged once, counted
 * on the progress line).  The losses are computed from the outputs (the entries'
 * values), never from Darknet's costs, which are NaN once a float sigmoid or softmax
 * saturates.
 *
 * alpha and mu replace Darknet's learning rate and momentum for the layers K-FAC
 * covers (the others keep Darknet's SGD); the policy still scales the step by its
 * rate relative to the cfg's learning_rate, so burn_in ramps it in and steps lower it.
 * Darknet's own update runs as usual and the covered weights are then set to
 * theta + delta (kfac_adaptive_updated). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "kfac_comm.h"
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
/* Finite differences for J v: one-sided, (f(theta + eps v) - f(theta)) / eps, with
 * f(theta) the training forward's own outputs, so one forward pass per direction
 * (central differences took two); eps v of relative size KFAC_PROBE_REL against the
 * weights.  The truncation error is O(eps) and float32's rounding in the forward
 * pass, about 1e-7 |f|, becomes 1e-7 |f| / eps in J v, so eps near the square root of
 * float32's precision balances the two (tests/test_adaptive.c prints the error
 * against an exact J v for several steps on a strongly nonlinear MLP: 4e-4 to 5.5e-4
 * at this one, 1.4e-3 at 1e-3, 7e-3 at 1e-5; central differences at 5e-3 gave 3e-5,
 * but the model's alpha and mu need a percent, not five digits). */
#define KFAC_PROBE_REL 3e-4

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
static void bg_join(kfac_adaptive *ad);

static void fit_sizes(kfac_net *k, network *net)
{
    kfac_adaptive *ad = k->adapt;
    kfac_backend *be = k->be;
    int i, f;
    /* the second thread reads the loss layers' offsets, the weights and delta_0: every
     * change to them on this thread comes after this */
    bg_join(ad);
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
    size_t nout = 0, slots = 0;
    for (i = 0; i < ad->nloss; ++i) {
        const layer *l = &net->layers[ad->loss[i].index];
        ad->loss[i].off = nout;
        nout += (size_t)l->inputs * l->batch;
        ad->loss[i].slot_off = slots;
        slots += kfac_loss_slots(l);
    }
    if (nout > ad->nout) {
        float **host[] = {&ad->zp, &ad->z0, &ad->p, &ad->d, &ad->hp, &ad->hd, &ad->jv[0], &ad->jv[1]};
        size_t h;
        for (h = 0; h < sizeof host / sizeof host[0]; ++h) {
            free(*host[h]);
            *host[h] = (float *)kfac_calloc(nout, sizeof(float));
        }
        ad->nout = nout;
    }
    if (slots > ad->slot_len) {
        free(ad->slot_weight);
        ad->slot_weight = (float *)kfac_calloc(slots, sizeof(float));
        ad->slot_len = slots;
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
    return k && k->adapt && (k->adapt->probing || kfac_clone_owns(k->adapt->clone, net));
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
    kfac_bn_adaptive_restore(k, net); /* the batch-norm blocks, when a probe moved them */
}

/* covered weights += scale * v[i] (v[i] groups x M x K, bias in the last column), and
 * the batch-norm blocks along k->bn_dir */
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
    kfac_bn_adaptive_move(k, net, scale);
}

/* A forward pass of the step's own on the training thread: with probe_split its
 * products use the second core too (kfac_split.c; the same bits), unless the probe
 * thread or the decomposition worker still holds it: a helper polling beside them
 * slowed the update (yolov3-tiny, whose decompositions outlast an update;
 * BENCHMARKS.md) */
static void probe_forward(kfac_net *k, network *net)
{
    kfac_adaptive *ad = k->adapt;
    const int split = ad->split && (!ad->bg_running || __atomic_load_n(&ad->bg_finished, __ATOMIC_ACQUIRE)) &&
                      !kfac_worker_busy(k);
    if (ad->split) ++ad->split_passes[split];
    if (split) kfac_split_begin();
    forward_network(net);
    if (split) kfac_split_end();
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

/* the loss layers' inputs (the outputs of the layers before them: Darknet feeds each
 * layer its predecessor's) as the last forward pass left them, to the host: f(theta)
 * of the one-sided differences after the training forward, f(theta + eps v) after a
 * probe's */
static void current_output(kfac_net *k, const network *net, float *out)
{
    const kfac_adaptive *ad = k->adapt;
    int i;
    for (i = 0; i < ad->nloss; ++i) {
        const layer *l = &net->layers[ad->loss[i].index];
        kfac_darknet_buffers b;
        k->be->ops->darknet_buffers(&net->layers[ad->loss[i].index - 1], &b);
        k->be->ops->to_host(k->be, out + ad->loss[i].off, b.output, (size_t)l->inputs * l->batch);
    }
}

/* J v on the probe batch into out by a one-sided difference against z0 = f(theta):
 * (f(theta + eps v) - f(theta)) / eps, one forward pass where central differences
 * take two.  The caller's probe_state puts every buffer back; the weights are put
 * back here. */
static void jv_one_sided(kfac_net *k, network *net, float *const *v, float eps, const float *z0, float *out)
{
    kfac_adaptive *ad = k->adapt;
    const size_t n = ad->nout;
    size_t j;
    move_weights(k, net, v, eps);
    probe_forward(k, net);
    current_output(k, net, ad->zp);
    restore_weights(k, net);
    for (j = 0; j < n; ++j) out[j] = (float)(((double)ad->zp[j] - z0[j]) / eps);
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

/* Each loss layer's assigned-box weights ([yolo]'s) for the batch now in the net: from
 * the truth and the anchors alone, so the same for theta and every probe, and taken
 * once per update, not once per product. */
static void assign_slots(kfac_adaptive *ad, const network *net)
{
    int li;
    for (li = 0; li < ad->nloss; ++li) {
        const kfac_loss_ops *op = kfac_loss_ops_of(ad->loss[li].kind);
        if (op->assign)
            op->assign(&net->layers[ad->loss[li].index], net, NULL, ad->slot_weight + ad->loss[li].slot_off);
    }
}

/* loss layer li as its entry's operations see it, outputs p and deltas d (host arrays
 * of all the loss layers, one after the other) */
static kfac_loss_view loss_view(const kfac_adaptive *ad, const network *net, int li, const float *p, const float *d)
{
    const kfac_model_loss *ml = &ad->loss[li];
    const layer *l = &net->layers[ml->index];
    kfac_loss_view v = {net, l, p + ml->off, d + ml->off, kfac_loss_slots(l) ? ad->slot_weight + ml->slot_off : NULL};
    return v;
}

/* (1/b) sum_i u_i^T F_R,i w_i over the probe batch (u, w: the loss layers' inputs,
 * one after the other, batch x inputs each), with the outputs p and deltas d at theta */
static double fisher_dot(const kfac_adaptive *ad, const network *net, const float *u, const float *w)
{
    double total = 0;
    int li;
    for (li = 0; li < ad->nloss; ++li) {
        const kfac_loss_view v = loss_view(ad, net, li, ad->p, ad->d);
        total = kfac_loss_ops_of(ad->loss[li].kind)->fisher_dot(&v, u + ad->loss[li].off, w + ad->loss[li].off, total);
    }
    return total;
}

/* h on the probe batch after a forward pass: the losses their deltas differentiate
 * (their entries' values, from the outputs, never Darknet's costs), mean over images */
static double loss_value(kfac_net *k, const network *net)
{
    kfac_adaptive *ad = k->adapt;
    double total = 0;
    int li;
    loss_outputs(k, net, ad->hp, ad->hd);
    for (li = 0; li < ad->nloss; ++li) {
        const kfac_loss_view v = loss_view(ad, net, li, ad->hp, ad->hd);
        total += kfac_loss_ops_of(ad->loss[li].kind)->value(&v) / v.l->batch;
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
    fit_sizes(k, net);
    current_output(k, net, ad->z0);
    probe_state(k, net, 1);
    jv_one_sided(k, net, v, eps, ad->z0, out);
    probe_state(k, net, 0);
}

double kfac_adaptive_fisher_dot(kfac_net *k, const network *net, const float *u, const float *w)
{
    fit_sizes(k, (network *)net);
    assign_slots(k->adapt, net);
    loss_outputs(k, net, k->adapt->p, k->adapt->d);
    return fisher_dot(k->adapt, net, u, w);
}

double kfac_adaptive_loss(kfac_net *k, const network *net)
{
    fit_sizes(k, (network *)net);
    assign_slots(k->adapt, net);
    return loss_value(k, net);
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

/* The sums over the adaptive layers of the step's dot products: with grad = -D/B,
 * Delta = P the direction and delta_0 = prev */
typedef struct {
    double gd, gp, dd, dp, pp, tt;
} kfac_sums;

/* Delta = -(F^ + damping)^-1 grad h into each adaptive layer's P, D already holding the
 * gradient with the decay, and the dot products; a layer whose Delta is not finite
 * falls back to plain SGD and leaves the model. */
static void direction(kfac_net *k, double B, kfac_sums *sm)
{
    kfac_backend *be = k->be;
    int i;
    memset(sm, 0, sizeof *sm);
    for (i = 0; i < k->nlayers; ++i)
        if (k->layers[i].adaptive && kfac_dist_preconditions(k, i)) kfac_precondition_layer(k, &k->layers[i]);
    /* dist_precondition=owner: the other layers' from their owners, so that the model
     * and its probes move every rank along the same Delta */
    kfac_dist_share_preconditioned(k, KFAC_MODE_ADAPTIVE);
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        const size_t len = (size_t)kl->s.groups * kl->s.M * kl->s.K;
        const int slot = KFAC_SLOTS_PER_LAYER * i;
        if (!kl->adaptive) continue;
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
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        const double *r = k->results + KFAC_SLOTS_PER_LAYER * i;
        if (!kl->adaptive) continue;
        if (r[S_BAD_P] != 0) {
            if (!kl->bad_grad_logged++)
                kfac_log("layer %d: non-finite preconditioned gradient, plain SGD for this update (logged once)", kl->index);
            be->ops->copy(be, kl->P, kl->D, (size_t)kl->s.groups * kl->s.M * kl->s.K);
            k->mode[i] = KFAC_MODE_PLAIN;
            kl->adaptive = 0;
            continue;
        }
        /* grad = -D/B */
        sm->gd -= r[S_GD] / B;
        sm->gp -= r[S_GP] / B;
        sm->dd += r[S_DD];
        sm->dp += r[S_DP];
        sm->pp += r[S_PP];
        sm->tt += r[S_TT];
    }
}

/* the adaptive layers of the model, as the probes take them: Delta (what 0) or
 * delta_0 (1) */
static void adaptive_dirs(const kfac_net *k, float **dir, int what)
{
    int i;
    for (i = 0; i < k->nlayers; ++i) {
        const kfac_layer *kl = &k->layers[i];
        dir[i] = !kl->adaptive ? NULL : what == 0 ? kl->P : kl->prev;
    }
}

/* The model along a direction whose J Delta is jd: alpha, mu and the model's value at
 * them (M&G 7: M = (alpha grad^T Delta + mu grad^T delta_0) / 2); 0 when unusable. */
static int model_fit(const kfac_net *k, const network *net, const kfac_sums *sm, const float *jd, int have_prev,
                     double ld, double *alpha, double *mu, double *m)
{
    const kfac_adaptive *ad = k->adapt;
    /* means over this rank's probe images, then over the ranks (kfac_dist_mean) */
    double f[3] = {fisher_dot(ad, net, jd, jd), have_prev ? fisher_dot(ad, net, jd, ad->jv[1]) : 0,
                   have_prev ? fisher_dot(ad, net, ad->jv[1], ad->jv[1]) : 0};
    kfac_dist_mean(k, f, 3);
    const double cdd = f[0] + ld * sm->dd;
    const double cdp = have_prev ? f[1] + ld * sm->dp : 0;
    const double cpp = have_prev ? f[2] + ld * sm->pp : 0;
    if (!kfac_adaptive_solve(cdd, cdp, cpp, sm->gd, sm->gp, have_prev, alpha, mu)) return 0;
    *m = 0.5 * (*alpha * sm->gd + *mu * sm->gp);
    return isfinite(*m);
}

/* A failed step (a non-finite loss or model, or the loss rising on its own batch where
 * the model promised a fall): no step, no momentum into the next one, lambda up by a
 * factor 1/omega1^2 and rho measured again at the next update, so that a run of
 * failures raises lambda quickly; said once, counted on the progress line. */
static void step_failed(kfac_net *k, const char *why)
{
    kfac_adaptive *ad = k->adapt;
    const float omega1 = powf(19.0f / 20.0f, (float)KFAC_ADAPT_T1);
    int i;
    for (i = 0; i < k->nlayers; ++i)
        if (k->layers[i].adaptive)
            k->be->ops->zero(k->be, k->layers[i].prev, (size_t)k->layers[i].s.groups * k->layers[i].s.M * k->layers[i].s.K);
    kfac_bn_adaptive_forget(k);
    ad->have_prev = 0;
    ad->lambda = fminf(ad->lambda / (omega1 * omega1), KFAC_LAMBDA_MAX);
    ad->check_next = 1;
    ++ad->failed;
    if (!ad->failed_logged++)
        kfac_log("update %d: %s: the step is not taken, lambda raised to %.3g (logged once; the progress line counts "
                 "failed steps)", k->step, why, ad->lambda);
}

/* the images the probes run on: the first probe_batch of the last subdivision's (its
 * own forward pass left their outputs at theta), all of them by default and on the
 * GPU, where cuDNN's descriptors are made for the whole batch.  Fewer cost less but
 * constrain the step less: on digits autoencoders with decay=0 half of a batch of 32
 * ended 1000 updates at an error of 7.7 against 5.9 with all of it, half of 16 rose
 * back from 15 to 20 where all of it went on to 8.2 */
static int probe_images(const kfac_net *k, const network *net)
{
    int pb = k->cfg.probe_batch > 0 ? k->cfg.probe_batch : net->batch;
    if (!k->be->ops->host_memory || pb > net->batch) pb = net->batch;
    return pb;
}

/* every layer's batch (and the net's) set to b: Darknet's forward passes run over
 * l.batch images, the first b of its buffers */
static void set_batch(network *net, int b)
{
    int i;
    net->batch = b;
    for (i = 0; i < net->n; ++i) net->layers[i].batch = b;
}

/* ---- J delta_0 on a second thread ------------------------------------------------ */

/* The thread: the clone at theta + eps delta_0 along the launch's layers and blocks,
 * its forward pass, the loss layers' inputs to bg_out.  It reads the net's weights,
 * input and truth and delta_0, which nothing changes before bg_join. */
static void *bg_main(void *arg)
{
    kfac_net *k = (kfac_net *)arg;
    kfac_adaptive *ad = k->adapt;
    kfac_backend *be = k->be;
    network *c = kfac_clone_fill(ad->clone);
    int i;
    for (i = 0; i < k->nlayers; ++i) {
        const kfac_layer *kl = &k->layers[i];
        layer *l = &c->layers[kl->index];
        if (ad->bg_set[i]) be->ops->scatter(be, &kl->s, l->weights, l->biases, kl->prev, ad->zeros, ad->bg_eps);
    }
    for (i = 0; i < k->nbn; ++i) {
        const kfac_bn *b = &k->bn[i];
        layer *l = &c->layers[b->index];
        if (ad->bg_set[k->nlayers + i]) be->ops->scatter(be, &b->u, l->scales, l->biases, b->prev, ad->zeros, ad->bg_eps);
    }
    forward_network(c); /* (never split: the helper's core is this thread's) */
    current_output(k, c, ad->bg_out);
    __atomic_store_n(&ad->bg_finished, 1, __ATOMIC_RELEASE);
    return NULL;
}

static void bg_join(kfac_adaptive *ad)
{
    if (!ad->bg_running) return;
    pthread_join(ad->bg_thread, NULL);
    ad->bg_running = 0;
}

/* 1 when the launch moved exactly this update's adaptive layers and blocks by this
 * eps: its J delta_0 is then bit for bit the training thread's own */
static int bg_take(kfac_net *k, float eps)
{
    kfac_adaptive *ad = k->adapt;
    int i, same;
    bg_join(ad);
    if (!ad->bg_ready) return 0;
    ad->bg_ready = 0;
    same = ad->bg_eps == eps;
    for (i = 0; i < k->nlayers && same; ++i) same = ad->bg_set[i] == (k->layers[i].adaptive != 0);
    for (i = 0; i < k->nbn && same; ++i) same = ad->bg_set[k->nlayers + i] == (k->bn[i].adaptive != 0);
    if (same) ++ad->bg_taken;
    else ++ad->bg_missed;
    return same;
}

void kfac_adaptive_settle(kfac_net *k)
{
    kfac_adaptive *ad = k->adapt;
    if (!ad) return;
    bg_join(ad);
    if (ad->bg_ready) ++ad->bg_missed;
    ad->bg_ready = 0;
}

void kfac_adaptive_train_forward(kfac_net *k, network *net)
{
    kfac_adaptive *ad = k->adapt;
    kfac_backend *be = k->be;
    const int nl = k->nlayers, S = KFAC_SLOTS_PER_LAYER;
    double tt = 0, pp = 0, btt = 0, bpp = 0;
    int i;
    if (!ad || !ad->clone) return;
    kfac_adaptive_settle(k);
    if (!ad->active) { /* step=auto has switched to the KL clip for good: no more probes */
        kfac_clone_free(ad->clone);
        ad->clone = NULL;
        return;
    }
    /* only before an update (the last subdivision's images are the probe batch), with
     * a delta_0, and on all of them (a probe sub-batch runs on the training thread) */
    if (!net->train || !ad->have_prev || k->step < k->cfg.warmup) return;
    if ((*net->seen / net->batch) % net->subdivisions != 0 || probe_images(k, net) < net->batch) return;
    fit_sizes(k, net);
    if (ad->bg_len < ad->nout) {
        free(ad->bg_out);
        ad->bg_out = (float *)kfac_calloc(ad->nout, sizeof(float));
        ad->bg_len = ad->nout;
    }
    /* the layers and blocks the update will move, as kfac_adaptive_step decides unless
     * a gradient turns out not finite or a first decomposition comes in (bg_take then
     * declines), and eps from the same sums in the same order as direction()'s */
    for (i = 0; i < nl; ++i) {
        kfac_layer *kl = &k->layers[i];
        kfac_darknet_buffers b;
        ad->bg_set[i] = kl->have_inverse != 0;
        if (!ad->bg_set[i]) continue;
        be->ops->darknet_buffers(&net->layers[kl->index], &b);
        be->ops->gather(be, &kl->s, b.weights, ad->zeros, kl->s.has_bias ? ad->zeros : NULL, ad->zeros, kl->theta);
        const size_t len = (size_t)kl->s.groups * kl->s.M * kl->s.K;
        be->ops->dot(be, kl->prev, kl->prev, len, S * i + S_PP);
        be->ops->dot(be, kl->theta, kl->theta, len, S * i + S_TT);
    }
    be->ops->results(be, k->results, S * nl);
    for (i = 0; i < nl; ++i) {
        if (!ad->bg_set[i]) continue;
        pp += k->results[S * i + S_PP];
        tt += k->results[S * i + S_TT];
    }
    for (i = 0; i < k->nbn; ++i) {
        kfac_bn *b = &k->bn[i];
        kfac_darknet_buffers bufs;
        ad->bg_set[nl + i] = b->have_inverse != 0;
        if (!ad->bg_set[nl + i]) continue;
        be->ops->darknet_buffers(&net->layers[b->index], &bufs);
        be->ops->zero(be, b->tmp, (size_t)b->s.K);
        be->ops->gather(be, &b->u, bufs.scales, b->tmp, bufs.biases, b->tmp, b->theta);
        be->ops->dot(be, b->prev, b->prev, (size_t)b->s.K, S * i + 4);
        be->ops->dot(be, b->theta, b->theta, (size_t)b->s.K, S * i + 5);
    }
    if (k->nbn) be->ops->results(be, k->results, S * k->nbn);
    for (i = 0; i < k->nbn; ++i) {
        if (!ad->bg_set[nl + i]) continue;
        bpp += k->results[S * i + 4];
        btt += k->results[S * i + 5];
    }
    tt += btt;
    pp += bpp;
    if (!(pp > 0)) return;
    ad->bg_eps = probe_eps(tt, pp);
    kfac_clone_sync(ad->clone, net);
    __atomic_store_n(&ad->bg_finished, 0, __ATOMIC_RELEASE);
    if (pthread_create(&ad->bg_thread, NULL, bg_main, k) != 0) {
        kfac_log("probe_thread: no second thread could be started; J delta_0 runs on the training thread");
        kfac_clone_free(ad->clone);
        ad->clone = NULL;
        return;
    }
    ad->bg_running = 1;
    ad->bg_ready = 1;
}

/* Between probe_state's save and restore, with the net on the probe batch: the loss at
 * theta, J Delta and J delta_0, alpha and mu, delta = r (alpha Delta + mu delta_0)
 * formed in prev, and every T1 updates (and after a failed step) the reduction ratio
 * on the same images and lambda.  Returns NULL, or why the step failed. */
static const char *model_step(kfac_net *k, network *net, const update_args *a, const kfac_sums *sm, double *alpha,
                              double *mu, double *m_step, double *r, double *td, double *d2)
{
    kfac_adaptive *ad = k->adapt;
    kfac_backend *be = k->be;
    const double eta = a->decay;
    float **dirs = ad->dirs;
    double m;
    int i;
    loss_outputs(k, net, ad->p, ad->d);
    current_output(k, net, ad->z0);
    double h0 = loss_value(k, net);
    kfac_dist_mean(k, &h0, 1); /* over all ranks' probe images */
    if (!isfinite(h0)) return "the loss on this batch is not finite";
    const int have_prev = ad->have_prev && sm->pp > 0;
    const double ld = (double)ad->lambda + eta;
    adaptive_dirs(k, dirs, 0);
    k->bn_dir = KFAC_BN_DIR_DELTA;
    jv_one_sided(k, net, dirs, probe_eps(sm->tt, sm->dd), ad->z0, ad->jv[0]);
    if (have_prev) {
        const float eps = probe_eps(sm->tt, sm->pp);
        if (bg_take(k, eps)) {
            for (i = 0; i < (int)ad->nout; ++i) ad->jv[1][i] = (float)(((double)ad->bg_out[i] - ad->z0[i]) / eps);
        } else {
            adaptive_dirs(k, dirs, 1);
            k->bn_dir = KFAC_BN_DIR_PREV;
            jv_one_sided(k, net, dirs, eps, ad->z0, ad->jv[1]);
        }
    }
    k->bn_dir = KFAC_BN_DIR_NONE;
    if (!model_fit(k, net, sm, ad->jv[0], have_prev, ld, alpha, mu, &m))
        return "the quadratic model is not usable (not positive or not finite along the direction)";
    /* the policy's rate relative to the cfg's scales the step: r delta* has the model
     * value M(delta*) (2r - r^2), since delta*^T C delta* = -grad^T delta* */
    *r = net->learning_rate > 0 ? a->learning_rate / net->learning_rate : 1.0;
    if (!(*r >= 0)) *r = 0;
    *m_step = m * (2 * *r - *r * *r);

    /* delta = r (alpha Delta + mu delta_0), formed in prev */
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        const size_t len = (size_t)kl->s.groups * kl->s.M * kl->s.K;
        if (!kl->adaptive) continue;
        be->ops->scale(be, (float)(*r * *mu), kl->prev, len);
        be->ops->axpy(be, (float)(*r * *alpha), kl->P, kl->prev, len);
    }
    kfac_bn_adaptive_combine(k, (float)(*r * *mu), (float)(*r * *alpha));
    ad->have_prev = *r > 0;

    /* every T1 updates, and after a failed step: the reduction ratio on the same
     * images, lambda, and a step that makes the loss rise or not finite is not taken */
    const int check = ad->check_next || ad->updates % KFAC_ADAPT_T1 == 0;
    ++ad->updates;
    ad->rho_checked = 0;
    if (!check || !(*m_step < 0)) return NULL;
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        const size_t len = (size_t)kl->s.groups * kl->s.M * kl->s.K;
        if (!kl->adaptive) continue;
        be->ops->dot(be, kl->theta, kl->prev, len, KFAC_SLOTS_PER_LAYER * i + S_TDELTA);
        be->ops->dot(be, kl->prev, kl->prev, len, KFAC_SLOTS_PER_LAYER * i + S_DELTA2);
    }
    be->ops->results(be, k->results, KFAC_SLOTS_PER_LAYER * k->nlayers);
    for (i = 0; i < k->nlayers; ++i) {
        *td += k->results[KFAC_SLOTS_PER_LAYER * i + S_TDELTA];
        *d2 += k->results[KFAC_SLOTS_PER_LAYER * i + S_DELTA2];
    }
    /* the model's value on the probe images: when they are the update's images
     * (one subdivision, the whole of it), m_step (their own gradient); when fewer
     * (more subdivisions, or probe_batch), their gradient -(1/b) delta . J delta from
     * the loss layers' deltas, since the update's would not belong to these images'
     * losses: rho then compares like with like (a quadratic gives rho = 1) */
    double m_probe = *m_step;
    if (net->batch < a->batch) {
        double gj = 0;
        size_t j;
        for (j = 0; j < ad->nout; ++j) {
            ad->zp[j] = (float)(*r * (*alpha * ad->jv[0][j] + (have_prev ? *mu * ad->jv[1][j] : 0)));
            gj -= (double)ad->d[j] * ad->zp[j];
        }
        gj /= net->batch; /* the loss layers' deltas are summed over their images */
        double q[2] = {gj, fisher_dot(ad, net, ad->zp, ad->zp)};
        kfac_dist_mean(k, q, 2);
        m_probe = q[0] + eta * *td + 0.5 * (q[1] + ld * *d2);
    }
    adaptive_dirs(k, dirs, 1);
    /* the batch-norm blocks carry no decay: td and d2 above are the weights' alone */
    k->bn_dir = KFAC_BN_DIR_PREV;
    move_weights(k, net, dirs, 1.0f);
    probe_forward(k, net);
    double h1 = loss_value(k, net);
    kfac_dist_mean(k, &h1, 1);
    restore_weights(k, net);
    k->bn_dir = KFAC_BN_DIR_NONE;
    const double rho = (h1 - h0 + eta * (*td + 0.5 * *d2)) / m_probe;
    ad->rho_last = rho;
    ad->check_next = 0;
    ad->rho_checked = 1;
    if (!isfinite(rho)) return "the loss after the step is not finite";
    if (rho < 0) return "the loss rose on its own batch (rho < 0)";
    ad->lambda = kfac_adaptive_lambda_rule(ad->lambda, rho);
    return NULL;
}

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

    /* the gradient with the decay, D - B eta theta (D holds -B grad of the data loss) */
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        const layer *l = &net->layers[kl->index];
        const size_t len = (size_t)kl->s.groups * kl->s.M * kl->s.K;
        kfac_darknet_buffers b;
        be->ops->darknet_buffers(l, &b);
        be->ops->gather(be, &kl->s, b.weight_updates, kl->w_snap, b.bias_updates, kl->b_snap, kl->D);
        kl->adaptive = on && kl->have_inverse;
        be->ops->flag_nonfinite(be, kl->D, len, KFAC_SLOTS_PER_LAYER * i + S_BAD_D);
        if (!kl->adaptive) {
            be->ops->copy(be, kl->P, kl->D, len);
            continue;
        }
        be->ops->copy(be, kl->w_save, b.weights, (size_t)kl->s.groups * kl->s.M * kl->s.k_in);
        if (kl->s.has_bias) be->ops->copy(be, kl->b_save, b.biases, (size_t)kl->s.groups * kl->s.M);
        /* theta with a zero bias column: Darknet decays weights only */
        be->ops->gather(be, &kl->s, b.weights, ad->zeros, kl->s.has_bias ? ad->zeros : NULL, ad->zeros, kl->theta);
        be->ops->axpy(be, (float)(-B * eta), kl->theta, kl->D, len);
    }
    be->ops->results(be, k->results, KFAC_SLOTS_PER_LAYER * k->nlayers);
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        if (k->results[KFAC_SLOTS_PER_LAYER * i + S_BAD_D] != 0) {
            if (!kl->bad_grad_logged++)
                kfac_log("layer %d: non-finite gradient, this update's gradient dropped for the layer (logged once)", kl->index);
            k->mode[i] = KFAC_MODE_SNAPSHOT;
            kl->adaptive = 0;
            continue;
        }
        k->mode[i] = kl->adaptive ? KFAC_MODE_ADAPTIVE : KFAC_MODE_PLAIN;
        any |= kl->adaptive;
    }
    if (!any && !k->nbn) return;

    kfac_sums sm;
    direction(k, B, &sm);
    /* the batch-norm blocks' directions and their part of the sums (kfac_bn.c) */
    kfac_bn_sums bs;
    kfac_bn_adaptive_direction(k, net, on, B, &bs);
    sm.gd += bs.gd;
    sm.gp += bs.gp;
    sm.dd += bs.dd;
    sm.dp += bs.dp;
    sm.pp += bs.pp;
    sm.tt += bs.tt;
    for (i = 0, any = bs.any; i < k->nlayers; ++i) any |= k->layers[i].adaptive;
    if (!any) return;

    /* the model on the probe batch, every buffer a forward pass writes saved first and
     * put back at the end */
    fit_sizes(k, net);
    assign_slots(ad, net);
    probe_state(k, net, 1);
    const int B0 = net->batch, pb = probe_images(k, net);
    if (pb < B0) {
        set_batch(net, pb);
        /* batch norm makes each image's outputs depend on the others: theta's own
         * outputs on the probe images need a forward pass of their own */
        if (ad->coupled) probe_forward(k, net);
    }
    double alpha = 0, mu = 0, td = 0, d2 = 0, m_step = 0, r = 0;
    const char *failure = model_step(k, net, a, &sm, &alpha, &mu, &m_step, &r, &td, &d2);
    if (pb < B0) set_batch(net, B0);
    probe_state(k, net, 0);
    if (failure) {
        step_failed(k, failure);
        return;
    }
    if (ad->may_switch && m_step < 0 && ad->rho_checked) {
        ad->pending = 1;
        ad->pend_m = m_step;
        ad->pend_decay = eta * (td + 0.5 * d2);
        for (i = 0; i < k->nlayers; ++i) k->layers[i].pend = k->layers[i].adaptive;
        kfac_bn_adaptive_pend(k);
    }
    ad->alpha_sum += alpha;
    ad->mus[ad->steps % KFAC_MU_RING] = (float)mu;
    ++ad->steps;
}

/* the reduction ratio of the last T1 update's step, measured on this update's batch */
static void rho_next_batch(kfac_net *k, network *net)
{
    kfac_adaptive *ad = k->adapt;
    kfac_backend *be = k->be;
    int i;
    fit_sizes(k, net);
    assign_slots(ad, net);
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
    kfac_bn_adaptive_swap_pre(k, net, 1);
    probe_forward(k, net);
    const double h0 = loss_value(k, net);
    kfac_bn_adaptive_swap_pre(k, net, 0);
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
    double h[2] = {h1, h0};
    kfac_dist_mean(k, h, 2); /* over all ranks' images */
    const double ratio = (h[0] - h[1] + ad->pend_decay) / ad->pend_m;
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
    kfac_bn_adaptive_updated(k, net);
}

static int cmp_float(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

void kfac_adaptive_report(kfac_net *k, char *buf, size_t len)
{
    kfac_adaptive *ad = k->adapt;
    char failed[48] = "";
    if (ad->failed) snprintf(failed, sizeof failed, "; %d failed step%s", ad->failed, ad->failed > 1 ? "s" : "");
    if (!ad->steps) {
        snprintf(buf, len, "no adaptive step yet; lambda %.3g%s", ad->lambda, failed);
        ad->failed = 0;
        return;
    }
    /* the median mu of the last steps: burn_in's first steps, where the policy's tiny
     * rate makes the best mu about 1/rate, dominate a mean */
    const int n = ad->steps < KFAC_MU_RING ? ad->steps : KFAC_MU_RING;
    float sorted[KFAC_MU_RING];
    memcpy(sorted, ad->mus, (size_t)n * sizeof(float));
    qsort(sorted, (size_t)n, sizeof(float), cmp_float);
    const double med = n % 2 ? sorted[n / 2] : 0.5 * ((double)sorted[n / 2 - 1] + sorted[n / 2]);
    char thread[96] = "", split[80] = "";
    if (ad->bg_taken || ad->bg_missed)
        snprintf(thread, sizeof thread, "; J delta_0 from the second thread on %ld updates so far (%ld made here instead)",
                 ad->bg_taken, ad->bg_missed);
    if (ad->split)
        snprintf(split, sizeof split, "; %ld of %ld probe passes split so far", ad->split_passes[1],
                 ad->split_passes[0] + ad->split_passes[1]);
    snprintf(buf, len, "adaptive steps: mean alpha %.3g, median mu %.3g; lambda %.3g, last rho %.3g%s%s%s",
             ad->alpha_sum / ad->steps, med, ad->lambda, ad->rho_last, failed, thread, split);
    ad->alpha_sum = 0;
    ad->steps = 0;
    ad->failed = 0;
}

/* ---- attach ------------------------------------------------------------------------------ */

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
        const kfac_loss_kind kind = kfac_loss_modelled(l);
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
    for (i = 0; i < net->n; ++i) {
        const layer *l = &net->layers[i];
        ad->coupled |= l->type == BATCHNORM || (l->batch_normalize && (l->type == CONVOLUTIONAL || l->type == CONNECTED));
    }
    ad->lambda = k->cfg.lambda;
    ad->dirs = (float **)kfac_calloc((size_t)(k->nlayers > 0 ? k->nlayers : 1), sizeof(float *));
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
    /* the probe thread moves the batch-norm blocks against these zeros too */
    for (i = 0; i < k->nbn; ++i)
        if ((size_t)k->bn[i].s.K > most) most = (size_t)k->bn[i].s.K;
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
    /* probe_thread: J delta_0 on a copy of the net while the training thread goes on
     * (CPU: the GPU runs every probe in its own stream order) */
    if (k->cfg.probe_thread && be->ops->host_memory) {
        char cwhy[200];
        if (kfac_clone_supported(net, cwhy, sizeof cwhy)) {
            ad->clone = kfac_clone_new(KFAC_CLONE_FORWARD);
            ad->bg_set = (unsigned char *)kfac_calloc((size_t)(k->nlayers + k->nbn + 1), 1);
        } else {
            kfac_log("probe_thread: %s; J delta_0 runs on the training thread", cwhy);
        }
    }
    /* probe_split: Darknet's CPU forward pass calls gemm().  The helper polls while a
     * pass is open, so it needs a core of its own: not on one core, nor where the
     * ranks on this machine already hold half of them or more */
    if (k->cfg.probe_split && be->ops->host_memory) {
        const long cores = sysconf(_SC_NPROCESSORS_ONLN), ranks = kfac_comm_world()->local_size;
        if (cores < 2 * ranks)
            kfac_log("probe_split: %ld core%s for %ld rank%s on this machine, none spare for a helper; the probes' "
                     "products run on one thread", cores, cores == 1 ? "" : "s", ranks, ranks == 1 ? "" : "s");
        else if (!(ad->split = kfac_split_attach()))
            kfac_log("probe_split: no helper thread could be started; the probes' products run on one thread");
    }
    return 1;
}

void kfac_adaptive_free(kfac_net *k)
{
    kfac_adaptive *ad = k->adapt;
    kfac_backend *be = k->be;
    int i;
    if (!ad) return;
    kfac_adaptive_settle(k); /* first: the thread reads the layers' delta_0 */
    kfac_clone_free(ad->clone);
    if (ad->split) kfac_split_detach();
    free(ad->bg_set);
    free(ad->bg_out);
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
    free(ad->z0);
    free(ad->p);
    free(ad->d);
    free(ad->hp);
    free(ad->hd);
    free(ad->jv[0]);
    free(ad->jv[1]);
    free(ad->dirs);
    free(ad->slot_weight);
    free(ad->loss);
    free(ad);
    k->adapt = NULL;
}
