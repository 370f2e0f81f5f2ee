/* darknet-kfac: the batch-norm blocks, a Fisher block for the scales and shifts of
 * every batch norm (a batch-normalized convolutional or connected layer, or a
 * [batchnorm]); shared/DESIGN.md 6b, issue 13.
 *
 * Batch norm's output is y = gamma_c x_norm + beta_c per channel c, so the gradients
 * of one image n are, with delta the derivative at y (Darknet's delta: the NEGATIVE
 * gradient of the summed loss, after the activation's derivative),
 *
 *     g_n = (sum_t delta_{n,c,t} x_norm_{n,c,t},  sum_t delta_{n,c,t})  per channel c,
 *
 * summed over the image's T positions (x_norm does not depend on gamma or beta, so
 * this is exact although batch norm couples the images), and Darknet's own
 * scale_updates and bias_updates add these up over the batch.  The block is the
 * Fisher of these 2C parameters, F = E_n[g_n g_n^T] (the uncentred second moment, as
 * A and G; with the true Fisher E[g_n] = 0), over the images of the statistics steps,
 * as a running average like A and G.  Its order is interleaved, (gamma_0, beta_0,
 * gamma_1, ...), so that a layer whose 2C exceeds max_dim keeps F's per-channel
 * 2 x 2 diagonal blocks (the scale and shift of one channel together) with the
 * block-diagonal machinery A already has.  The block is independent of the layer's
 * weight block: the Fisher is approximated block-diagonally across them.
 *
 * When: Darknet's backward of the layer overwrites its delta with batch norm's
 * backward, so the statistics are taken just before it, from the hook after the
 * backward of the layer above (kfac_layer_backward of index + 1: by then every reader
 * of the layer's output has added its part, as the backward runs in descending
 * order), on CPU, GPU and cuDNN builds alike.  The backend's bn_inputs applies the
 * activation's derivative as Darknet's backward is about to.
 *
 * Damping (shared/DESIGN.md 4, 4b): P = (F + lambda I)^-1 D block by block with
 * lambda = damping times the mean nonzero eigenvalue of the block (step=kl_clip: what
 * the relative factored damping of A (x) G amounts to, gamma^2 = lA lG =
 * damping mean(d_A) mean(d_G), damping times the mean eigenvalue of A (x) G; a
 * channel block of zeros takes the layer's mean) or lambda = gamma^2 (the adaptive
 * step: the damping C = F + (lambda + eta) I of its model, which a single block takes
 * whole, without factoring; at least the floor its factors get, damping times the
 * block's mean).  The update integration is the driver's (DESIGN.md 4): D = [scale_updates | bias_updates] less
 * their snapshots, and nu P - D added back, so Darknet's update (its rate, momentum
 * and no decay on scales and shifts) applies the preconditioned gradient. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kfac_internal.h"

static int has_bn(const layer *l)
{
    return l->type == BATCHNORM || ((l->type == CONVOLUTIONAL || l->type == CONNECTED) && l->batch_normalize);
}

static const char *kind_of(const layer *l)
{
    return l->type == CONVOLUTIONAL ? "conv" : l->type == CONNECTED ? "conn" : "batchnorm";
}

/* ---- attach and free ------------------------------------------------------------------- */

