/* darknet-kfac: attaching K-FAC to a network (which layers, which backend, the start
 * lines), freeing it, and the accessors the tests and tools use.
 *
 * A net built for a GPU (net->gpu_index >= 0 in a GPU build) gets the CUDA backend,
 * every other net the CPU one; nothing after this file asks which. */
#include <stdlib.h>
#include <string.h>
#include "kfac_internal.h"

static const char *layer_kind(const layer *l)
{
    return l->type == CONVOLUTIONAL ? "conv" : "conn";
}

/* the longest *_updates buffer of a layer, in floats: the sink's length */
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

static void alloc_layer(kfac_backend *be, kfac_layer *kl, const layer *l)
{
    const size_t g = (size_t)kl->s.groups, K = (size_t)kl->s.K, M = (size_t)kl->s.M, nA = kfac_a_len(&kl->s);
    kl->A = be->ops->alloc(be, nA);
    kl->G = be->ops->alloc(be, g * M * M);
    kl->A_acc = be->ops->alloc(be, nA);
    kl->G_acc = be->ops->alloc(be, g * M * M);
    kl->EA = be->ops->alloc(be, nA);
    kl->dA = be->ops->alloc(be, g * K);
    kl->EG = be->ops->alloc(be, g * M * M);
    kl->dG = be->ops->alloc(be, g * M);
    kl->Ainv = be->ops->alloc(be, nA);
    kl->Ginv = be->ops->alloc(be, g * M * M);
    kl->next.EA = be->ops->alloc(be, nA);
    kl->next.dA = be->ops->alloc(be, g * K);
    kl->next.EG = be->ops->alloc(be, g * M * M);
    kl->next.dG = be->ops->alloc(be, g * M);
    kl->next.Ainv = be->ops->alloc(be, nA);
    kl->next.Ginv = be->ops->alloc(be, g * M * M);
    kl->w_snap = be->ops->alloc(be, g * M * (size_t)kl->s.k_in);
    if (kl->s.has_bias) kl->b_snap = be->ops->alloc(be, g * M);
    kl->D = be->ops->alloc(be, g * M * K);
    kl->P = be->ops->alloc(be, g * M * K);
    kl->tmp = be->ops->alloc(be, g * M * K);
    /* the weights may come with momentum already (a resumed run fills it later) */
    kfac_darknet_buffers bufs;
    be->ops->darknet_buffers(l, &bufs);
    be->ops->copy(be, kl->w_snap, bufs.weight_updates, g * M * (size_t)kl->s.k_in);
    if (kl->s.has_bias) be->ops->copy(be, kl->b_snap, bufs.bias_updates, g * M);
}

static void free_layer_state(kfac_backend *be, kfac_layer *kl)
{
    float **bufs[] = {&kl->A, &kl->G, &kl->A_acc, &kl->G_acc, &kl->EA, &kl->dA, &kl->EG, &kl->dG, &kl->Ainv,
                      &kl->Ginv, &kl->next.EA, &kl->next.dA, &kl->next.EG, &kl->next.dG, &kl->next.Ainv,
                      &kl->next.Ginv, &kl->w_snap, &kl->b_snap, &kl->D, &kl->P, &kl->tmp};
    size_t i;
    for (i = 0; i < sizeof bufs / sizeof bufs[0]; ++i) {
        be->ops->release(be, *bufs[i]);
        *bufs[i] = NULL;
    }
    free(kl->host_A);
    free(kl->host_G);
}

/* The covered layers' shapes; a layer that cannot be covered is named in `skipped` or
 * stops the program with the file and layer named. */
