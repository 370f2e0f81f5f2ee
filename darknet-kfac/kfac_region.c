/* darknet-kfac: sampled targets for [region], YOLOv2's loss (issue 13, item 3), for the
 * true-Fisher pass (kfac_fisher.c).
 *
 * forward_region_layer writes, as Darknet's delta (the negative gradient), for every
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
 * Not sampled (kfac_region_supported says why; the start line names it): coords other
 * than 4 (the mask terms of the CPU and GPU forwards disagree), a softmax tree (its
 * hierarchy), background (objectness with another meaning). */
#include <math.h>
#include <string.h>
#include "kfac_internal.h"
#include "box.h"

const char *kfac_region_supported(const layer *l)
{
    if (l->coords != 4) return "region with coords other than 4";
    if (l->softmax_tree) return "region with a softmax tree";
    if (l->background) return "region with background";
    return NULL;
}

/* index of (image b, slot n, location loc, entry e) in the layer's output: region_layer.c's
 * entry_index */
static size_t at(const layer *l, int b, int n, int loc, int e)
{
    return (size_t)b * l->outputs + (size_t)n * l->w * l->h * (l->coords + l->classes + 1) + (size_t)e * l->w * l->h + loc;
}

/* a standard normal draw (Box-Muller on the sampler's generator) */
static float normal(uint64_t *rng)
{
    float u1 = kfac_rng_uniform(rng), u2 = kfac_rng_uniform(rng);
    if (u1 < 1e-30f) u1 = 1e-30f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.283185307f * u2);
}

static float bernoulli(uint64_t *rng, float p)
{
    return (kfac_rng_uniform(rng) < p ? 1.0f : 0.0f) - p;
}

/* forward_region_layer's assignment of the truth boxes, p the layer's output: per
 * slot (batch x n x locations) the box scale of the box assigned to it, 0 for none */
static void assign(const layer *l, const network *net, const float *p, float *coord)
{
    const int T = l->w * l->h;
    int b, t, n;
    memset(coord, 0, (size_t)l->batch * l->n * T * sizeof(float));
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
                const size_t x = at(l, b, n, j * l->w + i, 0);
                pred.w = l->bias_match ? l->biases[2 * n] / l->w : expf(p[x + 2 * T]) * l->biases[2 * n] / l->w;
                pred.h = l->bias_match ? l->biases[2 * n + 1] / l->h : expf(p[x + 3 * T]) * l->biases[2 * n + 1] / l->h;
                pred.x = pred.y = 0;
                const float iou = box_iou(pred, shift);
                if (iou > best_iou) {
                    best_iou = iou;
                    best_n = n;
                }
            }
            coord[((size_t)b * l->n + best_n) * T + j * l->w + i] = l->coord_scale * (2 - truth.w * truth.h);
        }
}

void kfac_region_sample(kfac_net *k, const network *net, const layer *l, const float *p, float *d)
{
    const int T = l->w * l->h, C = l->classes;
    const float prior = *net->seen < 12800 ? 0.01f : 0.0f;
    int b, n, loc, c;
    assign(l, net, p, k->yolo_weight);
    for (b = 0; b < l->batch; ++b)
        for (n = 0; n < l->n; ++n)
            for (loc = 0; loc < T; ++loc) {
                const float w = k->yolo_weight[((size_t)b * l->n + n) * T + loc];
                const size_t obj = at(l, b, n, loc, 4), cls = at(l, b, n, loc, 5);
                const float sc = w > 0 ? w : prior;
                /* an objectness term unless the slot was ignored (delta 0) */
                const float so = w > 0 ? l->object_scale : d[obj] != 0 ? l->noobject_scale : 0;
                for (c = 0; c < 4; ++c) d[at(l, b, n, loc, c)] = sc > 0 ? sqrtf(sc) * normal(&k->rng) : 0.0f;
                d[obj] = so > 0 ? sqrtf(so) * normal(&k->rng) : 0.0f;
                if (!(w > 0)) {
                    for (c = 0; c < C; ++c) d[cls + (size_t)c * T] = 0;
                } else if (l->softmax) {
                    /* y ~ the slot's softmax over its classes */
                    const float u = kfac_rng_uniform(&k->rng);
                    float cum = 0;
                    int y = C - 1;
                    for (c = 0; c < C; ++c) {
                        cum += p[cls + (size_t)c * T];
                        if (u < cum) {
                            y = c;
                            break;
                        }
                    }
                    for (c = 0; c < C; ++c)
                        d[cls + (size_t)c * T] = sqrtf(l->class_scale) * ((c == y ? 1.0f : 0.0f) - p[cls + (size_t)c * T]);
                } else {
                    for (c = 0; c < C; ++c)
                        d[cls + (size_t)c * T] = sqrtf(l->class_scale) * bernoulli(&k->rng, p[cls + (size_t)c * T]);
                }
            }
}
