/* darknet-kfac: the CPU backend (kfac_backend.h): OpenBLAS for the products (ssyrk,
 * sgemm), LAPACK's ssyevd for the eigendecompositions, plain loops for the rest.
 * Buffers are host memory.  It is also the oracle the CUDA backend is tested against,
 * and the arithmetic of each loop is the one the CUDA kernels repeat term for term.
 *
 * Darknet builds with -Ofast; kfac.mk compiles this file without fast math, so the
 * finiteness tests are not folded away and the write-back wu += scale*P - D is not
 * reassociated (with P == D it must add exact zeros: tests/test_identity.c). */
#include <cblas.h>
#include <unistd.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kfac_backend.h"
#include "kfac_util.h"
#include "activations.h"
#include "batchnorm_layer.h"
#include "col2im.h"

/* Largest patch buffer, in floats (128 MiB): big layers are done in chunks of images. */
#define KFAC_PATCH_BUDGET ((size_t)32 << 20)

/* OpenBLAS's threads: one for every call, for the whole run, unless the user sets
 * OPENBLAS_NUM_THREADS (or GOTO_NUM_THREADS, OMP_NUM_THREADS), which then holds for
 * every call.  Why one and why fixed:
 *   - OpenBLAS's results depend on its thread count (measured: ssyrk, sgemm and ssyevd
 *     of the same input give other bits on 1 and 2 threads), so a count chosen from
 *     the machine's load, as this backend did before, made runs differ with the load;
 *   - on a busy CPU OpenBLAS's threads, which wait for each other spinning, stall:
 *     measured on 2 cores with a busy loop on each, an 801 x 801 eigendecomposition
 *     took 13.7 s on 2 threads and 0.09 s on one (BENCHMARKS.md, "OpenBLAS threads");
 *   - the large calls are the decompositions, and they run on the background worker
 *     (kfac_worker.c), on a core of its own next to Darknet's one-threaded training.
 * The count is set once, at the first backend's creation, and never touched again:
 * the worker's and the training thread's calls run at the same time, and a count set
 * for one would change the other's bits. */
static int user_chose_threads(void)
{
    static const char *vars[] = {"OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"};
    size_t i;
    for (i = 0; i < sizeof vars / sizeof vars[0]; ++i) {
        const char *v = getenv(vars[i]);
        if (v && *v) return 1;
    }
    return 0;
}

typedef struct {
    double *slots;          /* nslots result slots (results()) */
    int nslots;
    float *patches;         /* K x (images*T) im2col buffer for A */
    size_t patches_len;
    float *ek;              /* scaling=ekfac scratch: projected gradients */
    size_t ek_len;
    double seconds[KFAC_NPHASES];
    double phase_start;
} cpu_impl;

static cpu_impl *impl_of(kfac_backend *b) { return (cpu_impl *)b->impl; }

static void cpu_darknet_buffers(const layer *l, kfac_darknet_buffers *out)
{
    out->weight_updates = l->weight_updates;
    out->bias_updates = l->bias_updates;
    out->scale_updates = l->scale_updates;
    out->delta = l->delta;
    out->output = l->output;
    out->weights = l->weights;
    out->biases = l->biases;
    out->scales = l->scales;
    out->x = l->x;
    out->x_norm = l->x_norm;
    out->mean = l->mean;
    out->variance = l->variance;
    out->rolling_mean = l->rolling_mean;
    out->rolling_variance = l->rolling_variance;
    out->loss = l->loss;
}

/* ---- memory ------------------------------------------------------------------------- */

static float *cpu_alloc(kfac_backend *b, size_t n)
{
    (void)b;
    return (float *)kfac_calloc(n, sizeof(float));
}

static void cpu_release(kfac_backend *b, float *p)
{
    (void)b;
    free(p);
}

static void cpu_zero(kfac_backend *b, float *p, size_t n)
{
    (void)b;
    if (n) memset(p, 0, n * sizeof(float));
}

static void cpu_copy(kfac_backend *b, float *dst, const float *src, size_t n)
{
    (void)b;
    if (n && dst != src) memcpy(dst, src, n * sizeof(float));
}

/* ---- statistics ----------------------------------------------------------------------- */

/* im2col of one image and group into columns [col0, col0+T) of a buffer whose rows
 * are ld floats long: out is K x ld, row r = (channel, ky, kx), plus a row of ones
 * when the layer's bias is folded into A.  Same indexing as Darknet's im2col_cpu, which
 * cannot write many images side by side into one buffer. */
