/* darknet-kfac: the CUDA backend's kernels, the device twins of the loops of the CPU
 * backend (kfac_backend_cpu.c).
 *
 * Each op is a `static __global__` kernel and a launcher that takes a stream and
 * checks the launch (KFAC_CUDA_CHECK(cudaGetLastError())).  Kernels use grid-stride
 * loops over size_t indices, so one launch covers any size.  Finiteness is a bit test,
 * as on the CPU (kfac_all_finite).  The arithmetic of each element follows the CPU
 * expression term for term, so results differ from the CPU only by FMA contraction
 * and the order of the large sums (done by cuBLAS). */
#include <cuda_runtime.h>
#include <curand.h>
#include <cublas_v2.h>
#include <cusolverDn.h>
#ifdef CUDNN
#include <cudnn.h>
#endif

#include "kfac_backend_cuda.h"

#define KFAC_THREADS 256

/* Blocks for a grid-stride loop over n elements: enough to fill the GPU, never more
 * than the grid's x limit. */
static unsigned kfac_blocks(size_t n)
{
    size_t b = (n + KFAC_THREADS - 1) / KFAC_THREADS;
    if (b < 1) b = 1;
    if (b > 65535) b = 65535;
    return (unsigned)b;
}

#define KFAC_FOR(i, n) \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

static __device__ int kfac_bad(float x)
{
    return (__float_as_uint(x) & 0x7f800000u) == 0x7f800000u;
}

/* ---- patches (kfac_backend_cpu.c: patches_one_image) ------------------------------------ */

/* out is (c*size*size + bias_row) x (nb*T), row r = (channel, ky, kx), column b*T + t */
static __global__ void kfac_patches_kernel(const float *input, size_t im_stride, int nb, int c, int h,
                                           int w, int size, int stride, int pad, int out_h, int out_w,
                                           int bias_row, float *out)
{
    const size_t T = (size_t)out_h * out_w;
    const size_t rows = (size_t)c * size * size;
    const size_t cols = (size_t)nb * T;
    const size_t total = (rows + bias_row) * cols;
    KFAC_FOR(i, total) {
        size_t r = i / cols, col = i % cols;
        float v = 1.0f;
        if (r < rows) {
            size_t b = col / T, t = col % T;
            int oy = (int)(t / out_w), ox = (int)(t % out_w);
            int kx = (int)(r % size), ky = (int)((r / size) % size), ch = (int)(r / ((size_t)size * size));
            int iy = oy * stride + ky - pad, ix = ox * stride + kx - pad;
            v = (iy >= 0 && iy < h && ix >= 0 && ix < w)
                    ? input[b * im_stride + ((size_t)ch * h + iy) * w + ix] : 0.0f;
        }
        out[i] = v;
    }
}

extern "C" void kfac_cuda_patches(const float *input, size_t im_stride, int nb, int c, int h, int w,
                                 int size, int stride, int pad, int out_h, int out_w, int bias_row,
                                 float *out, cudaStream_t s)
{
    size_t total = ((size_t)c * size * size + bias_row) * (size_t)nb * out_h * out_w;
    kfac_patches_kernel<<<kfac_blocks(total), KFAC_THREADS, 0, s>>>(input, im_stride, nb, c, h, w, size,
                                                                    stride, pad, out_h, out_w, bias_row, out);
    KFAC_CUDA_CHECK(cudaGetLastError());
}

/* out (rows + bias_row) x (nb*T): out[r][b*T + t] = src[b*im_stride + r*T + t] */
static __global__ void kfac_rows_kernel(const float *src, size_t im_stride, int nb, int rows, int T,
                                        int bias_row, float *out)
{
    const size_t cols = (size_t)nb * T;
    const size_t total = ((size_t)rows + bias_row) * cols;
    KFAC_FOR(i, total) {
        size_t r = i / cols, col = i % cols;
        size_t b = col / T, t = col % T;
        out[i] = r < (size_t)rows ? src[b * im_stride + r * T + t] : 1.0f;
    }
}

