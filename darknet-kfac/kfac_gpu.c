/* darknet-kfac: K-FAC on the GPU, host side (see kfac_gpu.h for the overview).
 *
 * Everything runs on the legacy default stream (0), the one Darknet's own kernels,
 * cuBLAS handle and cuDNN calls use, so K-FAC's work is ordered with the forward and
 * backward passes without any extra synchronisation.  Row-major matrices (as on the
 * CPU) are handed to column-major cuBLAS/cuSOLVER as their transposes: a row-major
 * M x K matrix is a column-major K x M one with the same leading dimension. */
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include "kfac_gpu.h"

#define KFAC_STREAM ((cudaStream_t)0)

/* Largest patch buffer, in floats (128 MiB), as on the CPU: big layers go in chunks. */
#define KFAC_GPU_PATCH_BUDGET ((size_t)32 << 20)
/* Largest split-k partial-product buffer, in floats (32 MiB). */
#define KFAC_GPU_PART_BUDGET ((size_t)8 << 20)
/* Thread blocks a factor product should keep busy (about two per SM on an H100). */
#define KFAC_GPU_TARGET_TILES 264

/* ---- errors ------------------------------------------------------------------------------ */

void kfac_gpu_check_cuda(cudaError_t status, const char *expr, const char *file, int line)
{
    if (status != cudaSuccess)
        kfac_die(file, line, "%s: CUDA error %d: %s", expr, (int)status, cudaGetErrorString(status));
}

void kfac_gpu_check_cublas(cublasStatus_t status, const char *expr, const char *file, int line)
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

void kfac_gpu_check_cusolver(cusolverStatus_t status, const char *expr, const char *file, int line)
{
    if (status != CUSOLVER_STATUS_SUCCESS)
        kfac_die(file, line, "%s: cuSOLVER error %d: %s", expr, (int)status, cusolver_message(status));
}

/* ---- memory ---------------------------------------------------------------------------- */

/* n floats of zeroed device memory (NULL for n == 0); the size product is checked. */
static float *dev_floats(size_t n)
{
    float *p = NULL;
    if (n == 0) return NULL;
    if (n > SIZE_MAX / sizeof(float)) kfac_die(__FILE__, __LINE__, "device allocation of %zu floats overflows", n);
    KFAC_CUDA_CHECK(cudaMalloc((void **)&p, n * sizeof(float)));
    KFAC_CUDA_CHECK(cudaMemsetAsync(p, 0, n * sizeof(float), KFAC_STREAM));
    return p;
}

/* Grows a scratch buffer to at least n floats (contents not kept). */
static float *dev_scratch(float **p, size_t *len, size_t n)
{
    if (n > *len) {
        KFAC_CUDA_CHECK(cudaFree(*p));
        *p = NULL;
        *p = dev_floats(n);
        *len = n;
    }
    return *p;
}

static void dev_free(float **p)
{
    if (*p) KFAC_CUDA_CHECK(cudaFree(*p));
    *p = NULL;
}

static void copy_d2d(float *dst, const float *src, size_t n)
{
    if (n) KFAC_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, KFAC_STREAM));
}

static void pull(float *host, const float *dev, size_t n)
{
    if (n && host && dev) KFAC_CUDA_CHECK(cudaMemcpy(host, dev, n * sizeof(float), cudaMemcpyDeviceToHost));
}

static void push(float *dev, const float *host, size_t n)
{
    if (n && host && dev) KFAC_CUDA_CHECK(cudaMemcpy(dev, host, n * sizeof(float), cudaMemcpyHostToDevice));
}

static int as_int(size_t n)
{
    KFAC_ASSERT(n <= (size_t)INT_MAX);
    return (int)n;
}

/* Makes the net's device current and returns the one that was. */
static int enter_device(int device)
{
    int prev = 0;
    KFAC_CUDA_CHECK(cudaGetDevice(&prev));
    if (prev != device) KFAC_CUDA_CHECK(cudaSetDevice(device));
    return prev;
}

static void leave_device(int prev)
{
    KFAC_CUDA_CHECK(cudaSetDevice(prev));
}

static size_t sq(int g, int d) { return (size_t)g * d * d; }

/* ---- timing ---------------------------------------------------------------------------- */

static int span_begin(kfac_gpu_net *g, int phase)
{
    if (g->nspans == g->spans_made) {
        int n = g->spans_made ? 2 * g->spans_made : 16;
        kfac_gpu_span *s = (kfac_gpu_span *)realloc(g->spans, (size_t)n * sizeof *s);
        if (!s) kfac_die(__FILE__, __LINE__, "out of memory for %d timing events", n);
        g->spans = s;
        for (; g->spans_made < n; ++g->spans_made) {
            KFAC_CUDA_CHECK(cudaEventCreate(&g->spans[g->spans_made].start));
            KFAC_CUDA_CHECK(cudaEventCreate(&g->spans[g->spans_made].end));
        }
    }
    kfac_gpu_span *s = &g->spans[g->nspans];
    s->phase = phase;
    KFAC_CUDA_CHECK(cudaEventRecord(s->start, KFAC_STREAM));
    return g->nspans++;
}

static void span_end(kfac_gpu_net *g, int i)
{
    KFAC_CUDA_CHECK(cudaEventRecord(g->spans[i].end, KFAC_STREAM));
}

void kfac_timing_collect_gpu(kfac_net *k)
{
    kfac_gpu_net *g = k->gpu;
    int i;
    if (!g || g->nspans == 0) return;
    int prev = enter_device(g->device);
    KFAC_CUDA_CHECK(cudaEventSynchronize(g->spans[g->nspans - 1].end));
    for (i = 0; i < g->nspans; ++i) {
        float ms = 0;
        KFAC_CUDA_CHECK(cudaEventElapsedTime(&ms, g->spans[i].start, g->spans[i].end));
        double s = 1e-3 * ms;
        if (g->spans[i].phase == KFAC_PHASE_STATS) k->t_stats += s;
        else if (g->spans[i].phase == KFAC_PHASE_INVERSE) k->t_inverse += s;
        else k->t_precond += s;
    }
    g->nspans = 0;
    leave_device(prev);
}

/* ---- attach / free --------------------------------------------------------------------- */

