/* darknet-kfac: the CUDA backend (kfac_backend.h), host side: cuBLAS for the factor
 * products and the preconditioning, cuSOLVER's syevd for the eigendecompositions, the
 * kernels of kfac_backend_cuda_kernels.cu for the elementwise work.  GPU builds only.
 *
 * Everything of a net's backend runs on the legacy default stream (0), the one
 * Darknet's own kernels, cuBLAS handle and cuDNN calls use, so K-FAC's work is ordered
 * with the forward and backward passes without any extra synchronisation.  A twin (the
 * background decompositions, kfac_worker.c) has a non-blocking stream and handles of
 * its own, so its syevd runs beside training; the worker hands buffers over only
 * after synchronizing the stream that wrote them.  Row-major matrices (as on the
 * CPU) are handed to column-major cuBLAS/cuSOLVER as their transposes: a row-major
 * M x K matrix is a column-major K x M one with the same leading dimension.
 *
 * Per update the host waits once, in results() (the KL-clip dot products and the
 * finiteness flags, 3 doubles per layer); on statistics steps once more (finiteness
 * of the new statistics); on inverse steps for cuSOLVER's info values and the
 * eigenvalues that set the damping.  No tensor goes to the host except by to_host
 * (the state file, the tests' accessor).
 *
 * Arithmetic: cuBLAS runs in CUBLAS_DEFAULT_MATH, which for FP32 routines means FP32
 * FMA arithmetic, never TF32 (that needs CUBLAS_TF32_TENSOR_OP_MATH), so GPU factors
 * and preconditioned gradients match the CPU backend to float32 rounding;
 * patches/0001 likewise keeps cuDNN's convolutions in FP32 (CUDNN_FMA_MATH). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include "kfac_backend_cuda.h"
#include "activations.h"
#include "blas.h"


/* Largest patch buffer, in floats (128 MiB), as on the CPU: big layers go in chunks. */
#define KFAC_CUDA_PATCH_BUDGET ((size_t)32 << 20)
/* Largest split-k partial-product buffer, in floats (32 MiB). */
#define KFAC_CUDA_PART_BUDGET ((size_t)8 << 20)
/* Thread blocks a factor product should keep busy (about two per SM on an H100). */
#define KFAC_CUDA_TARGET_TILES 264

/* ---- errors ------------------------------------------------------------------------------ */

void kfac_cuda_check(cudaError_t status, const char *expr, const char *file, int line)
{
    if (status != cudaSuccess)
        kfac_die(file, line, "%s: CUDA error %d: %s", expr, (int)status, cudaGetErrorString(status));
}

void kfac_cublas_check(cublasStatus_t status, const char *expr, const char *file, int line)
{
    if (status != CUBLAS_STATUS_SUCCESS)
        kfac_die(file, line, "%s: cuBLAS error %d: %s", expr, (int)status, cublasGetStatusString(status));
}

static const char *cusolver_message(cusolverStatus_t s)
{
    switch (s) {
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "not initialized";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "allocation failed";
    case CUSOLVER_STATUS_INVALID_VALUE: return "invalid value";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "architecture mismatch";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "execution failed";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "internal error";
    case CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED: return "matrix type not supported";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "not supported";
    default: return "unknown status";
    }
}

void kfac_cusolver_check(cusolverStatus_t status, const char *expr, const char *file, int line)
{
    if (status != CUSOLVER_STATUS_SUCCESS)
        kfac_die(file, line, "%s: cuSOLVER error %d: %s", expr, (int)status, cusolver_message(status));
}

/* ---- the backend's state ------------------------------------------------------------------- */

/* One timed stretch of the stream: events recorded around a phase, read at the next
 * wait instead of stopping the stream to read a clock. */
typedef struct {
    cudaEvent_t start, end;
    int phase;              /* KFAC_PHASE_* */
} cuda_span;

typedef struct {
    int device;             /* CUDA device of this net (net->gpu_index) */
    cudaStream_t stream;    /* 0 (legacy default) for a net's backend, its own for a twin */
    cublasHandle_t blas;    /* FP32 math, default stream */
    cusolverDnHandle_t solver;
    /* scratch, grown on first use */
    float *patches;         /* K x (nb*T) patches or M x (nb*T) reshaped deltas */
    size_t patches_len;
    float *part;            /* S x K x K split-k partial products */
    size_t part_len;
    float *ek;              /* scaling=ekfac: the images' projected gradients */
    size_t ek_len;
    float *scratch;         /* groups x dim x dim: damped-inverse rows, replica sums */
    size_t scratch_len;
    float *eig_work;        /* cuSOLVER syevd workspace */
    size_t eig_work_len;
    int *eig_info;          /* per group: syevd's info */
    size_t eig_info_len;
    float *lambda;          /* per group: damping of one factor */
    size_t lambda_len;
    float *uniforms;        /* batch: the sampler's draws, pushed */
    size_t uniforms_len;
    /* results */
    double *slots;          /* nslots, device */
    int nslots;
    /* timing */
    cuda_span *spans;       /* recorded, not yet read; the last one open when span_open */
    int nspans, spans_made, span_open;
    double seconds[KFAC_NPHASES];
} cuda_impl;

static cuda_impl *impl_of(kfac_backend *b) { return (cuda_impl *)b->impl; }

static void cuda_darknet_buffers(const layer *l, kfac_darknet_buffers *out)
{
    out->weight_updates = l->weight_updates_gpu;
    out->bias_updates = l->bias_updates_gpu;
    out->scale_updates = l->scale_updates_gpu;
    out->delta = l->delta_gpu;
    out->output = l->output_gpu;
    out->weights = l->weights_gpu;
    out->biases = l->biases_gpu;
    out->scales = l->scales_gpu;
    out->x = l->x_gpu;
    out->x_norm = l->x_norm_gpu;
    out->mean = l->mean_gpu;
    out->variance = l->variance_gpu;
    out->rolling_mean = l->rolling_mean_gpu;
    out->rolling_variance = l->rolling_variance_gpu;
    out->loss = l->loss_gpu;
}

