/* darknet-kfac: attaching K-FAC to a network and the update-time hooks.
 *
 * Update integration (DESIGN.md 4): Darknet's *_updates buffers are both the gradient
 * accumulator and the momentum buffer.  Right after each update we snapshot them (they
 * then hold momentum*v); at the next update D = buffer - snapshot is the new gradient
 * alone, and we add P - D, so Darknet's own update then applies decay, learning rate
 * (policy, burn_in, per-layer scale) and momentum to the preconditioned gradient. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kfac_internal.h"
#include "kfac_gpu.h"

static const char *layer_kind(const layer *l)
{
    return l->type == CONVOLUTIONAL ? "conv" : "conn";
}

/* The true-Fisher pass redirects these layers' *_updates to a scratch buffer; layers
 * with inner layers (rnn, lstm, ...) keep buffers we cannot reach, so a net with them
 * uses the empirical Fisher. */
static int layer_ok_for_sampling(const layer *l)
{
    switch (l->type) {
    case CONVOLUTIONAL: case CONNECTED: case BATCHNORM: case MAXPOOL: case AVGPOOL:
    case DROPOUT: case SOFTMAX: case ROUTE: case SHORTCUT: case UPSAMPLE: case REORG:
    case ACTIVE: case CROP: case NORMALIZATION: case L2NORM:
        return 1;
    default:
        return 0;
    }
}

static size_t layer_update_len(const layer *l)
{
    size_t n = 0;
    if (l->weight_updates) n = (size_t)l->nweights;
    if (l->type == CONNECTED && (size_t)l->inputs * l->outputs > n) n = (size_t)l->inputs * l->outputs;
    if (l->bias_updates && (size_t)l->outputs > n) n = (size_t)l->outputs;
    if ((size_t)l->n > n) n = (size_t)l->n;
    if ((size_t)l->c > n) n = (size_t)l->c;
    return n;
}

static void alloc_layer(kfac_layer *kl, const layer *l)
{
    size_t g = (size_t)kl->groups, K = (size_t)kl->K, M = (size_t)kl->M;
    kl->A = (float *)kfac_calloc(g * K * K, sizeof(float));
    kl->G = (float *)kfac_calloc(g * M * M, sizeof(float));
    kl->A_acc = (float *)kfac_calloc(g * K * K, sizeof(float));
    kl->G_acc = (float *)kfac_calloc(g * M * M, sizeof(float));
    kl->EA = (float *)kfac_calloc(g * K * K, sizeof(float));
    kl->dA = (float *)kfac_calloc(g * K, sizeof(float));
    kl->EG = (float *)kfac_calloc(g * M * M, sizeof(float));
    kl->dG = (float *)kfac_calloc(g * M, sizeof(float));
    kl->Ainv = (float *)kfac_calloc(g * K * K, sizeof(float));
    kl->Ginv = (float *)kfac_calloc(g * M * M, sizeof(float));
    kl->w_snap = (float *)kfac_calloc(g * M * (size_t)kl->k_in, sizeof(float));
    if (kl->has_bias) kl->b_snap = (float *)kfac_calloc(g * M, sizeof(float));
    kl->D = (float *)kfac_calloc(g * M * K, sizeof(float));
    kl->P = (float *)kfac_calloc(g * M * K, sizeof(float));
    kl->tmp = (float *)kfac_calloc(M * K, sizeof(float));
    /* the weights may come with momentum already (a resumed run fills it later) */
    memcpy(kl->w_snap, l->weight_updates, g * M * (size_t)kl->k_in * sizeof(float));
    if (kl->has_bias) memcpy(kl->b_snap, l->bias_updates, g * M * sizeof(float));
}