static void alloc_layer_gpu(kfac_layer *kl, const layer *l)
{
    size_t g = (size_t)kl->groups, K = (size_t)kl->K, M = (size_t)kl->M;
    kl->A_gpu = dev_floats(g * K * K);
    kl->G_gpu = dev_floats(g * M * M);
    kl->A_acc_gpu = dev_floats(g * K * K);
    kl->G_acc_gpu = dev_floats(g * M * M);
    kl->EA_gpu = dev_floats(g * K * K);
    kl->dA_gpu = dev_floats(g * K);
    kl->EG_gpu = dev_floats(g * M * M);
    kl->dG_gpu = dev_floats(g * M);
    kl->Ainv_gpu = dev_floats(g * K * K);
    kl->Ginv_gpu = dev_floats(g * M * M);
    kl->damp_gpu = dev_floats(2 * g);
    kl->w_snap_gpu = dev_floats(g * M * (size_t)kl->k_in);
    if (kl->has_bias) kl->b_snap_gpu = dev_floats(g * M);
    kl->D_gpu = dev_floats(g * M * K);
    kl->P_gpu = dev_floats(g * M * K);
    kl->tmp_gpu = dev_floats(g * M * K);
    /* the weights may come with momentum already (a resumed run pushes it later) */
    copy_d2d(kl->w_snap_gpu, l->weight_updates_gpu, g * M * (size_t)kl->k_in);
    if (kl->has_bias) copy_d2d(kl->b_snap_gpu, l->bias_updates_gpu, g * M);
}

static void free_layer_gpu(kfac_layer *kl)
{
    dev_free(&kl->A_gpu); dev_free(&kl->G_gpu); dev_free(&kl->A_acc_gpu); dev_free(&kl->G_acc_gpu);
    dev_free(&kl->EA_gpu); dev_free(&kl->dA_gpu); dev_free(&kl->EG_gpu); dev_free(&kl->dG_gpu);
    dev_free(&kl->Ainv_gpu); dev_free(&kl->Ginv_gpu); dev_free(&kl->damp_gpu); dev_free(&kl->w_snap_gpu); dev_free(&kl->b_snap_gpu);
    dev_free(&kl->D_gpu); dev_free(&kl->P_gpu); dev_free(&kl->tmp_gpu);
}

void kfac_network_attach_gpu(network *net)
{
    kfac_net *k = kfac_of(net);
    int i;
    int prev = enter_device(net->gpu_index);
    kfac_gpu_net *g = (kfac_gpu_net *)kfac_calloc(1, sizeof *g);
    g->device = net->gpu_index;
    KFAC_CUBLAS_CHECK(cublasCreate(&g->blas));
    KFAC_CUBLAS_CHECK(cublasSetStream(g->blas, KFAC_STREAM));
    /* FP32 arithmetic: the default math mode never uses TF32 for S routines */
    KFAC_CUBLAS_CHECK(cublasSetMathMode(g->blas, CUBLAS_DEFAULT_MATH));
    KFAC_CUSOLVER_CHECK(cusolverDnCreate(&g->solver));
    KFAC_CUSOLVER_CHECK(cusolverDnSetStream(g->solver, KFAC_STREAM));

    size_t eig_len = 1, eig_d = 1;
    g->max_groups = 1;
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        int dim = kl->K > kl->M ? kl->K : kl->M;
        alloc_layer_gpu(kl, &net->layers[kl->index]);
        if (sq(kl->groups, dim) > eig_len) eig_len = sq(kl->groups, dim);
        if ((size_t)kl->groups * dim > eig_d) eig_d = (size_t)kl->groups * dim;
        if (kl->groups > g->max_groups) g->max_groups = kl->groups;
    }
    g->eig_E = dev_floats(eig_len);
    g->eig_d = dev_floats(eig_d);
    KFAC_CUDA_CHECK(cudaMalloc((void **)&g->eig_info, (size_t)(g->max_groups + 1) * sizeof(int)));
    g->eig_lwork = 1;
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        int f, lwork = 0;
        for (f = 0; f < 2; ++f) {
            int n = f ? kl->M : kl->K;
            KFAC_CUSOLVER_CHECK(cusolverDnSsyevd_bufferSize(g->solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER,
                                                            n, g->eig_E, n, g->eig_d, &lwork));
            if (lwork > g->eig_lwork) g->eig_lwork = lwork;
        }
    }
    g->eig_work = dev_floats((size_t)g->eig_lwork);

    int nl = k->nlayers ? k->nlayers : 1;
    KFAC_CUDA_CHECK(cudaMalloc((void **)&g->red, (size_t)nl * 3 * sizeof(double)));
    KFAC_CUDA_CHECK(cudaMalloc((void **)&g->flags, (size_t)nl * 2 * sizeof(int)));
    g->red_host = (double *)kfac_calloc((size_t)nl * 3, sizeof(double));
    g->flags_host = (int *)kfac_calloc((size_t)nl * 2, sizeof(int));

    if (k->true_fisher) {
        const layer *soft = &net->layers[k->loss_index];
        g->sink = dev_floats(k->sink_len ? k->sink_len : 1);
        g->loss_delta_save = dev_floats((size_t)soft->outputs * soft->batch);
        g->uniforms = dev_floats((size_t)soft->batch);
        g->uniforms_host = (float *)kfac_calloc((size_t)soft->batch, sizeof(float));
    }
    k->gpu = g;
    KFAC_CUDA_CHECK(cudaStreamSynchronize(KFAC_STREAM));
    leave_device(prev);

    struct cudaDeviceProp prop;
    KFAC_CUDA_CHECK(cudaGetDeviceProperties(&prop, g->device));
    fprintf(stderr, "K-FAC: on GPU %d (%s): cuBLAS FP32 factors and preconditioning, cuSOLVER syevd\n",
            g->device, prop.name);
}