static void choose_layers(kfac_net *k, network *net, char *skipped, size_t skipped_len)
{
    const char *file = k->cfg.cfgfile;
    int i;
    for (i = 0; i < net->n; ++i) {
        layer *l = &net->layers[i];
        if (l->type != CONVOLUTIONAL && l->type != CONNECTED) continue;
        if (!k->cfg.layer_on[i]) {
            snprintf(skipped + strlen(skipped), skipped_len - strlen(skipped), " %d(kfac=0)", i);
            continue;
        }
        kfac_layer kl = {0};
        kl.index = i;
        kl.s.type = l->type;
        kl.s.has_bias = !l->batch_normalize;
        if (l->type == CONVOLUTIONAL) {
            if (l->xnor || l->binary)
                kfac_user_error("%s layer %d [convolutional] binary/xnor: not supported by K-FAC; add kfac=0 to that layer", file, i);
            if (l->size == 1 && l->stride > 1)
                kfac_user_error("%s layer %d [convolutional] size=1 stride=%d: Darknet's CPU forward ignores the stride of 1x1 convolutions, so K-FAC's patches would not match; add kfac=0 to that layer", file, i, l->stride);
            kl.s.groups = l->groups;
            kl.s.k_in = l->c / l->groups * l->size * l->size;
            kl.s.M = l->n / l->groups;
            kl.s.T = l->out_h * l->out_w;
        } else {
            kl.s.groups = 1;
            kl.s.k_in = l->inputs;
            kl.s.M = l->outputs;
            kl.s.T = 1;
        }
        kl.s.K = kl.s.k_in + kl.s.has_bias;
        kl.s.a_blocks = 1;
        if (kl.s.K > k->cfg.max_dim && !kl.s.has_bias && kl.s.M <= k->cfg.max_dim) {
            /* A too large to keep whole: diagonal blocks over its input channels, the
             * fewest that fit max_dim (a layer with its own bias would need the bias
             * row in every block, and stays on SGD) */
            const int rows = l->type == CONVOLUTIONAL ? l->size * l->size : 1, ch = kl.s.k_in / rows;
            int nb;
            for (nb = 2; nb <= ch; ++nb)
                if (ch % nb == 0 && ch / nb * rows <= k->cfg.max_dim) break;
            if (nb <= ch) kl.s.a_blocks = nb;
        }
        if (kfac_a_dim(&kl.s) > k->cfg.max_dim || kl.s.M > k->cfg.max_dim) {
            snprintf(skipped + strlen(skipped), skipped_len - strlen(skipped), " %d(%dx%d>max_dim)", i, kl.s.K, kl.s.M);
            continue;
        }
        k->layers[k->nlayers++] = kl;
    }
}

void kfac_network_attach(network *net, void *cfgp)
{
    kfac_config *cfg = (kfac_config *)cfgp;
    int i;
    if (cfg->nlayers != net->n)
        kfac_die(__FILE__, __LINE__, "%s: %d layer sections but the network has %d layers", cfg->cfgfile, cfg->nlayers, net->n);
    if (net->adam)
        kfac_user_error("%s [net] adam=1: K-FAC preconditions Darknet's SGD update; set adam=0 or remove [kfac]", cfg->cfgfile);

    kfac_net *k = (kfac_net *)kfac_calloc(1, sizeof *k);
    k->cfg = *cfg;
    free(cfg);
    k->rng = 0x9E3779B97F4A7C15ULL ^ (uint64_t)(uint32_t)k->cfg.seed;
    if (!k->rng) k->rng = 1;
    k->lean_fisher = 1;
    k->layers = (kfac_layer *)kfac_calloc((size_t)net->n, sizeof(kfac_layer));

    char skipped[1024] = "", fisher_note[1024], bn_note[1024];
    choose_layers(k, net, skipped, sizeof skipped);
    kfac_bn_choose(k, net, bn_note, sizeof bn_note, skipped, sizeof skipped);
    /* the lowest layer whose backward the statistics need: a covered layer, or the
     * layer above a batch-norm block (whose hook takes the block's statistics) */
    k->lowest = net->n;
    if (k->nlayers) k->lowest = k->layers[0].index;
    if (k->nbn && k->bn[0].index + 1 < k->lowest) k->lowest = k->bn[0].index + 1;
    kfac_fisher_setup(k, net, fisher_note, sizeof fisher_note);
    if (k->true_fisher) {
        for (i = 0; i < net->n; ++i) {
            size_t n = layer_update_len(&net->layers[i]);
            if (n > k->sink_len) k->sink_len = n;
        }
        if (!k->sink_len) k->sink_len = 1;
    }

    const int nslots = KFAC_SLOTS_PER_LAYER * (k->nlayers + k->nbn > 0 ? k->nlayers + k->nbn : 1);
#ifdef GPU
    if (net->gpu_index >= 0) k->be = kfac_backend_cuda_create(net->gpu_index, nslots);
#endif
    if (!k->be) k->be = kfac_backend_cpu_create(nslots);
    kfac_backend *be = k->be;

    for (i = 0; i < k->nlayers; ++i) alloc_layer(be, &k->layers[i], &net->layers[k->layers[i].index]);
    kfac_bn_alloc(k, net);
    kfac_ekfac_attach(k);
    k->eta = net->decay;
    k->results = (double *)kfac_calloc((size_t)nslots, sizeof(double));
    k->mode = (int *)kfac_calloc((size_t)(k->nlayers > 0 ? k->nlayers : 1), sizeof(int));
    if (k->true_fisher) {
        size_t most = 1, slots = 1;
        k->sink = be->ops->alloc(be, k->sink_len);
        for (i = 0; i < k->nlosses; ++i) {
            const layer *l = &net->layers[k->losses[i].index];
            const size_t n = (size_t)l->outputs * l->batch;
            k->losses[i].delta_save = be->ops->alloc(be, n);
            k->losses[i].len = n;
            if (n > most) most = n;
            if (kfac_loss_slots(l) > slots) slots = kfac_loss_slots(l);
        }
        k->uniforms = (float *)kfac_calloc((size_t)net->batch, sizeof(float));
        k->host_p = (float *)kfac_calloc(most, sizeof(float));
        k->host_delta = (float *)kfac_calloc(most, sizeof(float));
        k->host_len = most;
        k->slot_weight = (float *)kfac_calloc(slots, sizeof(float));
        k->slot_len = slots;
    }
    char step_note[512] = "";
    if (k->cfg.step != KFAC_STEP_KL_CLIP) {
        char why[400];
        if (!kfac_adaptive_attach(k, net, why, sizeof why)) {
            if (k->cfg.step == KFAC_STEP_ADAPTIVE)
                kfac_user_error("%s [kfac] step=adaptive: %s; use step=kl_clip", k->cfg.cfgfile, why);
            snprintf(step_note, sizeof step_note, "K-FAC: step=auto takes the KL-clipped step: %s\n", why);
        }
    }
    kfac_schedule_init(k);
    kfac_worker_attach(k);
    kfac_backward_attach(k, net);
    /* layer->kfac points into k->layers, filled now that the array no longer moves */
    for (i = 0; i < k->nlayers; ++i) net->layers[k->layers[i].index].kfac = &k->layers[i];
    net->kfac = k;

    fprintf(stderr, "K-FAC: ");
    kfac_config_print(&k->cfg, stderr);
    fprintf(stderr, "\nK-FAC: %d layers:", k->nlayers);
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        fprintf(stderr, " %d %s A %d", kl->index, layer_kind(&net->layers[kl->index]), kl->s.K);
        if (kfac_a_blocks(&kl->s) > 1) fprintf(stderr, " in %d blocks of %d", kfac_a_blocks(&kl->s), kfac_a_dim(&kl->s));
        fprintf(stderr, " G %d", kl->s.M);
        if (kl->s.groups > 1) fprintf(stderr, " xgroups%d", kl->s.groups);
        fputc(i + 1 < k->nlayers ? ',' : ';', stderr);
    }
    if (k->nbn) fprintf(stderr, " batch norm:%s;", bn_note);
    fprintf(stderr, " on SGD:%s; Fisher: %s\n", skipped[0] ? skipped : " none", fisher_note);
    fputs(step_note, stderr);
    if (!be->ops->host_memory) fprintf(stderr, "K-FAC: on %s\n", be->description);
}