void kfac_network_attach(network *net, void *cfgp)
{
    kfac_config *cfg = (kfac_config *)cfgp;
    const char *file = cfg->cfgfile;
    int i;
    if (cfg->nlayers != net->n)
        kfac_die(__FILE__, __LINE__, "%s: %d layer sections but the network has %d layers", file, cfg->nlayers, net->n);
    if (net->adam)
        kfac_user_error("%s [net] adam=1: K-FAC preconditions Darknet's SGD update; set adam=0 or remove [kfac]", file);

    kfac_net *k = (kfac_net *)kfac_calloc(1, sizeof *k);
    k->cfg = *cfg;
    free(cfg);
    k->rng = 0x9E3779B97F4A7C15ULL ^ (uint64_t)(uint32_t)k->cfg.seed;
    if (!k->rng) k->rng = 1;
    k->lean_fisher = 1;
    k->layers = (kfac_layer *)kfac_calloc((size_t)net->n, sizeof(kfac_layer));
    k->loss_index = -1;

    char skipped[1024] = "";
    for (i = 0; i < net->n; ++i) {
        layer *l = &net->layers[i];
        if (l->type != CONVOLUTIONAL && l->type != CONNECTED) continue;
        if (!k->cfg.layer_on[i]) {
            snprintf(skipped + strlen(skipped), sizeof skipped - strlen(skipped), " %d(kfac=0)", i);
            continue;
        }
        kfac_layer kl = {0};
        kl.index = i;
        kl.type = l->type;
        kl.has_bias = !l->batch_normalize;
        if (l->type == CONVOLUTIONAL) {
            if (l->xnor || l->binary)
                kfac_user_error("%s layer %d [convolutional] binary/xnor: not supported by K-FAC; add kfac=0 to that layer", file, i);
            if (l->size == 1 && l->stride > 1)
                kfac_user_error("%s layer %d [convolutional] size=1 stride=%d: Darknet's CPU forward ignores the stride of 1x1 convolutions, so K-FAC's patches would not match; add kfac=0 to that layer", file, i, l->stride);
            kl.groups = l->groups;
            kl.k_in = l->c / l->groups * l->size * l->size;
            kl.M = l->n / l->groups;
            kl.T = l->out_h * l->out_w;
        } else {
            kl.groups = 1;
            kl.k_in = l->inputs;
            kl.M = l->outputs;
            kl.T = 1;
        }
        kl.K = kl.k_in + kl.has_bias;
        if (kl.K > k->cfg.max_dim || kl.M > k->cfg.max_dim) {
            snprintf(skipped + strlen(skipped), sizeof skipped - strlen(skipped), " %d(%dx%d>max_dim)", i, kl.K, kl.M);
            continue;
        }
        alloc_layer(&kl, l);
        k->layers[k->nlayers++] = kl;
    }
    /* layer->kfac points into k->layers, filled now that the array no longer moves */
    for (i = 0; i < k->nlayers; ++i) net->layers[k->layers[i].index].kfac = &k->layers[i];

    /* true Fisher: labels sampled from a softmax output */
    const layer *last = &net->layers[net->n - 1];
    const char *fisher_note = "empirical (fisher=empirical)";
    if (k->cfg.fisher == KFAC_FISHER_TRUE) {
        int ok = last->type == SOFTMAX && !last->softmax_tree && last->groups <= 1 && !last->spatial;
        for (i = 0; ok && i < net->n; ++i) ok = layer_ok_for_sampling(&net->layers[i]);
        if (ok) {
            k->true_fisher = 1;
            k->loss_index = net->n - 1;
            fisher_note = "true (labels sampled from the softmax)";
            for (i = 0; i < net->n; ++i) {
                size_t n = layer_update_len(&net->layers[i]);
                if (n > k->sink_len) k->sink_len = n;
            }
            k->sink = (float *)kfac_calloc(k->sink_len ? k->sink_len : 1, sizeof(float));
            k->loss_delta_save = (float *)kfac_calloc((size_t)last->outputs * last->batch, sizeof(float));
        } else {
            fisher_note = "empirical (the loss is not a plain softmax, or a layer type cannot be sampled through)";
        }
    }
    net->kfac = k;
#ifdef GPU
    if (net->gpu_index >= 0) kfac_network_attach_gpu(net);
#endif

    fprintf(stderr, "K-FAC: ");
    kfac_config_print(&k->cfg, stderr);
    fprintf(stderr, "\nK-FAC: %d layers:", k->nlayers);
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        fprintf(stderr, " %d %s A %d G %d%s%s", kl->index, layer_kind(&net->layers[kl->index]), kl->K, kl->M,
                kl->groups > 1 ? " x" : "", kl->groups > 1 ? "groups" : "");
        if (kl->groups > 1) fprintf(stderr, "%d", kl->groups);
        fputc(i + 1 < k->nlayers ? ',' : ';', stderr);
    }
    fprintf(stderr, " on SGD:%s; Fisher: %s\n", skipped[0] ? skipped : " none", fisher_note);
}

static void free_layer_state(kfac_layer *kl)
{
    free(kl->A); free(kl->G); free(kl->A_acc); free(kl->G_acc);
    free(kl->EA); free(kl->dA); free(kl->EG); free(kl->dG); free(kl->Ainv); free(kl->Ginv);
    free(kl->w_snap); free(kl->b_snap); free(kl->D); free(kl->P); free(kl->tmp);
}

