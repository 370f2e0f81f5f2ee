/* darknet-kfac: the CUDA backend's own declarations (GPU builds): the library checks
 * and the kernels' launchers (kfac_backend_cuda_kernels.cu), shared by the backend's
 * two files and by tests/gpu.  The driver never includes this file. */
#ifndef KFAC_BACKEND_CUDA_H
#define KFAC_BACKEND_CUDA_H

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>
#include "kfac_backend.h"
#include "kfac_util.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors: one check per library, each stops with expression, file, line and the
 * library's own message ------------------------------------------------------------- */

#define KFAC_CUDA_CHECK(call) kfac_cuda_check((call), #call, __FILE__, __LINE__)
#define KFAC_CUBLAS_CHECK(call) kfac_cublas_check((call), #call, __FILE__, __LINE__)
#define KFAC_CUSOLVER_CHECK(call) kfac_cusolver_check((call), #call, __FILE__, __LINE__)
void kfac_cuda_check(cudaError_t status, const char *expr, const char *file, int line);
void kfac_cublas_check(cublasStatus_t status, const char *expr, const char *file, int line);
void kfac_cusolver_check(cusolverStatus_t status, const char *expr, const char *file, int line);

/* C (K x K, row-major upper triangle kept) += alpha P P^T, P row-major K x n (device),
 * with the backend's cuBLAS handle: cublasSsyrk, or a split-k strided-batched gemm
 * when K is small and n long.  Public for tests/gpu/bench_gpu.c. */
void kfac_cuda_factor_product(kfac_backend *b, int K, size_t n, const float *P, float alpha, float *C);

/* ---- kernels (kfac_backend_cuda_kernels.cu): each launcher checks its launch ------- */

/* out (c*size*size + bias_row) x (nb*out_h*out_w): im2col of nb images, image b at
 * input + b*im_stride (c x h x w), plus a row of ones when bias_row. */
void kfac_cuda_patches(const float *input, size_t im_stride, int nb, int c, int h, int w, int size, int stride,
                       int pad, int out_h, int out_w, int bias_row, float *out, cudaStream_t s);
/* out (rows + bias_row) x (nb*T): out[r][b*T + t] = src[b*im_stride + r*T + t]. */
void kfac_cuda_rows(const float *src, size_t im_stride, int nb, int rows, int T, int bias_row, float *out,
                    cudaStream_t s);
/* gT (2C x batch, row-major): per image n and channel c, gT[2c][n] = sum_t delta x_norm
 * and gT[2c+1][n] = sum_t delta over the T positions (summed in double); delta and
 * x_norm batch x C x T */
void kfac_cuda_bn_grads(const float *delta, const float *x_norm, int batch, int C, int T, float *gT, cudaStream_t s);
/* acc (C x 2 x 2, upper triangles) += per channel c the sum over n of the outer
 * product of (gT[2c][n], gT[2c+1][n]) (summed in double) */
void kfac_cuda_bn_pairs(const float *gT, int batch, int C, float *acc, cudaStream_t s);
/* out (batch x C x T) = (x - mean[c]) * inv_std[c]: the normalized inputs from the
 * statistics cuDNN's training forward saves (mean and 1/sqrt(variance + epsilon)) */
void kfac_cuda_bn_normalize(const float *x, const float *mean, const float *inv_std, int batch, int C, int T,
                            float *out, cudaStream_t s);
/* scaling=ekfac: x <- x o x (n values); P <- P o R (n values); acc[e] += sum over the
 * nb matrices of Z[i*n + e]^2, e < n */
void kfac_cuda_square(float *x, size_t n, cudaStream_t s);
void kfac_cuda_hadamard(float *P, const float *R, size_t n, cudaStream_t s);
void kfac_cuda_sum_squares(const float *Z, int nb, size_t n, float *acc, cudaStream_t s);
/* R (groups x M x K) = 1 / (S + lA dG_i + lG dA_j + lA lG) (kfac_backend.h
 * ekfac_scale), lG (groups) and lA (groups x blocks) device arrays */
void kfac_cuda_ekfac_scale(const float *S, const float *dG, const float *dA, const float *lG, const float *lA,
                           int groups, int M, int K, int Ka, float *R, cudaStream_t s);
/* C[e] += alpha * sum_s part[s*n + e], e < n */
void kfac_cuda_sum_parts(const float *part, int S, size_t n, float alpha, float *C, cudaStream_t s);
/* *slot = 1 when x holds a NaN or an infinity (never cleared here) */
void kfac_cuda_nonfinite(const float *x, size_t n, double *slot, cudaStream_t s);
/* *slot += <x, y> in double */
void kfac_cuda_dot(const float *x, const float *y, size_t n, double *slot, cudaStream_t s);
/* X <- w_old*X + w_new*inv_n*acc from acc's row-major upper triangle, X kept full */
void kfac_cuda_fold(float *X, const float *acc, int dim, int groups, float w_old, float w_new, float inv_n,
                    cudaStream_t s);
void kfac_cuda_clamp(float *d, size_t n, cudaStream_t s); /* negative -> 0 */
/* out (groups x n x n) = diag(1/(d + lambda_g)) E per group, lambda device (groups) */
void kfac_cuda_scale_rows(const float *E, const float *d, const float *lambda, int groups, int n, float *out,
                          cudaStream_t s);
void kfac_cuda_gather(const float *wu, const float *ws, const float *bu, const float *bs, int groups, int M, int kin,
                      int has_bias, float *D, cudaStream_t s);
void kfac_cuda_scatter(float *wu, float *bu, const float *P, const float *D, int groups, int M, int kin,
                       int has_bias, float scale, cudaStream_t s);
/* delta (batch x n) = e_y - p, y the first j with u_b < p_0 + ... + p_j (else n-1) */
void kfac_cuda_sample(const float *p, const float *u, int batch, int n, float *delta, cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