void kfac_network_free(network *net)
{
    kfac_net *k = kfac_of(net);
    int i;
    if (!k) return;
    kfac_backend *be = k->be;
    /* first: the threads work on the layers' buffers */
    kfac_backward_join(k);
    kfac_clone_free(k->bwd_clone);
    kfac_worker_free(k);
    be->ops->synchronize(be);
    kfac_adaptive_free(k);
    for (i = 0; i < k->nlayers; ++i) {
        net->layers[k->layers[i].index].kfac = NULL;
        free_layer_state(be, &k->layers[i]);
    }
    kfac_bn_free(k);
    kfac_ekfac_free(k);
    be->ops->release(be, k->sink);
    for (i = 0; i < k->nlosses; ++i) be->ops->release(be, k->losses[i].delta_save);
    be->ops->destroy(be);
    free(k->layers);
    free(k->results);
    free(k->mode);
    free(k->uniforms);
    free(k->losses);
    free(k->host_p);
    free(k->host_delta);
    free(k->slot_weight);
    kfac_config_free(&k->cfg);
    free(k);
    net->kfac = NULL;
}

/* ---- for tests and tools ----------------------------------------------------------- */

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

int kfac_layer_factors(const network *net, int index, const float **A, const float **G, int *groups, int *a_dim,
                       int *g_dim)
{
    kfac_layer *kl = (kfac_layer *)net->layers[index].kfac;
    if (!kl) return 0;
    kfac_backend *be = kfac_of(net)->be;
    const size_t nA = kfac_a_len(&kl->s), nG = (size_t)kl->s.groups * kl->s.M * kl->s.M;
    if (be->ops->host_memory) {
        *A = kl->A;
        *G = kl->G;
    } else {
        if (!kl->host_A) kl->host_A = (float *)kfac_calloc(nA, sizeof(float));
        if (!kl->host_G) kl->host_G = (float *)kfac_calloc(nG, sizeof(float));
        be->ops->to_host(be, kl->host_A, kl->A, nA);
        be->ops->to_host(be, kl->host_G, kl->G, nG);
        *A = kl->host_A;
        *G = kl->host_G;
    }
    *groups = kl->s.groups;
    *a_dim = kfac_a_dim(&kl->s);
    *g_dim = kl->s.M;
    return 1;
}
