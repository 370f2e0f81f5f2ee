/* darknet-kfac on the GPU: every K-FAC step on the device (issue 3, DESIGN.md 4).
 *
 * Nothing changes for the user: `darknet classifier train ... -gpus 0` with a [kfac]
 * section runs the same options, the same state file and the same arithmetic as the
 * CPU path, on the device.  The CPU core dispatches here when net->gpu_index >= 0:
 *
 *     kfac_network_attach      -> kfac_network_attach_gpu    device twins of the state
 *     kfac_layer_backward      -> kfac_layer_backward_gpu    patches + factor products
 *     kfac_network_fisher_pass -> kfac_network_fisher_pass_gpu  sampled-label backward
 *     kfac_network_precondition-> kfac_network_precondition_gpu fold, syevd, precondition
 *     kfac_network_updated     -> kfac_network_updated_gpu   momentum snapshots
 *     kfac_state_save / _load  -> kfac_state_pull_gpu / kfac_state_push_gpu
 *
 * and Darknet's multi-GPU sync_nets calls kfac_networks_sync (patches/0005).
 *
 * Per update the host reads back one small array (the KL-clip dot products and the
 * finiteness flags, 3 doubles per layer); on statistics steps one more (finiteness of
 * the new statistics), on inverse steps cuSOLVER's info values.  No tensor is copied
 * to the host except by kfac_state_save and the test accessor kfac_layer_factors.
 *
 * Arithmetic: cuBLAS runs in CUBLAS_DEFAULT_MATH, which for FP32 routines means FP32
 * FMA arithmetic, never TF32 (that needs CUBLAS_TF32_TENSOR_OP_MATH), so GPU factors
 * and preconditioned gradients match the CPU path to float32 rounding; patches/0001
 * likewise keeps cuDNN's convolutions in FP32 (CUDNN_FMA_MATH).
 *
 * Multi-GPU (Darknet's one process, one thread per GPU): at each sync the running
 * factors are averaged over the GPUs, then, when an inverse refresh is due, each GPU
 * eigendecomposes its share of the layers (largest first, to the least loaded GPU)
 * and the results are copied to the others.  Transfers use CUDA peer copies
 * (cudaMemcpyPeer: NVLink/PCIe peer-to-peer where the GPUs allow it, staged by the
 * driver otherwise), so the build needs no NCCL library and a machine without one
 * still links; Darknet's own weight averaging goes through host memory.
 */
#ifndef KFAC_GPU_H
#define KFAC_GPU_H

#include "kfac_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Darknet's sync_nets hook (GPU builds): averages the factors of the n replicas and
 * shares the inverses, see above.  Called from the main thread after the weights were
 * averaged, while no replica is training. */
void kfac_networks_sync(network **nets, int n);

#ifdef GPU
#include <cublas_v2.h>
#include <cusolverDn.h>

/* ---- errors: one check per library, each stops with expression, file, line and the
 * library's own message (kfac_gpu.c) ------------------------------------------------ */

#define KFAC_CUDA_CHECK(call) kfac_gpu_check_cuda((call), #call, __FILE__, __LINE__)
#define KFAC_CUBLAS_CHECK(call) kfac_gpu_check_cublas((call), #call, __FILE__, __LINE__)
#define KFAC_CUSOLVER_CHECK(call) kfac_gpu_check_cusolver((call), #call, __FILE__, __LINE__)
void kfac_gpu_check_cuda(cudaError_t status, const char *expr, const char *file, int line);
void kfac_gpu_check_cublas(cublasStatus_t status, const char *expr, const char *file, int line);
void kfac_gpu_check_cusolver(cusolverStatus_t status, const char *expr, const char *file, int line);

/* ---- device state of one network ----------------------------------------------------- */

enum { KFAC_PHASE_STATS = 0, KFAC_PHASE_INVERSE = 1, KFAC_PHASE_PRECOND = 2 };

/* One timed stretch of the stream: events recorded around a phase, read at the next
 * synchronisation point instead of stopping the stream to read a clock. */
typedef struct {
    cudaEvent_t start, end;
    int phase;              /* KFAC_PHASE_* */
} kfac_gpu_span;

typedef struct kfac_gpu_net {
    int device;             /* CUDA device of this replica (net->gpu_index) */
    cublasHandle_t blas;    /* FP32 math, default stream */
    cusolverDnHandle_t solver;
    /* scratch, grown on first use */
    float *patches;         /* K x (nb*T) patches or M x (nb*T) reshaped deltas */
    size_t patches_len;
    float *part;            /* S x K x K split-k partial products */
    size_t part_len;
    float *eig_E, *eig_d;   /* groups x dim x dim, groups x dim: decompositions land here first */
    float *eig_work;        /* cuSOLVER syevd workspace, eig_lwork floats */
    int eig_lwork;
    int *eig_info;          /* max groups + 1: syevd info per group, then a non-finite flag */
    int max_groups;
    double *red;            /* nlayers x 3: <P,D>, D non-finite, P non-finite */
    double *red_host;
    int *flags;             /* nlayers x 2: non-finite statistics / factors */
    int *flags_host;
    /* true-Fisher pass */
    float *sink;            /* sink_len: where *_updates_gpu point during the pass */
    float *loss_delta_save; /* batch x outputs of the softmax layer */
    float *uniforms;        /* batch: the host generator's draws, pushed */
    float *uniforms_host;
    /* timing */
    kfac_gpu_span *spans;
    int nspans, spans_made;
    /* multi-GPU */
    int group;              /* replicas in this net's sync group (0 before the first sync) */
    int inverse_due;        /* a refresh fell due since the last sync (group > 1) */
} kfac_gpu_net;