void kfac_network_free(network *net)
{
    kfac_net *k = kfac_of(net);
    int i;
    if (!k) return;
#ifdef GPU
    if (k->gpu) kfac_network_free_gpu(net);
#endif
    for (i = 0; i < k->nlayers; ++i) {
        net->layers[k->layers[i].index].kfac = NULL;
        free_layer_state(&k->layers[i]);
    }
    free(k->layers);
    free(k->sink);
    free(k->loss_delta_save);
    free(k->patches);
    kfac_config_free(&k->cfg);
    free(k);
    net->kfac = NULL;
}

void kfac_layer_backward(network *net, int index, float *input)
{
    kfac_net *k = kfac_of(net);
    layer *l = &net->layers[index];
    kfac_layer *kl = (kfac_layer *)l->kfac;
    if (!kl || !k->capture) return;
    /* resize_network (random=1 in Darknet's trainers) changes a conv layer's output size */
    if (kl->type == CONVOLUTIONAL) kl->T = l->out_h * l->out_w;
#ifdef GPU
    if (net->gpu_index >= 0) { kfac_layer_backward_gpu(net, kl, l, input); return; }
#endif
    double t0 = kfac_now();
    if (k->capture & KFAC_CAPTURE_A) kfac_factors_capture_A_cpu(k, kl, l, input);
    if (k->capture & KFAC_CAPTURE_G) kfac_factors_capture_G_cpu(kl, l);
    k->t_stats += kfac_now() - t0;
}

/* ---- decisions shared by the CPU and GPU paths --------------------------------- */

/* Inverses every inverse_interval updates; during the first inverse_interval updates
 * also on every statistics step, since the curvature moves fastest at the start and
 * the first factors come from a single batch at the initial weights.  This costs at
 * most inverse_interval/stats_interval extra decompositions, once. */
int kfac_inverse_due(const kfac_net *k)
{
    int since = k->step - k->cfg.warmup;
    if (since < 0) return 0;
    return since % k->cfg.inverse_interval == 0 ||
           (since < k->cfg.inverse_interval && kfac_stats_step(k));
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

/* One layer's share of the KL-clip quadratic, lr_eff^2 <P/B, D/B> (DESIGN.md 4), with
 * lr_eff = lr/(1 - momentum): the step that momentum builds from a steady gradient.
 * Without that factor a clipped step is taken again and again by the momentum buffer
 * (measured: momentum 0.9 on the demo CNN diverged within 40 updates at any rate). */
double kfac_kl_term(const update_args *a, const layer *l, double p_dot_d)
{
    double lr = (double)a->learning_rate * l->learning_rate_scale / (1.0 - fmin(a->momentum, 0.999));
    double B = (double)a->batch;
    return lr * lr * p_dot_d / (B * B);
}

/* KL clip: nu = min(1, sqrt(bound / quad)).  The bound is kl_clip at the cfg's
 * learning_rate and follows Darknet's policy (burn_in, steps, poly, ...) as
 * (rate / learning_rate)^2, so a clipped step still shrinks when the rate does. */
float kfac_kl_scale(kfac_net *k, const network *net, const update_args *a, double quad)
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

/* A user comparing K-FAC with SGD on their own net wants to see where K-FAC's time
 * goes (to choose the intervals) and whether the KL bound is what sets the step. */
void kfac_network_report(network *net)
{
    kfac_net *k = kfac_of(net);
    double t[3];
    if (++k->report_updates < k->cfg.inverse_interval) return;
    kfac_network_timing(net, &t[0], &t[1], &t[2]);
    const int n = k->report_updates;
    char clip[128] = "no step preconditioned";
    if (k->nu_count)
        snprintf(clip, sizeof clip, "KL clip scaled %d of %d steps (mean factor %.3g)", k->nu_clipped, k->nu_count,
                 k->nu_sum / k->nu_count);
    kfac_log("update %d: seconds per update over the last %d: statistics %.4f, decompositions %.4f, "
             "preconditioning %.4f; %s", k->step, n, (t[0] - k->t_reported[0]) / n, (t[1] - k->t_reported[1]) / n,
             (t[2] - k->t_reported[2]) / n, clip);
    memcpy(k->t_reported, t, sizeof t);
    k->report_updates = 0;
    k->nu_count = k->nu_clipped = 0;
    k->nu_sum = 0;
}

void kfac_network_precondition(network *net, update_args *a)
{
    kfac_net *k = kfac_of(net);
    int i;
#ifdef GPU
    if (net->gpu_index >= 0) { kfac_network_precondition_gpu(net, a); return; }
#endif
    k->capture = KFAC_CAPTURE_NONE;
    double t0 = kfac_now();
    if (kfac_stats_step(k))
        for (i = 0; i < k->nlayers; ++i) kfac_factors_fold_cpu(&k->layers[i], k->cfg.decay);
    double t1 = kfac_now();
    k->t_stats += t1 - t0;

    /* during warmup, and for a layer without an inverse yet, the plain gradient goes
     * through (checked for NaN like the rest) */
    int on = k->step >= k->cfg.warmup;
    int refresh = on && kfac_inverse_due(k);
    for (i = 0; on && i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        if (!k->identity && kl->have_factors && (refresh || !kl->have_inverse)) kfac_inverse_update_cpu(kl);
    }
    double t2 = kfac_now();
    k->t_inverse += t2 - t1;

    /* precondition every layer that has an inverse; KL-clip them together */
    double quad = 0; /* sum over layers of kfac_kl_term */
    int *active = (int *)kfac_calloc((size_t)(k->nlayers ? k->nlayers : 1), sizeof(int));
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        const layer *l = &net->layers[kl->index];
        size_t len = (size_t)kl->groups * kl->M * kl->K;
        kfac_gather_gradient_cpu(kl, l);
        if (!kfac_all_finite(kl->D, len)) {
            if (!kl->bad_grad_logged++)
                kfac_log("layer %d: non-finite gradient, this update's gradient dropped for the layer (logged once)", kl->index);
            /* write back the snapshot alone: the momentum step without the bad gradient
             * (copied, as on the GPU: adding 0 - D would leave NaN + (0 - NaN) = NaN) */
            memcpy(l->weight_updates, kl->w_snap, (size_t)kl->groups * kl->M * kl->k_in * sizeof(float));
            if (kl->has_bias) memcpy(l->bias_updates, kl->b_snap, (size_t)kl->groups * kl->M * sizeof(float));
            continue;
        }
        if (k->identity || !on || !kl->have_inverse) {
            memcpy(kl->P, kl->D, len * sizeof(float));
            if (!k->identity) {
                active[i] = 2; /* plain SGD: outside the KL clip */
                continue;
            }
        } else {
            kfac_precondition_layer_cpu(kl, k->cfg.damping);
            if (!kfac_all_finite(kl->P, len)) {
                if (!kl->bad_grad_logged++)
                    kfac_log("layer %d: non-finite preconditioned gradient, plain SGD for this update (logged once)", kl->index);
                memcpy(kl->P, kl->D, len * sizeof(float));
                active[i] = 2;
                continue;
            }
            quad += kfac_kl_term(a, l, kfac_dot_cpu(kl->P, kl->D, len));
        }
        active[i] = 1;
    }
    float nu = kfac_kl_scale(k, net, a, quad);
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        if (!active[i]) continue;
        kfac_scatter_update_cpu(kl, &net->layers[kl->index], active[i] == 1 ? nu : 1.0f);
    }
    free(active);
    k->t_precond += kfac_now() - t2;
}