void kfac_network_free_gpu(network *net)
{
    kfac_net *k = kfac_of(net);
    kfac_gpu_net *g = k->gpu;
    int i;
    if (!g) return;
    int prev = enter_device(g->device);
    KFAC_CUDA_CHECK(cudaDeviceSynchronize());
    for (i = 0; i < k->nlayers; ++i) free_layer_gpu(&k->layers[i]);
    dev_free(&g->patches); dev_free(&g->part); dev_free(&g->eig_E); dev_free(&g->eig_d); dev_free(&g->eig_work);
    dev_free(&g->sink); dev_free(&g->loss_delta_save); dev_free(&g->uniforms);
    KFAC_CUDA_CHECK(cudaFree(g->eig_info));
    KFAC_CUDA_CHECK(cudaFree(g->red));
    KFAC_CUDA_CHECK(cudaFree(g->flags));
    for (i = 0; i < g->spans_made; ++i) {
        KFAC_CUDA_CHECK(cudaEventDestroy(g->spans[i].start));
        KFAC_CUDA_CHECK(cudaEventDestroy(g->spans[i].end));
    }
    KFAC_CUBLAS_CHECK(cublasDestroy(g->blas));
    KFAC_CUSOLVER_CHECK(cusolverDnDestroy(g->solver));
    leave_device(prev);
    free(g->spans); free(g->red_host); free(g->flags_host); free(g->uniforms_host);
    free(g);
    k->gpu = NULL;
}

/* ---- factors ------------------------------------------------------------------------------ */

/* C (K x K, row-major upper triangle used) += alpha * P P^T, P row-major K x n.
 *
 * P is the column-major n x K matrix Pc = P^T, so this is syrk(trans = T) with the
 * lower triangle (column-major lower = row-major upper).  A syrk's thread blocks tile
 * the K x K output only: for a small K and a long n (the first convolutions: K = 27,
 * n = a million columns) that leaves most of the GPU idle.  There the columns are
 * split into S slices, S partial products run as one strided-batched gemm and a
 * kernel adds them up (split-k); the full square costs twice syrk's flops, which is
 * cheap next to the idle GPU it replaces. */
void kfac_factor_product_gpu(kfac_gpu_net *g, int K, size_t n, const float *P, float alpha, float *C)
{
    const float one = 1.0f, zero = 0.0f;
    if (n == 0) return;
    int ld = as_int(n);
    size_t tiles = (size_t)((K + 63) / 64) * ((K + 63) / 64);
    size_t S = KFAC_GPU_TARGET_TILES / tiles;
    size_t min_w = K > 256 ? (size_t)K : 256; /* each slice at least this many columns */
    if (S > n / min_w) S = n / min_w;
    if (S > KFAC_GPU_PART_BUDGET / ((size_t)K * K)) S = KFAC_GPU_PART_BUDGET / ((size_t)K * K);
    if (S < 2) {
        KFAC_CUBLAS_CHECK(cublasSsyrk(g->blas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_T, K, ld, &alpha, P, ld, &one, C, K));
        return;
    }
    size_t w = n / S, rest = n - S * w;
    float *part = dev_scratch(&g->part, &g->part_len, S * K * K);
    KFAC_CUBLAS_CHECK(cublasSgemmStridedBatched(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, K, K, as_int(w), &one,
                                                P, ld, (long long)w, P, ld, (long long)w, &zero,
                                                part, K, (long long)K * K, as_int(S)));
    if (rest)
        KFAC_CUBLAS_CHECK(cublasSsyrk(g->blas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_T, K, as_int(rest), &alpha,
                                      P + S * w, ld, &one, C, K));
    kfac_sum_parts_gpu(part, as_int(S), (size_t)K * K, alpha, C, KFAC_STREAM);
}

static float *patch_buffer(kfac_gpu_net *g, size_t len)
{
    return dev_scratch(&g->patches, &g->patches_len, len);
}

/* Images per chunk so that a chunk of rows x (nb*T) fits the patch budget. */
static int chunk_images(size_t rows, size_t T, int B)
{
    size_t nb = KFAC_GPU_PATCH_BUDGET / (rows * T);
    if (nb < 1) nb = 1;
    if (nb > (size_t)B) nb = (size_t)B;
    return (int)nb;
}

void kfac_factors_capture_A_gpu(kfac_net *k, kfac_layer *kl, const layer *l, const float *input)
{
    kfac_gpu_net *g = k->gpu;
    const int K = kl->K, B = l->batch;
    if (kl->type == CONNECTED) {
        /* P is K x B: the inputs, transposed, with a row of ones; A_acc += P P^T */
        float *P = patch_buffer(g, (size_t)K * B);
        kfac_rows_gpu(input, (size_t)l->inputs, B, l->inputs, 1, kl->has_bias, P, KFAC_STREAM);
        kfac_factor_product_gpu(g, K, (size_t)B, P, 1.0f, kl->A_acc_gpu);
    } else {
        const size_t T = (size_t)kl->T;
        const size_t group_in = (size_t)(l->c / l->groups) * l->h * l->w;
        const int nb = chunk_images((size_t)K, T, B);
        float *P = patch_buffer(g, (size_t)K * T * nb);
        int gi, b0;
        for (gi = 0; gi < kl->groups; ++gi) {
            for (b0 = 0; b0 < B; b0 += nb) {
                int n = B - b0 < nb ? B - b0 : nb;
                /* image b0+b, group gi; P is K x (n*T) */
                const float *im = input + ((size_t)b0 * kl->groups + gi) * group_in;
                kfac_patches_gpu(im, group_in * kl->groups, n, l->c / l->groups, l->h, l->w, l->size, l->stride,
                                 l->pad, l->out_h, l->out_w, kl->has_bias, P, KFAC_STREAM);
                kfac_factor_product_gpu(g, K, (size_t)n * T, P, 1.0f, kl->A_acc_gpu + sq(gi, K));
            }
        }
    }
    kl->n_acc_A += B;
}

void kfac_factors_capture_G_gpu(kfac_net *k, kfac_layer *kl, const layer *l)
{
    kfac_gpu_net *g = k->gpu;
    const int M = kl->M, B = l->batch;
    if (kl->type == CONNECTED) {
        /* delta is B x M: P = delta^T (M x B); G_acc += P P^T */
        float *P = patch_buffer(g, (size_t)M * B);
        kfac_rows_gpu(l->delta_gpu, (size_t)M, B, M, 1, 0, P, KFAC_STREAM);
        kfac_factor_product_gpu(g, M, (size_t)B, P, 1.0f, kl->G_acc_gpu);
    } else {
        /* image b, group gi: the M x T block of the NCHW delta; G_acc += (1/T) P P^T */
        const size_t T = (size_t)kl->T;
        const int nb = chunk_images((size_t)M, T, B);
        float *P = patch_buffer(g, (size_t)M * T * nb);
        int gi, b0;
        for (gi = 0; gi < kl->groups; ++gi) {
            for (b0 = 0; b0 < B; b0 += nb) {
                int n = B - b0 < nb ? B - b0 : nb;
                const float *d = l->delta_gpu + ((size_t)b0 * kl->groups + gi) * M * T;
                kfac_rows_gpu(d, (size_t)kl->groups * M * T, n, M, (int)T, 0, P, KFAC_STREAM);
                kfac_factor_product_gpu(g, M, (size_t)n * T, P, 1.0f / (float)T, kl->G_acc_gpu + sq(gi, M));
            }
        }
    }
    kl->n_acc_G += B;
}