static void patches_one_image(const layer *l, const float *im, int has_bias, float *out, size_t ld, size_t col0)
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

static float *patch_buffer(cpu_impl *c, size_t len)
{
    if (len > c->patches_len) {
        free(c->patches);
        c->patches = (float *)kfac_calloc(len, sizeof(float));
        c->patches_len = len;
    }
    return c->patches;
}

static void cpu_capture_A(kfac_backend *b, const kfac_shape *s, const layer *l, const float *input, float *acc)
{
    cpu_impl *c = impl_of(b);
    const int K = s->K, T = s->T, B = l->batch, nb = kfac_a_blocks(s), Ka = kfac_a_dim(s);
    int blk;
    if (s->type == CONNECTED) {
        /* X is B x K: the inputs with a 1 appended; block j of acc += X_j^T X_j, X_j
         * its columns [j Ka, (j+1) Ka) */
        float *X = patch_buffer(c, (size_t)B * K);
        int i;
        for (i = 0; i < B; ++i) {
            memcpy(X + (size_t)i * K, input + (size_t)i * l->inputs, (size_t)l->inputs * sizeof(float));
            if (s->has_bias) X[(size_t)i * K + l->inputs] = 1.0f;
        }
        for (blk = 0; blk < nb; ++blk)
            cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, Ka, B, 1.0f, X + (size_t)blk * Ka, K, 1.0f,
                        acc + (size_t)blk * Ka * Ka, Ka);
        return;
    }
    size_t per_image = (size_t)K * T;
    int ni = (int)(KFAC_PATCH_BUDGET / per_image); /* images per chunk */
    if (ni < 1) ni = 1;
    if (ni > B) ni = B;
    float *P = patch_buffer(c, per_image * ni);
    const size_t group_in = (size_t)(l->c / l->groups) * l->h * l->w;
    int g, b0, i;
    for (g = 0; g < s->groups; ++g) {
        float *Ag = acc + (size_t)g * nb * Ka * Ka;
        for (b0 = 0; b0 < B; b0 += ni) {
            int n = B - b0 < ni ? B - b0 : ni;
            size_t ld = (size_t)n * T; /* P is K x (n*T); block j is its rows [j Ka, (j+1) Ka) */
            for (i = 0; i < n; ++i) {
                const float *im = input + ((size_t)(b0 + i) * s->groups + g) * group_in;
                patches_one_image(l, im, s->has_bias, P, ld, (size_t)i * T);
            }
            for (blk = 0; blk < nb; ++blk)
                cblas_ssyrk(CblasRowMajor, CblasUpper, CblasNoTrans, Ka, (int)ld, 1.0f, P + (size_t)blk * Ka * ld,
                            (int)ld, 1.0f, Ag + (size_t)blk * Ka * Ka, Ka);
        }
    }
}

static void cpu_capture_G(kfac_backend *b, const kfac_shape *s, const layer *l, const float *delta, float *acc)
{
    const int M = s->M, T = s->T, B = l->batch;
    if (s->type == CONNECTED) {
        /* delta is B x M: acc += delta^T delta */
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, M, B, 1.0f, delta, M, 1.0f, acc, M);
        return;
    }
    int g, i;
    for (g = 0; g < s->groups; ++g) {
        float *Gg = acc + (size_t)g * M * M;
        for (i = 0; i < B; ++i) {
            /* image i, group g: M x T block of the NCHW delta */
            const float *d = delta + ((size_t)i * s->groups + g) * M * T;
            cblas_ssyrk(CblasRowMajor, CblasUpper, CblasNoTrans, M, T, 1.0f / T, d, T, 1.0f, Gg, M);
        }
    }
}

static void cpu_bn_inputs(kfac_backend *b, const layer *l, float *delta_out, float *xnorm_out)
{
    const size_t n = (size_t)l->outputs * l->batch;
    (void)b;
    memcpy(delta_out, l->delta, n * sizeof(float));
    /* backward_convolutional_layer / backward_connected_layer begin so (a [batchnorm]
     * has no activation of its own) */
    if (l->type != BATCHNORM) gradient_array(l->output, (int)n, l->activation, delta_out);
    memcpy(xnorm_out, l->x_norm, n * sizeof(float));
}