extern "C" void kfac_cuda_rows(const float *src, size_t im_stride, int nb, int rows, int T, int bias_row,
                              float *out, cudaStream_t s)
{
    size_t total = ((size_t)rows + bias_row) * (size_t)nb * T;
    kfac_rows_kernel<<<kfac_blocks(total), KFAC_THREADS, 0, s>>>(src, im_stride, nb, rows, T, bias_row, out);
    KFAC_CUDA_CHECK(cudaGetLastError());
}

/* ---- batch-norm blocks (kfac_backend_cpu.c: cpu_capture_bn, cpu_bn_inputs) ------------- */

/* one thread per (image, channel): the same double sums as the CPU */
static __global__ void kfac_bn_grads_kernel(const float *delta, const float *x_norm, int batch, int C, int T,
                                            float *gT)
{
    KFAC_FOR(i, (size_t)batch * C) {
        size_t n = i / C, c = i % C;
        const float *dl = delta + i * T, *xn = x_norm + i * T;
        double sg = 0, sb = 0;
        for (int t = 0; t < T; ++t) {
            sg += (double)dl[t] * xn[t];
            sb += dl[t];
        }
        gT[(2 * c) * batch + n] = (float)sg;
        gT[(2 * c + 1) * batch + n] = (float)sb;
    }
}

extern "C" void kfac_cuda_bn_grads(const float *delta, const float *x_norm, int batch, int C, int T, float *gT,
                                   cudaStream_t s)
{
    size_t n = (size_t)batch * C;
    kfac_bn_grads_kernel<<<kfac_blocks(n), KFAC_THREADS, 0, s>>>(delta, x_norm, batch, C, T, gT);
    KFAC_CUDA_CHECK(cudaGetLastError());
}

/* one thread per channel: its 2 x 2 block's upper triangle */
static __global__ void kfac_bn_pairs_kernel(const float *gT, int batch, int C, float *acc)
{
    KFAC_FOR(c, (size_t)C) {
        const float *g0 = gT + 2 * c * batch, *g1 = g0 + batch;
        double s00 = 0, s01 = 0, s11 = 0;
        for (int n = 0; n < batch; ++n) {
            s00 += (double)g0[n] * g0[n];
            s01 += (double)g0[n] * g1[n];
            s11 += (double)g1[n] * g1[n];
        }
        acc[4 * c] += (float)s00;
        acc[4 * c + 1] += (float)s01;
        acc[4 * c + 3] += (float)s11;
    }
}

extern "C" void kfac_cuda_bn_pairs(const float *gT, int batch, int C, float *acc, cudaStream_t s)
{
    kfac_bn_pairs_kernel<<<kfac_blocks((size_t)C), KFAC_THREADS, 0, s>>>(gT, batch, C, acc);
    KFAC_CUDA_CHECK(cudaGetLastError());
}

static __global__ void kfac_bn_normalize_kernel(const float *x, const float *mean, const float *inv_std, int batch,
                                                int C, int T, float *out)
{
    KFAC_FOR(i, (size_t)batch * C * T) {
        size_t c = (i / T) % C;
        out[i] = (x[i] - mean[c]) * inv_std[c];
    }
}

extern "C" void kfac_cuda_bn_normalize(const float *x, const float *mean, const float *inv_std, int batch, int C,
                                       int T, float *out, cudaStream_t s)
{
    size_t n = (size_t)batch * C * T;
    kfac_bn_normalize_kernel<<<kfac_blocks(n), KFAC_THREADS, 0, s>>>(x, mean, inv_std, batch, C, T, out);
    KFAC_CUDA_CHECK(cudaGetLastError());
}

/* ---- scaling=ekfac (kfac_backend_cpu.c: cpu_capture_ekfac, cpu_ekfac_scale,
 * cpu_precondition_eigen) ------------------------------------------------------------- */