void kfac_layer_backward_gpu(network *net, kfac_layer *kl, const layer *l, const float *input_gpu)
{
    kfac_net *k = kfac_of(net);
    int s = span_begin(k->gpu, KFAC_PHASE_STATS);
    if (k->capture & KFAC_CAPTURE_A) kfac_factors_capture_A_gpu(k, kl, l, input_gpu);
    if (k->capture & KFAC_CAPTURE_G) kfac_factors_capture_G_gpu(k, kl, l);
    span_end(k->gpu, s);
}

/* kfac_factors_fold_cpu for every layer with new statistics, with one read-back of
 * the finiteness flags for all of them. */
void kfac_factors_fold_gpu(kfac_net *k)
{
    kfac_gpu_net *g = k->gpu;
    int i, any = 0;
    KFAC_CUDA_CHECK(cudaMemsetAsync(g->flags, 0, (size_t)2 * k->nlayers * sizeof(int), KFAC_STREAM));
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        if (kl->n_acc_A == 0 || kl->n_acc_G == 0) continue;
        kfac_nonfinite_gpu(kl->A_acc_gpu, sq(kl->groups, kl->K), g->flags + 2 * i, KFAC_STREAM);
        kfac_nonfinite_gpu(kl->G_acc_gpu, sq(kl->groups, kl->M), g->flags + 2 * i + 1, KFAC_STREAM);
        any = 1;
    }
    if (!any) return;
    KFAC_CUDA_CHECK(cudaMemcpy(g->flags_host, g->flags, (size_t)2 * k->nlayers * sizeof(int), cudaMemcpyDeviceToHost));
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        if (kl->n_acc_A == 0 || kl->n_acc_G == 0) continue;
        if (g->flags_host[2 * i] || g->flags_host[2 * i + 1]) {
            if (!kl->bad_factors_logged++)
                kfac_log("layer %d: non-finite statistics, batch skipped (the factors keep their last good value; logged once)", kl->index);
        } else {
            float w_new = kfac_fold_weight(kl, k->cfg.decay), w_old = 1.0f - w_new;
            kfac_fold_gpu(kl->A_gpu, kl->A_acc_gpu, kl->K, kl->groups, w_old, w_new, 1.0f / (float)kl->n_acc_A, KFAC_STREAM);
            kfac_fold_gpu(kl->G_gpu, kl->G_acc_gpu, kl->M, kl->groups, w_old, w_new, 1.0f / (float)kl->n_acc_G, KFAC_STREAM);
            ++kl->have_factors;
        }
        KFAC_CUDA_CHECK(cudaMemsetAsync(kl->A_acc_gpu, 0, sq(kl->groups, kl->K) * sizeof(float), KFAC_STREAM));
        KFAC_CUDA_CHECK(cudaMemsetAsync(kl->G_acc_gpu, 0, sq(kl->groups, kl->M) * sizeof(float), KFAC_STREAM));
        kl->n_acc_A = kl->n_acc_G = 0;
    }
}

/* ---- eigendecompositions (kfac_inverse.c) ------------------------------------------------ */

/* syevd without reading info back: info lands in *info_dev */
static void eigh_async(kfac_gpu_net *g, float *a, float *w, int n, int *info_dev)
{
    KFAC_CUSOLVER_CHECK(cusolverDnSsyevd(g->solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER, n, a, n, w,
                                         g->eig_work, g->eig_lwork, info_dev));
}

int kfac_eigh_gpu(kfac_net *k, float *a, float *w, int n)
{
    kfac_gpu_net *g = k->gpu;
    int lwork = 0, info = 0;
    KFAC_CUSOLVER_CHECK(cusolverDnSsyevd_bufferSize(g->solver, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_UPPER,
                                                    n, a, n, w, &lwork));
    if (lwork > g->eig_lwork) {
        dev_free(&g->eig_work);
        g->eig_work = dev_floats((size_t)lwork);
        g->eig_lwork = lwork;
    }
    /* column-major 'U' of a symmetric matrix = row-major 'L': the same matrix; the
     * column-major eigenvectors in columns are row-major rows: a ends as Q^T */
    eigh_async(g, a, w, n, g->eig_info);
    KFAC_CUDA_CHECK(cudaMemcpy(&info, g->eig_info, sizeof info, cudaMemcpyDeviceToHost));
    return info;
}

/* Decomposes the groups of one factor X (groups x dim x dim) into g->eig_E / eig_d and
 * clamps negative eigenvalues to 0.  Returns 0, syevd's first non-zero info, or -1000
 * for non-finite output, as decompose() in kfac_inverse.c. */
static int decompose_gpu(kfac_gpu_net *g, const float *X, int dim, int groups)
{
    const size_t dd = (size_t)dim * dim;
    int gi, info[2];
    copy_d2d(g->eig_E, X, (size_t)groups * dd);
    KFAC_CUDA_CHECK(cudaMemsetAsync(g->eig_info, 0, (size_t)(groups + 1) * sizeof(int), KFAC_STREAM));
    for (gi = 0; gi < groups; ++gi) eigh_async(g, g->eig_E + gi * dd, g->eig_d + (size_t)gi * dim, dim, g->eig_info + gi);
    kfac_nonfinite_gpu(g->eig_E, (size_t)groups * dd, g->eig_info + groups, KFAC_STREAM);
    kfac_nonfinite_gpu(g->eig_d, (size_t)groups * dim, g->eig_info + groups, KFAC_STREAM);
    for (gi = 0; gi < groups; ++gi) {
        KFAC_CUDA_CHECK(cudaMemcpy(info, g->eig_info + gi, sizeof(int), cudaMemcpyDeviceToHost));
        if (info[0] != 0) return info[0];
    }
    KFAC_CUDA_CHECK(cudaMemcpy(info + 1, g->eig_info + groups, sizeof(int), cudaMemcpyDeviceToHost));
    if (info[1]) return -1000;
    kfac_clamp_gpu(g->eig_d, (size_t)groups * dim, KFAC_STREAM);
    return 0;
}