static void cpu_capture_bn(kfac_backend *b, const kfac_shape *s, int batch, const float *delta, const float *x_norm,
                           float *acc)
{
    cpu_impl *c = impl_of(b);
    const int K = s->K, C = K / 2, T = s->T, nb = kfac_a_blocks(s), Ka = kfac_a_dim(s);
    float *g = patch_buffer(c, (size_t)batch * K); /* batch x 2C: the images' gradients */
    int n, ch, t, blk;
    for (n = 0; n < batch; ++n)
        for (ch = 0; ch < C; ++ch) {
            const float *dl = delta + ((size_t)n * C + ch) * T, *xn = x_norm + ((size_t)n * C + ch) * T;
            double sg = 0, sb = 0;
            for (t = 0; t < T; ++t) {
                sg += (double)dl[t] * xn[t];
                sb += dl[t];
            }
            g[(size_t)n * K + 2 * ch] = (float)sg;
            g[(size_t)n * K + 2 * ch + 1] = (float)sb;
        }
    /* block j of acc += g_j^T g_j, g_j the columns [j Ka, (j+1) Ka) */
    for (blk = 0; blk < nb; ++blk)
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, Ka, batch, 1.0f, g + (size_t)blk * Ka, K, 1.0f,
                    acc + (size_t)blk * Ka * Ka, Ka);
}

static float *ek_buffer(cpu_impl *c, size_t len)
{
    if (len > c->ek_len) {
        free(c->ek);
        c->ek = (float *)kfac_calloc(len, sizeof(float));
        c->ek_len = len;
    }
    return c->ek;
}

/* out[:, block j] = X[:, block j] E_j^T (trans 1) or X[:, block j] E_j (trans 0) for the
 * nb blocks of Ka columns of the rows x K matrix X (row-major, leading dimension K) */
static void blocks_times(int rows, int K, int nb, int Ka, const float *X, const float *E, int trans, float *out)
{
    int blk;
    for (blk = 0; blk < nb; ++blk)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, trans ? CblasTrans : CblasNoTrans, rows, Ka, Ka, 1.0f,
                    X + (size_t)blk * Ka, K, E + (size_t)blk * Ka * Ka, Ka, 0.0f, out + (size_t)blk * Ka, K);
}

static void cpu_capture_ekfac(kfac_backend *b, const kfac_shape *s, const layer *l, const float *input,
                              const float *delta, const float *EG, const float *EA, float *acc)
{
    cpu_impl *c = impl_of(b);
    const int K = s->K, M = s->M, T = s->T, B = l->batch, nb = kfac_a_blocks(s), Ka = kfac_a_dim(s);
    size_t i;
    if (s->type == CONNECTED) {
        /* dW_n = g_n a_n^T, so E_G dW_n E_A^T = (E_G g_n)(E_A a_n)^T and its square is
         * the outer product of the squares: acc += (Gp o Gp)^T (Xp o Xp) with
         * Xp = X E_A^T (B x K, X the inputs with a 1) and Gp = delta E_G^T (B x M) */
        float *X = patch_buffer(c, (size_t)B * K), *Xp = ek_buffer(c, (size_t)B * (K + M)), *Gp = Xp + (size_t)B * K;
        int n;
        for (n = 0; n < B; ++n) {
            memcpy(X + (size_t)n * K, input + (size_t)n * l->inputs, (size_t)l->inputs * sizeof(float));
            if (s->has_bias) X[(size_t)n * K + l->inputs] = 1.0f;
        }
        blocks_times(B, K, nb, Ka, X, EA, 1, Xp);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, M, M, 1.0f, delta, M, EG, M, 0.0f, Gp, M);
        for (i = 0; i < (size_t)B * (K + M); ++i) Xp[i] *= Xp[i];
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M, K, B, 1.0f, Gp, M, Xp, K, 1.0f, acc, K);
        return;
    }
    /* per image and group: P (K x T) its patches, dW = delta P^T (M x K),
     * Z = (E_G dW) E_A^T, acc += Z o Z */
    const size_t MK = (size_t)M * K, group_in = (size_t)(l->c / l->groups) * l->h * l->w;
    float *P = patch_buffer(c, (size_t)K * T), *dW = ek_buffer(c, 2 * MK), *Z = dW + MK;
    int g, n;
    for (g = 0; g < s->groups; ++g) {
        const float *Eg = EG + (size_t)g * M * M, *Ea = EA + (size_t)g * nb * Ka * Ka;
        float *ag = acc + (size_t)g * MK;
        for (n = 0; n < B; ++n) {
            const float *d = delta + ((size_t)n * s->groups + g) * M * T;
            patches_one_image(l, input + ((size_t)n * s->groups + g) * group_in, s->has_bias, P, (size_t)T, 0);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, K, T, 1.0f, d, T, P, T, 0.0f, dW, K);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, K, M, 1.0f, Eg, M, dW, K, 0.0f, Z, K);
            blocks_times(M, K, nb, Ka, Z, Ea, 1, dW);
            for (i = 0; i < MK; ++i) ag[i] += dW[i] * dW[i];
        }
    }
}