static __global__ void kfac_square_kernel(float *x, size_t n)
{
    KFAC_FOR(i, n) x[i] *= x[i];
}

extern "C" void kfac_cuda_square(float *x, size_t n, cudaStream_t s)
{
    if (n == 0) return;
    kfac_square_kernel<<<kfac_blocks(n), KFAC_THREADS, 0, s>>>(x, n);
    KFAC_CUDA_CHECK(cudaGetLastError());
}

static __global__ void kfac_hadamard_kernel(float *P, const float *R, size_t n)
{
    KFAC_FOR(i, n) P[i] *= R[i];
}

extern "C" void kfac_cuda_hadamard(float *P, const float *R, size_t n, cudaStream_t s)
{
    if (n == 0) return;
    kfac_hadamard_kernel<<<kfac_blocks(n), KFAC_THREADS, 0, s>>>(P, R, n);
    KFAC_CUDA_CHECK(cudaGetLastError());
}

/* one thread per element: the images' squares added in image order */
static __global__ void kfac_sum_squares_kernel(const float *Z, int nb, size_t n, float *acc)
{
    KFAC_FOR(e, n) {
        float sum = 0.0f;
        for (int i = 0; i < nb; ++i) {
            const float z = Z[(size_t)i * n + e];
            sum += z * z;
        }
        acc[e] += sum;
    }
}

extern "C" void kfac_cuda_sum_squares(const float *Z, int nb, size_t n, float *acc, cudaStream_t s)
{
    if (n == 0) return;
    kfac_sum_squares_kernel<<<kfac_blocks(n), KFAC_THREADS, 0, s>>>(Z, nb, n, acc);
    KFAC_CUDA_CHECK(cudaGetLastError());
}

static __global__ void kfac_ekfac_scale_kernel(const float *S, const float *dG, const float *dA, const float *lG,
                                               const float *lA, int groups, int M, int K, int Ka, float *R)
{
    const int nb = K / Ka;
    KFAC_FOR(e, (size_t)groups * M * K) {
        size_t g = e / ((size_t)M * K), i = (e / K) % M, j = e % K;
        const float la = lA[g * nb + j / Ka], lg = lG[g];
        R[e] = 1.0f / (S[e] + la * dG[g * M + i] + lg * dA[g * K + j] + la * lg);
    }
}

extern "C" void kfac_cuda_ekfac_scale(const float *S, const float *dG, const float *dA, const float *lG,
                                      const float *lA, int groups, int M, int K, int Ka, float *R, cudaStream_t s)
{
    size_t n = (size_t)groups * M * K;
    kfac_ekfac_scale_kernel<<<kfac_blocks(n), KFAC_THREADS, 0, s>>>(S, dG, dA, lG, lA, groups, M, K, Ka, R);
    KFAC_CUDA_CHECK(cudaGetLastError());
}

/* ---- factor accumulation and running averages ---------------------------------------- */

static __global__ void kfac_sum_parts_kernel(const float *part, int S, size_t n, float alpha, float *C)
{
    KFAC_FOR(e, n) {
        float sum = 0.0f;
        for (int k = 0; k < S; ++k) sum += part[(size_t)k * n + e];
        C[e] += alpha * sum;
    }
}

extern "C" void kfac_cuda_sum_parts(const float *part, int S, size_t n, float alpha, float *C, cudaStream_t s)
{
    kfac_sum_parts_kernel<<<kfac_blocks(n), KFAC_THREADS, 0, s>>>(part, S, n, alpha, C);
    KFAC_CUDA_CHECK(cudaGetLastError());
}

static __global__ void kfac_nonfinite_kernel(const float *x, size_t n, double *slot)
{
    int bad = 0;
    KFAC_FOR(i, n) bad |= kfac_bad(x[i]);
    if (bad) *slot = 1.0; /* every writer stores the same value */
}