void kfac_bn_choose(kfac_net *k, const network *net, char *note, size_t note_len, char *skipped, size_t skipped_len)
{
    int i;
    size_t used = 0;
    note[0] = '\0';
    k->bn = (kfac_bn *)kfac_calloc((size_t)net->n, sizeof(kfac_bn));
    k->bn_of = (int *)kfac_calloc((size_t)net->n, sizeof(int));
    for (i = 0; i < net->n; ++i) {
        const layer *l = &net->layers[i];
        k->bn_of[i] = -1;
        if (!has_bn(l)) continue;
        if (!k->cfg.layer_on[i]) {
            /* a conv or connected layer with kfac=0 is named once, by choose_layers */
            if (l->type == BATCHNORM)
                snprintf(skipped + strlen(skipped), skipped_len - strlen(skipped), " %d(kfac=0)", i);
            continue;
        }
        if (i == net->n - 1) {
            /* its delta is complete only when its own backward starts: no hook */
            snprintf(skipped + strlen(skipped), skipped_len - strlen(skipped), " %d(batch norm of the last layer)", i);
            continue;
        }
        kfac_bn *b = &k->bn[k->nbn];
        const int C = l->out_c;
        b->index = i;
        b->s.type = b->u.type = BATCHNORM;
        b->s.groups = b->u.groups = 1;
        b->s.M = 1;
        b->s.K = b->s.k_in = 2 * C;
        b->s.T = b->u.T = l->out_h * l->out_w;
        b->s.a_blocks = 2 * C > k->cfg.max_dim ? C : 1;
        b->u.M = C;
        b->u.k_in = 1;
        b->u.has_bias = 1;
        b->u.K = 2;
        b->u.a_blocks = 1;
        k->bn_of[i] = k->nbn++;
        used += (size_t)snprintf(note + used, used < note_len ? note_len - used : 0, "%s %d %s F %d", k->nbn > 1 ? "," : "",
                                 i, kind_of(l), 2 * C);
        if (b->s.a_blocks > 1)
            used += (size_t)snprintf(note + used, used < note_len ? note_len - used : 0, " in %d blocks of 2", C);
    }
}

void kfac_bn_alloc(kfac_net *k, const network *net)
{
    kfac_backend *be = k->be;
    int j;
    size_t most = 1, kmax = 1;
    for (j = 0; j < k->nbn; ++j) {
        kfac_bn *b = &k->bn[j];
        const layer *l = &net->layers[b->index];
        const size_t n = kfac_a_len(&b->s), K = (size_t)b->s.K, C = K / 2;
        kfac_darknet_buffers bufs;
        b->F = be->ops->alloc(be, n);
        b->F_acc = be->ops->alloc(be, n);
        b->E = be->ops->alloc(be, n);
        b->d = be->ops->alloc(be, K);
        b->Finv = be->ops->alloc(be, n);
        b->s_snap = be->ops->alloc(be, C);
        b->b_snap = be->ops->alloc(be, C);
        b->D = be->ops->alloc(be, K);
        b->P = be->ops->alloc(be, K);
        b->tmp = be->ops->alloc(be, K);
        b->theta = be->ops->alloc(be, K);
        b->prev = be->ops->alloc(be, K);
        b->s_save = be->ops->alloc(be, C);
        b->b_save = be->ops->alloc(be, C);
        b->s_pre = be->ops->alloc(be, C);
        b->b_pre = be->ops->alloc(be, C);
        /* the buffers may hold momentum already (a resumed run fills it later) */
        be->ops->darknet_buffers(l, &bufs);
        be->ops->copy(be, b->s_snap, bufs.scale_updates, C);
        be->ops->copy(be, b->b_snap, bufs.bias_updates, C);
        if ((size_t)l->outputs * l->batch > most) most = (size_t)l->outputs * l->batch;
    }
    for (j = 0; j < k->nbn; ++j)
        if ((size_t)k->bn[j].s.K > kmax) kmax = (size_t)k->bn[j].s.K;
    k->bn_host = (float *)kfac_calloc(kmax, sizeof(float));
    k->bn_lambda = (float *)kfac_calloc(kmax, sizeof(float));
    if (k->nbn) {
        const float one = 1.0f;
        k->bn_delta = be->ops->alloc(be, most);
        k->bn_xnorm = be->ops->alloc(be, most);
        k->bn_len = most;
        k->one = be->ops->alloc(be, 1);
        be->ops->from_host(be, k->one, &one, 1);
    }
}

void kfac_bn_free(kfac_net *k)
{
    kfac_backend *be = k->be;
    int j;
    for (j = 0; j < k->nbn; ++j) {
        kfac_bn *b = &k->bn[j];
        float *bufs[] = {b->F, b->F_acc, b->E, b->d, b->Finv, b->s_snap, b->b_snap, b->D, b->P, b->tmp, b->theta, b->prev,
                         b->s_save, b->b_save, b->s_pre, b->b_pre};
        size_t i;
        for (i = 0; i < sizeof bufs / sizeof bufs[0]; ++i) be->ops->release(be, bufs[i]);
        free(b->host_F);
    }
    be->ops->release(be, k->bn_delta);
    be->ops->release(be, k->bn_xnorm);
    be->ops->release(be, k->one);
    free(k->bn);
    free(k->bn_of);
    free(k->bn_host);
    free(k->bn_lambda);
    k->bn = NULL;
    k->bn_of = NULL;
    k->nbn = 0;
}