static void cpu_fold(kfac_backend *b, float *X, float *acc, int dim, int groups, float w_old, float w_new,
                     float inv_n)
{
    int g, i, j;
    (void)b;
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

/* ---- results ------------------------------------------------------------------------- */

static double *slot(cpu_impl *c, int i)
{
    KFAC_ASSERT(i >= 0 && i < c->nslots);
    return &c->slots[i];
}

static void cpu_flag_nonfinite(kfac_backend *b, const float *x, size_t n, int i)
{
    if (!kfac_all_finite(x, n)) *slot(impl_of(b), i) = 1;
}

static void cpu_dot(kfac_backend *b, const float *x, const float *y, size_t n, int i)
{
    double s = 0;
    size_t j;
    for (j = 0; j < n; ++j) s += (double)x[j] * (double)y[j];
    *slot(impl_of(b), i) += s;
}

static void cpu_results(kfac_backend *b, double *out, int n)
{
    cpu_impl *c = impl_of(b);
    KFAC_ASSERT(n >= 0 && n <= c->nslots);
    if (n == 0) return;
    memcpy(out, c->slots, (size_t)n * sizeof(double));
    memset(c->slots, 0, (size_t)n * sizeof(double));
}

/* ---- decompositions --------------------------------------------------------------------- */

/* LAPACK, Fortran interface (OpenBLAS exports it; Debian ships no LAPACKE in it). */
extern void ssyevd_(const char *jobz, const char *uplo, const int *n, float *a, const int *lda, float *w,
                    float *work, const int *lwork, int *iwork, const int *liwork, int *info);

/* a (n x n, symmetric) -> rows of eigenvectors, w ascending; returns ssyevd's info */
static int eigh_one(float *a, float *w, int n)
{
    int info = 0, lwork = -1, liwork = -1, iwsize = 0;
    float wsize = 0;
    /* column-major 'U' of a symmetric matrix = row-major 'L': same matrix */
    ssyevd_("V", "U", &n, a, &n, w, &wsize, &lwork, &iwsize, &liwork, &info);
    if (info != 0) return info;
    lwork = (int)wsize + 1;
    liwork = iwsize;
    float *work = (float *)kfac_calloc((size_t)lwork, sizeof(float));
    int *iwork = (int *)kfac_calloc((size_t)liwork, sizeof(int));
    ssyevd_("V", "U", &n, a, &n, w, work, &lwork, iwork, &liwork, &info);
    free(work);
    free(iwork);
    /* column-major eigenvectors in columns = row-major rows: a now holds Q^T */
    return info;
}

static int cpu_eigh(kfac_backend *b, const float *X, int dim, int groups, float *E, float *d)
{
    const size_t dd = (size_t)dim * dim;
    int g, i;
    /* ssyevd with vectors: about 9 n^3 operations (tridiagonal reduction, divide and
     * conquer, back-transformation) */
    for (g = 0; g < groups; ++g) {
        float *e = E + g * dd, *w = d + (size_t)g * dim;
        if (e != X + g * dd) memcpy(e, X + g * dd, dd * sizeof(float));
        int info = eigh_one(e, w, dim);
        if (info != 0) return info;
        if (!kfac_all_finite(e, dd) || !kfac_all_finite(w, (size_t)dim)) return KFAC_EIGH_NONFINITE;
        for (i = 0; i < dim; ++i) if (w[i] < 0) w[i] = 0; /* rounding of a PSD matrix */
    }
    return 0;
}

/* inv = E^T diag(1/(d + l)) E = S^T S with S = diag(1/sqrt(d + l)) E: one ssyrk (half
 * of sgemm's work: on a 1201-input layer this was a tenth of K-FAC's time) and a
 * mirror of its upper triangle, since the products that use inv want it whole. */
static void cpu_damped_inverse(kfac_backend *b, const float *E, const float *d, int n, int groups,
                               const float *lambda, float *inv)
{
    const size_t nn = (size_t)n * n;
    float *S = (float *)kfac_calloc(nn, sizeof(float));
    int g, i, j;
    for (g = 0; g < groups; ++g) {
        const float *e = E + g * nn, *dg = d + (size_t)g * n;
        float *out = inv + g * nn;
        for (i = 0; i < n; ++i) {
            float s = 1.0f / sqrtf(dg[i] + lambda[g]);
            for (j = 0; j < n; ++j) S[(size_t)i * n + j] = s * e[(size_t)i * n + j];
        }
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, n, n, 1.0f, S, n, 0.0f, out, n);
        for (i = 1; i < n; ++i)
            for (j = 0; j < i; ++j) out[(size_t)i * n + j] = out[(size_t)j * n + i];
    }
    free(S);
}