extern "C" void kfac_cuda_nonfinite(const float *x, size_t n, double *slot, cudaStream_t s)
{
    if (n == 0) return;
    kfac_nonfinite_kernel<<<kfac_blocks(n), KFAC_THREADS, 0, s>>>(x, n, slot);
    KFAC_CUDA_CHECK(cudaGetLastError());
}

/* kfac_backend_cpu.c cpu_fold: element (i, j), i <= j, is read from acc's upper triangle
 * and written to both triangles of X.  Only (i <= j) threads touch X[i][j] or X[j][i],
 * so there is no race. */
static __global__ void kfac_fold_kernel(float *X, const float *acc, int dim, int groups, float w_old,
                                        float w_new, float inv_n)
{
    const size_t dd = (size_t)dim * dim;
    KFAC_FOR(idx, dd * groups) {
        size_t g = idx / dd, r = idx % dd;
        size_t i = r / dim, j = r % dim;
        if (i > j) continue;
        float *x = X + g * dd;
        float v = w_old * x[i * dim + j] + w_new * inv_n * acc[g * dd + i * dim + j];
        x[i * dim + j] = v;
        x[j * dim + i] = v;
    }
}

extern "C" void kfac_cuda_fold(float *X, const float *acc, int dim, int groups, float w_old, float w_new,
                              float inv_n, cudaStream_t s)
{
    size_t n = (size_t)dim * dim * groups;
    kfac_fold_kernel<<<kfac_blocks(n), KFAC_THREADS, 0, s>>>(X, acc, dim, groups, w_old, w_new, inv_n);
    KFAC_CUDA_CHECK(cudaGetLastError());
}

/* ---- eigenvalues and damped inverses ------------------- */

static __global__ void kfac_clamp_kernel(float *d, size_t n)
{
    KFAC_FOR(i, n) if (d[i] < 0) d[i] = 0;
}

extern "C" void kfac_cuda_clamp(float *d, size_t n, cudaStream_t s)
{
    if (n == 0) return;
    kfac_clamp_kernel<<<kfac_blocks(n), KFAC_THREADS, 0, s>>>(d, n);
    KFAC_CUDA_CHECK(cudaGetLastError());
}

/* Sum of a block's values in double; the result is valid in thread 0. */
static __device__ double kfac_block_sum(double v)
{
    __shared__ double sh[KFAC_THREADS];
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int o = KFAC_THREADS / 2; o > 0; o >>= 1) {
        if (threadIdx.x < (unsigned)o) sh[threadIdx.x] += sh[threadIdx.x + o];
        __syncthreads();
    }
    return sh[0];
}

/* ---- the update ---------------------------------------------- */

/* out[g][i][j] = E[g][i][j] / (d[g][i] + lambda[g]): one factor's E (rows =
 * eigenvectors) scaled row by row, the middle of E^T diag(1/(d + lambda)) E */
static __global__ void kfac_scale_rows_kernel(const float *E, const float *d, const float *lambda, int groups, int n,
                                              float *out)
{
    const size_t nn = (size_t)n * n;
    KFAC_FOR(idx, nn * groups) {
        size_t g = idx / nn, i = (idx % nn) / n;
        float s = 1.0f / (d[g * n + i] + lambda[g]);
        out[idx] = s * E[idx];
    }
}

extern "C" void kfac_cuda_scale_rows(const float *E, const float *d, const float *lambda, int groups, int n,
                                     float *out, cudaStream_t s)
{
    size_t total = (size_t)n * n * groups;
    kfac_scale_rows_kernel<<<kfac_blocks(total), KFAC_THREADS, 0, s>>>(E, d, lambda, groups, n, out);
    KFAC_CUDA_CHECK(cudaGetLastError());
}

