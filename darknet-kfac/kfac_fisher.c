/* darknet-kfac: which backward captures statistics, and the true-Fisher pass.
 *
 * On a statistics step, targets sampled from the model's own predictive distribution
 * give the output derivatives for G (the true Fisher; the empirical Fisher would use
 * the data's labels; Martens & Grosse 2015 section 5, Kunstner et al. 2019).  One
 * extra backward runs with every *_updates buffer redirected to a scratch sink,
 * capturing A and G; afterwards every delta is cleared, the loss deltas of the real
 * step restored and the buffers put back, so the real backward that follows computes
 * exactly what it would have without K-FAC.
 *
 * Each loss layer is sampled in its own delta convention (Darknet's delta is the
 * negative gradient of the loss it differentiates), so that the sampled delta's outer
 * product has the loss's output Fisher as its expectation:
 *
 *   [softmax]         y ~ Categorical(p), delta = e_y - p;     E = diag(p) - p p^T
 *   [logistic]        y_j ~ Bernoulli(p_j), delta = y - p;    E = diag(p (1 - p))
 *   [cost] sse, masked  the loss it differentiates is (s/2)|t - x|^2 with s its scale,
 *                     the likelihood N(x, I/s): t - x = z/sqrt(s), z ~ N(0, I), and
 *                     backward's scale makes the delta below sqrt(s) z;  E = s I.
 *                     Masked entries (truth SECRET_NUM) stay 0
 *   [yolo]            on the outputs that carry a term of the layer's loss for this
 *                     batch (the layer's own assignment of anchors to boxes, repeated
 *                     here from forward_yolo_layer): objectness and classes
 *                     Bernoulli on the sigmoid outputs, delta = y - p; with s = 2 - w h
 *                     the layer's weight of the assigned box, its x and y (sigmoid
 *                     outputs whose delta s (t - p) Darknet hands back without the
 *                     sigmoid's derivative: the gradient of s times a cross-entropy
 *                     with the soft target t) delta = sqrt(s) (y - p), E = s p (1 - p);
 *                     its w and h (linear, squared error) Gaussian, delta = sqrt(s) z.
 *                     Ignored anchors (IoU above ignore_thresh) carry no term
 *   [region]          its squared errors (boxes, objectness) Gaussian of the term's
 *                     precision, its classes categorical or Bernoulli, each scaled by
 *                     the term's weight, on the slots its assignment gives a term
 *                     (kfac_region.c)
 *
 * Loss layers without a faithful sampler keep their data-label delta in the pass (the
 * empirical Fisher for their term; the cross terms with sampled ones vanish in
 * expectation) and the start line says which: [region] with coords other than 4, a
 * tree or background, [cost] l1, smooth, seg and wgan, [yolo] with truth_thresh < 1,
 * [softmax] with groups, a tree or spatial.
 *
 * The pass needs only the deltas, not the weight gradients, and nothing below the
 * lowest covered layer: a backend with a deltas-only layer backward (the CPU's) skips
 * those parts, where Darknet's own gemm for the weight gradients was most of the
 * pass's time.  Darknet's GPU backward has no such hook and runs whole. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kfac_internal.h"
#include "box.h"
#include "utils.h"

/* ---- which losses can be sampled ---------------------------------------------------- */

/* The pass redirects these layers' *_updates to a scratch buffer; layers with inner
 * layers (rnn, lstm, ...) keep buffers it cannot reach, so a net with them uses the
 * empirical Fisher. */
static int layer_ok_for_sampling(const layer *l)
{
    switch (l->type) {
    case CONVOLUTIONAL: case CONNECTED: case BATCHNORM: case MAXPOOL: case AVGPOOL:
    case DROPOUT: case SOFTMAX: case ROUTE: case SHORTCUT: case UPSAMPLE: case REORG:
    case ACTIVE: case CROP: case NORMALIZATION: case L2NORM: case LOGXENT: case COST:
    case YOLO: case REGION:
        return 1;
    default:
        return 0;
    }
}

/* The sampler for loss layer l, or KFAC_LOSS_EMPIRICAL with the reason in why. */
static kfac_loss_kind loss_kind(const layer *l, const char **why)
{
    *why = NULL;
    switch (l->type) {
    case SOFTMAX:
        if (!l->softmax_tree && l->groups <= 1 && !l->spatial) return KFAC_LOSS_SOFTMAX;
        *why = "softmax with groups, a tree or spatial";
        return KFAC_LOSS_EMPIRICAL;
    case LOGXENT:
        return KFAC_LOSS_LOGISTIC;
    case COST:
        if ((l->cost_type == SSE || l->cost_type == MASKED) && l->ratio == 0 && l->scale > 0)
            return KFAC_LOSS_GAUSSIAN;
        *why = "cost: only sse and masked are Gaussian likelihoods";
        return KFAC_LOSS_EMPIRICAL;
    case YOLO:
        if (l->truth_thresh >= 1) return KFAC_LOSS_YOLO;
        *why = "yolo with truth_thresh < 1";
        return KFAC_LOSS_EMPIRICAL;
    case REGION:
        *why = kfac_region_supported(l);
        return *why ? KFAC_LOSS_EMPIRICAL : KFAC_LOSS_REGION;
    default:
        return KFAC_LOSS_NONE;
    }
}

