/* darknet-kfac: the backend interface, numerical operations on per-layer buffers.
 *
 * K-FAC's algorithm is written once, in the driver (kfac_driver.c, with the schedule
 * in kfac_schedule.c, one layer's inverses and preconditioning in kfac_inverses.c,
 * the adaptive step in kfac_adaptive.c, the true-Fisher pass in kfac_fisher.c, the
 * state file in kfac_state.c and the replica sync in kfac_sync.c).  The driver decides everything: which update gathers statistics, when
 * the factors are decomposed, the damping, the step size, what to do with a non-
 * finite value.  A backend only computes, on buffers in its own memory (the host's for
 * the CPU backend, the device's for CUDA), and hands back the few numbers the driver
 * asks for.  It calls down only (Darknet, its libraries, kfac_util.h), never up.
 *
 *     backend/kfac_backend_cpu.c    OpenBLAS (ssyrk, sgemm) and LAPACK (ssyevd)
 *     backend/kfac_backend_cuda.c   cuBLAS, cuSOLVER (syevd) and the kernels of
 *     backend/kfac_backend_cuda_kernels.cu
 *
 * A driver call looks like this (one layer's preconditioning, kfac_driver.c and
 * kfac_inverses.c):
 *
 *     be->ops->gather(be, &kl->s, wu, kl->w_snap, bu, kl->b_snap, kl->D);
 *     be->ops->precondition(be, &kl->s, kl->Ginv, kl->Ainv, kl->D, kl->tmp, kl->P);
 *     be->ops->dot(be, kl->P, kl->D, len, slot);
 *     ...
 *     be->ops->results(be, host, nslots);      <- the one wait of the update
 *
 * Conventions: matrices are row-major, the groups of a grouped layer stored one after
 * another; "buffer" means floats in the backend's memory (from ops->alloc, or
 * Darknet's own arrays as ops->darknet_buffers names them).  Operations on buffers
 * take effect in call order; they may run asynchronously until a call that returns
 * something to the host (results, eigh, to_host).  tests/test_backend.c checks the CPU
 * backend against dense references; tests/gpu runs the same cases on CUDA against the
 * CPU backend. */
#ifndef KFAC_BACKEND_H
#define KFAC_BACKEND_H

#include <stddef.h>
#include "darknet.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A covered layer's Kronecker-factor shape (DESIGN.md 4). */
typedef struct {
    int type;               /* CONVOLUTIONAL or CONNECTED (BATCHNORM: a batch-norm block, kfac_bn.c) */
    int groups;             /* independent linear maps, one factor pair each */
    int k_in;               /* c/groups*size*size (inputs for connected layers) */
    int K;                  /* A's dimension: k_in + has_bias */
    int M;                  /* G's dimension: outputs per group */
    int has_bias;           /* the layer's own bias folded into A: a row of ones in the patches */
    int T;                  /* output locations per image (1 for connected); resize may change it */
    int a_blocks;           /* A kept as this many diagonal blocks per group, over input channels
                               (a layer too large for a whole A); 0 or 1: A whole */
} kfac_shape;

/* A's square blocks: kfac_a_count of them, each kfac_a_dim x kfac_a_dim, stored one
 * after another (group by group, block by block); one per group when A is whole. */
static inline int kfac_a_blocks(const kfac_shape *s) { return s->a_blocks > 1 ? s->a_blocks : 1; }
static inline int kfac_a_dim(const kfac_shape *s) { return s->K / kfac_a_blocks(s); }
static inline int kfac_a_count(const kfac_shape *s) { return s->groups * kfac_a_blocks(s); }
static inline size_t kfac_a_len(const kfac_shape *s)
{
    return (size_t)kfac_a_count(s) * kfac_a_dim(s) * kfac_a_dim(s);
}

/* Darknet's arrays of one layer in this backend's memory (l.x or l.x_gpu); NULL where
 * the layer has none. */
typedef struct {
    float *weight_updates, *bias_updates, *scale_updates;
    float *delta;           /* batch x outputs */
    float *output;          /* batch x outputs */
    float *weights, *biases, *scales;
    /* what a forward pass writes besides output and delta: batch norm's batch x
     * outputs inputs and normalized inputs, its per-channel statistics, a loss
     * layer's per-output loss (batch x outputs) */
    float *x, *x_norm, *mean, *variance, *rolling_mean, *rolling_variance, *loss;
} kfac_darknet_buffers;

/* Offsets in struct layer of the three *_updates pointers this backend's Darknet path
 * accumulates into (the true-Fisher pass points them at a scratch sink). */
typedef struct {
    size_t weights, biases, scales;
} kfac_update_fields;

/* where time goes, for the progress line */
enum { KFAC_PHASE_STATS = 0, KFAC_PHASE_INVERSE = 1, KFAC_PHASE_PRECOND = 2, KFAC_NPHASES = 3 };

