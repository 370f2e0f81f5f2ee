/* darknet-kfac: the loss layers, one entry per kind (issue 13, item 4).
 *
 * What K-FAC needs from a loss layer, in one place: which layers of the kind it can
 * handle, the targets the true-Fisher pass samples (kfac_fisher.c), and for the
 * adaptive step's quadratic model (kfac_adaptive.c) the output Fisher product and the
 * loss value.  Both callers go through the entries (kfac_loss_ops, one per
 * kfac_loss_kind, at the end of this file); [yolo] and [region] share the walk over
 * their anchor slots' terms.
 *
 * Darknet's delta is the negative gradient of the loss the layer differentiates, with
 * respect to the layer's input.  Each kind's sampled delta is drawn so that its outer
 * product has that loss's output Fisher as its expectation (Martens & Grosse 2015
 * section 5, Kunstner et al. 2019), and its output Fisher product and value are those
 * of that same loss:
 *
 *   [softmax]         y ~ Categorical(p), delta = e_y - p;     F = diag(p) - p p^T
 *   [logistic]        y_j ~ Bernoulli(p_j), delta = y - p;    F = diag(p (1 - p))
 *   [cost] sse, masked  the loss it differentiates is (s/2)|t - x|^2 with s its scale,
 *                     the likelihood N(x, I/s): t - x = z/sqrt(s), z ~ N(0, I), and
 *                     backward's scale makes the delta below sqrt(s) z;  F = s I.
 *                     Masked entries (truth SECRET_NUM) stay 0 and carry no term
 *   [yolo], [region]  per output the term its slot's assignment of the truth gives it
 *                     (their sections below)
 *
 * Loss layers without a faithful sampler keep their data-label delta in the pass (the
 * empirical Fisher for their term) and the start line says which: [region] with
 * coords other than 4, a tree or background, [cost] l1, smooth, seg and wgan, [yolo]
 * with truth_thresh < 1, [softmax] with groups, a tree or spatial.  The quadratic
 * model takes the sampled kinds but [region], and [softmax] only at temperature 1. */
#include <math.h>
#include <string.h>
#include "kfac_internal.h"
#include "box.h"
#include "utils.h"

/* ---- draws on the sampler's generator ---------------------------------------------- */

/* a standard normal draw (Box-Muller) */
static float normal(uint64_t *rng)
{
    float u1 = kfac_rng_uniform(rng), u2 = kfac_rng_uniform(rng);
    if (u1 < 1e-30f) u1 = 1e-30f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.283185307f * u2);
}

/* y - p, y ~ Bernoulli(p) */
static float bernoulli(uint64_t *rng, float p)
{
    return (kfac_rng_uniform(rng) < p ? 1.0f : 0.0f) - p;
}

/* the cross-entropy of target t against prediction p */
static double cross_entropy(double t, double p)
{
    /* a float sigmoid saturates at exactly 0 or 1: bounded at float resolution */
    if (p < 1e-7) p = 1e-7;
    if (p > 1 - 1e-7) p = 1 - 1e-7;
    return -(t * log(p) + (1 - t) * log(1 - p));
}

/* ---- [softmax] --------------------------------------------------------------------- */

static const char *softmax_unsampled(const layer *l)
{
    return !l->softmax_tree && l->groups <= 1 && !l->spatial ? NULL : "softmax with groups, a tree or spatial";
}

/* a temperature scales the layer's input, which diag(p) - p p^T leaves out */
static int softmax_modelled(const layer *l)
{
    return !softmax_unsampled(l) && l->temperature == 1;
}

static size_t softmax_draws(const layer *l)
{
    (void)l;
    return 1;
}

/* on the backend, where the outputs are */
static void softmax_sample(kfac_net *k, const layer *l, const kfac_darknet_buffers *b)
{
    int j;
    /* one uniform per image, in image order: the same labels on every backend */
    for (j = 0; j < l->batch; ++j) k->uniforms[j] = kfac_rng_uniform(&k->rng);
    k->be->ops->sample(k->be, b->output, k->uniforms, l->batch, l->inputs, b->delta);
}

static double softmax_fisher_dot(const kfac_loss_view *v, const float *u, const float *w, double total)
{
    const int n = v->l->inputs, B = v->l->batch;
    int i, j;
    for (i = 0; i < B; ++i) {
        const float *pi = v->p + (size_t)i * n, *ui = u + (size_t)i * n, *wi = w + (size_t)i * n;
        /* diag(p) - p p^T */
        double pu = 0, pw = 0, puw = 0;
        for (j = 0; j < n; ++j) {
            pu += (double)pi[j] * ui[j];
            pw += (double)pi[j] * wi[j];
            puw += (double)pi[j] * ui[j] * wi[j];
        }
        total += (puw - pu * pw) / B;
    }
    return total;
}