static const char *kind_name(kfac_loss_kind kind)
{
    switch (kind) {
    case KFAC_LOSS_SOFTMAX: return "labels sampled from the softmax";
    case KFAC_LOSS_LOGISTIC: return "Bernoulli targets sampled from the sigmoids";
    case KFAC_LOSS_GAUSSIAN: return "Gaussian targets sampled around the outputs";
    case KFAC_LOSS_YOLO: return "objectness, classes and box centres Bernoulli, box sizes Gaussian";
    case KFAC_LOSS_REGION: return "boxes and objectness Gaussian (its squared errors), classes from the softmax or Bernoulli";
    default: return "empirical";
    }
}

void kfac_fisher_setup(kfac_net *k, const network *net, char *note, size_t note_len)
{
    int i, sampled = 0, ok = 1;
    size_t used = 0;
    note[0] = '\0';
    if (k->cfg.fisher != KFAC_FISHER_TRUE) {
        snprintf(note, note_len, "empirical (fisher=empirical)");
        return;
    }
    for (i = 0; i < net->n; ++i) ok &= layer_ok_for_sampling(&net->layers[i]);
    if (!ok) {
        snprintf(note, note_len, "empirical, although fisher=true: a layer with inner layers (rnn, lstm, ...) cannot be sampled through");
        return;
    }
    k->losses = (kfac_loss *)kfac_calloc((size_t)net->n, sizeof(kfac_loss));
    for (i = 0; i < net->n; ++i) {
        const char *why;
        kfac_loss_kind kind = loss_kind(&net->layers[i], &why);
        if (kind == KFAC_LOSS_NONE) continue;
        k->losses[k->nlosses].index = i;
        k->losses[k->nlosses].kind = kind;
        ++k->nlosses;
        sampled += kind != KFAC_LOSS_EMPIRICAL;
        used += (size_t)snprintf(note + used, used < note_len ? note_len - used : 0, "%s layer %d: %s%s%s",
                                 k->nlosses > 1 ? ";" : "", i, kind_name(kind), why ? " (" : "", why ? why : "");
        if (why && used < note_len) used += (size_t)snprintf(note + used, note_len - used, ")");
    }
    if (!sampled) {
        char tail[512];
        snprintf(tail, sizeof tail, "%s", note);
        snprintf(note, note_len, "empirical, although fisher=true: no loss layer can be sampled:%s", tail);
        k->nlosses = 0;
        return;
    }
    k->true_fisher = 1;
    char tail[768];
    snprintf(tail, sizeof tail, "%s", note);
    snprintf(note, note_len, "true:%s", tail);
}

/* ---- the pass ---------------------------------------------------------------------------- */

static float **update_field(layer *l, size_t offset)
{
    return (float **)((char *)l + offset);
}

/* Points every layer's three *_updates buffers (those of the backend's Darknet path)
 * at sink, keeping the originals in saved (3 x net->n). */
static void redirect_updates(network *net, kfac_update_fields f, float *sink, float **saved)
{
    const size_t off[3] = {f.weights, f.biases, f.scales};
    int i, j;
    for (i = 0; i < net->n; ++i)
        for (j = 0; j < 3; ++j) {
            float **p = update_field(&net->layers[i], off[j]);
            saved[3 * i + j] = *p;
            if (*p) *p = sink;
        }
}

static void restore_updates(network *net, kfac_update_fields f, float **saved)
{
    const size_t off[3] = {f.weights, f.biases, f.scales};
    int i, j;
    for (i = 0; i < net->n; ++i)
        for (j = 0; j < 3; ++j) *update_field(&net->layers[i], off[j]) = saved[3 * i + j];
}

/* a standard normal draw (Box-Muller on the sampler's generator) */
static float normal(uint64_t *rng)
{
    float u1 = kfac_rng_uniform(rng), u2 = kfac_rng_uniform(rng);
    if (u1 < 1e-30f) u1 = 1e-30f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.283185307f * u2);
}

size_t kfac_yolo_index(const layer *l, int b, int n, int loc, int e)
{
    return (size_t)b * l->outputs + (size_t)n * l->w * l->h * (4 + l->classes + 1) + (size_t)e * l->w * l->h + loc;
}

