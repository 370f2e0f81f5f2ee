/* darknet-kfac: the preconditioned gradient on the CPU (DESIGN.md 4).
 *
 * For each group, with D the new gradient (M x K, bias in the last column when folded)
 * and A = Q_A diag(d_A) Q_A^T, G = Q_G diag(d_G) Q_G^T:
 *
 *   P = (G + lG I)^-1 D (A + lA I)^-1
 *     = Q_G [ (Q_G^T D Q_A) / ((d_G + lG) (d_A + lA)^T) ] Q_A^T
 *
 * Factored Tikhonov damping (Martens & Grosse 2015, section 6.3) with
 * lA = sqrt(damping) * mean(d_A) and lG = sqrt(damping) * mean(d_G), means over the
 * numerically nonzero eigenvalues (mean_of below): scaling each
 * factor's damping by its own mean eigenvalue makes `damping` independent of the loss
 * scale, the input scale and the layer's size, so one default carries from net to net.
 * Because this damping is separable, the two damped inverses are formed once per
 * decomposition and each update costs two products instead of four. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
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

/* Mean of the eigenvalues d (n, >= 0) that are not rounding noise: the trace over the
 * numerical rank.  Dividing by n instead would let a factor estimated from fewer
 * samples than its dimension (a 1201-input connected layer fed 128 images) damp the
 * directions no sample reached by a tenth of what its data directions get, and those
 * directions then take over the step (measured: an MLP on the digits fell to 35%
 * test accuracy with the plain mean, 85% with this one). */
static float mean_of(const float *d, int n)
{
    double s = 0, mx = 0;
    int i, r = 0;
    for (i = 0; i < n; ++i) {
        s += d[i];
        if (d[i] > mx) mx = d[i];
    }
    for (i = 0; i < n; ++i) r += d[i] > KFAC_RANK_TOL * mx;
    return r ? (float)(s / r) : 0.0f;
}

/* inv (n x n) = E^T diag(1/(d + l)) E = S^T S with S = diag(1/sqrt(d + l)) E, E rows =
 * eigenvectors: one ssyrk (half of sgemm's work: on a 1201-input layer this was a
 * tenth of K-FAC's time) and a mirror of its upper triangle, since the products that
 * use inv want it whole.  Returns 0 when the factor is all zeros (no curvature to
 * precondition with). */
static int damped_inverse(const float *E, const float *d, int n, float sd, float *inv, float *scratch)
{
    int i, j;
    float l = sd * mean_of(d, n);
    if (!(l > 0)) return 0;
    for (i = 0; i < n; ++i) {
        float s = 1.0f / sqrtf(d[i] + l);
        for (j = 0; j < n; ++j) scratch[(size_t)i * n + j] = s * E[(size_t)i * n + j];
    }
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, n, n, 1.0f, scratch, n, 0.0f, inv, n);
    for (i = 1; i < n; ++i)
        for (j = 0; j < i; ++j) inv[(size_t)i * n + j] = inv[(size_t)j * n + i];
    return 1;
}

void kfac_damped_inverses_cpu(kfac_layer *kl, float damping)
{
    const int M = kl->M, K = kl->K;
    const float sd = sqrtf(damping);
    int g, ok = 1;
    size_t n = (size_t)(K > M ? K : M);
    float *scratch = (float *)kfac_calloc(n * n, sizeof(float));
    for (g = 0; g < kl->groups; ++g) {
        ok &= damped_inverse(kl->EA + (size_t)g * K * K, kl->dA + (size_t)g * K, K, sd, kl->Ainv + (size_t)g * K * K, scratch);
        ok &= damped_inverse(kl->EG + (size_t)g * M * M, kl->dG + (size_t)g * M, M, sd, kl->Ginv + (size_t)g * M * M, scratch);
    }
    free(scratch);
    kl->inv_damping = damping;
    kl->inv_ok = ok;
}

void kfac_precondition_layer_cpu(kfac_layer *kl, float damping)
{
    const int M = kl->M, K = kl->K;
    int g;
    if (kl->inv_damping != damping) kfac_damped_inverses_cpu(kl, damping);
    if (!kl->inv_ok) {
        memcpy(kl->P, kl->D, (size_t)kl->groups * M * K * sizeof(float));
        return;
    }
    for (g = 0; g < kl->groups; ++g) {
        const float *Ai = kl->Ainv + (size_t)g * K * K, *Gi = kl->Ginv + (size_t)g * M * M;
        /* tmp = Ginv D (M x K); P = tmp Ainv (M x K) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, K, M, 1.0f, Gi, M,
                    kl->D + (size_t)g * M * K, K, 0.0f, kl->tmp, K);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, K, K, 1.0f, kl->tmp, K, Ai, K, 0.0f,
                    kl->P + (size_t)g * M * K, K);
    }
}