/* ---- entry points the CPU core dispatches to ------------------------------------------ */

void kfac_network_attach_gpu(network *net);
void kfac_network_free_gpu(network *net);
void kfac_layer_backward_gpu(network *net, kfac_layer *kl, const layer *l, const float *input_gpu);
void kfac_network_fisher_pass_gpu(network *net);
void kfac_network_precondition_gpu(network *net, update_args *a);
void kfac_network_updated_gpu(network *net);
void kfac_state_pull_gpu(network *net);   /* device -> host arrays, before a save */
void kfac_state_push_gpu(network *net);   /* host arrays -> device, after a load */
void kfac_layer_pull_factors_gpu(const network *net, kfac_layer *kl); /* A, G -> host */
void kfac_timing_collect_gpu(kfac_net *k); /* finished spans -> k->t_* */

/* ---- the pieces, GPU twins of the CPU ones (tests compare them) ------------------------- */

/* C (K x K, row-major upper triangle) += alpha P P^T, P row-major K x n (device):
 * cublasSsyrk, or a split-k strided-batched gemm when K is small and n long. */
void kfac_factor_product_gpu(kfac_gpu_net *g, int K, size_t n, const float *P, float alpha, float *C);
/* input_gpu is the layer's input as backward saw it (batch x inputs). */
void kfac_factors_capture_A_gpu(kfac_net *k, kfac_layer *kl, const layer *l, const float *input_gpu);
void kfac_factors_capture_G_gpu(kfac_net *k, kfac_layer *kl, const layer *l);
/* Folds every layer's new statistics into its running averages (statistics step). */
void kfac_factors_fold_gpu(kfac_net *k);
/* 0 on success; on failure the last good inverse is kept (logged once per layer). */
int kfac_inverse_update_gpu(kfac_net *k, kfac_layer *kl);
/* a (n x n, device, symmetric) -> rows of eigenvectors, w (n) ascending eigenvalues;
 * returns syevd's info (0 on success). */
int kfac_eigh_gpu(kfac_net *k, float *a, float *w, int n);
/* Ainv_gpu, Ginv_gpu from the decomposition (kfac_damped_inverses_cpu) */
void kfac_damped_inverses_gpu(kfac_net *k, kfac_layer *kl, float damping);
void kfac_precondition_layer_gpu(kfac_net *k, kfac_layer *kl, float damping);
void kfac_gather_gradient_gpu(kfac_net *k, kfac_layer *kl, const layer *l);
void kfac_scatter_update_gpu(kfac_net *k, kfac_layer *kl, const layer *l, float scale);

/* ---- kernels (kfac_kernels.cu): each launcher checks its launch ------------------------ */

/* out (c*size*size + bias_row) x (nb*out_h*out_w): im2col of nb images, image b at
 * input + b*im_stride (c x h x w), plus a row of ones when bias_row. */
void kfac_patches_gpu(const float *input, size_t im_stride, int nb, int c, int h, int w, int size,
                      int stride, int pad, int out_h, int out_w, int bias_row, float *out,
                      cudaStream_t s);
/* out (rows + bias_row) x (nb*T): out[r][b*T + t] = src[b*im_stride + r*T + t]. */
void kfac_rows_gpu(const float *src, size_t im_stride, int nb, int rows, int T, int bias_row,
                   float *out, cudaStream_t s);
/* C[e] += alpha * sum_s part[s*n + e], e < n */
void kfac_sum_parts_gpu(const float *part, int S, size_t n, float alpha, float *C, cudaStream_t s);
/* *flag = 1 when x holds a NaN or an infinity (flag is not cleared) */
void kfac_nonfinite_gpu(const float *x, size_t n, int *flag, cudaStream_t s);
/* X <- w_old*X + w_new*inv_n*acc from acc's row-major upper triangle, X kept full */
void kfac_fold_gpu(float *X, const float *acc, int dim, int groups, float w_old, float w_new,
                   float inv_n, cudaStream_t s);
void kfac_clamp_gpu(float *d, size_t n, cudaStream_t s); /* negative -> 0 */
/* damp[2g] = sqrt_damping*mean(dA_g), damp[2g+1] = sqrt_damping*mean(dG_g), means over
 * the eigenvalues above KFAC_RANK_TOL times the largest (kfac_precondition.c) */
void kfac_damping_gpu(const float *dA, const float *dG, int K, int M, int groups, float sqrt_damping,
                      float *damp, cudaStream_t s);
/* out (groups x n x n) = diag(1/(d + l)) E per group, l = damp[2g + which] */
void kfac_scale_rows_gpu(const float *E, const float *d, const float *damp, int which, int groups, int n,
                         float *out, cudaStream_t s);
void kfac_gather_gpu(const float *wu, const float *ws, const float *bu, const float *bs, int groups,
                     int M, int kin, int has_bias, float *D, cudaStream_t s);
void kfac_scatter_gpu(float *wu, float *bu, const float *P, const float *D, int groups, int M,
                      int kin, int has_bias, float scale, cudaStream_t s);
/* out[0] += <P, D> (double), out[1] = 1 when D is not finite, out[2] = 1 when P is not */
void kfac_dot_stats_gpu(const float *P, const float *D, size_t n, double *out, cudaStream_t s);
/* delta (batch x n) = e_y - p, y the first j with u_b < p_0 + ... + p_j (else n-1) */
void kfac_sample_gpu(const float *p, const float *u, int batch, int n, float *delta, cudaStream_t s);

#endif /* GPU */

#ifdef __cplusplus
}
#endif
#endif