/* ---- statistics -------------------------------------------------------------------------- */

void kfac_bn_capture(kfac_net *k, network *net, int index)
{
    if (index < 0 || !(k->capture & KFAC_CAPTURE_G) || k->bn_of[index] < 0) return;
    kfac_backend *be = k->be;
    kfac_bn *b = &k->bn[k->bn_of[index]];
    const layer *l = &net->layers[index];
    const size_t n = (size_t)l->outputs * l->batch;
    kfac_phase_begin(k, KFAC_PHASE_STATS);
    /* resize_network (random=1 in Darknet's trainers) changes a conv layer's size */
    b->s.T = b->u.T = l->out_h * l->out_w;
    if (n > k->bn_len) {
        be->ops->release(be, k->bn_delta);
        be->ops->release(be, k->bn_xnorm);
        k->bn_delta = be->ops->alloc(be, n);
        k->bn_xnorm = be->ops->alloc(be, n);
        k->bn_len = n;
    }
    be->ops->bn_inputs(be, l, k->bn_delta, k->bn_xnorm);
    be->ops->capture_bn(be, &b->s, l->batch, k->bn_delta, k->bn_xnorm, b->F_acc);
    b->n_acc += l->batch;
    kfac_phase_end(k);
}

void kfac_bn_fold(kfac_net *k)
{
    kfac_backend *be = k->be;
    int j, any = 0;
    for (j = 0; j < k->nbn; ++j) {
        if (!k->bn[j].n_acc) continue;
        be->ops->flag_nonfinite(be, k->bn[j].F_acc, kfac_a_len(&k->bn[j].s), j);
        any = 1;
    }
    if (!any) return;
    be->ops->results(be, k->results, k->nbn);
    for (j = 0; j < k->nbn; ++j) {
        kfac_bn *b = &k->bn[j];
        if (!b->n_acc) continue;
        if (k->results[j] != 0) {
            if (!b->bad_factors_logged++)
                kfac_log("layer %d: non-finite batch-norm statistics, batch skipped (the block keeps its last good value; logged once)",
                         b->index);
            be->ops->zero(be, b->F_acc, kfac_a_len(&b->s));
        } else {
            /* the weight of kfac_fold_weight: the plain mean of the first batches */
            const float mean = 1.0f / (float)(b->have_factors + 1), w = mean > 1.0f - k->cfg.decay ? mean : 1.0f - k->cfg.decay;
            be->ops->fold(be, b->F, b->F_acc, kfac_a_dim(&b->s), kfac_a_count(&b->s), 1.0f - w, w, 1.0f / (float)b->n_acc);
            ++b->have_factors;
        }
        b->n_acc = 0;
    }
}

/* ---- decompositions and damping ------------------------------------------------------------ */

int kfac_bn_decompose(kfac_net *k, kfac_bn *b)
{
    kfac_backend *be = k->be;
    const size_t n = kfac_a_len(&b->s);
    double bad;
    int info;
    float *t;
    if (!b->have_factors) return 0;
    be->ops->flag_nonfinite(be, b->F, n, 0);
    be->ops->results(be, &bad, 1);
    /* into Finv and tmp, so that a failure leaves E and d as they were; then swapped
     * in, and Finv rebuilt from them in either case */
    b->inv_damping = 0;
    info = bad != 0 ? KFAC_EIGH_NONFINITE : be->ops->eigh(be, b->F, kfac_a_dim(&b->s), kfac_a_count(&b->s), b->Finv, b->tmp);
    if (info != 0) {
        if (!b->bad_eig_logged++)
            kfac_log("layer %d: batch-norm block: %s, keeping the last good inverse (logged once)", b->index,
                     bad != 0 ? "non-finite statistics" : "eigendecomposition failed");
        return -1;
    }
    t = b->E, b->E = b->Finv, b->Finv = t;
    t = b->d, b->d = b->tmp, b->tmp = t;
    b->have_inverse = 1;
    return 0;
}