/* ---- vector arithmetic ------------------------------------------------------------------- */

static void cpu_axpy(kfac_backend *b, float alpha, const float *x, float *y, size_t n)
{
    size_t i;
    (void)b;
    for (i = 0; i < n; ++i) y[i] += alpha * x[i];
}

static void cpu_scale(kfac_backend *b, float alpha, float *x, size_t n)
{
    size_t i;
    (void)b;
    for (i = 0; i < n; ++i) x[i] *= alpha;
}

/* ---- the update ------------------------------------------------------------------------ */

static void cpu_gather(kfac_backend *b, const kfac_shape *s, const float *wu, const float *ws, const float *bu,
                       const float *bs, float *D)
{
    const int M = s->M, K = s->K, kin = s->k_in;
    int g, r, c;
    (void)b;
    for (g = 0; g < s->groups; ++g) {
        for (r = 0; r < M; ++r) {
            size_t w0 = ((size_t)g * M + r) * kin;
            float *d = D + ((size_t)g * M + r) * K;
            for (c = 0; c < kin; ++c) d[c] = wu[w0 + c] - ws[w0 + c];
            if (s->has_bias) d[kin] = bu[(size_t)g * M + r] - bs[(size_t)g * M + r];
        }
    }
}

static void cpu_precondition(kfac_backend *b, const kfac_shape *s, const float *Ginv, const float *Ainv,
                             const float *D, float *tmp, float *P)
{
    const int M = s->M, K = s->K, nb = kfac_a_blocks(s), Ka = kfac_a_dim(s);
    int g, blk;
    for (g = 0; g < s->groups; ++g) {
        const float *Gi = Ginv + (size_t)g * M * M;
        float *t = tmp + (size_t)g * M * K;
        /* t = Ginv D (M x K); P = t Ainv (M x K), block j of columns through block j of
         * Ainv */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, K, M, 1.0f, Gi, M, D + (size_t)g * M * K, K, 0.0f,
                    t, K);
        for (blk = 0; blk < nb; ++blk)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, Ka, Ka, 1.0f, t + (size_t)blk * Ka, K,
                        Ainv + ((size_t)g * nb + blk) * Ka * Ka, Ka, 0.0f, P + (size_t)g * M * K + (size_t)blk * Ka, K);
    }
}

static void cpu_ekfac_scale(kfac_backend *b, const kfac_shape *s, const float *S, const float *dG, const float *dA,
                            const float *lG, const float *lA, float *R)
{
    const int M = s->M, K = s->K, nb = kfac_a_blocks(s), Ka = kfac_a_dim(s);
    int g, i, j;
    (void)b;
    for (g = 0; g < s->groups; ++g)
        for (i = 0; i < M; ++i)
            for (j = 0; j < K; ++j) {
                const size_t e = ((size_t)g * M + i) * K + j;
                const float la = lA[g * nb + j / Ka], lg = lG[g];
                R[e] = 1.0f / (S[e] + la * dG[(size_t)g * M + i] + lg * dA[(size_t)g * K + j] + la * lg);
            }
}