int kfac_inverse_update_gpu(kfac_net *k, kfac_layer *kl)
{
    kfac_gpu_net *g = k->gpu;
    int bad[2];
    if (!kl->have_factors) return 0;
    KFAC_CUDA_CHECK(cudaMemsetAsync(g->eig_info, 0, 2 * sizeof(int), KFAC_STREAM));
    kfac_nonfinite_gpu(kl->A_gpu, sq(kl->groups, kl->K), g->eig_info, KFAC_STREAM);
    kfac_nonfinite_gpu(kl->G_gpu, sq(kl->groups, kl->M), g->eig_info + 1, KFAC_STREAM);
    KFAC_CUDA_CHECK(cudaMemcpy(bad, g->eig_info, sizeof bad, cudaMemcpyDeviceToHost));
    if (!kfac_factors_finite_or_log(kl, !bad[0] && !bad[1])) return -1;
    /* decompose into scratch so a failure leaves the last good inverse intact */
    int info = decompose_gpu(g, kl->A_gpu, kl->K, kl->groups);
    if (info == 0) {
        copy_d2d(kl->EA_gpu, g->eig_E, sq(kl->groups, kl->K));
        copy_d2d(kl->dA_gpu, g->eig_d, (size_t)kl->groups * kl->K);
        info = decompose_gpu(g, kl->G_gpu, kl->M, kl->groups);
        if (info == 0) {
            copy_d2d(kl->EG_gpu, g->eig_E, sq(kl->groups, kl->M));
            copy_d2d(kl->dG_gpu, g->eig_d, (size_t)kl->groups * kl->M);
        }
    }
    return kfac_inverse_outcome(kl, info, "cusolverDnSsyevd");
}

/* ---- preconditioning (kfac_precondition.c) ------------------------------------------------ */

/* Row-major C (m x n) = op(A) (m x k) op(B) (k x n) for `batch` matrices at the given
 * strides: column-major C^T = op(B)^T op(A)^T. */
static void gemm_rm(kfac_gpu_net *g, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                    const float *A, int lda, long long sa, const float *B, int ldb, long long sb,
                    float *C, int ldc, long long sc, int batch)
{
    const float one = 1.0f, zero = 0.0f;
    KFAC_CUBLAS_CHECK(cublasSgemmStridedBatched(g->blas, tb, ta, n, m, k, &one, B, ldb, sb, A, lda, sa, &zero,
                                                C, ldc, sc, batch));
}

/* Ainv = E_A^T diag(1/(d_A + lA)) E_A and Ginv likewise, per group (E = Q^T), with
 * lA = sqrt(damping)*mean(d_A): kfac_damped_inverses_cpu.  The damping values are read
 * back (2 floats per group, once per decomposition) to decide, as the CPU does,
 * whether a factor of zeros leaves the layer on SGD. */
void kfac_damped_inverses_gpu(kfac_net *k, kfac_layer *kl, float damping)
{
    kfac_gpu_net *g = k->gpu;
    const int M = kl->M, K = kl->K, G = kl->groups;
    int i, ok = 1;
    float *damp = (float *)kfac_calloc((size_t)2 * G, sizeof(float));
    kfac_damping_gpu(kl->dA_gpu, kl->dG_gpu, K, M, G, sqrtf(damping), kl->damp_gpu, KFAC_STREAM);
    KFAC_CUDA_CHECK(cudaMemcpy(damp, kl->damp_gpu, (size_t)2 * G * sizeof(float), cudaMemcpyDeviceToHost));
    for (i = 0; i < 2 * G; ++i) ok &= damp[i] > 0;
    free(damp);
    if (ok) {
        /* scratch = diag(1/(d + l)) E; inv = E^T scratch */
        kfac_scale_rows_gpu(kl->EA_gpu, kl->dA_gpu, kl->damp_gpu, 0, G, K, g->eig_E, KFAC_STREAM);
        gemm_rm(g, CUBLAS_OP_T, CUBLAS_OP_N, K, K, K, kl->EA_gpu, K, (long long)K * K, g->eig_E, K, (long long)K * K,
                kl->Ainv_gpu, K, (long long)K * K, G);
        kfac_scale_rows_gpu(kl->EG_gpu, kl->dG_gpu, kl->damp_gpu, 1, G, M, g->eig_E, KFAC_STREAM);
        gemm_rm(g, CUBLAS_OP_T, CUBLAS_OP_N, M, M, M, kl->EG_gpu, M, (long long)M * M, g->eig_E, M, (long long)M * M,
                kl->Ginv_gpu, M, (long long)M * M, G);
    }
    kl->inv_damping = damping;
    kl->inv_ok = ok;
}

/* P = Ginv D Ainv per group: (G + lG I)^-1 D (A + lA I)^-1 */
void kfac_precondition_layer_gpu(kfac_net *k, kfac_layer *kl, float damping)
{
    kfac_gpu_net *g = k->gpu;
    const int M = kl->M, K = kl->K, G = kl->groups;
    const long long MM = (long long)M * M, KK = (long long)K * K, MK = (long long)M * K;
    if (kl->inv_damping != damping) kfac_damped_inverses_gpu(k, kl, damping);
    if (!kl->inv_ok) {
        copy_d2d(kl->P_gpu, kl->D_gpu, (size_t)G * M * K);
        return;
    }
    /* tmp = Ginv D (M x K); P = tmp Ainv (M x K) */
    gemm_rm(g, CUBLAS_OP_N, CUBLAS_OP_N, M, K, M, kl->Ginv_gpu, M, MM, kl->D_gpu, K, MK, kl->tmp_gpu, K, MK, G);
    gemm_rm(g, CUBLAS_OP_N, CUBLAS_OP_N, M, K, K, kl->tmp_gpu, K, MK, kl->Ainv_gpu, K, KK, kl->P_gpu, K, MK, G);
}

void kfac_gather_gradient_gpu(kfac_net *k, kfac_layer *kl, const layer *l)
{
    (void)k;
    kfac_gather_gpu(l->weight_updates_gpu, kl->w_snap_gpu, l->bias_updates_gpu, kl->b_snap_gpu, kl->groups, kl->M,
                    kl->k_in, kl->has_bias, kl->D_gpu, KFAC_STREAM);
}