/* D (groups x M x K) = (weight_updates, bias_updates) - snapshots */
static __global__ void kfac_gather_kernel(const float *wu, const float *ws, const float *bu, const float *bs,
                                          int groups, int M, int kin, int has_bias, float *D)
{
    const int K = kin + has_bias;
    KFAC_FOR(idx, (size_t)groups * M * K) {
        size_t row = idx / K, c = idx % K; /* row = g*M + r */
        D[idx] = c < (size_t)kin ? wu[row * kin + c] - ws[row * kin + c] : bu[row] - bs[row];
    }
}

extern "C" void kfac_cuda_gather(const float *wu, const float *ws, const float *bu, const float *bs, int groups,
                                int M, int kin, int has_bias, float *D, cudaStream_t s)
{
    size_t n = (size_t)groups * M * (kin + has_bias);
    kfac_gather_kernel<<<kfac_blocks(n), KFAC_THREADS, 0, s>>>(wu, ws, bu, bs, groups, M, kin, has_bias, D);
    KFAC_CUDA_CHECK(cudaGetLastError());
}

/* (weight_updates, bias_updates) += scale*P - D */
static __global__ void kfac_scatter_kernel(float *wu, float *bu, const float *P, const float *D, int groups,
                                           int M, int kin, int has_bias, float scale)
{
    const int K = kin + has_bias;
    KFAC_FOR(idx, (size_t)groups * M * K) {
        size_t row = idx / K, c = idx % K;
        float v = scale * P[idx] - D[idx];
        if (c < (size_t)kin) wu[row * kin + c] += v;
        else bu[row] += v;
    }
}

extern "C" void kfac_cuda_scatter(float *wu, float *bu, const float *P, const float *D, int groups, int M,
                                 int kin, int has_bias, float scale, cudaStream_t s)
{
    size_t n = (size_t)groups * M * (kin + has_bias);
    kfac_scatter_kernel<<<kfac_blocks(n), KFAC_THREADS, 0, s>>>(wu, bu, P, D, groups, M, kin, has_bias, scale);
    KFAC_CUDA_CHECK(cudaGetLastError());
}

/* <x, y> in double (kfac_backend_cpu.c cpu_dot), added to *slot */
static __global__ void kfac_dot_kernel(const float *x, const float *y, size_t n, double *slot)
{
    double s = 0;
    KFAC_FOR(i, n) s += (double)x[i] * (double)y[i];
    s = kfac_block_sum(s);
    if (threadIdx.x == 0) atomicAdd(slot, s);
}

extern "C" void kfac_cuda_dot(const float *x, const float *y, size_t n, double *slot, cudaStream_t s)
{
    unsigned b = kfac_blocks(n);
    if (n == 0) return;
    if (b > 1024) b = 1024; /* fewer double atomics; each thread loops */
    kfac_dot_kernel<<<b, KFAC_THREADS, 0, s>>>(x, y, n, slot);
    KFAC_CUDA_CHECK(cudaGetLastError());
}

/* ---- true Fisher (kfac_backend_cpu.c cpu_sample) ---------------------------------------- */

/* one thread per image: the same sequential float sum as the CPU, so equal p and u
 * give equal labels */
static __global__ void kfac_sample_kernel(const float *p, const float *u, int batch, int n, float *delta)
{
    KFAC_FOR(b, (size_t)batch) {
        const float *pb = p + b * n;
        float *d = delta + b * n;
        float cum = 0;
        int y = n - 1;
        for (int j = 0; j < n; ++j) {
            cum += pb[j];
            if (u[b] < cum) { y = j; break; }
        }
        for (int j = 0; j < n; ++j) d[j] = (j == y ? 1.0f : 0.0f) - pb[j];
    }
}

extern "C" void kfac_cuda_sample(const float *p, const float *u, int batch, int n, float *delta, cudaStream_t s)
{
    kfac_sample_kernel<<<kfac_blocks((size_t)batch), KFAC_THREADS, 0, s>>>(p, u, batch, n, delta);
    KFAC_CUDA_CHECK(cudaGetLastError());
}