static void cpu_precondition_eigen(kfac_backend *b, const kfac_shape *s, const float *EG, const float *EA,
                                   const float *R, const float *D, float *tmp, float *P)
{
    const int M = s->M, K = s->K, nb = kfac_a_blocks(s), Ka = kfac_a_dim(s);
    const size_t MK = (size_t)M * K;
    int g;
    size_t i;
    for (g = 0; g < s->groups; ++g) {
        const float *Eg = EG + (size_t)g * M * M, *Ea = EA + (size_t)g * nb * Ka * Ka, *Rg = R + g * MK;
        float *t = tmp + g * MK, *p = P + g * MK;
        /* into the eigenbasis, scaled, and back */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, K, M, 1.0f, Eg, M, D + g * MK, K, 0.0f, t, K);
        blocks_times(M, K, nb, Ka, t, Ea, 1, p);
        for (i = 0; i < MK; ++i) p[i] *= Rg[i];
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M, K, M, 1.0f, Eg, M, p, K, 0.0f, t, K);
        blocks_times(M, K, nb, Ka, t, Ea, 0, p);
    }
}

static void cpu_scatter(kfac_backend *b, const kfac_shape *s, float *wu, float *bu, const float *P, const float *D,
                        float scale)
{
    const int M = s->M, K = s->K, kin = s->k_in;
    int g, r, c;
    (void)b;
    for (g = 0; g < s->groups; ++g) {
        for (r = 0; r < M; ++r) {
            size_t w0 = ((size_t)g * M + r) * kin;
            const float *d = D + ((size_t)g * M + r) * K;
            const float *p = P + ((size_t)g * M + r) * K;
            for (c = 0; c < kin; ++c) wu[w0 + c] += scale * p[c] - d[c];
            if (s->has_bias) bu[(size_t)g * M + r] += scale * p[kin] - d[kin];
        }
    }
}

/* ---- true Fisher ------------------------------------------------------------------------- */

static void cpu_sample(kfac_backend *b, const float *p, const float *u, int batch, int n, float *delta)
{
    int i, j;
    (void)b;
    for (i = 0; i < batch; ++i) {
        const float *pi = p + (size_t)i * n;
        float *d = delta + (size_t)i * n;
        float cum = 0;
        int y = n - 1;
        for (j = 0; j < n; ++j) {
            cum += pi[j];
            if (u[i] < cum) { y = j; break; }
        }
        for (j = 0; j < n; ++j) d[j] = (j == y ? 1.0f : 0.0f) - pi[j];
    }
}

/* Darknet's backward_convolutional_layer / backward_connected_layer without the weight
 * and bias gradients: the activation's derivative and batch norm's backward (Darknet's
 * own functions, so l.delta is bit for bit what the full backward leaves for G), then
 * the delta for the layer below with OpenBLAS, added to what the layer's other
 * consumers (a [route], a [shortcut]) left there: a 1x1 convolution adds through the
 * gemm's beta, a larger one through col2im (patches/0006 makes Darknet's do the same). */
static void lean_conv(const layer *l, network *lnet, const cpu_impl *c)
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
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, t, m, 1.0f, w, n, d, t, l->size == 1 ? 1.0f : 0.0f,
                        cols, t);
            if (l->size != 1) col2im_cpu(cols, l->c / l->groups, l->h, l->w, l->size, l->stride, l->pad, below);
        }
}

static void lean_connected(const layer *l, network *lnet, const cpu_impl *c)
{
    gradient_array(l->output, l->outputs * l->batch, l->activation, l->delta);
    if (l->batch_normalize) backward_batchnorm_layer(*l, *lnet);
    if (lnet->delta)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, l->batch, l->inputs, l->outputs, 1.0f, l->delta,
                    l->outputs, l->weights, l->inputs, 1.0f, lnet->delta, l->inputs);
}

static int cpu_fisher_layer_backward(kfac_backend *b, network *net, int index, float *input, float *delta)
{
    const layer *l = &net->layers[index];
    const int conv = l->type == CONVOLUTIONAL && !l->binary && !l->xnor;
    if (!conv && l->type != CONNECTED) return 0;
    network lnet = *net; /* the view backward_network gives the layer */
    lnet.input = input;
    lnet.delta = delta;
    if (conv) lean_conv(l, &lnet, impl_of(b));
    else lean_connected(l, &lnet, impl_of(b));
    return 1;
}

/* ---- timing, replicas, teardown ------------------------------------------------------------ */

static void cpu_phase(kfac_backend *b, int phase, int begin)
{
    cpu_impl *c = impl_of(b);
    double now = kfac_now();
    if (begin) c->phase_start = now;
    else c->seconds[phase] += now - c->phase_start;
}