void kfac_scatter_update_gpu(kfac_net *k, kfac_layer *kl, const layer *l, float scale)
{
    (void)k;
    kfac_scatter_gpu(l->weight_updates_gpu, l->bias_updates_gpu, kl->P_gpu, kl->D_gpu, kl->groups, kl->M, kl->k_in,
                     kl->has_bias, scale, KFAC_STREAM);
}

/* What the write-back does with a layer this update (kfac_network_precondition's
 * active[] values). */
enum { MODE_OFF = 0, MODE_SCALED = 1, MODE_SNAPSHOT = 2, MODE_KEEP = 3, MODE_PLAIN = 4 };

void kfac_network_precondition_gpu(network *net, update_args *a)
{
    kfac_net *k = kfac_of(net);
    kfac_gpu_net *g = k->gpu;
    int i, s;
    k->capture = KFAC_CAPTURE_NONE;
    kfac_timing_collect_gpu(k);
    s = span_begin(g, KFAC_PHASE_STATS);
    if (kfac_stats_step(k)) kfac_factors_fold_gpu(k);
    span_end(g, s);

    /* as kfac_network_precondition: warmup and layers without an inverse go plain */
    int on = k->step >= k->cfg.warmup;
    int refresh = on && kfac_inverse_due(k);
    s = span_begin(g, KFAC_PHASE_INVERSE);
    for (i = 0; on && i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        if (k->identity || !kl->have_factors || !(refresh || !kl->have_inverse)) continue;
        /* in a multi-GPU group the inverses are shared out at the next sync */
        if (g->group > 1) g->inverse_due = 1;
        else kfac_inverse_update_gpu(k, kl);
    }
    span_end(g, s);

    /* precondition every layer that has an inverse; KL-clip them together */
    s = span_begin(g, KFAC_PHASE_PRECOND);
    int *mode = (int *)kfac_calloc((size_t)(k->nlayers ? k->nlayers : 1), sizeof(int));
    KFAC_CUDA_CHECK(cudaMemsetAsync(g->red, 0, (size_t)3 * k->nlayers * sizeof(double), KFAC_STREAM));
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        const layer *l = &net->layers[kl->index];
        size_t len = (size_t)kl->groups * kl->M * kl->K;
        int plain = !k->identity && (!on || !kl->have_inverse);
        kfac_gather_gradient_gpu(k, kl, l);
        if (k->identity || plain) copy_d2d(kl->P_gpu, kl->D_gpu, len);
        else kfac_precondition_layer_gpu(k, kl, k->cfg.damping);
        kfac_dot_stats_gpu(kl->P_gpu, kl->D_gpu, len, g->red + 3 * i, KFAC_STREAM);
        mode[i] = plain ? MODE_PLAIN : MODE_SCALED;
    }
    /* the one read-back of the update: <P, D> and finiteness of every layer */
    if (k->nlayers)
        KFAC_CUDA_CHECK(cudaMemcpy(g->red_host, g->red, (size_t)3 * k->nlayers * sizeof(double), cudaMemcpyDeviceToHost));
    double quad = 0; /* sum over layers of kfac_kl_term */
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        const layer *l = &net->layers[kl->index];
        const double *r = g->red_host + 3 * i;
        if (mode[i] == MODE_PLAIN) {
            /* plain SGD for the layer: only a non-finite gradient changes anything */
            if (r[1] != 0 && !kl->bad_grad_logged++)
                kfac_log("layer %d: non-finite gradient, this update's gradient dropped for the layer (logged once)", kl->index);
            mode[i] = r[1] != 0 ? MODE_SNAPSHOT : MODE_KEEP;
            continue;
        }
        if (mode[i] != MODE_SCALED) continue;
        if (r[1] != 0) {
            if (!kl->bad_grad_logged++)
                kfac_log("layer %d: non-finite gradient, this update's gradient dropped for the layer (logged once)", kl->index);
            mode[i] = MODE_SNAPSHOT; /* the momentum step without the bad gradient */
        } else if (!k->identity && r[2] != 0) {
            if (!kl->bad_grad_logged++)
                kfac_log("layer %d: non-finite preconditioned gradient, plain SGD for this update (logged once)", kl->index);
            mode[i] = MODE_KEEP; /* the buffers already hold the plain gradient */
        } else if (!k->identity) {
            quad += kfac_kl_term(a, l, r[0]);
        }
    }
    float nu = kfac_kl_scale(k, net, a, quad);
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        const layer *l = &net->layers[kl->index];
        if (mode[i] == MODE_SCALED) {
            kfac_scatter_update_gpu(k, kl, l, nu);
        } else if (mode[i] == MODE_SNAPSHOT) {
            copy_d2d(l->weight_updates_gpu, kl->w_snap_gpu, (size_t)kl->groups * kl->M * kl->k_in);
            if (kl->has_bias) copy_d2d(l->bias_updates_gpu, kl->b_snap_gpu, (size_t)kl->groups * kl->M);
        }
    }
    free(mode);
    span_end(g, s);
}

void kfac_network_updated_gpu(network *net)
{
    kfac_net *k = kfac_of(net);
    int i;
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        const layer *l = &net->layers[kl->index];
        copy_d2d(kl->w_snap_gpu, l->weight_updates_gpu, (size_t)kl->groups * kl->M * kl->k_in);
        if (kl->has_bias) copy_d2d(kl->b_snap_gpu, l->bias_updates_gpu, (size_t)kl->groups * kl->M);
    }
    ++k->step;
    kfac_network_report(net);
}

/* ---- true Fisher (kfac_fisher.c) ---------------------------------------------------------- */

/* The sampled-label backward of kfac_network_fisher_pass, on the device: labels from
 * the softmax's output_gpu with the host generator's uniforms (one per image, drawn in
 * the CPU's order, so both paths sample the same labels from the same p). */