void kfac_bn_refresh(kfac_net *k, int refresh)
{
    int j;
    for (j = 0; j < k->nbn; ++j) {
        kfac_bn *b = &k->bn[j];
        if (k->identity || !b->have_factors || !(refresh || !b->have_inverse)) continue;
        /* with replicas the blocks are decomposed at the next sync */
        if (k->replicas > 1) k->inverse_due = 1;
        else kfac_bn_decompose(k, b);
    }
}

/* Finv = (F + lambda I)^-1 block by block (see the top of the file); inv_ok 0 when F
 * is all zeros. */
static void damped_inverse(kfac_net *k, kfac_bn *b)
{
    kfac_backend *be = k->be;
    const int nb = kfac_a_count(&b->s), dim = kfac_a_dim(&b->s);
    const kfac_damping dmp = kfac_damping_now(k);
    const float key = dmp.key;
    int j;
    be->ops->to_host(be, k->bn_host, b->d, (size_t)b->s.K);
    const float all = kfac_eig_mean(k->bn_host, b->s.K);
    for (j = 0; j < nb; ++j) {
        const float mean = kfac_eig_mean(k->bn_host + (size_t)j * dim, dim), m = mean > 0 ? mean : all;
        /* the adaptive step's gamma^2, at least the floor its factors get (kfac_inverses.c:
         * sqrt(floor) times each factor's mean, so floor times the block's) */
        k->bn_lambda[j] = dmp.tikhonov ? fmaxf(key * key, dmp.floor * m) : k->cfg.damping * m;
    }
    b->inv_ok = all > 0;
    if (b->inv_ok) be->ops->damped_inverse(be, b->E, b->d, dim, nb, k->bn_lambda, b->Finv);
    b->inv_damping = key;
}

/* P = D Finv: the backend's precondition with the 1 x 1 G = [1] */
static void precondition(kfac_net *k, kfac_bn *b)
{
    kfac_backend *be = k->be;
    if (b->inv_damping != kfac_damping_now(k).key) damped_inverse(k, b);
    if (!b->inv_ok) {
        be->ops->copy(be, b->P, b->D, (size_t)b->s.K);
        return;
    }
    be->ops->precondition(be, &b->s, k->one, b->Finv, b->D, b->tmp, b->P);
}

/* ---- the step ------------------------------------------------------------------------------ */

void kfac_bn_step(kfac_net *k, network *net, int on, int slot0)
{
    kfac_backend *be = k->be;
    int j;
    for (j = 0; j < k->nbn; ++j) {
        kfac_bn *b = &k->bn[j];
        const size_t K = (size_t)b->s.K;
        const int plain = !k->identity && (!on || !b->have_inverse), slot = slot0 + KFAC_SLOTS_PER_LAYER * j;
        kfac_darknet_buffers bufs;
        be->ops->darknet_buffers(&net->layers[b->index], &bufs);
        be->ops->gather(be, &b->u, bufs.scale_updates, b->s_snap, bufs.bias_updates, b->b_snap, b->D);
        if (k->identity || plain) be->ops->copy(be, b->P, b->D, K);
        else precondition(k, b);
        be->ops->dot(be, b->P, b->D, K, slot);
        be->ops->flag_nonfinite(be, b->D, K, slot + 1);
        be->ops->flag_nonfinite(be, b->P, K, slot + 2);
        b->mode = plain ? KFAC_MODE_PLAIN : KFAC_MODE_SCALED;
    }
}