static int as_int(size_t n)
{
    KFAC_ASSERT(n <= (size_t)INT_MAX);
    return (int)n;
}

/* Makes `device` current and returns the one that was. */
static int enter_device(int device)
{
    int prev = 0;
    KFAC_CUDA_CHECK(cudaGetDevice(&prev));
    if (prev != device) KFAC_CUDA_CHECK(cudaSetDevice(device));
    return prev;
}

static void leave_device(int prev)
{
    int now = 0;
    KFAC_CUDA_CHECK(cudaGetDevice(&now));
    if (now != prev) KFAC_CUDA_CHECK(cudaSetDevice(prev));
}

/* ---- memory ------------------------------------------------------------------------------ */

/* n floats of zeroed device memory (NULL for n == 0); the size product is checked. */
static float *dev_floats(size_t n, cudaStream_t stream)
{
    float *p = NULL;
    if (n == 0) return NULL;
    if (n > SIZE_MAX / sizeof(float)) kfac_die(__FILE__, __LINE__, "device allocation of %zu floats overflows", n);
    KFAC_CUDA_CHECK(cudaMalloc((void **)&p, n * sizeof(float)));
    KFAC_CUDA_CHECK(cudaMemsetAsync(p, 0, n * sizeof(float), stream));
    return p;
}

/* Grows a scratch buffer to at least n elements of `size` bytes (contents not kept). */
static void *dev_scratch(void **p, size_t *len, size_t n, size_t size)
{
    if (n > *len) {
        if (*p) KFAC_CUDA_CHECK(cudaFree(*p));
        *p = NULL;
        if (n > SIZE_MAX / size) kfac_die(__FILE__, __LINE__, "device allocation of %zu x %zu bytes overflows", n, size);
        KFAC_CUDA_CHECK(cudaMalloc(p, n * size));
        *len = n;
    }
    return *p;
}

static float *float_scratch(float **p, size_t *len, size_t n)
{
    return (float *)dev_scratch((void **)p, len, n, sizeof(float));
}

static float *cuda_alloc(kfac_backend *b, size_t n)
{
    int prev = enter_device(impl_of(b)->device);
    float *p = dev_floats(n, impl_of(b)->stream);
    leave_device(prev);
    return p;
}

static void cuda_release(kfac_backend *b, float *p)
{
    if (!p) return;
    int prev = enter_device(impl_of(b)->device);
    KFAC_CUDA_CHECK(cudaFree(p));
    leave_device(prev);
}

static void cuda_zero(kfac_backend *b, float *p, size_t n)
{
    if (n) KFAC_CUDA_CHECK(cudaMemsetAsync(p, 0, n * sizeof(float), impl_of(b)->stream));
}

static void cuda_copy(kfac_backend *b, float *dst, const float *src, size_t n)
{
    if (n && dst != src)
        KFAC_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, impl_of(b)->stream));
}

/* The state file and the tests' accessor may call these from a thread whose current
 * device is another one: they switch to the net's device. */
static void cuda_to_host(kfac_backend *b, float *host, const float *p, size_t n)
{
    if (!n) return;
    cuda_impl *c = impl_of(b);
    int prev = enter_device(c->device);
    KFAC_CUDA_CHECK(cudaMemcpyAsync(host, p, n * sizeof(float), cudaMemcpyDeviceToHost, c->stream));
    KFAC_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    leave_device(prev);
}

static void cuda_from_host(kfac_backend *b, float *p, const float *host, size_t n)
{
    if (!n) return;
    cuda_impl *c = impl_of(b);
    int prev = enter_device(c->device);
    KFAC_CUDA_CHECK(cudaMemcpyAsync(p, host, n * sizeof(float), cudaMemcpyHostToDevice, c->stream));
    KFAC_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    leave_device(prev);
}

/* ---- statistics --------------------------------------------------------------------------- */

/* C (K x K, row-major upper triangle used) += alpha * P P^T, P row-major K x n.
 *
 * P is the column-major n x K matrix Pc = P^T, so this is syrk(trans = T) with the
 * lower triangle (column-major lower = row-major upper).  A syrk's thread blocks tile
 * the K x K output only: for a small K and a long n (the first convolutions: K = 27,
 * n = a million columns) that leaves most of the GPU idle.  There the columns are
 * split into S slices, S partial products run as one strided-batched gemm and a
 * kernel adds them up (split-k); the full square costs twice syrk's flops, which is
 * cheap next to the idle GPU it replaces. */
void kfac_cuda_factor_product(kfac_backend *b, int K, size_t n, const float *P, float alpha, float *C)
{
    cuda_impl *c = impl_of(b);
    const float one = 1.0f, zero = 0.0f;
    if (n == 0) return;
    int ld = as_int(n);
    size_t tiles = (size_t)((K + 63) / 64) * ((K + 63) / 64);
    size_t S = KFAC_CUDA_TARGET_TILES / tiles;
    size_t min_w = K > 256 ? (size_t)K : 256; /* each slice at least this many columns */
    if (S > n / min_w) S = n / min_w;
    if (S > KFAC_CUDA_PART_BUDGET / ((size_t)K * K)) S = KFAC_CUDA_PART_BUDGET / ((size_t)K * K);
    if (S < 2) {
        KFAC_CUBLAS_CHECK(cublasSsyrk(c->blas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_T, K, ld, &alpha, P, ld, &one, C, K));
        return;
    }
    size_t w = n / S, rest = n - S * w;
    float *part = float_scratch(&c->part, &c->part_len, S * K * K);
    KFAC_CUBLAS_CHECK(cublasSgemmStridedBatched(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, K, K, as_int(w), &one, P, ld,
                                                (long long)w, P, ld, (long long)w, &zero, part, K, (long long)K * K,
                                                as_int(S)));
    if (rest)
        KFAC_CUBLAS_CHECK(cublasSsyrk(c->blas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_T, K, as_int(rest), &alpha,
                                      P + S * w, ld, &one, C, K));
    kfac_cuda_sum_parts(part, as_int(S), (size_t)K * K, alpha, C, impl_of(b)->stream);
}