/* the cross-entropy of the targets p + delta, computed here: Darknet's own cost is NaN
 * once a float output saturates at exactly 0 or 1 (a confident right answer, 1 log 1 +
 * 0 log 0) */
static double softmax_value(const kfac_loss_view *v)
{
    const size_t n = (size_t)v->l->outputs * v->l->batch;
    double q = 0;
    size_t j;
    for (j = 0; j < n; ++j) {
        const double t = (double)v->p[j] + v->d[j];
        if (t != 0) q -= t * log(v->p[j] > 1e-7f ? v->p[j] : 1e-7);
    }
    return q;
}

/* ---- [logistic] -------------------------------------------------------------------- */

static int logistic_modelled(const layer *l)
{
    (void)l;
    return 1;
}

static size_t logistic_draws(const layer *l)
{
    return (size_t)l->outputs;
}

static void logistic_sample(uint64_t *rng, const kfac_loss_view *v, float *out)
{
    const size_t n = (size_t)v->l->outputs * v->l->batch;
    size_t i;
    for (i = 0; i < n; ++i) out[i] = (kfac_rng_uniform(rng) < v->p[i] ? 1.0f : 0.0f) - v->p[i];
}

static double logistic_fisher_dot(const kfac_loss_view *v, const float *u, const float *w, double total)
{
    const int n = v->l->inputs, B = v->l->batch;
    int i, j;
    for (i = 0; i < B; ++i) {
        const float *pi = v->p + (size_t)i * n, *ui = u + (size_t)i * n, *wi = w + (size_t)i * n;
        double t = 0;
        for (j = 0; j < n; ++j) t += (double)pi[j] * (1.0 - pi[j]) * ui[j] * wi[j];
        total += t / B;
    }
    return total;
}

/* as softmax_value, for the sigmoids */
static double logistic_value(const kfac_loss_view *v)
{
    const size_t n = (size_t)v->l->outputs * v->l->batch;
    double q = 0;
    size_t j;
    for (j = 0; j < n; ++j) q += cross_entropy((double)v->p[j] + v->d[j], v->p[j]);
    return q;
}

/* ---- [cost] sse, masked: a Gaussian of precision scale ----------------------------- */

static const char *cost_unsampled(const layer *l)
{
    if ((l->cost_type == SSE || l->cost_type == MASKED) && l->ratio == 0 && l->scale > 0) return NULL;
    return "cost: only sse and masked are Gaussian likelihoods";
}

static int cost_modelled(const layer *l)
{
    return !cost_unsampled(l);
}

static size_t cost_draws(const layer *l)
{
    return 2 * (size_t)l->outputs; /* Box-Muller: two per output */
}

static void cost_sample(uint64_t *rng, const kfac_loss_view *v, float *out)
{
    const layer *l = v->l;
    const size_t n = (size_t)l->outputs * l->batch;
    const float sd = 1.0f / sqrtf(l->scale);
    size_t i;
    for (i = 0; i < n; ++i) {
        const int masked = l->cost_type == MASKED && v->net->truth[i] == SECRET_NUM;
        float z = normal(rng);
        out[i] = masked ? 0.0f : sd * z;
    }
}

static double cost_fisher_dot(const kfac_loss_view *v, const float *u, const float *w, double total)
{
    const layer *l = v->l;
    const int n = l->inputs, B = l->batch;
    int i, j;
    for (i = 0; i < B; ++i) {
        const float *ui = u + (size_t)i * n, *wi = w + (size_t)i * n;
        double t = 0;
        for (j = 0; j < n; ++j)
            if (!(l->cost_type == MASKED && v->net->truth[(size_t)i * n + j] == SECRET_NUM))
                t += (double)l->scale * ui[j] * wi[j];
        total += t / B;
    }
    return total;
}

/* the (s/2)|t - x|^2 its delta belongs to, not the sum of squares Darknet reports */
static double cost_value(const kfac_loss_view *v)
{
    const size_t n = (size_t)v->l->outputs * v->l->batch;
    double q = 0;
    size_t j;
    for (j = 0; j < n; ++j) q += (double)v->d[j] * v->d[j];
    return q * (0.5 * v->l->scale);
}

