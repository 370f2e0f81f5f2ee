/* darknet-kfac internals: the state behind net->kfac and layer->kfac.
 * Shapes are row-major; "K" is a layer's patch length (c/groups*size*size, plus 1
 * when the layer's own bias is folded into A), "M" its outputs per group. */
#ifndef KFAC_INTERNAL_H
#define KFAC_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "kfac.h"

/* ---- errors and logging ---------------------------------------------------- */

/* Misuse or an impossible state: stop with expression, file and line, in every build. */
#define KFAC_ASSERT(cond)                                                        \
    do {                                                                         \
        if (!(cond)) kfac_die(__FILE__, __LINE__, "assertion failed: %s", #cond); \
    } while (0)

void kfac_die(const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));
/* A user's mistake (cfg, state file): one line to stderr, exit status 1. */
void kfac_user_error(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
void kfac_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* calloc of n*size bytes with the product checked for overflow; dies on failure. */
void *kfac_calloc(size_t n, size_t size);
int kfac_all_finite(const float *x, size_t n);
double kfac_now(void);

/* xorshift64*: the true-Fisher sampler's own generator, saved with the state so a
 * resumed run draws the same labels; Darknet's rand() is left alone. */
uint64_t kfac_rng_next(uint64_t *s);
float kfac_rng_uniform(uint64_t *s); /* in [0, 1) */

/* ---- configuration ([kfac] section) ------------------------------------------ */

typedef enum { KFAC_FISHER_TRUE = 0, KFAC_FISHER_EMPIRICAL = 1 } kfac_fisher_kind;

typedef struct {
    char *cfgfile;          /* for messages */
    float damping;          /* relative factored Tikhonov damping, DESIGN.md 4 */
    float decay;            /* running-average weight of the old factors */
    int stats_interval;     /* factors are accumulated every this many updates */
    int inverse_interval;   /* eigendecompositions every this many updates */
    float kl_clip;          /* bound on the KL term of an update (kfac_kl_term); 0 = off */
    kfac_fisher_kind fisher;
    int warmup;             /* plain SGD updates before preconditioning starts */
    int max_dim;            /* layers with a factor larger than this stay on SGD */
    int seed;               /* true-Fisher sampler seed */
    int *layer_on;          /* per layer (index in net->layers): 0 after kfac=0 */
    int nlayers;            /* entries in layer_on */
} kfac_config;

/* ---- per-layer state ----------------------------------------------------------- */

typedef struct {
    int index;              /* position in net->layers */
    int type;               /* CONVOLUTIONAL or CONNECTED */
    int groups;             /* independent linear maps, one factor pair each */
    int k_in;               /* c/groups*size*size (inputs for connected layers) */
    int K;                  /* A's dimension: k_in + has_bias */
    int M;                  /* G's dimension: outputs per group */
    int has_bias;           /* own bias folded into A (not batch-normalized) */
    int T;                  /* output locations per image (1 for connected) */
    /* factors, each groups x K x K / groups x M x M */
    float *A, *G;           /* running averages */
    float *A_acc, *G_acc;   /* sums over the images of the current update */
    int n_acc_A, n_acc_G;   /* images in A_acc, G_acc */
    int have_factors;       /* batches folded into A and G so far (0: none) */
    /* eigendecompositions: E rows are eigenvectors (E = Q^T), d eigenvalues >= 0 */
    float *EA, *dA;         /* groups x K x K, groups x K */
    float *EG, *dG;         /* groups x M x M, groups x M */
    int have_inverse;
    /* damped inverses from the eigendecompositions, used at every update:
     * Ainv = Q_A diag(1/(d_A + lA)) Q_A^T, Ginv likewise (kfac_precondition.c) */
    float *Ainv, *Ginv;     /* groups x K x K, groups x M x M */
    float inv_damping;      /* the damping Ainv and Ginv were built with; 0 = stale */
    int inv_ok;             /* 0: a factor was all zeros, the layer stays on SGD */
    /* update integration, DESIGN.md 4: snapshots of the *_updates buffers taken right
     * after each update (they then hold momentum*v) */
    float *w_snap;          /* nweights */
    float *b_snap;          /* biases (outputs), only with has_bias */
    float *D, *P;           /* groups x M x K: new gradient and its preconditioned form */
    float *tmp;             /* M x K scratch */
    int bad_factors_logged, bad_eig_logged, bad_grad_logged;
    /* GPU twins in device memory (kfac_gpu.c), NULL in CPU runs; same shapes as above.
     * The host arrays then only stage the state file and kfac_layer_factors. */
    float *A_gpu, *G_gpu, *A_acc_gpu, *G_acc_gpu;
    float *EA_gpu, *dA_gpu, *EG_gpu, *dG_gpu, *Ainv_gpu, *Ginv_gpu;
    float *damp_gpu;        /* groups x 2: (lA, lG) of the damped inverses */
    float *w_snap_gpu, *b_snap_gpu, *D_gpu, *P_gpu;
    float *tmp_gpu;         /* groups x M x K scratch */
} kfac_layer;

/* ---- network state -------------------------------------------------------------- */

typedef enum { KFAC_CAPTURE_NONE = 0, KFAC_CAPTURE_A = 1, KFAC_CAPTURE_G = 2 } kfac_capture;

typedef struct {
    kfac_config cfg;
    kfac_layer *layers;     /* covered layers, in net order */
    int nlayers;
    int step;               /* completed updates since K-FAC was attached (saved) */
    uint64_t rng;           /* true-Fisher sampler state (saved) */
    int identity;           /* tests: preconditioner replaced by the identity */
    int true_fisher;        /* 1 when the loss allows sampling labels (softmax) */
    int loss_index;         /* the softmax layer used for sampling */
    int capture;            /* KFAC_CAPTURE_* bits for the backward now running */
    int in_fisher_pass;     /* the true-Fisher pass's backward is running */
    int lean_fisher;        /* kfac_fisher_backward on (1, the default) or not (tests) */
    float *loss_delta_save; /* batch x outputs of the loss layer */
    float *sink;            /* scratch *_updates target for the true-Fisher pass */
    size_t sink_len;
    float *patches;         /* K x (images*T) im2col buffer for A */
    size_t patches_len;
    double t_stats, t_inverse, t_precond;
    /* the progress line every inverse_interval updates (kfac_network_report) */
    double t_reported[3];   /* t_stats, t_inverse, t_precond at the last line */
    int report_updates;     /* updates since the last line */
    int nu_count, nu_clipped; /* KL-clip decisions since the last line, and clipped ones */
    double nu_sum;          /* sum of their factors nu */
    struct kfac_gpu_net *gpu; /* device handles and scratch (kfac_gpu.h); NULL on the CPU */
} kfac_net;

static inline kfac_net *kfac_of(const network *net) { return (kfac_net *)net->kfac; }

/* kfac_config.c */
void kfac_config_free(kfac_config *c);
void kfac_config_print(const kfac_config *c, FILE *out);

/* kfac_network.c: decisions shared by the CPU and GPU paths */
int kfac_inverse_due(const kfac_net *k);
float kfac_fold_weight(const kfac_layer *kl, float decay);
double kfac_kl_term(const update_args *a, const layer *l, double p_dot_d);
float kfac_kl_scale(kfac_net *k, const network *net, const update_args *a, double quad);
/* after each update (CPU and GPU): every inverse_interval updates one line with the
 * time per update in each part and how often the KL clip scaled the step */
void kfac_network_report(network *net);

/* kfac_factors.c */
int kfac_stats_step(const kfac_net *k);
void kfac_factors_capture_A_cpu(kfac_net *k, kfac_layer *kl, const layer *l, const float *input);
void kfac_factors_capture_G_cpu(kfac_layer *kl, const layer *l);
void kfac_factors_fold_cpu(kfac_layer *kl, float decay);

/* kfac_inverse.c: 0 on success; on failure the last good inverse is kept */
int kfac_inverse_update_cpu(kfac_layer *kl);
/* the common end of a decomposition, CPU or GPU: info != 0 is logged once and returns
 * -1; success marks the inverse present and the damped inverses stale */
int kfac_inverse_outcome(kfac_layer *kl, int info, const char *solver);
int kfac_factors_finite_or_log(kfac_layer *kl, int finite);
int kfac_eigh_cpu(float *a, float *w, int n); /* a (n x n) -> rows of eigenvectors */

/* kfac_fisher.c: point every layer's three *_updates buffers (given by their offsets
 * in struct layer: the CPU ones or the _gpu ones) at sink, saving the originals in
 * saved (3 x net->n), and put them back */
typedef struct { size_t weights, biases, scales; } kfac_update_fields;
void kfac_redirect_updates(network *net, kfac_update_fields f, float *sink, float **saved);
void kfac_restore_updates(network *net, kfac_update_fields f, float **saved);

/* kfac_state.c: lengths of a conv/connected layer's weight, bias and scale update
 * buffers (0 where the layer has none) */
void kfac_layer_update_counts(const layer *l, size_t c[3]);

/* kfac_precondition.c
 * Eigenvalues at or below KFAC_RANK_TOL times the largest are rounding noise of a
 * rank-deficient factor (a factor from n samples has rank <= n): the damping is
 * scaled by the mean of the others. */
#define KFAC_RANK_TOL 1e-5f
void kfac_damped_inverses_cpu(kfac_layer *kl, float damping);
void kfac_precondition_layer_cpu(kfac_layer *kl, float damping);
void kfac_gather_gradient_cpu(kfac_layer *kl, const layer *l);
void kfac_scatter_update_cpu(kfac_layer *kl, const layer *l, float scale);
double kfac_dot_cpu(const float *a, const float *b, size_t n);

#endif