/* Images per chunk so that a chunk of rows x (nb*T) fits the patch budget. */
static int chunk_images(size_t rows, size_t T, int B)
{
    size_t nb = KFAC_CUDA_PATCH_BUDGET / (rows * T);
    if (nb < 1) nb = 1;
    if (nb > (size_t)B) nb = (size_t)B;
    return (int)nb;
}

static void cuda_capture_A(kfac_backend *b, const kfac_shape *s, const layer *l, const float *input, float *acc)
{
    cuda_impl *c = impl_of(b);
    const int K = s->K, B = l->batch, nb = kfac_a_blocks(s), Ka = kfac_a_dim(s);
    int blk;
    if (s->type == CONNECTED) {
        /* P is K x B: the inputs, transposed, with a row of ones; block j of acc +=
         * P_j P_j^T, P_j its rows [j Ka, (j+1) Ka) */
        float *P = float_scratch(&c->patches, &c->patches_len, (size_t)K * B);
        kfac_cuda_rows(input, (size_t)l->inputs, B, l->inputs, 1, s->has_bias, P, impl_of(b)->stream);
        for (blk = 0; blk < nb; ++blk)
            kfac_cuda_factor_product(b, Ka, (size_t)B, P + (size_t)blk * Ka * B, 1.0f, acc + (size_t)blk * Ka * Ka);
        return;
    }
    const size_t T = (size_t)s->T;
    const size_t group_in = (size_t)(l->c / l->groups) * l->h * l->w;
    const int ni = chunk_images((size_t)K, T, B); /* images per chunk */
    float *P = float_scratch(&c->patches, &c->patches_len, (size_t)K * T * ni);
    int g, b0;
    for (g = 0; g < s->groups; ++g) {
        for (b0 = 0; b0 < B; b0 += ni) {
            int n = B - b0 < ni ? B - b0 : ni;
            /* image b0+i, group g; P is K x (n*T), block j its rows [j Ka, (j+1) Ka) */
            const float *im = input + ((size_t)b0 * s->groups + g) * group_in;
            kfac_cuda_patches(im, group_in * s->groups, n, l->c / l->groups, l->h, l->w, l->size, l->stride, l->pad,
                              l->out_h, l->out_w, s->has_bias, P, impl_of(b)->stream);
            for (blk = 0; blk < nb; ++blk)
                kfac_cuda_factor_product(b, Ka, (size_t)n * T, P + (size_t)blk * Ka * n * T, 1.0f,
                                         acc + ((size_t)g * nb + blk) * Ka * Ka);
        }
    }
}

static void cuda_capture_G(kfac_backend *b, const kfac_shape *s, const layer *l, const float *delta, float *acc)
{
    cuda_impl *c = impl_of(b);
    const int M = s->M, B = l->batch;
    if (s->type == CONNECTED) {
        /* delta is B x M: P = delta^T (M x B); acc += P P^T */
        float *P = float_scratch(&c->patches, &c->patches_len, (size_t)M * B);
        kfac_cuda_rows(delta, (size_t)M, B, M, 1, 0, P, impl_of(b)->stream);
        kfac_cuda_factor_product(b, M, (size_t)B, P, 1.0f, acc);
        return;
    }
    /* image i, group g: the M x T block of the NCHW delta; acc += (1/T) P P^T */
    const size_t T = (size_t)s->T;
    const int nb = chunk_images((size_t)M, T, B);
    float *P = float_scratch(&c->patches, &c->patches_len, (size_t)M * T * nb);
    int g, b0;
    for (g = 0; g < s->groups; ++g) {
        for (b0 = 0; b0 < B; b0 += nb) {
            int n = B - b0 < nb ? B - b0 : nb;
            const float *d = delta + ((size_t)b0 * s->groups + g) * M * T;
            kfac_cuda_rows(d, (size_t)s->groups * M * T, n, M, (int)T, 0, P, impl_of(b)->stream);
            kfac_cuda_factor_product(b, M, (size_t)n * T, P, 1.0f / (float)T, acc + (size_t)g * M * M);
        }
    }
}

static void cuda_bn_inputs(kfac_backend *b, const layer *l, float *delta_out, float *xnorm_out)
{
    const size_t n = (size_t)l->outputs * l->batch;
    cuda_copy(b, delta_out, l->delta_gpu, n);
    /* backward_connected_layer_gpu / backward_convolutional_layer_gpu begin so (a
     * [batchnorm] has no activation of its own) */
    if (l->type == CONNECTED) constrain_gpu(as_int(n), 1, delta_out, 1);
    if (l->type != BATCHNORM) gradient_array_gpu(l->output_gpu, as_int(n), l->activation, delta_out);
#ifdef CUDNN
    /* cuDNN's training forward leaves x_norm_gpu unwritten (its backward uses it as
     * scratch) and saves the mean and 1/sqrt(variance + epsilon) */
    kfac_cuda_bn_normalize(l->x_gpu, l->mean_gpu, l->variance_gpu, l->batch, l->out_c, l->out_h * l->out_w, xnorm_out,
                           impl_of(b)->stream);
#else
    cuda_copy(b, xnorm_out, l->x_norm_gpu, n);
#endif
}