static void cpu_seconds(kfac_backend *b, double t[KFAC_NPHASES])
{
    memcpy(t, impl_of(b)->seconds, sizeof impl_of(b)->seconds);
}

static void cpu_nothing(kfac_backend *b)
{
    (void)b;
}

static int cpu_enter(kfac_backend *b)
{
    (void)b;
    return 0;
}

static void cpu_leave(kfac_backend *b, int previous)
{
    (void)b;
    (void)previous;
}

static void cpu_average(kfac_backend **bs, float **bufs, int n, size_t len)
{
    const float inv = 1.0f / (float)n;
    size_t j;
    int i;
    (void)bs;
    for (i = 1; i < n; ++i)
        for (j = 0; j < len; ++j) bufs[0][j] += bufs[i][j];
    for (j = 0; j < len; ++j) bufs[0][j] *= inv;
    for (i = 1; i < n; ++i) memcpy(bufs[i], bufs[0], len * sizeof(float));
}

static void cpu_broadcast(kfac_backend **bs, float **bufs, int n, int from, size_t len)
{
    int i;
    (void)bs;
    for (i = 0; i < n; ++i)
        if (i != from && len) memcpy(bufs[i], bufs[from], len * sizeof(float));
}

static void cpu_destroy(kfac_backend *b)
{
    cpu_impl *c = impl_of(b);
    free(c->slots);
    free(c->patches);
    free(c->ek);
    free(c);
    free(b);
}

static kfac_backend *cpu_twin(kfac_backend *b, int nslots)
{
    (void)b;
    return kfac_backend_cpu_create(nslots);
}

static const kfac_backend_ops cpu_ops = {
    .name = "cpu",
    .host_memory = 1,
    .update_fields = {offsetof(layer, weight_updates), offsetof(layer, bias_updates), offsetof(layer, scale_updates)},
    .darknet_buffers = cpu_darknet_buffers,
    .alloc = cpu_alloc,
    .release = cpu_release,
    .zero = cpu_zero,
    .copy = cpu_copy,
    .to_host = cpu_copy,
    .from_host = cpu_copy,
    .capture_A = cpu_capture_A,
    .capture_G = cpu_capture_G,
    .bn_inputs = cpu_bn_inputs,
    .capture_bn = cpu_capture_bn,
    .capture_ekfac = cpu_capture_ekfac,
    .fold = cpu_fold,
    .flag_nonfinite = cpu_flag_nonfinite,
    .dot = cpu_dot,
    .results = cpu_results,
    .eigh = cpu_eigh,
    .damped_inverse = cpu_damped_inverse,
    .axpy = cpu_axpy,
    .scale = cpu_scale,
    .gather = cpu_gather,
    .precondition = cpu_precondition,
    .ekfac_scale = cpu_ekfac_scale,
    .precondition_eigen = cpu_precondition_eigen,
    .scatter = cpu_scatter,
    .sample = cpu_sample,
    .fisher_layer_backward = cpu_fisher_layer_backward,
    .phase = cpu_phase,
    .seconds = cpu_seconds,
    .enter = cpu_enter,
    .leave = cpu_leave,
    .synchronize = cpu_nothing,
    .twin = cpu_twin,
    .average = cpu_average,
    .broadcast = cpu_broadcast,
    .destroy = cpu_destroy,
};

kfac_backend *kfac_backend_cpu_create(int nslots)
{
    kfac_backend *b = (kfac_backend *)kfac_calloc(1, sizeof *b);
    cpu_impl *c = (cpu_impl *)kfac_calloc(1, sizeof *c);
    c->nslots = nslots > 0 ? nslots : 1;
    c->slots = (double *)kfac_calloc((size_t)c->nslots, sizeof(double));
    b->ops = &cpu_ops;
    b->impl = c;
    /* Darknet's CPU training runs on one core: a second one is the worker's */
    b->worker_free = sysconf(_SC_NPROCESSORS_ONLN) > 1;
    if (user_chose_threads()) {
        snprintf(b->description, sizeof b->description,
                 "CPU: OpenBLAS factors and preconditioning, LAPACK ssyevd; %d threads (set in the environment)",
                 openblas_get_num_threads());
    } else {
        if (openblas_get_num_threads() != 1) openblas_set_num_threads(1);
        snprintf(b->description, sizeof b->description,
                 "CPU: OpenBLAS factors and preconditioning, LAPACK ssyevd; one thread per call");
    }
    return b;
}