/* eigh's result when the solver succeeded but returned a NaN or an infinity */
#define KFAC_EIGH_NONFINITE (-1000)

typedef struct kfac_backend kfac_backend;

typedef struct {
    const char *name;       /* "cpu", "cuda" */
    int host_memory;        /* 1: buffers are host pointers the driver may read */
    kfac_update_fields update_fields;
    void (*darknet_buffers)(const layer *l, kfac_darknet_buffers *out);

    /* ---- memory ---------------------------------------------------------------------- */
    float *(*alloc)(kfac_backend *b, size_t n);   /* n zeroed floats; NULL for n == 0 */
    void (*release)(kfac_backend *b, float *p);   /* NULL is fine */
    void (*zero)(kfac_backend *b, float *p, size_t n);
    void (*copy)(kfac_backend *b, float *dst, const float *src, size_t n);
    void (*to_host)(kfac_backend *b, float *host, const float *p, size_t n);   /* waits */
    void (*from_host)(kfac_backend *b, float *p, const float *host, size_t n);

    /* ---- statistics (DESIGN.md 4; KFC, Grosse & Martens 2016) --------------------- */
    /* acc (A's blocks, upper triangles kept) += sum over the batch's images and output
     * locations t of a_t a_t^T, a_t the layer's input patch (+1 with has_bias), each
     * block the rows and columns of its input channels; input is the layer's input
     * (batch x inputs) */
    void (*capture_A)(kfac_backend *b, const kfac_shape *s, const layer *l, const float *input, float *acc);
    /* acc (groups x M x M, upper triangle kept) += sum over images of
     * (1/T) sum_t g_t g_t^T, g_t the output derivative at t: delta (batch x outputs) */
    void (*capture_G)(kfac_backend *b, const kfac_shape *s, const layer *l, const float *delta, float *acc);
    /* The batch norm of layer l (batch-normalized convolutional or connected, or a
     * [batchnorm]) as Darknet's own backward of l is about to use it, called before
     * that backward: delta_out (batch x outputs) = the derivative at the batch norm's
     * output, l's delta times its activation's derivative at its output (a [batchnorm]
     * has no activation; the GPU connected backward clips l's delta to +-1 first),
     * and xnorm_out (batch x outputs) = its normalized inputs */
    void (*bn_inputs)(kfac_backend *b, const layer *l, float *delta_out, float *xnorm_out);
    /* acc (s's A blocks, upper triangles kept) += sum over the batch's images n of
     * g_n g_n^T, g_n (K = 2C) = per channel c (sum_t delta x_norm, sum_t delta) over
     * the image's T = s->T positions; delta, x_norm batch x C x T (DESIGN.md 6b) */
    void (*capture_bn)(kfac_backend *b, const kfac_shape *s, int batch, const float *delta, const float *x_norm,
                       float *acc);
    /* scaling=ekfac (kfac_ekfac.c; George et al. 2018): acc (groups x M x K) += sum
     * over the batch's images n of (E_G dW_n E_A^T)^2 elementwise, dW_n = sum_t g_t a_t^T
     * (M x K per group) the image's gradient from its patches (input, +1 with
     * has_bias) and output derivatives (delta), E_G (groups x M x M) and E_A (A's
     * blocks) rows of eigenvectors, E_A block diagonal when A is kept in blocks */
    void (*capture_ekfac)(kfac_backend *b, const kfac_shape *s, const layer *l, const float *input,
                          const float *delta, const float *EG, const float *EA, float *acc);
    /* X (groups x dim x dim) <- w_old*X + w_new*inv_n*acc, read from acc's upper
     * triangle and written to both of X's; acc is zeroed */
    void (*fold)(kfac_backend *b, float *X, float *acc, int dim, int groups, float w_old, float w_new, float inv_n);

    /* ---- numbers for the host, read back together ---------------------------------- */
    /* slot <- 1 when x holds a NaN or an infinity (never back to 0 until read) */
    void (*flag_nonfinite)(kfac_backend *b, const float *x, size_t n, int slot);
    /* slot += <x, y>, summed in double */
    void (*dot)(kfac_backend *b, const float *x, const float *y, size_t n, int slot);
    /* out[0..n) <- slots [0, n), which are then zeroed; waits for the work before it */
    void (*results)(kfac_backend *b, double *out, int n);

    /* ---- decompositions --------------------------------------------------------------- */
    /* Each group of X (groups x dim x dim, symmetric) into E (rows: eigenvectors, so
     * X = E^T diag(d) E) and d (ascending, negatives clamped to 0); E may be X (in
     * place).  Returns 0, the solver's info, or KFAC_EIGH_NONFINITE; E and d are
     * undefined after a failure. */
    int (*eigh)(kfac_backend *b, const float *X, int dim, int groups, float *E, float *d);
    /* inv_g = E_g^T diag(1/(d_g + lambda[g])) E_g for each group; lambda is a host
     * array of groups values, each > 0 */
    void (*damped_inverse)(kfac_backend *b, const float *E, const float *d, int dim, int groups,
                           const float *lambda, float *inv);

    /* ---- vector arithmetic ---------------------------------------------------------- */
    void (*axpy)(kfac_backend *b, float alpha, const float *x, float *y, size_t n); /* y += alpha x */
    void (*scale)(kfac_backend *b, float alpha, float *x, size_t n);                /* x *= alpha */

    /* ---- the update: Darknet's new gradient in, the preconditioned one out ---------- */
    /* D (groups x M x K) = [wu - ws | bu - bs]: the weight and (has_bias) bias
     * gradients summed since the snapshots ws, bs were taken */
    void (*gather)(kfac_backend *b, const kfac_shape *s, const float *wu, const float *ws, const float *bu,
                   const float *bs, float *D);
    /* P_g = Ginv_g D_g Ainv_g, Ainv_g block diagonal when A is kept in blocks; tmp is
     * groups x M x K scratch */
    void (*precondition)(kfac_backend *b, const kfac_shape *s, const float *Ginv, const float *Ainv,
                         const float *D, float *tmp, float *P);
    /* scaling=ekfac: R (groups x M x K) = 1 / (S + lA dG_i + lG dA_j + lA lG), the
     * reciprocals of K-FAC's damped denominators (dG_i + lG)(dA_j + lA) with the
     * eigenvalue product replaced by S; dG groups x M, dA groups x K, lG a host
     * array of groups values, lA of kfac_a_count(s) (one per block of A), all > 0 */
    void (*ekfac_scale)(kfac_backend *b, const kfac_shape *s, const float *S, const float *dG, const float *dA,
                        const float *lG, const float *lA, float *R);
    /* P_g = E_G^T [ (E_G D_g E_A^T) o R_g ] E_A per group (o: elementwise), E_A block
     * diagonal when A is kept in blocks; tmp is groups x M x K scratch */
    void (*precondition_eigen)(kfac_backend *b, const kfac_shape *s, const float *EG, const float *EA,
                               const float *R, const float *D, float *tmp, float *P);
    /* [wu | bu] += scale*P - D (with P == D and scale 1: exact zeros are added) */
    void (*scatter)(kfac_backend *b, const kfac_shape *s, float *wu, float *bu, const float *P, const float *D,
                    float scale);

    /* ---- true Fisher ---------------------------------------------------------------- */
    /* delta (batch x n) = e_y - p, y the first j with u[b] < p_0 + ... + p_j (else n-1);
     * p is the softmax output (batch x n), u a host array of batch uniforms */
    void (*sample)(kfac_backend *b, const float *p, const float *u, int batch, int n, float *delta);
    /* Optional (NULL when the backend has none): in the true-Fisher pass, layer
     * `index`'s backward computing only the deltas, no weight gradients.  Returns 1
     * when it did the layer's part, 0 for a layer it does not handle. */
    int (*fisher_layer_backward)(kfac_backend *b, network *net, int index, float *input, float *delta);

    /* ---- timing, replicas, teardown ------------------------------------------------- */
    void (*phase)(kfac_backend *b, int phase, int begin);    /* a timed stretch begins/ends */
    void (*seconds)(kfac_backend *b, double t[KFAC_NPHASES]); /* total per phase so far */
    /* make this backend's device current in the calling thread; returns what was
     * current, for leave */
    int (*enter)(kfac_backend *b);
    void (*leave)(kfac_backend *b, int previous);
    void (*synchronize)(kfac_backend *b); /* wait for all its work */
    /* A second backend of this kind on the same device, for another thread (the
     * background decompositions, kfac_worker.c): its own slots (nslots), scratch and,
     * on CUDA, stream and handles; it may work on this backend's buffers.  NULL where
     * the backend has none. */
    kfac_backend *(*twin)(kfac_backend *b, int nslots);
    /* bufs[i] (len floats of replica i, backend bs[i]) <- the mean over the n replicas,
     * summed in replica order; all backends of one kind */
    void (*average)(kfac_backend **bs, float **bufs, int n, size_t len);
    /* bufs[i] <- bufs[from] for every replica i */
    void (*broadcast)(kfac_backend **bs, float **bufs, int n, int from, size_t len);
    void (*destroy)(kfac_backend *b);
} kfac_backend_ops;

struct kfac_backend {
    const kfac_backend_ops *ops;
    char description[192];  /* one line for the start of a run */
    int worker_free;        /* 1: a twin's work runs on resources training leaves idle (a
                               CPU core Darknet's one-threaded training does not use) */
    void *impl;             /* the backend's own state */
};

/* A CPU backend with `nslots` result slots. */
kfac_backend *kfac_backend_cpu_create(int nslots);
#ifdef GPU
/* A CUDA backend on `device` with `nslots` result slots (GPU builds only). */
kfac_backend *kfac_backend_cuda_create(int device, int nslots);
#endif

#ifdef __cplusplus
}
#endif
#endif