static void cuda_capture_bn(kfac_backend *b, const kfac_shape *s, int batch, const float *delta, const float *x_norm,
                            float *acc)
{
    cuda_impl *c = impl_of(b);
    const int K = s->K, nb = kfac_a_blocks(s), Ka = kfac_a_dim(s);
    /* gT is 2C x batch: block j of acc += gT_j gT_j^T, gT_j its rows [j Ka, (j+1) Ka) */
    float *gT = float_scratch(&c->patches, &c->patches_len, (size_t)K * batch);
    int blk;
    kfac_cuda_bn_grads(delta, x_norm, batch, K / 2, s->T, gT, impl_of(b)->stream);
    if (Ka == 2 && nb == K / 2) {
        kfac_cuda_bn_pairs(gT, batch, K / 2, acc, impl_of(b)->stream);
        return;
    }
    for (blk = 0; blk < nb; ++blk)
        kfac_cuda_factor_product(b, Ka, (size_t)batch, gT + (size_t)blk * Ka * batch, 1.0f, acc + (size_t)blk * Ka * Ka);
}

static void cuda_fold(kfac_backend *b, float *X, float *acc, int dim, int groups, float w_old, float w_new,
                      float inv_n)
{
    kfac_cuda_fold(X, acc, dim, groups, w_old, w_new, inv_n, impl_of(b)->stream);
    cuda_zero(b, acc, (size_t)groups * dim * dim);
}

/* ---- results ------------------------------------------------------------------------------- */

static double *slot(cuda_impl *c, int i)
{
    KFAC_ASSERT(i >= 0 && i < c->nslots);
    return c->slots + i;
}

static void cuda_flag_nonfinite(kfac_backend *b, const float *x, size_t n, int i)
{
    kfac_cuda_nonfinite(x, n, slot(impl_of(b), i), impl_of(b)->stream);
}

static void cuda_dot(kfac_backend *b, const float *x, const float *y, size_t n, int i)
{
    kfac_cuda_dot(x, y, n, slot(impl_of(b), i), impl_of(b)->stream);
}

static void timing_collect(cuda_impl *c);

/* also collects the timed stretches, whose events are done once the copy is */
static void cuda_results(kfac_backend *b, double *out, int n)
{
    cuda_impl *c = impl_of(b);
    KFAC_ASSERT(n >= 0 && n <= c->nslots);
    if (n == 0) return;
    KFAC_CUDA_CHECK(cudaMemcpyAsync(out, c->slots, (size_t)n * sizeof(double), cudaMemcpyDeviceToHost, c->stream));
    KFAC_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    KFAC_CUDA_CHECK(cudaMemsetAsync(c->slots, 0, (size_t)n * sizeof(double), impl_of(b)->stream));
    timing_collect(c);
}

/* ---- decompositions ---------------------------------------------------------------------------- */

/* syevd on each group without reading info back: info lands in eig_info[g].
 * column-major 'U' of a symmetric matrix = row-major 'L': the same matrix; the
 * column-major eigenvectors in columns are row-major rows: E ends as Q^T */
static int cuda_eigh(kfac_backend *b, const float *X, int dim, int groups, float *E, float *d)
{
    cuda_impl *c = impl_of(b);
    const size_t dd = (size_t)dim * dim;
    int g, lwork = 0, info = 0;
    double bad = 0;
    KFAC_CUSOLVER_CHECK(cusolverDnSsyevd_bufferSize(c->solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, dim,
                                                    E, dim, d, &lwork));
    float *work = float_scratch(&c->eig_work, &c->eig_work_len, (size_t)(lwork > 0 ? lwork : 1));
    int *infos = (int *)dev_scratch((void **)&c->eig_info, &c->eig_info_len, (size_t)groups, sizeof(int));
    cuda_copy(b, E, X, (size_t)groups * dd); /* nothing when in place */
    KFAC_CUDA_CHECK(cudaMemsetAsync(infos, 0, (size_t)groups * sizeof(int), impl_of(b)->stream));
    for (g = 0; g < groups; ++g)
        KFAC_CUSOLVER_CHECK(cusolverDnSsyevd(c->solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, dim, E + g * dd,
                                             dim, d + (size_t)g * dim, work, lwork, infos + g));
    for (g = 0; g < groups; ++g) {
        KFAC_CUDA_CHECK(cudaMemcpyAsync(&info, infos + g, sizeof info, cudaMemcpyDeviceToHost, c->stream));
        KFAC_CUDA_CHECK(cudaStreamSynchronize(c->stream));
        if (info != 0) return info;
    }
    /* the last slot is the backend's own, kept free of the driver's (create) */
    kfac_cuda_nonfinite(E, (size_t)groups * dd, slot(c, c->nslots - 1), impl_of(b)->stream);
    kfac_cuda_nonfinite(d, (size_t)groups * dim, slot(c, c->nslots - 1), impl_of(b)->stream);
    KFAC_CUDA_CHECK(cudaMemcpyAsync(&bad, slot(c, c->nslots - 1), sizeof bad, cudaMemcpyDeviceToHost, c->stream));
    KFAC_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    KFAC_CUDA_CHECK(cudaMemsetAsync(slot(c, c->nslots - 1), 0, sizeof(double), impl_of(b)->stream));
    if (bad != 0) return KFAC_EIGH_NONFINITE;
    kfac_cuda_clamp(d, (size_t)groups * dim, impl_of(b)->stream);
    return 0;
}

/* Row-major C (m x n) = op(A) (m x k) op(B) (k x n) for `batch` matrices at the given
 * strides: column-major C^T = op(B)^T op(A)^T. */
static void gemm_rm(cuda_impl *c, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const float *A,
                    int lda, long long sa, const float *B, int ldb, long long sb, float *C, int ldc, long long sc,
                    int batch)
{
    const float one = 1.0f, zero = 0.0f;
    KFAC_CUBLAS_CHECK(cublasSgemmStridedBatched(c->blas, tb, ta, n, m, k, &one, B, ldb, sb, A, lda, sa, &zero, C, ldc,
                                                sc, batch));
}