/* ---- [yolo] and [region]: the terms of their anchor slots -------------------------- */

/* Both write, per image, anchor slot and cell, 4 box entries, an objectness and the
 * classes, each carrying one term of the loss or none; which, and its scale, follows
 * from the slot's assignment of the truth (a weight per slot, 0 for none: the
 * entry's `assign`) and from whether the forward pass gave its objectness a delta (a
 * slot whose prediction overlaps a box beyond the layer's threshold gets none). */

/* the kind of term an output carries */
typedef enum {
    TERM_NONE,
    TERM_BERNOULLI,         /* s times a sigmoid's cross-entropy: y - p scaled by sqrt(s) */
    TERM_GAUSSIAN,          /* a squared error of precision s: sqrt(s) z */
    TERM_CATEGORICAL        /* s times the softmax's cross-entropy over the slot's classes */
} term_kind;

typedef struct {
    term_kind kind;
    float s;                /* its weight (cross-entropies) or precision (squared errors) */
} term;

/* one slot's terms: box x and y, box w and h, objectness, classes */
typedef struct {
    term xy, wh, obj, cls;
} slot_terms;

/* a kind's terms for a slot of assigned-box weight w (0: no box) whose objectness has
 * a delta (obj_delta) */
typedef slot_terms (*slot_terms_fn)(const kfac_loss_view *v, float w, int obj_delta);

/* index of (image b, anchor slot n, location loc, entry e) in the layer's output: their
 * entry_index, with [region]'s coords 4 */
static size_t slot_at(const layer *l, int b, int n, int loc, int e)
{
    return (size_t)b * l->outputs + (size_t)n * l->w * l->h * (4 + l->classes + 1) + (size_t)e * l->w * l->h + loc;
}

/* Calls visit for every output of v->l, in Darknet's order (image, slot, location,
 * entry), with its entry number e and its term.  A slot's terms are decided before
 * its first output is visited, so a visitor may overwrite v->d as it goes. */
static void walk(const kfac_loss_view *v, slot_terms_fn terms, void (*visit)(void *ctx, size_t x, int e, term t),
                 void *ctx)
{
    const layer *l = v->l;
    const int T = l->w * l->h, E = 4 + 1 + l->classes;
    int b, n, loc, e;
    for (b = 0; b < l->batch; ++b)
        for (n = 0; n < l->n; ++n)
            for (loc = 0; loc < T; ++loc) {
                const size_t x = slot_at(l, b, n, loc, 0);
                const slot_terms st = terms(v, v->weight[((size_t)b * l->n + n) * T + loc], v->d[x + 4 * (size_t)T] != 0);
                for (e = 0; e < E; ++e)
                    visit(ctx, x + (size_t)e * T, e, e < 2 ? st.xy : e < 4 ? st.wh : e == 4 ? st.obj : st.cls);
            }
}

/* the walk's visitors: the sampled delta, the output Fisher product, the loss */
typedef struct {
    const kfac_loss_view *v;
    uint64_t *rng;
    float *out;             /* the sampled delta */
    int y;                  /* the slot's sampled class (TERM_CATEGORICAL) */
    const float *u, *w;     /* the product's vectors */
    double total;           /* the product's or the loss's sum */
} visit_ctx;

static void visit_sample(void *ctx, size_t x, int e, term t)
{
    visit_ctx *c = (visit_ctx *)ctx;
    const float *p = c->v->p;
    switch (t.kind) {
    case TERM_NONE:
        c->out[x] = 0.0f;
        break;
    case TERM_BERNOULLI:
        c->out[x] = sqrtf(t.s) * bernoulli(c->rng, p[x]);
        break;
    case TERM_GAUSSIAN:
        c->out[x] = sqrtf(t.s) * normal(c->rng);
        break;
    case TERM_CATEGORICAL: {
        const size_t T = (size_t)c->v->l->w * c->v->l->h;
        const int C = c->v->l->classes;
        if (e == 5) { /* y ~ the slot's softmax over its classes, at its first */
            const float u = kfac_rng_uniform(c->rng);
            float cum = 0;
            int k;
            c->y = C - 1;
            for (k = 0; k < C; ++k) {
                cum += p[x + k * T];
                if (u < cum) {
                    c->y = k;
                    break;
                }
            }
        }
        c->out[x] = sqrtf(t.s) * ((e - 5 == c->y ? 1.0f : 0.0f) - p[x]);
        break;
    }
    }
}