double kfac_bn_step_results(kfac_net *k, network *net, const update_args *a, const double *results)
{
    double quad = 0;
    int j;
    for (j = 0; j < k->nbn; ++j) {
        kfac_bn *b = &k->bn[j];
        const double *r = results + KFAC_SLOTS_PER_LAYER * j;
        if (r[1] != 0) {
            if (!b->bad_grad_logged++)
                kfac_log("layer %d: non-finite batch-norm gradient, this update's gradient dropped for its scales and shifts (logged once)",
                         b->index);
            b->mode = KFAC_MODE_SNAPSHOT;
        } else if (b->mode == KFAC_MODE_SCALED && !k->identity) {
            if (r[2] != 0) {
                if (!b->bad_grad_logged++)
                    kfac_log("layer %d: non-finite preconditioned batch-norm gradient, plain SGD for this update (logged once)",
                             b->index);
                b->mode = KFAC_MODE_PLAIN;
            } else {
                quad += kfac_kl_term(a, &net->layers[b->index], r[0]);
            }
        }
    }
    return quad;
}

void kfac_bn_write_back(kfac_net *k, network *net, float nu)
{
    kfac_backend *be = k->be;
    int j;
    for (j = 0; j < k->nbn; ++j) {
        kfac_bn *b = &k->bn[j];
        const size_t C = (size_t)b->u.M;
        kfac_darknet_buffers bufs;
        be->ops->darknet_buffers(&net->layers[b->index], &bufs);
        if (b->mode == KFAC_MODE_SNAPSHOT) {
            /* copied: adding 0 - D would leave NaN + (0 - NaN) = NaN */
            be->ops->copy(be, bufs.scale_updates, b->s_snap, C);
            be->ops->copy(be, bufs.bias_updates, b->b_snap, C);
        } else if (b->mode == KFAC_MODE_SCALED) {
            be->ops->scatter(be, &b->u, bufs.scale_updates, bufs.bias_updates, b->P, b->D, nu);
        }
        /* KFAC_MODE_PLAIN: Darknet's own gradient stays */
    }
}

void kfac_bn_snapshot(kfac_net *k, network *net)
{
    kfac_backend *be = k->be;
    int j;
    for (j = 0; j < k->nbn; ++j) {
        kfac_bn *b = &k->bn[j];
        kfac_darknet_buffers bufs;
        be->ops->darknet_buffers(&net->layers[b->index], &bufs);
        be->ops->copy(be, b->s_snap, bufs.scale_updates, (size_t)b->u.M);
        be->ops->copy(be, b->b_snap, bufs.bias_updates, (size_t)b->u.M);
    }
}

/* ---- the adaptive step (kfac_adaptive.c) ---------------------------------------------------------- */

void kfac_bn_adaptive_direction(kfac_net *k, network *net, int on, double B, kfac_bn_sums *sums)
{
    kfac_backend *be = k->be;
    int j;
    memset(sums, 0, sizeof *sums);
    for (j = 0; j < k->nbn; ++j) {
        kfac_bn *b = &k->bn[j];
        const size_t K = (size_t)b->s.K, C = K / 2;
        const int slot = KFAC_SLOTS_PER_LAYER * j;
        kfac_darknet_buffers bufs;
        be->ops->darknet_buffers(&net->layers[b->index], &bufs);
        be->ops->gather(be, &b->u, bufs.scale_updates, b->s_snap, bufs.bias_updates, b->b_snap, b->D);
        be->ops->flag_nonfinite(be, b->D, K, slot + 6);
        b->adaptive = on && b->have_inverse;
        if (!b->adaptive) continue;
        be->ops->copy(be, b->s_save, bufs.scales, C);
        be->ops->copy(be, b->b_save, bufs.biases, C);
        be->ops->zero(be, b->tmp, K);
        be->ops->gather(be, &b->u, bufs.scales, b->tmp, bufs.biases, b->tmp, b->theta);
        precondition(k, b);
        be->ops->scale(be, (float)(1.0 / B), b->P, K); /* P is now Delta */
        be->ops->flag_nonfinite(be, b->P, K, slot + 7);
        be->ops->dot(be, b->D, b->P, K, slot);
        be->ops->dot(be, b->D, b->prev, K, slot + 1);
        be->ops->dot(be, b->P, b->P, K, slot + 2);
        be->ops->dot(be, b->P, b->prev, K, slot + 3);
        be->ops->dot(be, b->prev, b->prev, K, slot + 4);
        be->ops->dot(be, b->theta, b->theta, K, slot + 5);
    }
    if (!k->nbn) return;
    be->ops->results(be, k->results, KFAC_SLOTS_PER_LAYER * k->nbn);
    for (j = 0; j < k->nbn; ++j) {
        kfac_bn *b = &k->bn[j];
        const double *r = k->results + KFAC_SLOTS_PER_LAYER * j;
        if (r[6] != 0) {
            if (!b->bad_grad_logged++)
                kfac_log("layer %d: non-finite batch-norm gradient, this update's gradient dropped for its scales and shifts (logged once)",
                         b->index);
            b->mode = KFAC_MODE_SNAPSHOT;
            b->adaptive = 0;
            continue;
        }
        if (!b->adaptive) {
            b->mode = KFAC_MODE_PLAIN;
            continue;
        }
        if (r[7] != 0) {
            if (!b->bad_grad_logged++)
                kfac_log("layer %d: non-finite preconditioned batch-norm gradient, plain SGD for this update (logged once)",
                         b->index);
            b->mode = KFAC_MODE_PLAIN;
            b->adaptive = 0;
            continue;
        }
        b->mode = KFAC_MODE_ADAPTIVE;
        sums->any = 1;
        /* grad = -D/B */
        sums->gd -= r[0] / B;
        sums->gp -= r[1] / B;
        sums->dd += r[2];
        sums->dp += r[3];
        sums->pp += r[4];
        sums->tt += r[5];
    }
}