/* inv = E^T diag(1/(d + lambda)) E per group: rows of E scaled, then one gemm */
static void cuda_damped_inverse(kfac_backend *b, const float *E, const float *d, int n, int groups,
                                const float *lambda, float *inv)
{
    cuda_impl *c = impl_of(b);
    const long long nn = (long long)n * n;
    float *lam = float_scratch(&c->lambda, &c->lambda_len, (size_t)groups);
    float *S = float_scratch(&c->scratch, &c->scratch_len, (size_t)groups * nn);
    KFAC_CUDA_CHECK(cudaMemcpyAsync(lam, lambda, (size_t)groups * sizeof(float), cudaMemcpyHostToDevice, impl_of(b)->stream));
    kfac_cuda_scale_rows(E, d, lam, groups, n, S, impl_of(b)->stream);
    gemm_rm(c, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, E, n, nn, S, n, nn, inv, n, nn, groups);
    /* lambda is the driver's host array, reused at once: the copy must be done */
    KFAC_CUDA_CHECK(cudaStreamSynchronize(impl_of(b)->stream));
}

/* ---- vector arithmetic --------------------------------------------------------------------------- */

/* in slices of at most INT_MAX elements: cuBLAS's counts are ints */
static void cuda_axpy(kfac_backend *b, float alpha, const float *x, float *y, size_t n)
{
    cuda_impl *c = impl_of(b);
    while (n) {
        size_t m = n < (size_t)INT_MAX ? n : (size_t)INT_MAX;
        KFAC_CUBLAS_CHECK(cublasSaxpy(c->blas, (int)m, &alpha, x, 1, y, 1));
        x += m;
        y += m;
        n -= m;
    }
}

static void cuda_scale(kfac_backend *b, float alpha, float *x, size_t n)
{
    cuda_impl *c = impl_of(b);
    while (n) {
        size_t m = n < (size_t)INT_MAX ? n : (size_t)INT_MAX;
        KFAC_CUBLAS_CHECK(cublasSscal(c->blas, (int)m, &alpha, x, 1));
        x += m;
        n -= m;
    }
}

/* ---- the update ------------------------------------------------------------------------------- */

static void cuda_gather(kfac_backend *b, const kfac_shape *s, const float *wu, const float *ws, const float *bu,
                        const float *bs, float *D)
{
    (void)b;
    kfac_cuda_gather(wu, ws, bu, bs, s->groups, s->M, s->k_in, s->has_bias, D, impl_of(b)->stream);
}

/* tmp = Ginv D (M x K); P = tmp Ainv (M x K), all groups in one batched gemm each */
static void cuda_precondition(kfac_backend *b, const kfac_shape *s, const float *Ginv, const float *Ainv,
                              const float *D, float *tmp, float *P)
{
    cuda_impl *c = impl_of(b);
    const int M = s->M, K = s->K, G = s->groups, nb = kfac_a_blocks(s), Ka = kfac_a_dim(s);
    const long long MM = (long long)M * M, KK = (long long)K * K, MK = (long long)M * K;
    int g;
    gemm_rm(c, CUBLAS_OP_N, CUBLAS_OP_N, M, K, M, Ginv, M, MM, D, K, MK, tmp, K, MK, G);
    if (nb == 1) {
        gemm_rm(c, CUBLAS_OP_N, CUBLAS_OP_N, M, K, K, tmp, K, MK, Ainv, K, KK, P, K, MK, G);
        return;
    }
    /* A in blocks: column block j of tmp through block j of Ainv, the blocks of a group
     * as one strided batch */
    for (g = 0; g < G; ++g)
        gemm_rm(c, CUBLAS_OP_N, CUBLAS_OP_N, M, Ka, Ka, tmp + (size_t)g * M * K, K, Ka,
                Ainv + (size_t)g * nb * Ka * Ka, Ka, (long long)Ka * Ka, P + (size_t)g * M * K, K, Ka, nb);
}

/* ---- scaling=ekfac ------------------------------------------------------------------------------ */

/* Row-major C (m x n) += op(A) (m x k) op(B) (k x n) */
static void gemm_rm_acc(cuda_impl *c, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const float *A,
                        int lda, const float *B, int ldb, float *C, int ldc)
{
    const float one = 1.0f;
    KFAC_CUBLAS_CHECK(cublasSgemm(c->blas, tb, ta, n, m, k, &one, B, ldb, A, lda, &one, C, ldc));
}

/* out = X E_A^T (trans) or X E_A per group, X and out groups x M x K, E_A's blocks
 * (block diagonal when A is kept in blocks) */
static void times_EA(cuda_impl *c, const kfac_shape *s, const float *X, const float *EA, int trans, float *out)
{
    const int M = s->M, K = s->K, G = s->groups, nb = kfac_a_blocks(s), Ka = kfac_a_dim(s);
    const long long MK = (long long)M * K, KK = (long long)K * K;
    const cublasOperation_t tb = trans ? CUBLAS_OP_T : CUBLAS_OP_N;
    int g;
    if (nb == 1) {
        gemm_rm(c, CUBLAS_OP_N, tb, M, K, K, X, K, MK, EA, K, KK, out, K, MK, G);
        return;
    }
    for (g = 0; g < G; ++g)
        gemm_rm(c, CUBLAS_OP_N, tb, M, Ka, Ka, X + (size_t)g * MK, K, Ka, EA + (size_t)g * nb * Ka * Ka, Ka,
                (long long)Ka * Ka, out + (size_t)g * MK, K, Ka, nb);
}

