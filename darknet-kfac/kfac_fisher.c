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
 * Each loss layer's targets come from its kind's entry (kfac_losses.c), drawn so that
 * the sampled delta's outer product has the loss's output Fisher as its expectation.
 * Loss layers without a faithful sampler keep their data-label delta in the pass (the
 * empirical Fisher for their term; the cross terms with sampled ones vanish in
 * expectation) and the start line says which.
 *
 * The pass needs only the deltas, not the weight gradients, and nothing below the
 * lowest covered layer: a backend with a deltas-only layer backward (the CPU's) skips
 * those parts, where Darknet's own gemm for the weight gradients was most of the
 * pass's time.  Darknet's GPU backward has no such hook and runs whole. */
#include <stdlib.h>
#include "kfac_internal.h"

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
        kfac_loss_kind kind = kfac_loss_sampled(&net->layers[i], &why);
        if (kind == KFAC_LOSS_NONE) continue;
        k->losses[k->nlosses].index = i;
        k->losses[k->nlosses].kind = kind;
        ++k->nlosses;
        sampled += kind != KFAC_LOSS_EMPIRICAL;
        used += (size_t)snprintf(note + used, used < note_len ? note_len - used : 0, "%s layer %d: %s%s%s",
                                 k->nlosses > 1 ? ";" : "", i,
                                 why ? "empirical" : kfac_loss_ops_of(kind)->targets, why ? " (" : "", why ? why : "");
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
        const size_t y = kfac_loss_slots(l);
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
        if (y > k->slot_len) {
            free(k->slot_weight);
            k->slot_weight = (float *)kfac_calloc(y, sizeof(float));
            k->slot_len = y;
        }
    }
}

/* Writes every sampled loss layer's sample into its delta, every loss layer's real
 * delta saved first. */
static void sample_losses(kfac_net *k, network *net)
{
    kfac_backend *be = k->be;
    int i;
    fit_losses(k, net);
    for (i = 0; i < k->nlosses; ++i) {
        kfac_loss *ls = &k->losses[i];
        layer *l = &net->layers[ls->index];
        const size_t n = (size_t)l->outputs * l->batch;
        kfac_darknet_buffers b;
        be->ops->darknet_buffers(l, &b);
        be->ops->copy(be, ls->delta_save, b.delta, n);
        if (ls->kind == KFAC_LOSS_EMPIRICAL) continue; /* its data-label delta stays */
        const kfac_loss_ops *op = kfac_loss_ops_of(ls->kind);
        if (k->dist) kfac_dist_sample_begin(k, l, ls->kind); /* this rank's share of the draws */
        if (op->sample_backend) {
            op->sample_backend(k, l, &b);
        } else {
            /* on the host: the real delta says which outputs carry a term */
            kfac_loss_view v = {net, l, k->host_p, k->host_delta, NULL};
            be->ops->to_host(be, k->host_p, b.output, n);
            be->ops->to_host(be, k->host_delta, b.delta, n);
            if (op->assign) {
                op->assign(l, net, k->host_p, k->slot_weight);
                v.weight = k->slot_weight;
            }
            op->sample(&k->rng, &v, k->host_delta);
            be->ops->from_host(be, b.delta, k->host_delta, n);
        }
        if (k->dist) kfac_dist_sample_end(k, l, ls->kind);
    }
}

/* ---- Darknet's backward pass beside the true-Fisher pass (backward_thread) ---------- */

static void *backward_main(void *arg)
{
    kfac_clone_backward((kfac_clone *)arg);
    return NULL;
}

/* On a statistics update's subdivision the true-Fisher pass is a second backward pass
 * over the same forward state; Darknet's own one needs nothing from it (the pass
 * leaves every delta as the forward pass did and captures nothing after it), so the
 * two run at once: Darknet's on a copy of the net with its own deltas, writing the
 * update accumulators, while the pass writes into the sink.  Same arithmetic in the
 * same order on the same inputs: the same bits as one after the other. */
static void backward_launch(kfac_net *k, network *net)
{
    if (!k->bwd_clone) return;
    kfac_backward_join(k);
    kfac_clone_sync(k->bwd_clone, net);
    if (pthread_create(&k->bwd_thread, NULL, backward_main, k->bwd_clone) != 0) {
        kfac_log("backward_thread: no second thread could be started; Darknet's backward runs after the true-Fisher pass");
        kfac_clone_free(k->bwd_clone);
        k->bwd_clone = NULL;
        return;
    }
    k->bwd_running = 1;
    ++k->bwd_taken;
}

void kfac_backward_join(kfac_net *k)
{
    if (!k->bwd_running) return;
    pthread_join(k->bwd_thread, NULL);
    k->bwd_running = 0;
}

int kfac_network_backward(network *net)
{
    kfac_net *k = kfac_of(net);
    const int ran = k->bwd_running;
    /* waited for here, after the true-Fisher pass: train_network_datum then returns
     * with every buffer as after its own backward pass, for whoever looks next */
    kfac_backward_join(k);
    return ran;
}

void kfac_backward_attach(kfac_net *k, network *net)
{
    char why[200];
    if (!k->cfg.backward_thread || !k->be->ops->host_memory || !k->true_fisher) return;
    if (!kfac_clone_supported(net, why, sizeof why)) {
        kfac_log("backward_thread: %s; Darknet's backward runs after the true-Fisher pass", why);
        return;
    }
    k->bwd_clone = kfac_clone_new(KFAC_CLONE_BACKWARD);
}

void kfac_network_fisher_pass(network *net)
{
    kfac_net *k = kfac_of(net);
    kfac_backend *be = k->be;
    int i;
    /* first: the adaptive step's momentum probe then runs beside this pass and the
     * backward pass */
    kfac_adaptive_train_forward(k, net);
    k->capture = KFAC_CAPTURE_NONE;
    if (!net->train || !kfac_stats_step(k) || k->nlayers + k->nbn == 0) return;
    kfac_ekfac_begin_update(k);
    if (!k->true_fisher) {
        k->capture = KFAC_CAPTURE_A | KFAC_CAPTURE_G; /* from the real backward */
        return;
    }
    /* Darknet's own backward of this subdivision starts beside the pass, from the
     * loss layers' deltas before sample_losses replaces them (kfac_network_backward) */
    backward_launch(k, net);
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