void kfac_bn_adaptive_move(kfac_net *k, network *net, float scale)
{
    kfac_backend *be = k->be;
    int j;
    if (k->bn_dir == KFAC_BN_DIR_NONE) return;
    for (j = 0; j < k->nbn; ++j) {
        kfac_bn *b = &k->bn[j];
        kfac_darknet_buffers bufs;
        if (!b->adaptive) continue;
        be->ops->darknet_buffers(&net->layers[b->index], &bufs);
        /* scatter adds scale*v - 0: tmp holds zeros after each use here */
        be->ops->zero(be, b->tmp, (size_t)b->s.K);
        be->ops->scatter(be, &b->u, bufs.scales, bufs.biases, k->bn_dir == KFAC_BN_DIR_DELTA ? b->P : b->prev, b->tmp,
                         scale);
    }
}

void kfac_bn_adaptive_restore(kfac_net *k, network *net)
{
    kfac_backend *be = k->be;
    int j;
    if (k->bn_dir == KFAC_BN_DIR_NONE) return;
    for (j = 0; j < k->nbn; ++j) {
        kfac_bn *b = &k->bn[j];
        kfac_darknet_buffers bufs;
        if (!b->adaptive) continue;
        be->ops->darknet_buffers(&net->layers[b->index], &bufs);
        be->ops->copy(be, bufs.scales, b->s_save, (size_t)b->u.M);
        be->ops->copy(be, bufs.biases, b->b_save, (size_t)b->u.M);
    }
}

void kfac_bn_adaptive_combine(kfac_net *k, float a, float bcoef)
{
    kfac_backend *be = k->be;
    int j;
    for (j = 0; j < k->nbn; ++j) {
        kfac_bn *b = &k->bn[j];
        if (!b->adaptive) continue;
        be->ops->scale(be, a, b->prev, (size_t)b->s.K);
        be->ops->axpy(be, bcoef, b->P, b->prev, (size_t)b->s.K);
    }
}

void kfac_bn_adaptive_forget(kfac_net *k)
{
    int j;
    for (j = 0; j < k->nbn; ++j)
        if (k->bn[j].adaptive) k->be->ops->zero(k->be, k->bn[j].prev, (size_t)k->bn[j].s.K);
}

void kfac_bn_adaptive_pend(kfac_net *k)
{
    int j;
    for (j = 0; j < k->nbn; ++j) k->bn[j].pend = k->bn[j].adaptive;
}

