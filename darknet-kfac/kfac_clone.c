/* kfac_clone.c: a second copy of the net, for a pass on another thread.
 *
 * The adaptive step's momentum probe J delta_0 (kfac_adaptive.c) is a forward pass at
 * theta + eps delta_0 on the last subdivision's images.  Nothing in it depends on the
 * update's gradient, so it can run while the training thread goes through the
 * true-Fisher pass, the backward pass and the preconditioning, on the core Darknet's
 * CPU training leaves idle.  It cannot run on the net itself, whose buffers those
 * passes use.  The clone is a shallow copy of the network and its layers: it shares
 * what a forward pass only reads (the layer functions, sizes, [yolo] anchors and
 * masks, route and shortcut indices) and owns what a forward pass writes (outputs, a
 * loss layer's delta and loss, batch norm's statistics, max pool's indexes, the
 * costs, the workspace), the input and the truth, and the parameters the probe moves
 * (weights, biases, batch norm's scales).  Only layer kinds whose forward pass is
 * known to write nothing else are taken (kfac_clone_supported).
 *
 * A backward clone (KFAC_CLONE_BACKWARD) runs Darknet's own backward pass of a
 * statistics update while the training thread runs the true-Fisher pass
 * (kfac_fisher.c): it reads the net's forward state (outputs, batch norm's
 * statistics, max pool's indexes, the weights) and writes its own deltas and the
 * net's update accumulators, which the true-Fisher pass has redirected to a sink. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kfac_internal.h"

/* the fields of a layer the clone owns, in the order of clone_layer.f */
enum { F_OUTPUT, F_DELTA, F_LOSS, F_X, F_X_NORM, F_MEAN, F_VARIANCE, F_ROLLING_MEAN, F_ROLLING_VARIANCE, F_WEIGHTS,
       F_BIASES, F_SCALES, F_MEAN_DELTA, F_VARIANCE_DELTA, KFAC_CLONE_FIELDS };

typedef struct {
    float *f[KFAC_CLONE_FIELDS];
    size_t len[KFAC_CLONE_FIELDS]; /* allocated */
    size_t use[KFAC_CLONE_FIELDS]; /* in use for the net as at the last sync; 0: not owned */
    int *indexes;
    size_t nindexes;
    float cost;
} clone_layer;

struct kfac_clone {
    kfac_clone_mode mode;
    network net;
    layer *layers;
    clone_layer *own;
    int n;
    float *input, *truth, *workspace;
    size_t ninput, ntruth, nworkspace;
    float cost;
    const network *src;     /* the net of the last sync */
};

static int is_loss(const layer *l)
{
    return l->type == SOFTMAX || l->type == COST || l->type == YOLO || l->type == LOGXENT;
}

static int has_bn(const layer *l)
{
    return l->type == BATCHNORM || (l->batch_normalize && (l->type == CONVOLUTIONAL || l->type == CONNECTED));
}

int kfac_clone_supported(const network *net, char *why, size_t len)
{
    int i;
    for (i = 0; i < net->n; ++i) {
        const layer *l = &net->layers[i];
        switch (l->type) {
        case CONVOLUTIONAL:
            if (l->binary || l->xnor) break;
            continue;
        case SOFTMAX:
            if (l->softmax_tree) break;
            continue;
        case CONNECTED: case MAXPOOL: case AVGPOOL: case COST: case YOLO: case ROUTE: case SHORTCUT: case UPSAMPLE:
        case BATCHNORM: case ACTIVE: case LOGXENT: case REORG:
            continue;
        default:
            break;
        }
        snprintf(why, len, "layer %d's forward or backward pass writes buffers a second copy of the net does not own", i);
        return 0;
    }
    return 1;
}

kfac_clone *kfac_clone_new(kfac_clone_mode mode)
{
    kfac_clone *c = (kfac_clone *)kfac_calloc(1, sizeof(kfac_clone));
    c->mode = mode;
    return c;
}

/* *p at least n floats long (its contents are not kept) */
static float *fit(float **p, size_t *have, size_t n)
{
    if (n > *have) {
        free(*p);
        *p = (float *)kfac_calloc(n, sizeof(float));
        *have = n;
    }
    return *p;
}

/* each field's length in a layer of net, 0 where the clone keeps the net's own */
static void field_lengths(kfac_clone_mode mode, const layer *l, size_t len[KFAC_CLONE_FIELDS])
{
    const size_t n = (size_t)l->outputs * l->batch;
    const size_t ch = l->type == CONVOLUTIONAL ? (size_t)l->n : l->type == CONNECTED ? (size_t)l->outputs : (size_t)l->c;
    const int bn = has_bn(l), params = l->type == CONVOLUTIONAL || l->type == CONNECTED || l->type == BATCHNORM;
    memset(len, 0, KFAC_CLONE_FIELDS * sizeof(size_t));
    if (mode == KFAC_CLONE_BACKWARD) {
        /* a backward pass writes every delta, batch norm's mean and variance deltas and
         * the update accumulators (the net's own: its training thread then runs the
         * true-Fisher pass into a sink) */
        len[F_DELTA] = l->delta ? n : 0;
        if (bn && l->mean_delta) len[F_MEAN_DELTA] = len[F_VARIANCE_DELTA] = ch;
        return;
    }
    len[F_OUTPUT] = n;
    /* forward_network clears every delta (the clone's are NULL but a loss layer's,
     * which its forward pass writes) */
    len[F_DELTA] = l->delta && is_loss(l) ? n : 0;
    len[F_LOSS] = l->loss ? (size_t)l->inputs * l->batch : 0;
    if (bn) len[F_X] = len[F_X_NORM] = n, len[F_MEAN] = len[F_VARIANCE] = len[F_ROLLING_MEAN] = len[F_ROLLING_VARIANCE] = ch;
    if (params && l->weights)
        len[F_WEIGHTS] = l->type == CONVOLUTIONAL ? (size_t)l->nweights : (size_t)l->inputs * l->outputs;
    if (params && l->biases) len[F_BIASES] = ch;
    if (params && bn && l->scales) len[F_SCALES] = ch;
}

