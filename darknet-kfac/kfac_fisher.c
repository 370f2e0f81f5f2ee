/* darknet-kfac: which backward captures statistics, and the true-Fisher pass.
 *
 * On a statistics step with a softmax loss, labels y ~ p (the model's own prediction)
 * give the output derivative e_y - p for G (the true Fisher; the empirical Fisher
 * would use the data's labels).  One extra backward runs with every *_updates buffer
 * redirected to a scratch sink, capturing A and G; afterwards every delta is cleared,
 * the loss delta of the real step restored and the buffers put back, so the real
 * backward that follows computes exactly what it would have without K-FAC.
 *
 * That pass needs only the deltas, not the weight gradients, and nothing below the
 * lowest covered layer: a backend with a deltas-only layer backward (the CPU's) skips
 * those parts, where Darknet's own gemm for the weight gradients was most of the
 * pass's time.  Darknet's GPU backward has no such hook and runs whole. */
#include <stdlib.h>
#include <string.h>
#include "kfac_internal.h"

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

void kfac_network_fisher_pass(network *net)
{
    kfac_net *k = kfac_of(net);
    kfac_backend *be = k->be;
    int i;
    k->capture = KFAC_CAPTURE_NONE;
    if (!net->train || !kfac_stats_step(k) || k->nlayers == 0) return;
    if (!k->true_fisher) {
        k->capture = KFAC_CAPTURE_A | KFAC_CAPTURE_G; /* from the real backward */
        return;
    }
    /* the whole pass counts as statistics time */
    kfac_phase_begin(k, KFAC_PHASE_STATS);
    layer *soft = &net->layers[k->loss_index];
    const size_t nd = (size_t)soft->outputs * soft->batch;
    kfac_darknet_buffers sb;
    be->ops->darknet_buffers(soft, &sb);
    be->ops->copy(be, k->loss_delta_save, sb.delta, nd);
    /* one uniform per image, in image order: the same labels on every backend */
    for (i = 0; i < soft->batch; ++i) k->uniforms[i] = kfac_rng_uniform(&k->rng);
    be->ops->sample(be, sb.output, k->uniforms, soft->batch, soft->inputs, sb.delta);
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
    be->ops->copy(be, sb.delta, k->loss_delta_save, nd);
    kfac_phase_end(k);
}

int kfac_fisher_backward(network *net, int index, float *input, float *delta)
{
    kfac_net *k = kfac_of(net);
    if (!k->in_fisher_pass || !k->lean_fisher || !k->be->ops->fisher_layer_backward) return 0;
    /* the layers below the lowest covered one feed no statistics; their deltas are
     * cleared after the pass anyway */
    if (k->nlayers == 0 || index < k->layers[0].index) return 1;
    return k->be->ops->fisher_layer_backward(k->be, net, index, input, delta);
}