void kfac_network_updated(network *net)
{
    kfac_net *k = kfac_of(net);
    int i;
#ifdef GPU
    if (net->gpu_index >= 0) { kfac_network_updated_gpu(net); return; }
#endif
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        const layer *l = &net->layers[kl->index];
        memcpy(kl->w_snap, l->weight_updates, (size_t)kl->groups * kl->M * kl->k_in * sizeof(float));
        if (kl->has_bias) memcpy(kl->b_snap, l->bias_updates, (size_t)kl->groups * kl->M * sizeof(float));
    }
    ++k->step;
    kfac_network_report(net);
}

int kfac_network_step(const network *net)
{
    return net->kfac ? kfac_of(net)->step : -1;
}

void kfac_network_set_identity(network *net, int identity)
{
    kfac_of(net)->identity = identity;
}

void kfac_network_set_lean_fisher(network *net, int lean)
{
    kfac_of(net)->lean_fisher = lean;
}

void kfac_network_timing(const network *net, double *stats, double *inverse, double *precond)
{
    const kfac_net *k = kfac_of(net);
#ifdef GPU
    if (k->gpu) kfac_timing_collect_gpu(kfac_of(net));
#endif
    *stats = k->t_stats;
    *inverse = k->t_inverse;
    *precond = k->t_precond;
}

int kfac_layer_factors(const network *net, int index, const float **A, const float **G,
                       int *groups, int *a_dim, int *g_dim)
{
    const kfac_layer *kl = (const kfac_layer *)net->layers[index].kfac;
    if (!kl) return 0;
#ifdef GPU
    if (net->gpu_index >= 0) kfac_layer_pull_factors_gpu(net, (kfac_layer *)kl);
#endif
    *A = kl->A; *G = kl->G; *groups = kl->groups; *a_dim = kl->K; *g_dim = kl->M;
    return 1;
}