static void cuda_capture_ekfac(kfac_backend *b, const kfac_shape *s, const layer *l, const float *input,
                               const float *delta, const float *EG, const float *EA, float *acc)
{
    cuda_impl *c = impl_of(b);
    const int K = s->K, M = s->M, B = l->batch, nb = kfac_a_blocks(s), Ka = kfac_a_dim(s);
    const long long MM = (long long)M * M, MK = (long long)M * K, KaKa = (long long)Ka * Ka;
    int blk;
    if (s->type == CONNECTED) {
        /* XT (K x B) the inputs with a row of ones, XpT = E_A XT by blocks, GT = delta^T
         * (M x B), GpT = E_G GT: acc += (GpT o GpT) (XpT o XpT)^T (kfac_backend_cpu.c) */
        float *XT = float_scratch(&c->patches, &c->patches_len, (size_t)K * B);
        float *w = float_scratch(&c->ek, &c->ek_len, (size_t)B * (K + 2 * M));
        float *XpT = w, *GT = w + (size_t)K * B, *GpT = GT + (size_t)M * B;
        kfac_cuda_rows(input, (size_t)l->inputs, B, l->inputs, 1, s->has_bias, XT, impl_of(b)->stream);
        for (blk = 0; blk < nb; ++blk)
            gemm_rm(c, CUBLAS_OP_N, CUBLAS_OP_N, Ka, B, Ka, EA + (size_t)blk * KaKa, Ka, 0, XT + (size_t)blk * Ka * B, B, 0,
                    XpT + (size_t)blk * Ka * B, B, 0, 1);
        kfac_cuda_rows(delta, (size_t)M, B, M, 1, 0, GT, impl_of(b)->stream);
        gemm_rm(c, CUBLAS_OP_N, CUBLAS_OP_N, M, B, M, EG, M, 0, GT, B, 0, GpT, B, 0, 1);
        kfac_cuda_square(XpT, (size_t)K * B, impl_of(b)->stream);
        kfac_cuda_square(GpT, (size_t)M * B, impl_of(b)->stream);
        gemm_rm_acc(c, CUBLAS_OP_N, CUBLAS_OP_T, M, K, B, GpT, B, XpT, B, acc, K);
        return;
    }
    /* per chunk of images, group g: P (K x n*T) their patches; dW_i = delta_i P_i^T,
     * Y_i = E_G dW_i, Z_i = Y_i E_A^T (into dW) as strided batches over the images;
     * acc += sum_i Z_i o Z_i */
    const size_t T = (size_t)s->T, group_in = (size_t)(l->c / l->groups) * l->h * l->w;
    int ni = chunk_images((size_t)K, T, B);
    size_t cap = KFAC_CUDA_PATCH_BUDGET / (2 * (size_t)MK);
    if (cap < 1) cap = 1;
    if ((size_t)ni > cap) ni = (int)cap;
    float *P = float_scratch(&c->patches, &c->patches_len, (size_t)K * T * ni);
    float *dW = float_scratch(&c->ek, &c->ek_len, 2 * (size_t)MK * ni), *Y = dW + (size_t)MK * ni;
    int g, b0;
    for (g = 0; g < s->groups; ++g) {
        for (b0 = 0; b0 < B; b0 += ni) {
            const int n = B - b0 < ni ? B - b0 : ni;
            const float *im = input + ((size_t)b0 * s->groups + g) * group_in;
            const float *d = delta + ((size_t)b0 * s->groups + g) * M * T;
            kfac_cuda_patches(im, group_in * s->groups, n, l->c / l->groups, l->h, l->w, l->size, l->stride, l->pad,
                              l->out_h, l->out_w, s->has_bias, P, impl_of(b)->stream);
            gemm_rm(c, CUBLAS_OP_N, CUBLAS_OP_T, M, K, as_int(T), d, as_int(T), (long long)s->groups * M * T, P,
                    as_int((size_t)n * T), (long long)T, dW, K, MK, n);
            gemm_rm(c, CUBLAS_OP_N, CUBLAS_OP_N, M, K, M, EG + (size_t)g * MM, M, 0, dW, K, MK, Y, K, MK, n);
            for (blk = 0; blk < nb; ++blk)
                gemm_rm(c, CUBLAS_OP_N, CUBLAS_OP_T, M, Ka, Ka, Y + (size_t)blk * Ka, K, MK,
                        EA + ((size_t)g * nb + blk) * KaKa, Ka, 0, dW + (size_t)blk * Ka, K, MK, n);
            kfac_cuda_sum_squares(dW, n, (size_t)MK, acc + (size_t)g * MK, impl_of(b)->stream);
        }
    }
}

static void cuda_ekfac_scale(kfac_backend *b, const kfac_shape *s, const float *S, const float *dG, const float *dA,
                             const float *lG, const float *lA, float *R)
{
    cuda_impl *c = impl_of(b);
    const int G = s->groups, na = kfac_a_count(s);
    float *lam = float_scratch(&c->lambda, &c->lambda_len, (size_t)G + na);
    KFAC_CUDA_CHECK(cudaMemcpyAsync(lam, lG, (size_t)G * sizeof(float), cudaMemcpyHostToDevice, impl_of(b)->stream));
    KFAC_CUDA_CHECK(cudaMemcpyAsync(lam + G, lA, (size_t)na * sizeof(float), cudaMemcpyHostToDevice, impl_of(b)->stream));
    kfac_cuda_ekfac_scale(S, dG, dA, lam, lam + G, G, s->M, s->K, kfac_a_dim(s), R, impl_of(b)->stream);
    /* lG and lA are the driver's host arrays: the copies must be done */
    KFAC_CUDA_CHECK(cudaStreamSynchronize(impl_of(b)->stream));
}