void kfac_network_fisher_pass_gpu(network *net)
{
    kfac_net *k = kfac_of(net);
    kfac_gpu_net *g = k->gpu;
    int i;
    layer *soft = &net->layers[k->loss_index];
    size_t nd = (size_t)soft->outputs * soft->batch;
    float **saved = (float **)kfac_calloc((size_t)net->n * 3, sizeof(float *));

    copy_d2d(g->loss_delta_save, soft->delta_gpu, nd);
    for (i = 0; i < soft->batch; ++i) g->uniforms_host[i] = kfac_rng_uniform(&k->rng);
    KFAC_CUDA_CHECK(cudaMemcpyAsync(g->uniforms, g->uniforms_host, (size_t)soft->batch * sizeof(float),
                                    cudaMemcpyHostToDevice, KFAC_STREAM));
    kfac_sample_gpu(soft->output_gpu, g->uniforms, soft->batch, soft->inputs, soft->delta_gpu, KFAC_STREAM);
    /* the sink only absorbs the pass's gradients; zeroed so it never grows to inf */
    KFAC_CUDA_CHECK(cudaMemsetAsync(g->sink, 0, (k->sink_len ? k->sink_len : 1) * sizeof(float), KFAC_STREAM));
    const kfac_update_fields f = {offsetof(layer, weight_updates_gpu), offsetof(layer, bias_updates_gpu),
                                  offsetof(layer, scale_updates_gpu)};
    kfac_redirect_updates(net, f, g->sink, saved);
    k->capture = KFAC_CAPTURE_A | KFAC_CAPTURE_G;
    backward_network(net);
    k->capture = KFAC_CAPTURE_NONE;
    kfac_restore_updates(net, f, saved);
    free(saved);

    for (i = 0; i < net->n; ++i) {
        layer *l = &net->layers[i];
        if (l->delta_gpu)
            KFAC_CUDA_CHECK(cudaMemsetAsync(l->delta_gpu, 0, (size_t)l->outputs * l->batch * sizeof(float), KFAC_STREAM));
    }
    copy_d2d(soft->delta_gpu, g->loss_delta_save, nd);
}

/* ---- state file (kfac_state.c) ------------------------------------------------------------ */

/* Darknet's update buffers of a conv/connected layer, as kfac_state.c counts them. */
/* Host arrays <-> device for the state file: to_device 0 pulls (before a save), 1
 * pushes (after a load). */
static void xfer(float *host, float *dev, size_t n, int to_device)
{
    if (to_device) push(dev, host, n);
    else pull(host, dev, n);
}

static void state_transfer_gpu(network *net, int to_device)
{
    kfac_net *k = kfac_of(net);
    int i;
    int prev = enter_device(net->gpu_index);
    if (!to_device) KFAC_CUDA_CHECK(cudaStreamSynchronize(KFAC_STREAM));
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        size_t gK = (size_t)kl->groups * kl->K, gM = (size_t)kl->groups * kl->M;
        xfer(kl->A, kl->A_gpu, gK * kl->K, to_device);
        xfer(kl->G, kl->G_gpu, gM * kl->M, to_device);
        xfer(kl->EA, kl->EA_gpu, gK * kl->K, to_device);
        xfer(kl->dA, kl->dA_gpu, gK, to_device);
        xfer(kl->EG, kl->EG_gpu, gM * kl->M, to_device);
        xfer(kl->dG, kl->dG_gpu, gM, to_device);
        xfer(kl->w_snap, kl->w_snap_gpu, gM * kl->k_in, to_device);
        if (kl->has_bias) xfer(kl->b_snap, kl->b_snap_gpu, gM, to_device);
    }
    for (i = 0; i < net->n; ++i) {
        layer *l = &net->layers[i];
        size_t c[3];
        if (l->type != CONVOLUTIONAL && l->type != CONNECTED) continue;
        kfac_layer_update_counts(l, c);
        xfer(l->weight_updates, l->weight_updates_gpu, c[0], to_device);
        xfer(l->bias_updates, l->bias_updates_gpu, c[1], to_device);
        xfer(l->scale_updates, l->scale_updates_gpu, c[2], to_device);
    }
    leave_device(prev);
}

void kfac_state_pull_gpu(network *net) { state_transfer_gpu(net, 0); }
void kfac_state_push_gpu(network *net) { state_transfer_gpu(net, 1); }

void kfac_layer_pull_factors_gpu(const network *net, kfac_layer *kl)
{
    int prev = enter_device(net->gpu_index);
    pull(kl->A, kl->A_gpu, sq(kl->groups, kl->K));
    pull(kl->G, kl->G_gpu, sq(kl->groups, kl->M));
    leave_device(prev);
}

/* ---- multi-GPU (kfac_networks_sync) ---------------------------------------------------------- */

/* Averages one factor array over the replicas: gathered and summed on replica 0's
 * device (in replica order, so every run sums alike), scaled, copied back. */
static void average_over(network **nets, int n, int layer, int which)
{
    kfac_net *k0 = kfac_of(nets[0]);
    kfac_layer *kl0 = &k0->layers[layer];
    float *dst0 = which ? kl0->G_gpu : kl0->A_gpu;
    size_t len = which ? sq(kl0->groups, kl0->M) : sq(kl0->groups, kl0->K);
    const float one = 1.0f, inv = 1.0f / (float)n;
    int i;
    KFAC_CUDA_CHECK(cudaSetDevice(k0->gpu->device));
    for (i = 1; i < n; ++i) {
        kfac_layer *kl = &kfac_of(nets[i])->layers[layer];
        KFAC_CUDA_CHECK(cudaMemcpyPeer(k0->gpu->eig_E, k0->gpu->device, which ? kl->G_gpu : kl->A_gpu,
                                       kfac_of(nets[i])->gpu->device, len * sizeof(float)));
        KFAC_CUBLAS_CHECK(cublasSaxpy(k0->gpu->blas, as_int(len), &one, k0->gpu->eig_E, 1, dst0, 1));
    }
    KFAC_CUBLAS_CHECK(cublasSscal(k0->gpu->blas, as_int(len), &inv, dst0, 1));
    KFAC_CUDA_CHECK(cudaDeviceSynchronize());
    for (i = 1; i < n; ++i) {
        kfac_layer *kl = &kfac_of(nets[i])->layers[layer];
        KFAC_CUDA_CHECK(cudaMemcpyPeer(which ? kl->G_gpu : kl->A_gpu, kfac_of(nets[i])->gpu->device, dst0,
                                       k0->gpu->device, len * sizeof(float)));
    }
}

