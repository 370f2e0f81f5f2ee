/* darknet-kfac: the preconditioned gradient on the CPU (DESIGN.md 4).
 *
 * For each group, with D the new gradient (M x K, bias in the last column when folded)
 * and A = Q_A diag(d_A) Q_A^T, G = Q_G diag(d_G) Q_G^T:
 *
 *   P = Q_G [ (Q_G^T D Q_A) / ((d_G + lG) (d_A + lA)^T) ] Q_A^T
 *
 * i.e. (A + lA I)^-1 (x) (G + lG I)^-1 applied to D: factored Tikhonov damping
 * (Martens & Grosse 2015, section 6.3) with lA = sqrt(damping) * mean(d_A) and
 * lG = sqrt(damping) * mean(d_G).  Scaling each factor's damping by its own mean
 * eigenvalue makes `damping` independent of the loss scale, the input scale and the
 * layer's size, so one default carries from net to net. */
#include <cblas.h>
#include <math.h>
#include <string.h>
#include "kfac_internal.h"

double kfac_dot_cpu(const float *a, const float *b, size_t n)
{
    double s = 0;
    size_t i;
    for (i = 0; i < n; ++i) s += (double)a[i] * (double)b[i];
    return s;
}

/* D <- (weight_updates, bias_updates) - snapshots: the gradient summed since the last
 * update, without the momentum Darknet keeps in the same buffers. */
void kfac_gather_gradient_cpu(kfac_layer *kl, const layer *l)
{
    int g, r, c;
    const int M = kl->M, K = kl->K, kin = kl->k_in;
    for (g = 0; g < kl->groups; ++g) {
        for (r = 0; r < M; ++r) {
            size_t w0 = ((size_t)g * M + r) * kin;
            float *d = kl->D + ((size_t)g * M + r) * K;
            for (c = 0; c < kin; ++c) d[c] = l->weight_updates[w0 + c] - kl->w_snap[w0 + c];
            if (kl->has_bias) {
                size_t b = (size_t)g * M + r;
                d[kin] = l->bias_updates[b] - kl->b_snap[b];
            }
        }
    }
}

/* (weight_updates, bias_updates) += scale*P - D.  With P == D and scale 1 this adds
 * exact zeros, so an identity preconditioner leaves Darknet's arithmetic untouched. */
void kfac_scatter_update_cpu(kfac_layer *kl, const layer *l, float scale)
{
    int g, r, c;
    const int M = kl->M, K = kl->K, kin = kl->k_in;
    for (g = 0; g < kl->groups; ++g) {
        for (r = 0; r < M; ++r) {
            size_t w0 = ((size_t)g * M + r) * kin;
            const float *d = kl->D + ((size_t)g * M + r) * K;
            const float *p = kl->P + ((size_t)g * M + r) * K;
            for (c = 0; c < kin; ++c) l->weight_updates[w0 + c] += scale * p[c] - d[c];
            if (kl->has_bias) l->bias_updates[(size_t)g * M + r] += scale * p[kin] - d[kin];
        }
    }
}

static float mean_of(const float *x, int n)
{
    double s = 0;
    int i;
    for (i = 0; i < n; ++i) s += x[i];
    return (float)(s / n);
}

void kfac_precondition_layer_cpu(kfac_layer *kl, float damping)
{
    const int M = kl->M, K = kl->K;
    const float sd = sqrtf(damping);
    int g, i, j;
    for (g = 0; g < kl->groups; ++g) {
        const float *EA = kl->EA + (size_t)g * K * K, *dA = kl->dA + (size_t)g * K;
        const float *EG = kl->EG + (size_t)g * M * M, *dG = kl->dG + (size_t)g * M;
        const float *D = kl->D + (size_t)g * M * K;
        float *P = kl->P + (size_t)g * M * K;
        float lA = sd * mean_of(dA, K), lG = sd * mean_of(dG, M);
        if (!(lA > 0) || !(lG > 0)) {
            /* a factor of zeros (a dead layer): nothing to precondition with */
            memcpy(P, D, (size_t)M * K * sizeof(float));
            continue;
        }
        /* tmp = E_G D (M x K); P = tmp E_A^T (M x K): D in both eigenbases */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, K, M, 1.0f, EG, M, D, K, 0.0f, kl->tmp, K);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, K, K, 1.0f, kl->tmp, K, EA, K, 0.0f, P, K);
        for (i = 0; i < M; ++i) {
            float gi = dG[i] + lG;
            for (j = 0; j < K; ++j) P[(size_t)i * K + j] /= gi * (dA[j] + lA);
        }
        /* back: tmp = E_G^T P; P = tmp E_A */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M, K, M, 1.0f, EG, M, P, K, 0.0f, kl->tmp, K);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, K, K, 1.0f, kl->tmp, K, EA, K, 0.0f, P, K);
    }
}