void kfac_bn_adaptive_swap_pre(kfac_net *k, network *net, int to_pre)
{
    kfac_backend *be = k->be;
    int j;
    for (j = 0; j < k->nbn; ++j) {
        kfac_bn *b = &k->bn[j];
        const size_t C = (size_t)b->u.M;
        kfac_darknet_buffers bufs;
        if (!b->pend) continue;
        be->ops->darknet_buffers(&net->layers[b->index], &bufs);
        if (to_pre) {
            be->ops->copy(be, b->s_save, bufs.scales, C);
            be->ops->copy(be, b->b_save, bufs.biases, C);
            be->ops->copy(be, bufs.scales, b->s_pre, C);
            be->ops->copy(be, bufs.biases, b->b_pre, C);
        } else {
            be->ops->copy(be, bufs.scales, b->s_save, C);
            be->ops->copy(be, bufs.biases, b->b_save, C);
            b->pend = 0;
        }
    }
}

void kfac_bn_adaptive_updated(kfac_net *k, network *net)
{
    kfac_backend *be = k->be;
    int j;
    for (j = 0; j < k->nbn; ++j) {
        kfac_bn *b = &k->bn[j];
        const size_t C = (size_t)b->u.M;
        kfac_darknet_buffers bufs;
        if (b->mode != KFAC_MODE_ADAPTIVE) continue;
        be->ops->darknet_buffers(&net->layers[b->index], &bufs);
        if (b->pend) {
            be->ops->copy(be, b->s_pre, b->s_save, C);
            be->ops->copy(be, b->b_pre, b->b_save, C);
        }
        /* Darknet's update of them (its rate and momentum) is replaced by the saved
         * values + delta, and their accumulators start the next update from 0 */
        be->ops->copy(be, bufs.scales, b->s_save, C);
        be->ops->copy(be, bufs.biases, b->b_save, C);
        be->ops->zero(be, b->tmp, (size_t)b->s.K);
        be->ops->scatter(be, &b->u, bufs.scales, bufs.biases, b->prev, b->tmp, 1.0f);
        be->ops->zero(be, bufs.scale_updates, C);
        be->ops->zero(be, bufs.bias_updates, C);
    }
}

/* ---- replicas (kfac_sync.c) ------------------------------------------------------------------ */

void kfac_bn_sync(kfac_net **ks, kfac_backend **bs, int n, int decompose)
{
    const kfac_net *k0 = ks[0];
    float **bufs = (float **)kfac_calloc((size_t)n, sizeof(float *));
    int i, j;
    for (j = 0; j < k0->nbn; ++j) {
        int all = 1;
        for (i = 0; i < n; ++i) all &= ks[i]->bn[j].have_factors != 0;
        if (!all) continue;
        for (i = 0; i < n; ++i) bufs[i] = ks[i]->bn[j].F;
        bs[0]->ops->average(bs, bufs, n, kfac_a_len(&k0->bn[j].s));
    }
    free(bufs);
    /* each replica decomposes the same averaged F (small: 2C at most max_dim) */
    for (i = 0; decompose && i < n; ++i) {
        bs[i]->ops->enter(bs[i]);
        for (j = 0; j < ks[i]->nbn; ++j) kfac_bn_decompose(ks[i], &ks[i]->bn[j]);
    }
}

int kfac_bn_need_inverse(const kfac_net *k)
{
    int j, need = 0;
    for (j = 0; j < k->nbn; ++j) need |= k->bn[j].have_factors && !k->bn[j].have_inverse;
    return need;
}

/* ---- for tests ------------------------------------------------------------------------------ */

int kfac_bn_factor(const network *net, int index, const float **F, int *blocks, int *dim)
{
    kfac_net *k = kfac_of(net);
    if (!k || index < 0 || index >= net->n || k->bn_of[index] < 0) return 0;
    kfac_bn *b = &k->bn[k->bn_of[index]];
    kfac_backend *be = k->be;
    const size_t n = kfac_a_len(&b->s);
    if (be->ops->host_memory) {
        *F = b->F;
    } else {
        if (!b->host_F) b->host_F = (float *)kfac_calloc(n, sizeof(float));
        be->ops->to_host(be, b->host_F, b->F, n);
        *F = b->host_F;
    }
    *blocks = kfac_a_count(&b->s);
    *dim = kfac_a_dim(&b->s);
    return 1;
}