/* into the eigenbasis, scaled by R, and back (kfac_backend.h precondition_eigen) */
static void cuda_precondition_eigen(kfac_backend *b, const kfac_shape *s, const float *EG, const float *EA,
                                    const float *R, const float *D, float *tmp, float *P)
{
    cuda_impl *c = impl_of(b);
    const int M = s->M, K = s->K, G = s->groups;
    const long long MM = (long long)M * M, MK = (long long)M * K;
    gemm_rm(c, CUBLAS_OP_N, CUBLAS_OP_N, M, K, M, EG, M, MM, D, K, MK, tmp, K, MK, G);
    times_EA(c, s, tmp, EA, 1, P);
    kfac_cuda_hadamard(P, R, (size_t)G * MK, impl_of(b)->stream);
    gemm_rm(c, CUBLAS_OP_T, CUBLAS_OP_N, M, K, M, EG, M, MM, P, K, MK, tmp, K, MK, G);
    times_EA(c, s, tmp, EA, 0, P);
}

static void cuda_scatter(kfac_backend *b, const kfac_shape *s, float *wu, float *bu, const float *P, const float *D,
                         float scale)
{
    (void)b;
    kfac_cuda_scatter(wu, bu, P, D, s->groups, s->M, s->k_in, s->has_bias, scale, impl_of(b)->stream);
}

/* ---- true Fisher ---------------------------------------------------------------------------------- */

static void cuda_sample(kfac_backend *b, const float *p, const float *u, int batch, int n, float *delta)
{
    cuda_impl *c = impl_of(b);
    float *du = float_scratch(&c->uniforms, &c->uniforms_len, (size_t)batch);
    KFAC_CUDA_CHECK(cudaMemcpyAsync(du, u, (size_t)batch * sizeof(float), cudaMemcpyHostToDevice, impl_of(b)->stream));
    kfac_cuda_sample(p, du, batch, n, delta, impl_of(b)->stream);
    /* u is the driver's host array, redrawn at the next pass */
    KFAC_CUDA_CHECK(cudaStreamSynchronize(impl_of(b)->stream));
}

/* ---- timing ----------------------------------------------------------------------------------------- */

static void cuda_phase(kfac_backend *b, int phase, int begin)
{
    cuda_impl *c = impl_of(b);
    if (!begin) {
        KFAC_ASSERT(c->span_open);
        KFAC_CUDA_CHECK(cudaEventRecord(c->spans[c->nspans - 1].end, impl_of(b)->stream));
        c->span_open = 0;
        return;
    }
    KFAC_ASSERT(!c->span_open);
    if (c->nspans == c->spans_made) {
        int n = c->spans_made ? 2 * c->spans_made : 16;
        cuda_span *s = (cuda_span *)realloc(c->spans, (size_t)n * sizeof *s);
        if (!s) kfac_die(__FILE__, __LINE__, "out of memory for %d timing events", n);
        c->spans = s;
        for (; c->spans_made < n; ++c->spans_made) {
            KFAC_CUDA_CHECK(cudaEventCreate(&c->spans[c->spans_made].start));
            KFAC_CUDA_CHECK(cudaEventCreate(&c->spans[c->spans_made].end));
        }
    }
    c->spans[c->nspans].phase = phase;
    KFAC_CUDA_CHECK(cudaEventRecord(c->spans[c->nspans].start, impl_of(b)->stream));
    ++c->nspans;
    c->span_open = 1;
}

/* closed spans -> seconds (waits for the last closed one); an open span moves to the
 * front, its events kept */
static void timing_collect(cuda_impl *c)
{
    const int closed = c->nspans - c->span_open;
    int i;
    if (closed == 0) return;
    int prev = enter_device(c->device);
    KFAC_CUDA_CHECK(cudaEventSynchronize(c->spans[closed - 1].end));
    for (i = 0; i < closed; ++i) {
        float ms = 0;
        KFAC_CUDA_CHECK(cudaEventElapsedTime(&ms, c->spans[i].start, c->spans[i].end));
        c->seconds[c->spans[i].phase] += 1e-3 * ms;
    }
    if (c->span_open) {
        cuda_span t = c->spans[0];
        c->spans[0] = c->spans[closed];
        c->spans[closed] = t;
    }
    c->nspans = c->span_open;
    leave_device(prev);
}

static void cuda_seconds(kfac_backend *b, double t[KFAC_NPHASES])
{
    cuda_impl *c = impl_of(b);
    timing_collect(c);
    memcpy(t, c->seconds, sizeof c->seconds);
}

/* ---- replicas ------------------------------------------------------------------------------------- */

static int cuda_enter(kfac_backend *b)
{
    return enter_device(impl_of(b)->device);
}

static void cuda_leave(kfac_backend *b, int previous)
{
    (void)b;
    leave_device(previous);
}

static void cuda_synchronize(kfac_backend *b)
{
    cuda_impl *c = impl_of(b);
    int prev = enter_device(c->device);
    /* a twin waits for its own stream only: the device would include training's */
    if (c->stream) KFAC_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    else KFAC_CUDA_CHECK(cudaDeviceSynchronize());
    leave_device(prev);
}

/* Gathered and summed on replica 0's device (in replica order, so every run sums
 * alike), scaled, copied back with peer copies. */
static void cuda_average(kfac_backend **bs, float **bufs, int n, size_t len)
{
    cuda_impl *c0 = impl_of(bs[0]);
    const float one = 1.0f, inv = 1.0f / (float)n;
    int i;
    if (!len) return;
    int prev = enter_device(c0->device);
    float *tmp = float_scratch(&c0->scratch, &c0->scratch_len, len);
    for (i = 1; i < n; ++i) {
        KFAC_CUDA_CHECK(cudaMemcpyPeer(tmp, c0->device, bufs[i], impl_of(bs[i])->device, len * sizeof(float)));
        KFAC_CUBLAS_CHECK(cublasSaxpy(c0->blas, as_int(len), &one, tmp, 1, bufs[0], 1));
    }
    KFAC_CUBLAS_CHECK(cublasSscal(c0->blas, as_int(len), &inv, bufs[0], 1));
    KFAC_CUDA_CHECK(cudaDeviceSynchronize());
    for (i = 1; i < n; ++i)
        KFAC_CUDA_CHECK(cudaMemcpyPeer(bufs[i], impl_of(bs[i])->device, bufs[0], c0->device, len * sizeof(float)));
    leave_device(prev);
}