/* forward_yolo_layer's second loop, in its order (a later box assigned to the same slot
 * replaces an earlier one's box terms, as there) */
void kfac_yolo_assignments(const layer *l, const network *net, float *weight)
{
    int b, t, n;
    memset(weight, 0, (size_t)l->batch * l->n * l->w * l->h * sizeof(float));
    for (b = 0; b < l->batch; ++b)
        for (t = 0; t < l->max_boxes; ++t) {
            box truth = float_to_box(net->truth + t * (4 + 1) + b * l->truths, 1);
            if (!truth.x) break;
            float best_iou = 0;
            int best_n = 0;
            int i = (int)(truth.x * l->w), j = (int)(truth.y * l->h);
            box shift = truth;
            shift.x = shift.y = 0;
            for (n = 0; n < l->total; ++n) {
                box pred = {0};
                pred.w = l->biases[2 * n] / net->w;
                pred.h = l->biases[2 * n + 1] / net->h;
                float iou = box_iou(pred, shift);
                if (iou > best_iou) {
                    best_iou = iou;
                    best_n = n;
                }
            }
            int slot = int_index(l->mask, best_n, l->n);
            if (slot >= 0) weight[((size_t)b * l->n + slot) * l->w * l->h + (size_t)j * l->w + i] = 2 - truth.w * truth.h;
        }
}

/* The sampled delta of a non-softmax loss layer, on the host: p is the layer's output
 * (after its sigmoids), d its real delta on entry (which outputs carry a term) and the
 * sample on return. */
static void sample_host(kfac_net *k, const network *net, const layer *l, kfac_loss_kind kind, const float *p,
                        float *d)
{
    const size_t n = (size_t)l->outputs * l->batch;
    size_t i;
    if (kind == KFAC_LOSS_LOGISTIC) {
        for (i = 0; i < n; ++i) d[i] = (kfac_rng_uniform(&k->rng) < p[i] ? 1.0f : 0.0f) - p[i];
    } else if (kind == KFAC_LOSS_GAUSSIAN) {
        const float sd = 1.0f / sqrtf(l->scale);
        for (i = 0; i < n; ++i) {
            const int masked = l->cost_type == MASKED && net->truth[i] == SECRET_NUM;
            float z = normal(&k->rng);
            d[i] = masked ? 0.0f : sd * z;
        }
    } else if (kind == KFAC_LOSS_REGION) {
        kfac_region_sample(k, net, l, p, d);
    } else if (kind == KFAC_LOSS_YOLO) {
        const int T = l->w * l->h, E = 4 + 1 + l->classes;
        int b, s, loc, e;
        kfac_yolo_assignments(l, net, k->yolo_weight);
        for (b = 0; b < l->batch; ++b)
            for (s = 0; s < l->n; ++s)
                for (loc = 0; loc < T; ++loc) {
                    const float w = k->yolo_weight[((size_t)b * l->n + s) * T + loc];
                    const size_t obj = kfac_yolo_index(l, b, s, loc, 4);
                    /* objectness: a term unless the anchor was ignored (delta 0) */
                    const int obj_term = d[obj] != 0 || w > 0;
                    for (e = 0; e < E; ++e) {
                        const size_t x = kfac_yolo_index(l, b, s, loc, e);
                        if (e < 2) d[x] = w > 0 ? sqrtf(w) * ((kfac_rng_uniform(&k->rng) < p[x] ? 1.0f : 0.0f) - p[x]) : 0.0f;
                        else if (e < 4) d[x] = w > 0 ? sqrtf(w) * normal(&k->rng) : 0.0f;
                        else if (e == 4) d[x] = obj_term ? (kfac_rng_uniform(&k->rng) < p[x] ? 1.0f : 0.0f) - p[x] : 0.0f;
                        else d[x] = w > 0 ? (kfac_rng_uniform(&k->rng) < p[x] ? 1.0f : 0.0f) - p[x] : 0.0f;
                    }
                }
    }
}

/* Grows the pass's buffers when resize_network (random=1 in Darknet's detector and
 * classifier trainers) has made the loss layers larger than at attach. */
static void fit_losses(kfac_net *k, network *net)
{
    kfac_backend *be = k->be;
    int i;
    for (i = 0; i < k->nlosses; ++i) {
        kfac_loss *ls = &k->losses[i];
        const layer *l = &net->layers[ls->index];
        const size_t n = (size_t)l->outputs * l->batch;
        const size_t y = l->type == YOLO || l->type == REGION ? (size_t)l->batch * l->n * l->w * l->h : 0;
        if (n > ls->len) {
            be->ops->release(be, ls->delta_save);
            ls->delta_save = be->ops->alloc(be, n);
            ls->len = n;
        }
        if (n > k->host_len) {
            free(k->host_p);
            free(k->host_delta);
            k->host_p = (float *)kfac_calloc(n, sizeof(float));
            k->host_delta = (float *)kfac_calloc(n, sizeof(float));
            k->host_len = n;
        }
        if (y > k->yolo_len) {
            free(k->yolo_weight);
            k->yolo_weight = (float *)kfac_calloc(y, sizeof(float));
            k->yolo_len = y;
        }
    }
}