static void free_layers(kfac_clone *c)
{
    int i, f;
    for (i = 0; i < c->n; ++i) {
        for (f = 0; f < KFAC_CLONE_FIELDS; ++f) free(c->own[i].f[f]);
        free(c->own[i].indexes);
    }
    free(c->own);
    free(c->layers);
}

void kfac_clone_sync(kfac_clone *c, const network *net)
{
    int i, f;
    if (c->n != net->n) {
        free_layers(c);
        c->own = (clone_layer *)kfac_calloc((size_t)net->n, sizeof(clone_layer));
        c->layers = (layer *)kfac_calloc((size_t)net->n, sizeof(layer));
        c->n = net->n;
    }
    size_t work = 0;
    for (i = 0; i < net->n; ++i) {
        const layer *l = &net->layers[i];
        layer *cl = &c->layers[i];
        clone_layer *o = &c->own[i];
        *cl = *l;
        field_lengths(c->mode, l, o->use);
        float **mine[KFAC_CLONE_FIELDS] = {&cl->output, &cl->delta, &cl->loss, &cl->x, &cl->x_norm, &cl->mean,
                                           &cl->variance, &cl->rolling_mean, &cl->rolling_variance, &cl->weights,
                                           &cl->biases, &cl->scales, &cl->mean_delta, &cl->variance_delta};
        for (f = 0; f < KFAC_CLONE_FIELDS; ++f)
            if (o->use[f]) *mine[f] = fit(&o->f[f], &o->len[f], o->use[f]);
        if (!o->use[F_DELTA]) cl->delta = NULL; /* never the net's: its backward pass is using it */
        if (l->workspace_size > work) work = l->workspace_size;
        if (c->mode == KFAC_CLONE_BACKWARD) continue; /* max pool's indexes and the costs are only read */
        if (l->indexes) {
            const size_t n = (size_t)l->outputs * l->batch;
            if (n > o->nindexes) {
                free(o->indexes);
                o->indexes = (int *)kfac_calloc(n, sizeof(int));
                o->nindexes = n;
            }
            cl->indexes = o->indexes;
        }
        if (l->cost) cl->cost = &o->cost;
    }
    c->net = *net;
    c->net.layers = c->layers;
    c->net.cost = &c->cost;
    c->net.workspace = fit(&c->workspace, &c->nworkspace, work / sizeof(float) + 1);
    c->src = net;
    if (c->mode == KFAC_CLONE_BACKWARD) {
        /* Darknet's plain backward (no K-FAC hooks: they capture the true-Fisher pass's
         * statistics on the training thread); the first layer's input delta is unused.
         * The input stays the net's: kfac_network_backward waits for the thread before
         * train_network_datum returns and a trainer loads the next images there */
        c->net.kfac = NULL;
        c->net.delta = NULL;
        for (i = 0; i < net->n; ++i)
            if (net->layers[i].cost && c->own[i].use[F_DELTA])
                memcpy(c->layers[i].delta, net->layers[i].delta, c->own[i].use[F_DELTA] * sizeof(float));
        return;
    }
    c->net.input = fit(&c->input, &c->ninput, (size_t)net->inputs * net->batch);
    if (net->truth) c->net.truth = fit(&c->truth, &c->ntruth, (size_t)net->truths * net->batch);
}

void kfac_clone_backward(kfac_clone *c)
{
    int i;
    /* every delta as the forward pass left it: zero but a loss layer's (copied at sync) */
    for (i = 0; i < c->n; ++i)
        if (c->own[i].use[F_DELTA] && !c->layers[i].cost)
            memset(c->layers[i].delta, 0, c->own[i].use[F_DELTA] * sizeof(float));
    backward_network(&c->net);
}

network *kfac_clone_fill(kfac_clone *c)
{
    const network *net = c->src;
    int i;
    for (i = 0; i < c->n; ++i) {
        const layer *l = &net->layers[i];
        const clone_layer *o = &c->own[i];
        layer *cl = &c->layers[i];
        if (o->use[F_WEIGHTS]) memcpy(cl->weights, l->weights, o->use[F_WEIGHTS] * sizeof(float));
        if (o->use[F_BIASES]) memcpy(cl->biases, l->biases, o->use[F_BIASES] * sizeof(float));
        if (o->use[F_SCALES]) memcpy(cl->scales, l->scales, o->use[F_SCALES] * sizeof(float));
    }
    memcpy(c->net.input, net->input, (size_t)net->inputs * net->batch * sizeof(float));
    if (net->truth) memcpy(c->net.truth, net->truth, (size_t)net->truths * net->batch * sizeof(float));
    return &c->net;
}

int kfac_clone_owns(const kfac_clone *c, const network *net)
{
    return c && net->layers == c->layers;
}

void kfac_clone_free(kfac_clone *c)
{
    if (!c) return;
    free_layers(c);
    free(c->input);
    free(c->truth);
    free(c->workspace);
    free(c);
}