/* The model's visitors know the terms of outputs that Darknet hands back without a
 * derivative ([yolo]'s): there a Bernoulli's Fisher is s p (1 - p) and its loss
 * s CE(p + delta/s, p), a Gaussian's s and delta^2 / (2 s).  No categorical term:
 * [region]'s, which the model does not take.  An output without a term still adds
 * 0 u w, so that a non-finite J v anywhere makes the product non-finite and the step
 * fails rather than use it. */
static void visit_fisher(void *ctx, size_t x, int e, term t)
{
    visit_ctx *c = (visit_ctx *)ctx;
    const double px = c->v->p[x], s = t.s;
    double f = 0;
    (void)e;
    KFAC_ASSERT(t.kind != TERM_CATEGORICAL);
    if (t.kind == TERM_BERNOULLI) f = s * px * (1 - px);
    else if (t.kind == TERM_GAUSSIAN) f = s;
    c->total += f * c->u[x] * c->w[x];
}

static void visit_value(void *ctx, size_t x, int e, term t)
{
    visit_ctx *c = (visit_ctx *)ctx;
    const double px = c->v->p[x], dx = c->v->d[x], s = t.s;
    double h = 0;
    (void)e;
    KFAC_ASSERT(t.kind != TERM_CATEGORICAL);
    if (t.kind == TERM_BERNOULLI) h = s * cross_entropy(px + dx / s, px);
    else if (t.kind == TERM_GAUSSIAN) h = dx * dx / (2 * s);
    c->total += h;
}

static void slots_sample(uint64_t *rng, const kfac_loss_view *v, float *out, slot_terms_fn terms)
{
    visit_ctx c = {v, rng, out, 0, NULL, NULL, 0};
    walk(v, terms, visit_sample, &c);
}

/* ---- [yolo] ------------------------------------------------------------------------ */

/* Darknet's delta for the entries that carry a term (the assigned box's coordinates
 * and classes, with weight s = 2 - w h for the coordinates; every objectness not
 * ignored) is the negative gradient, with respect to the layer's input, of
 *
 *     x, y      s CE(t, p)        p the sigmoid output, t = p + delta / s
 *     w, h      (s/2) (t - x)^2   = delta^2 / (2 s)
 *     obj, cls  CE(t, p)          t = p + delta, 0 or 1
 *
 * (Darknet hands the sigmoid outputs' deltas back without the sigmoid's derivative,
 * which makes them cross-entropy gradients), and the output Fisher of that loss is
 * diagonal: s p (1 - p), s, p (1 - p).  So x, y, objectness and classes are sampled
 * as Bernoulli on the sigmoid outputs, delta = sqrt(s) (y - p) (s = 1 for objectness
 * and classes), w and h as Gaussians, delta = sqrt(s) z.  An objectness with delta 0
 * and no box was ignored (IoU above ignore_thresh) and carries nothing.  The weights
 * come from the truth and the anchors alone, so the adaptive step's theta and its
 * probes share them; the ignored set is the forward pass's own. */

static const char *yolo_unsampled(const layer *l)
{
    /* truth_thresh < 1 adds terms for every anchor above it, which the walk lacks */
    return l->truth_thresh >= 1 ? NULL : "yolo with truth_thresh < 1";
}

static int yolo_modelled(const layer *l)
{
    return !yolo_unsampled(l);
}

/* forward_yolo_layer's second loop, in its order (a later box assigned to the same slot
 * replaces an earlier one's box terms, as there) */