/* Copies layer `layer`'s inverse from replica `from` to every other replica. */
static void share_inverse(network **nets, int n, int layer, int from)
{
    kfac_layer *src = &kfac_of(nets[from])->layers[layer];
    int sdev = kfac_of(nets[from])->gpu->device, i;
    for (i = 0; i < n; ++i) {
        if (i == from) continue;
        kfac_layer *dst = &kfac_of(nets[i])->layers[layer];
        int ddev = kfac_of(nets[i])->gpu->device;
        dst->have_inverse = src->have_inverse;
        dst->inv_damping = 0; /* damped inverses rebuilt from the shared decomposition */
        if (!src->have_inverse) continue;
        KFAC_CUDA_CHECK(cudaMemcpyPeer(dst->EA_gpu, ddev, src->EA_gpu, sdev, sq(src->groups, src->K) * sizeof(float)));
        KFAC_CUDA_CHECK(cudaMemcpyPeer(dst->dA_gpu, ddev, src->dA_gpu, sdev, (size_t)src->groups * src->K * sizeof(float)));
        KFAC_CUDA_CHECK(cudaMemcpyPeer(dst->EG_gpu, ddev, src->EG_gpu, sdev, sq(src->groups, src->M) * sizeof(float)));
        KFAC_CUDA_CHECK(cudaMemcpyPeer(dst->dG_gpu, ddev, src->dG_gpu, sdev, (size_t)src->groups * src->M * sizeof(float)));
    }
}

typedef struct {
    network *net;
    int *owner;             /* nlayers: replica that decomposes each layer */
    int me;
} kfac_share_job;

static void *decompose_share(void *p)
{
    kfac_share_job *job = (kfac_share_job *)p;
    kfac_net *k = kfac_of(job->net);
    int i;
    KFAC_CUDA_CHECK(cudaSetDevice(k->gpu->device));
    for (i = 0; i < k->nlayers; ++i)
        if (job->owner[i] == job->me && k->layers[i].have_factors) kfac_inverse_update_gpu(k, &k->layers[i]);
    KFAC_CUDA_CHECK(cudaDeviceSynchronize());
    return NULL;
}

void kfac_networks_sync(network **nets, int n)
{
    kfac_net *k0 = kfac_of(nets[0]);
    int i, j, due = 0;
    if (n < 2 || !k0->gpu) return;
    for (i = 0; i < n; ++i) {
        kfac_net *k = kfac_of(nets[i]);
        if (!k || !k->gpu || k->nlayers != k0->nlayers)
            kfac_die(__FILE__, __LINE__, "kfac_networks_sync: replica %d is not a GPU K-FAC net like replica 0", i);
    }
    int prev = 0;
    KFAC_CUDA_CHECK(cudaGetDevice(&prev));
    double t0 = kfac_now();
    /* the first sync of a group: the replicas' inverses so far are their own */
    due = k0->gpu->group != n;
    for (i = 0; i < n; ++i) {
        KFAC_CUDA_CHECK(cudaSetDevice(kfac_of(nets[i])->gpu->device));
        KFAC_CUDA_CHECK(cudaDeviceSynchronize());
        kfac_of(nets[i])->gpu->group = n;
    }

    /* factors: the average over the replicas' batches is the estimate of a batch n
     * times larger, as Darknet's weight averaging treats the replicas */
    for (j = 0; j < k0->nlayers; ++j) {
        int all = 1;
        for (i = 0; i < n; ++i) all &= kfac_of(nets[i])->layers[j].have_factors;
        if (!all) continue;
        average_over(nets, n, j, 0);
        average_over(nets, n, j, 1);
    }
    double t1 = kfac_now();

    /* inverses: due when a replica hit a refresh step, or a layer has none yet */
    for (i = 0; i < n; ++i) due |= kfac_of(nets[i])->gpu->inverse_due;
    for (j = 0; j < k0->nlayers; ++j) due |= k0->layers[j].have_factors && !k0->layers[j].have_inverse && !k0->identity;
    if (due && !k0->identity) {
        /* largest layers first, each to the least loaded replica (cost ~ dim^3) */
        int *owner = (int *)kfac_calloc((size_t)k0->nlayers, sizeof(int));
        int *order = (int *)kfac_calloc((size_t)k0->nlayers, sizeof(int));
        double *load = (double *)kfac_calloc((size_t)n, sizeof(double));
        double *cost = (double *)kfac_calloc((size_t)k0->nlayers, sizeof(double));
        for (j = 0; j < k0->nlayers; ++j) {
            const kfac_layer *kl = &k0->layers[j];
            cost[j] = (double)kl->groups * ((double)kl->K * kl->K * kl->K + (double)kl->M * kl->M * kl->M);
            order[j] = j;
        }
        for (j = 1; j < k0->nlayers; ++j) { /* insertion sort, descending cost */
            int x = order[j], m = j;
            while (m > 0 && cost[order[m - 1]] < cost[x]) { order[m] = order[m - 1]; --m; }
            order[m] = x;
        }
        for (j = 0; j < k0->nlayers; ++j) {
            int best = 0;
            for (i = 1; i < n; ++i) if (load[i] < load[best]) best = i;
            owner[order[j]] = best;
            load[best] += cost[order[j]];
        }
        pthread_t *threads = (pthread_t *)kfac_calloc((size_t)n, sizeof(pthread_t));
        kfac_share_job *jobs = (kfac_share_job *)kfac_calloc((size_t)n, sizeof(kfac_share_job));
        for (i = 0; i < n; ++i) {
            jobs[i].net = nets[i];
            jobs[i].owner = owner;
            jobs[i].me = i;
            if (pthread_create(&threads[i], NULL, decompose_share, &jobs[i]) != 0)
                kfac_die(__FILE__, __LINE__, "cannot start the decomposition thread of replica %d", i);
        }
        for (i = 0; i < n; ++i) pthread_join(threads[i], NULL);
        for (j = 0; j < k0->nlayers; ++j) share_inverse(nets, n, j, owner[j]);
        for (i = 0; i < n; ++i) {
            KFAC_CUDA_CHECK(cudaSetDevice(kfac_of(nets[i])->gpu->device));
            KFAC_CUDA_CHECK(cudaDeviceSynchronize());
            kfac_of(nets[i])->gpu->inverse_due = 0;
        }
        free(threads); free(jobs); free(owner); free(order); free(load); free(cost);
    }
    double t2 = kfac_now();
    for (i = 0; i < n; ++i) {
        kfac_of(nets[i])->t_stats += t1 - t0;
        kfac_of(nets[i])->t_inverse += t2 - t1;
    }
    leave_device(prev);
}