/* Writes every sampled loss layer's sample into its delta, every loss layer's real
 * delta saved first. */
static void sample_losses(kfac_net *k, network *net)
{
    kfac_backend *be = k->be;
    int i, j;
    fit_losses(k, net);
    for (i = 0; i < k->nlosses; ++i) {
        kfac_loss *ls = &k->losses[i];
        layer *l = &net->layers[ls->index];
        const size_t n = (size_t)l->outputs * l->batch;
        kfac_darknet_buffers b;
        be->ops->darknet_buffers(l, &b);
        be->ops->copy(be, ls->delta_save, b.delta, n);
        if (ls->kind == KFAC_LOSS_EMPIRICAL) continue; /* its data-label delta stays */
        if (k->dist) kfac_dist_sample_begin(k, l, ls->kind); /* this rank's share of the draws */
        if (ls->kind == KFAC_LOSS_SOFTMAX) {
            /* one uniform per image, in image order: the same labels on every backend */
            for (j = 0; j < l->batch; ++j) k->uniforms[j] = kfac_rng_uniform(&k->rng);
            if (k->dist) kfac_dist_sample_end(k, l, ls->kind);
            be->ops->sample(be, b.output, k->uniforms, l->batch, l->inputs, b.delta);
            continue;
        }
        be->ops->to_host(be, k->host_p, b.output, n);
        be->ops->to_host(be, k->host_delta, b.delta, n);
        sample_host(k, net, l, ls->kind, k->host_p, k->host_delta);
        if (k->dist) kfac_dist_sample_end(k, l, ls->kind);
        be->ops->from_host(be, b.delta, k->host_delta, n);
    }
}

void kfac_network_fisher_pass(network *net)
{
    kfac_net *k = kfac_of(net);
    kfac_backend *be = k->be;
    int i;
    k->capture = KFAC_CAPTURE_NONE;
    if (!net->train || !kfac_stats_step(k) || k->nlayers + k->nbn == 0) return;
    kfac_ekfac_begin_update(k);
    if (!k->true_fisher) {
        k->capture = KFAC_CAPTURE_A | KFAC_CAPTURE_G; /* from the real backward */
        return;
    }
    /* the whole pass counts as statistics time */
    kfac_phase_begin(k, KFAC_PHASE_STATS);
    sample_losses(k, net);
    /* the sink only absorbs the pass's gradients; zeroed so it never grows to inf */
    be->ops->zero(be, k->sink, k->sink_len);

    float **saved = (float **)kfac_calloc((size_t)net->n * 3, sizeof(float *));
    redirect_updates(net, be->ops->update_fields, k->sink, saved);
    k->capture = KFAC_CAPTURE_A | KFAC_CAPTURE_G;
    k->in_fisher_pass = 1;
    backward_network(net);
    k->in_fisher_pass = 0;
    k->capture = KFAC_CAPTURE_NONE;
    restore_updates(net, be->ops->update_fields, saved);
    free(saved);

    for (i = 0; i < net->n; ++i) {
        layer *l = &net->layers[i];
        kfac_darknet_buffers b;
        be->ops->darknet_buffers(l, &b);
        if (b.delta) be->ops->zero(be, b.delta, (size_t)l->outputs * l->batch);
    }
    /* every loss layer's real delta back: the sampled ones from their copies; an
     * empirical one's was cleared above with the rest, so it has a copy too */
    for (i = 0; i < k->nlosses; ++i) {
        kfac_loss *ls = &k->losses[i];
        layer *l = &net->layers[ls->index];
        kfac_darknet_buffers b;
        be->ops->darknet_buffers(l, &b);
        be->ops->copy(be, b.delta, ls->delta_save, (size_t)l->outputs * l->batch);
    }
    kfac_phase_end(k);
}

int kfac_fisher_backward(network *net, int index, float *input, float *delta)
{
    kfac_net *k = kfac_of(net);
    if (!k->in_fisher_pass || !k->lean_fisher || !k->be->ops->fisher_layer_backward) return 0;
    /* the layers below the lowest whose backward the statistics need (a covered layer,
     * or the one above a batch-norm block) feed no statistics; their deltas are
     * cleared after the pass anyway */
    if (index < k->lowest) return 1;
    return k->be->ops->fisher_layer_backward(k->be, net, index, input, delta);
}