static void yolo_assign(const layer *l, const network *net, const float *p, float *weight)
{
    int b, t, n;
    (void)p;
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

static slot_terms yolo_slot(const kfac_loss_view *v, float w, int obj_delta)
{
    const term none = {TERM_NONE, 0}, one = {TERM_BERNOULLI, 1};
    slot_terms st;
    (void)v;
    st.xy = w > 0 ? (term){TERM_BERNOULLI, w} : none;
    st.wh = w > 0 ? (term){TERM_GAUSSIAN, w} : none;
    st.obj = obj_delta || w > 0 ? one : none;
    st.cls = w > 0 ? one : none;
    return st;
}

static void yolo_sample(uint64_t *rng, const kfac_loss_view *v, float *out)
{
    slots_sample(rng, v, out, yolo_slot);
}

static double yolo_fisher_dot(const kfac_loss_view *v, const float *u, const float *w, double total)
{
    visit_ctx c = {v, NULL, NULL, 0, u, w, 0};
    walk(v, yolo_slot, visit_fisher, &c);
    return total + c.total / v->l->batch;
}

static double yolo_value(const kfac_loss_view *v)
{
    visit_ctx c = {v, NULL, NULL, 0, NULL, NULL, 0};
    walk(v, yolo_slot, visit_value, &c);
    return c.total;
}

/* ---- [region] (issue 13, item 3) --------------------------------------------------- */

/* forward_region_layer writes, as Darknet's delta (the negative gradient), for every
 * image b, anchor slot n and cell (i, j):
 *
 *   box x, y      s (t - p), p the sigmoid output; the backward (patches/0022 on the
 *                 CPU, as on the GPU) multiplies by the sigmoid's derivative, so this
 *                 is the gradient of (s/2)(t - p)^2: a Gaussian of precision s on p
 *   box w, h      s (t - x): (s/2)(t - x)^2, a Gaussian of precision s on x
 *   objectness    s (t - p), the sigmoid's derivative in the backward: a Gaussian of
 *                 precision s on p, as x and y
 *   classes       s (onehot - p) with no derivative: s times the softmax's
 *                 cross-entropy (softmax=1) or the sigmoids' (softmax=0)
 *
 * with label-dependent scales that the truth decides, as in forward_region_layer:
 * the slot a box is assigned to (its cell, the anchor whose shape, or with
 * bias_match=0 the predicted shape, overlaps the box best; a later box replaces an
 * earlier one) has box scale coord_scale (2 - w h), objectness object_scale and its
 * classes class_scale; every other slot has objectness noobject_scale unless its
 * prediction overlaps some box by more than thresh (then no term: its delta is 0),
 * no class term, and while Darknet's `seen` is below 12800 a box term of scale 0.01
 * pulling it to its anchor.  Each is a likelihood term of known precision s, so its
 * sampled delta is sqrt(s) z (z ~ N(0, 1)), sqrt(s) (e_y - p) (y ~ the softmax) or
 * sqrt(s) (y - p) (y ~ Bernoulli(p)), whose outer product has the term's output Fisher
 * as its expectation; the sample needs the scales only, never the labels' values
 * (rescore's IoU target changes the target, not the scale).
 *
 * Not sampled (region_unsampled says why; the start line names it): coords other than
 * 4 (the mask terms of the CPU and GPU forwards disagree), a softmax tree (its
 * hierarchy), background (objectness with another meaning).  Not in the adaptive
 * step's model: its Gaussians on sigmoid outputs would need the sigmoid's derivative
 * in their output Fisher, which the model's visitors do not apply. */

static const char *region_unsampled(const layer *l)
{
    if (l->coords != 4) return "region with coords other than 4";
    if (l->softmax_tree) return "region with a softmax tree";
    if (l->background) return "region with background";
    return NULL;
}

/* forward_region_layer's assignment of the truth boxes, p the layer's output: per
 * slot the box scale of the box assigned to it */
static void region_assign(const layer *l, const network *net, const float *p, float *weight)
{
    const int T = l->w * l->h;
    int b, t, n;
    memset(weight, 0, (size_t)l->batch * l->n * T * sizeof(float));
    for (b = 0; b < l->batch; ++b)
        for (t = 0; t < 30; ++t) {
            box truth = float_to_box(net->truth + t * (l->coords + 1) + b * l->truths, 1);
            if (!truth.x) break;
            const int i = (int)(truth.x * l->w), j = (int)(truth.y * l->h);
            box shift = truth;
            shift.x = shift.y = 0;
            float best_iou = 0;
            int best_n = 0;
            for (n = 0; n < l->n; ++n) {
                box pred;
                const size_t x = slot_at(l, b, n, j * l->w + i, 0);
                pred.w = l->bias_match ? l->biases[2 * n] / l->w : expf(p[x + 2 * T]) * l->biases[2 * n] / l->w;
                pred.h = l->bias_match ? l->biases[2 * n + 1] / l->h : expf(p[x + 3 * T]) * l->biases[2 * n + 1] / l->h;
                pred.x = pred.y = 0;
                const float iou = box_iou(pred, shift);
                if (iou > best_iou) {
                    best_iou = iou;
                    best_n = n;
                }
            }
            weight[((size_t)b * l->n + best_n) * T + j * l->w + i] = l->coord_scale * (2 - truth.w * truth.h);
        }
}

static slot_terms region_slot(const kfac_loss_view *v, float w, int obj_delta)
{
    const layer *l = v->l;
    const term none = {TERM_NONE, 0};
    const float prior = *v->net->seen < 12800 ? 0.01f : 0.0f;
    const float sc = w > 0 ? w : prior;
    const float so = w > 0 ? l->object_scale : obj_delta ? l->noobject_scale : 0;
    slot_terms st;
    st.xy = st.wh = sc > 0 ? (term){TERM_GAUSSIAN, sc} : none;
    st.obj = so > 0 ? (term){TERM_GAUSSIAN, so} : none;
    st.cls = w > 0 ? (term){l->softmax ? TERM_CATEGORICAL : TERM_BERNOULLI, l->class_scale} : none;
    return st;
}

static void region_sample(uint64_t *rng, const kfac_loss_view *v, float *out)
{
    slots_sample(rng, v, out, region_slot);
}

/* ---- the entries ------------------------------------------------------------------- */

static const kfac_loss_ops entries[] = {
    [KFAC_LOSS_SOFTMAX] = {
        .layer = SOFTMAX,
        .targets = "labels sampled from the softmax",
        .unsampled = softmax_unsampled,
        .modelled = softmax_modelled,
        .draws_per_image = softmax_draws,
        .sample_backend = softmax_sample,
        .fisher_dot = softmax_fisher_dot,
        .value = softmax_value,
    },
    [KFAC_LOSS_LOGISTIC] = {
        .layer = LOGXENT,
        .targets = "Bernoulli targets sampled from the sigmoids",
        .modelled = logistic_modelled,
        .draws_per_image = logistic_draws,
        .sample = logistic_sample,
        .fisher_dot = logistic_fisher_dot,
        .value = logistic_value,
    },
    [KFAC_LOSS_GAUSSIAN] = {
        .layer = COST,
        .targets = "Gaussian targets sampled around the outputs",
        .unsampled = cost_unsampled,
        .modelled = cost_modelled,
        .draws_per_image = cost_draws,
        .sample = cost_sample,
        .fisher_dot = cost_fisher_dot,
        .value = cost_value,
    },
    [KFAC_LOSS_YOLO] = {
        .layer = YOLO,
        .targets = "objectness, classes and box centres Bernoulli, box sizes Gaussian",
        .unsampled = yolo_unsampled,
        .modelled = yolo_modelled,
        .assign = yolo_assign,
        .sample = yolo_sample,
        .fisher_dot = yolo_fisher_dot,
        .value = yolo_value,
    },
    [KFAC_LOSS_REGION] = {
        .layer = REGION,
        .targets = "boxes and objectness Gaussian (its squared errors), classes from the softmax or Bernoulli",
        .unsampled = region_unsampled,
        .assign = region_assign,
        .sample = region_sample,
    },
};

#define KFAC_NENTRIES ((int)(sizeof entries / sizeof entries[0]))

const kfac_loss_ops *kfac_loss_ops_of(kfac_loss_kind kind)
{
    KFAC_ASSERT(kind > KFAC_LOSS_NONE && (int)kind < KFAC_NENTRIES);
    return &entries[kind];
}

/* the entry serving layer l's type, KFAC_LOSS_NONE for none */
static kfac_loss_kind kind_of(const layer *l)
{
    int kind;
    for (kind = KFAC_LOSS_NONE + 1; kind < KFAC_NENTRIES; ++kind)
        if (entries[kind].layer == l->type) return (kfac_loss_kind)kind;
    return KFAC_LOSS_NONE;
}

kfac_loss_kind kfac_loss_sampled(const layer *l, const char **why)
{
    const kfac_loss_kind kind = kind_of(l);
    *why = NULL;
    if (kind == KFAC_LOSS_NONE) return kind;
    if (entries[kind].unsampled) *why = entries[kind].unsampled(l);
    return *why ? KFAC_LOSS_EMPIRICAL : kind;
}

kfac_loss_kind kfac_loss_modelled(const layer *l)
{
    const kfac_loss_kind kind = kind_of(l);
    if (kind == KFAC_LOSS_NONE || !entries[kind].modelled || !entries[kind].modelled(l)) return KFAC_LOSS_NONE;
    return kind;
}

size_t kfac_loss_slots(const layer *l)
{
    const kfac_loss_kind kind = kind_of(l);
    if (kind == KFAC_LOSS_NONE || !entries[kind].assign) return 0;
    return (size_t)l->batch * l->n * l->w * l->h;
}
