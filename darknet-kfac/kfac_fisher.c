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
 * lowest covered layer: kfac_fisher_backward skips those parts on the CPU, where
 * Darknet's own gemm for the weight gradients was most of the pass's time. */
#include <cblas.h>
#include <stddef.h>
#include <string.h>
#include "kfac_internal.h"
#include "kfac_gpu.h"
#include "activations.h"
#include "batchnorm_layer.h"
#include "col2im.h"

static float **update_field(layer *l, size_t offset)
{
    return (float **)((char *)l + offset);
}

void kfac_redirect_updates(network *net, kfac_update_fields f, float *sink, float **saved)
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

void kfac_restore_updates(network *net, kfac_update_fields f, float **saved)
{
    const size_t off[3] = {f.weights, f.biases, f.scales};
    int i, j;
    for (i = 0; i < net->n; ++i)
        for (j = 0; j < 3; ++j) *update_field(&net->layers[i], off[j]) = saved[3 * i + j];
}

static void sample_loss_delta(kfac_net *k, const layer *soft)
{
    int b, j;
    const int n = soft->inputs;
    for (b = 0; b < soft->batch; ++b) {
        const float *p = soft->output + (size_t)b * n;
        float *d = soft->delta + (size_t)b * n;
        float u = kfac_rng_uniform(&k->rng), cum = 0;
        int y = n - 1;
        for (j = 0; j < n; ++j) {
            cum += p[j];
            if (u < cum) { y = j; break; }
        }
        for (j = 0; j < n; ++j) d[j] = (j == y ? 1.0f : 0.0f) - p[j];
    }
}

void kfac_network_fisher_pass(network *net)
{
    kfac_net *k = kfac_of(net);
    int i;
    k->capture = KFAC_CAPTURE_NONE;
    if (!net->train || !kfac_stats_step(k) || k->nlayers == 0) return;
    if (!k->true_fisher) {
        k->capture = KFAC_CAPTURE_A | KFAC_CAPTURE_G; /* from the real backward */
        return;
    }
#ifdef GPU
    if (net->gpu_index >= 0) { kfac_network_fisher_pass_gpu(net); return; }
#endif
    /* the whole pass counts as statistics time (its captures add themselves) */
    double t0 = kfac_now(), counted = k->t_stats;
    layer *soft = &net->layers[k->loss_index];
    size_t nd = (size_t)soft->outputs * soft->batch;
    float **saved = (float **)kfac_calloc((size_t)net->n * 3, sizeof(float *));

    memcpy(k->loss_delta_save, soft->delta, nd * sizeof(float));
    sample_loss_delta(k, soft);
    const kfac_update_fields f = {offsetof(layer, weight_updates), offsetof(layer, bias_updates),
                                  offsetof(layer, scale_updates)};
    kfac_redirect_updates(net, f, k->sink, saved);
    k->capture = KFAC_CAPTURE_A | KFAC_CAPTURE_G;
    k->in_fisher_pass = 1;
    backward_network(net);
    k->in_fisher_pass = 0;
    k->capture = KFAC_CAPTURE_NONE;
    kfac_restore_updates(net, f, saved);
    free(saved);

    for (i = 0; i < net->n; ++i) {
        layer *l = &net->layers[i];
        if (l->delta) memset(l->delta, 0, (size_t)l->outputs * l->batch * sizeof(float));
    }
    memcpy(soft->delta, k->loss_delta_save, nd * sizeof(float));
    k->t_stats = counted + (kfac_now() - t0);
}

/* Darknet's backward_convolutional_layer / backward_connected_layer without the weight
 * and bias gradients: the activation's derivative and batch norm's backward (Darknet's
 * own functions, so l.delta is bit for bit what the full backward leaves for G), then
 * the delta for the layer below with OpenBLAS.  Like Darknet, a 1x1 convolution
 * writes the delta below and a larger one adds to it (col2im). */
static void lean_conv(const layer *l, network *lnet)
{
    const int m = l->n / l->groups, n = l->size * l->size * l->c / l->groups, t = l->out_w * l->out_h;
    const size_t in_len = (size_t)l->c / l->groups * l->h * l->w;
    int i, j;
    gradient_array(l->output, l->outputs * l->batch, l->activation, l->delta);
    if (l->batch_normalize) backward_batchnorm_layer(*l, *lnet);
    if (!lnet->delta) return;
    for (i = 0; i < l->batch; ++i)
        for (j = 0; j < l->groups; ++j) {
            const float *w = l->weights + (size_t)j * l->nweights / l->groups;
            const float *d = l->delta + ((size_t)i * l->groups + j) * m * t;
            float *below = lnet->delta + ((size_t)i * l->groups + j) * in_len;
            float *cols = l->size == 1 ? below : lnet->workspace;
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, t, m, 1.0f, w, n, d, t, 0.0f, cols, t);
            if (l->size != 1) col2im_cpu(cols, l->c / l->groups, l->h, l->w, l->size, l->stride, l->pad, below);
        }
}

static void lean_connected(const layer *l, network *lnet)
{
    gradient_array(l->output, l->outputs * l->batch, l->activation, l->delta);
    if (l->batch_normalize) backward_batchnorm_layer(*l, *lnet);
    if (lnet->delta)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, l->batch, l->inputs, l->outputs, 1.0f, l->delta,
                    l->outputs, l->weights, l->inputs, 1.0f, lnet->delta, l->inputs);
}

int kfac_fisher_backward(network *net, int index, float *input, float *delta)
{
    kfac_net *k = kfac_of(net);
    const layer *l = &net->layers[index];
    if (!k->in_fisher_pass || !k->lean_fisher) return 0;
#ifdef GPU
    if (net->gpu_index >= 0) return 0; /* backward_network_gpu: Darknet's own backward */
#endif
    /* the layers below the lowest covered one feed no statistics; their deltas are
     * cleared after the pass anyway */
    if (k->nlayers == 0 || index < k->layers[0].index) return 1;
    const int conv = l->type == CONVOLUTIONAL && !l->binary && !l->xnor;
    if (!conv && l->type != CONNECTED) return 0;
    network lnet = *net; /* the view backward_network gives the layer */
    lnet.input = input;
    lnet.delta = delta;
    if (conv) lean_conv(l, &lnet);
    else lean_connected(l, &lnet);
    return 1;
}