static void cuda_broadcast(kfac_backend **bs, float **bufs, int n, int from, size_t len)
{
    int i;
    if (!len) return;
    for (i = 0; i < n; ++i)
        if (i != from)
            KFAC_CUDA_CHECK(cudaMemcpyPeer(bufs[i], impl_of(bs[i])->device, bufs[from], impl_of(bs[from])->device,
                                           len * sizeof(float)));
}

static void cuda_destroy(kfac_backend *b)
{
    cuda_impl *c = impl_of(b);
    int i;
    int prev = enter_device(c->device);
    KFAC_CUDA_CHECK(cudaDeviceSynchronize());
    void *bufs[] = {c->patches, c->part, c->scratch, c->eig_work, c->eig_info, c->lambda, c->uniforms, c->slots, c->ek};
    for (i = 0; i < (int)(sizeof bufs / sizeof bufs[0]); ++i)
        if (bufs[i]) KFAC_CUDA_CHECK(cudaFree(bufs[i]));
    for (i = 0; i < c->spans_made; ++i) {
        KFAC_CUDA_CHECK(cudaEventDestroy(c->spans[i].start));
        KFAC_CUDA_CHECK(cudaEventDestroy(c->spans[i].end));
    }
    KFAC_CUBLAS_CHECK(cublasDestroy(c->blas));
    KFAC_CUSOLVER_CHECK(cusolverDnDestroy(c->solver));
    if (c->stream) KFAC_CUDA_CHECK(cudaStreamDestroy(c->stream));
    leave_device(prev);
    free(c->spans);
    free(c);
    free(b);
}

static kfac_backend *create_on(int device, int nslots, int own_stream);

static kfac_backend *cuda_twin(kfac_backend *b, int nslots)
{
    return create_on(impl_of(b)->device, nslots, 1);
}

static const kfac_backend_ops cuda_ops = {
    .name = "cuda",
    .host_memory = 0,
    .update_fields = {offsetof(layer, weight_updates_gpu), offsetof(layer, bias_updates_gpu),
                      offsetof(layer, scale_updates_gpu)},
    .darknet_buffers = cuda_darknet_buffers,
    .alloc = cuda_alloc,
    .release = cuda_release,
    .zero = cuda_zero,
    .copy = cuda_copy,
    .to_host = cuda_to_host,
    .from_host = cuda_from_host,
    .capture_A = cuda_capture_A,
    .capture_G = cuda_capture_G,
    .bn_inputs = cuda_bn_inputs,
    .capture_bn = cuda_capture_bn,
    .capture_ekfac = cuda_capture_ekfac,
    .fold = cuda_fold,
    .flag_nonfinite = cuda_flag_nonfinite,
    .dot = cuda_dot,
    .results = cuda_results,
    .eigh = cuda_eigh,
    .damped_inverse = cuda_damped_inverse,
    .axpy = cuda_axpy,
    .scale = cuda_scale,
    .gather = cuda_gather,
    .precondition = cuda_precondition,
    .ekfac_scale = cuda_ekfac_scale,
    .precondition_eigen = cuda_precondition_eigen,
    .scatter = cuda_scatter,
    .sample = cuda_sample,
    .fisher_layer_backward = NULL, /* Darknet's GPU backward has no per-layer hook for it */
    .phase = cuda_phase,
    .seconds = cuda_seconds,
    .enter = cuda_enter,
    .leave = cuda_leave,
    .synchronize = cuda_synchronize,
    .twin = cuda_twin,
    .average = cuda_average,
    .broadcast = cuda_broadcast,
    .destroy = cuda_destroy,
};

/* own_stream 0: the legacy default stream, training's; 1: a non-blocking one (a twin) */
static kfac_backend *create_on(int device, int nslots, int own_stream)
{
    kfac_backend *b = (kfac_backend *)kfac_calloc(1, sizeof *b);
    cuda_impl *c = (cuda_impl *)kfac_calloc(1, sizeof *c);
    int prev = enter_device(device);
    c->device = device;
    if (own_stream) KFAC_CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    KFAC_CUBLAS_CHECK(cublasCreate(&c->blas));
    KFAC_CUBLAS_CHECK(cublasSetStream(c->blas, c->stream));
    /* FP32 arithmetic: the default math mode never uses TF32 for S routines */
    KFAC_CUBLAS_CHECK(cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH));
    KFAC_CUSOLVER_CHECK(cusolverDnCreate(&c->solver));
    KFAC_CUSOLVER_CHECK(cusolverDnSetStream(c->solver, c->stream));
    /* one slot more than the driver asks for: eigh's own finiteness flag */
    c->nslots = (nslots > 0 ? nslots : 1) + 1;
    KFAC_CUDA_CHECK(cudaMalloc((void **)&c->slots, (size_t)c->nslots * sizeof(double)));
    KFAC_CUDA_CHECK(cudaMemset(c->slots, 0, (size_t)c->nslots * sizeof(double)));
    leave_device(prev);

    struct cudaDeviceProp prop;
    KFAC_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    b->ops = &cuda_ops;
    b->impl = c;
    snprintf(b->description, sizeof b->description,
             "GPU %d (%.100s): cuBLAS FP32 factors and preconditioning, cuSOLVER syevd", device, prop.name);
    return b;
}

kfac_backend *kfac_backend_cuda_create(int device, int nslots)
{
    /* the decompositions' worker shares the GPU with training: not free */
    return create_on(device, nslots, 0);
}
