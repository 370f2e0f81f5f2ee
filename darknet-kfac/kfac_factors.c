/* darknet-kfac: Kronecker factors on the CPU (DESIGN.md 4; KFC, Grosse & Martens 2016).
 *
 *   A = E_i[ sum_t a_t a_t^T ]          K x K, a_t the patch at location t (+1 for bias)
 *   G = E_i[ (1/T) sum_t g_t g_t^T ]     M x M, g_t = l.delta at location t
 *
 * summed over every image of an update (all subdivisions) and folded into running
 * averages X <- decay*X + (1-decay)*X_batch on statistics steps (the plain mean while
 * there are fewer than 1/(1-decay) batches: kfac_fold_weight).  The products run in
 * OpenBLAS (ssyrk); patches are built here because net.workspace does not hold them
 * at backward time. */
#include <cblas.h>
#include <string.h>
#include "kfac_internal.h"

/* Largest patch buffer, in floats (128 MiB): big layers are done in chunks of images. */
#define KFAC_PATCH_BUDGET ((size_t)32 << 20)

int kfac_stats_step(const kfac_net *k)
{
    return k->step % k->cfg.stats_interval == 0;
}

/* im2col of one image and group into columns [col0, col0+T) of a buffer whose rows
 * are ld floats long: out is K x ld, row r = (channel, ky, kx), plus a row of ones
 * when the layer's bias is folded into A.  Same indexing as Darknet's im2col_cpu. */
static void patches_one_image(const layer *l, const float *im, int has_bias, float *out,
                              size_t ld, size_t col0)
{
    int c, ky, kx, oy, ox;
    const int cg = l->c / l->groups, s = l->size;
    for (c = 0; c < cg; ++c) {
        for (ky = 0; ky < s; ++ky) {
            for (kx = 0; kx < s; ++kx) {
                float *row = out + (size_t)((c * s + ky) * s + kx) * ld + col0;
                for (oy = 0; oy < l->out_h; ++oy) {
                    int iy = oy * l->stride + ky - l->pad;
                    for (ox = 0; ox < l->out_w; ++ox) {
                        int ix = ox * l->stride + kx - l->pad;
                        int inside = iy >= 0 && iy < l->h && ix >= 0 && ix < l->w;
                        row[oy * l->out_w + ox] = inside ? im[((size_t)c * l->h + iy) * l->w + ix] : 0.0f;
                    }
                }
            }
        }
    }
    if (has_bias) {
        float *row = out + (size_t)(cg * s * s) * ld + col0;
        int t;
        for (t = 0; t < l->out_h * l->out_w; ++t) row[t] = 1.0f;
    }
}

static float *patch_buffer(kfac_net *k, size_t len)
{
    if (len > k->patches_len) {
        free(k->patches);
        k->patches = (float *)kfac_calloc(len, sizeof(float));
        k->patches_len = len;
    }
    return k->patches;
}

void kfac_factors_capture_A_cpu(kfac_net *k, kfac_layer *kl, const layer *l, const float *input)
{
    const int K = kl->K, T = kl->T, B = l->batch;
    if (kl->type == CONNECTED) {
        /* X is B x K: the inputs with a 1 appended; A_acc += X^T X */
        float *X = patch_buffer(k, (size_t)B * K);
        int b;
        for (b = 0; b < B; ++b) {
            memcpy(X + (size_t)b * K, input + (size_t)b * l->inputs, (size_t)l->inputs * sizeof(float));
            if (kl->has_bias) X[(size_t)b * K + l->inputs] = 1.0f;
        }
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, K, B, 1.0f, X, K, 1.0f, kl->A_acc, K);
    } else {
        size_t per_image = (size_t)K * T;
        int nb = (int)(KFAC_PATCH_BUDGET / per_image);
        if (nb < 1) nb = 1;
        if (nb > B) nb = B;
        float *P = patch_buffer(k, per_image * nb);
        const size_t group_in = (size_t)(l->c / l->groups) * l->h * l->w;
        int g, b0, b;
        for (g = 0; g < kl->groups; ++g) {
            float *Ag = kl->A_acc + (size_t)g * K * K;
            for (b0 = 0; b0 < B; b0 += nb) {
                int n = B - b0 < nb ? B - b0 : nb;
                size_t ld = (size_t)n * T; /* P is K x (n*T) */
                for (b = 0; b < n; ++b) {
                    const float *im = input + ((size_t)(b0 + b) * kl->groups + g) * group_in;
                    patches_one_image(l, im, kl->has_bias, P, ld, (size_t)b * T);
                }
                cblas_ssyrk(CblasRowMajor, CblasUpper, CblasNoTrans, K, (int)ld, 1.0f, P, (int)ld, 1.0f, Ag, K);
            }
        }
    }
    kl->n_acc_A += B;
}

void kfac_factors_capture_G_cpu(kfac_layer *kl, const layer *l)
{
    const int M = kl->M, T = kl->T, B = l->batch;
    if (kl->type == CONNECTED) {
        /* delta is B x M: G_acc += delta^T delta */
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, M, B, 1.0f, l->delta, M, 1.0f, kl->G_acc, M);
    } else {
        int g, b;
        for (g = 0; g < kl->groups; ++g) {
            float *Gg = kl->G_acc + (size_t)g * M * M;
            for (b = 0; b < B; ++b) {
                /* image b, group g: M x T block of the NCHW delta */
                const float *d = l->delta + ((size_t)b * kl->groups + g) * M * T;
                cblas_ssyrk(CblasRowMajor, CblasUpper, CblasNoTrans, M, T, 1.0f / T, d, T, 1.0f, Gg, M);
            }
        }
    }
    kl->n_acc_G += B;
}

/* X <- (1-w)*X + w*(acc/n), from the upper triangle of acc, kept full. */
static void fold_one(float *X, float *acc, int dim, int groups, int n, float w)
{
    int g, i, j;
    float w_new = w, w_old = 1.0f - w;
    float inv_n = 1.0f / (float)n;
    for (g = 0; g < groups; ++g) {
        float *x = X + (size_t)g * dim * dim, *a = acc + (size_t)g * dim * dim;
        for (i = 0; i < dim; ++i) {
            for (j = i; j < dim; ++j) {
                float v = w_old * x[(size_t)i * dim + j] + w_new * inv_n * a[(size_t)i * dim + j];
                x[(size_t)i * dim + j] = v;
                x[(size_t)j * dim + i] = v;
            }
        }
    }
    memset(acc, 0, (size_t)groups * dim * dim * sizeof(float));
}

void kfac_factors_fold_cpu(kfac_layer *kl, float decay)
{
    if (kl->n_acc_A == 0 || kl->n_acc_G == 0) return;
    if (!kfac_all_finite(kl->A_acc, (size_t)kl->groups * kl->K * kl->K) ||
        !kfac_all_finite(kl->G_acc, (size_t)kl->groups * kl->M * kl->M)) {
        if (!kl->bad_factors_logged++)
            kfac_log("layer %d: non-finite statistics, batch skipped (the factors keep their last good value; logged once)", kl->index);
        memset(kl->A_acc, 0, (size_t)kl->groups * kl->K * kl->K * sizeof(float));
        memset(kl->G_acc, 0, (size_t)kl->groups * kl->M * kl->M * sizeof(float));
    } else {
        float w = kfac_fold_weight(kl, decay);
        fold_one(kl->A, kl->A_acc, kl->K, kl->groups, kl->n_acc_A, w);
        fold_one(kl->G, kl->G_acc, kl->M, kl->groups, kl->n_acc_G, w);
        ++kl->have_factors;
    }
    kl->n_acc_A = kl->n_acc_G = 0;
}
