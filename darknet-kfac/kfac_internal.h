/* darknet-kfac internals: the driver's state behind net->kfac and layer->kfac, and
 * the functions its files share.
 *
 *     kfac_network.c   attach (which layers, which backend), free, test accessors
 *     kfac_driver.c    the algorithm: Darknet's hooks, the statistics fold, the KL-
 *                      clipped step, the write-back, the progress line
 *     kfac_adaptive.c  Martens & Grosse's adaptive step (step=adaptive, auto)
 *     kfac_fisher.c    the true-Fisher pass (sampled labels, its own backward)
 *     kfac_inverses.c  one layer's decompositions, damping and K-FAC's direction
 *     kfac_bn.c        the batch-norm blocks: scales and shifts
 *     kfac_ekfac.c     scaling=ekfac: eigenvalue-corrected K-FAC; each layer's
 *                      direction, EKFAC's or K-FAC's
 *     kfac_worker.c    decompositions at once, or in the background: launched from
 *                      the factors of one update, installed at a fixed later one
 *     kfac_schedule.c  when statistics and decompositions are due (fixed or chosen
 *                      from measured costs), who decomposes what; phase timing
 *     kfac_state.c     the state file <weights>.kfac
 *     kfac_sync.c      replicas (multi-GPU): averaged factors, shared decompositions
 *     kfac_config.c    the [kfac] section
 *
 * All numerical work goes through kfac_backend.h.  Shapes are row-major; "K" is a
 * layer's patch length (c/groups*size*size, plus 1 when the layer's own bias is folded
 * into A), "M" its outputs per group. */
#ifndef KFAC_INTERNAL_H
#define KFAC_INTERNAL_H

#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "kfac.h"
#include "kfac_backend.h"
#include "kfac_util.h"

/* ---- configuration ([kfac] section, kfac_config.c) -------------------------------- */

typedef enum { KFAC_FISHER_TRUE = 0, KFAC_FISHER_EMPIRICAL = 1 } kfac_fisher_kind;
/* the step rule: the KL-clipped step inside Darknet's SGD update, or Martens &
 * Grosse's adaptive step (kfac_adaptive.c) */
typedef enum { KFAC_STEP_KL_CLIP = 0, KFAC_STEP_ADAPTIVE = 1, KFAC_STEP_AUTO = 2 } kfac_step_kind;
/* what scales the Kronecker eigenbasis: the eigenvalue products (K-FAC) or the
 * gradients' own second moments there (EKFAC, kfac_ekfac.c) */
typedef enum { KFAC_SCALING_KFAC = 0, KFAC_SCALING_EKFAC = 1 } kfac_scaling_kind;
/* across ranks, who preconditions a layer's gradient: every rank, from the
 * decompositions its owner broadcasts, or the owner alone, which broadcasts the
 * preconditioned gradient (KAISA's trade; kfac_dist_factors.c) */
typedef enum { KFAC_DIST_EVERYONE = 0, KFAC_DIST_OWNER = 1 } kfac_dist_precondition_kind;

typedef struct {
    char *cfgfile;          /* for messages */
    float damping;          /* relative factored Tikhonov damping, DESIGN.md 4 */
    float decay;            /* running-average weight of the old factors */
    int stats_interval;     /* factors are accumulated every this many updates; 0 = auto */
    int inverse_interval;   /* eigendecompositions every this many updates; 0 = auto */
    int inverse_lag;        /* updates from a decomposition's launch to its use; -1 = auto,
                               0 = at once (on the critical path) */
    float kl_clip;          /* bound on the KL term of an update (kfac_kl_term); 0 = off */
    kfac_fisher_kind fisher;
    int warmup;             /* plain SGD updates before preconditioning starts */
    int max_dim;            /* layers with a factor larger than this stay on SGD */
    int seed;               /* true-Fisher sampler seed */
    kfac_step_kind step;    /* step= */
    float lambda;           /* step=adaptive: the initial Levenberg-Marquardt damping */
    int probe_batch;        /* step=adaptive: images of the model's probe batch; 0 = all */
    int probe_thread;       /* step=adaptive: J delta_0 on a second thread (CPU) */
    int probe_split;        /* step=adaptive: the training thread's probes' products on two threads (CPU) */
    int backward_thread;    /* Darknet's backward beside the true-Fisher pass (CPU) */
    kfac_scaling_kind scaling; /* scaling= */
    kfac_dist_precondition_kind dist_precondition; /* dist_precondition= (several ranks only) */
    int *layer_on;          /* per layer (index in net->layers): 0 after kfac=0 */
    int nlayers;            /* entries in layer_on */
} kfac_config;

/* ---- a second copy of the net for a probe on another thread (kfac_clone.c) ----- */

typedef struct kfac_clone kfac_clone;
typedef enum { KFAC_CLONE_FORWARD = 0, KFAC_CLONE_BACKWARD = 1 } kfac_clone_mode;
/* 1 when every layer's forward and backward passes write only buffers a clone owns
 * (or, backward, the update accumulators); else 0, why says which layer */
int kfac_clone_supported(const network *net, char *why, size_t len);
kfac_clone *kfac_clone_new(kfac_clone_mode mode);
/* The clone's layers and buffers as net's are now (on the training thread: Darknet's
 * passes change some of net's layer fields); backward: with the loss layers' deltas */
void kfac_clone_sync(kfac_clone *c, const network *net);
/* backward: Darknet's backward pass on the clone, from the deltas of the last sync,
 * into the net's update accumulators (on another thread) */
void kfac_clone_backward(kfac_clone *c);
/* The net's parameters, input and truth copied into the clone, ready for
 * forward_network.  Reads only arrays net's backward pass does not write: safe on
 * another thread meanwhile. */
network *kfac_clone_fill(kfac_clone *c);
/* 1 when net (or a by-value copy of it, as the layers see it) is the clone's */
int kfac_clone_owns(const kfac_clone *c, const network *net);
void kfac_clone_free(kfac_clone *c);

/* ---- K-FAC's own forward passes' products on two threads (kfac_split.c) ------- */

/* Starts the process's helper thread (the first net) and sets Darknet's gemm hook;
 * 0 when no thread could be started */
int kfac_split_attach(void);
/* The last net's detach stops the helper and unsets the hook */
void kfac_split_detach(void);
/* Between these, on the calling thread only, gemm() products are divided by rows
 * with the helper: the same bits as one call.  One pass at a time in the process:
 * begun while another thread's is open, the pass is not split */
void kfac_split_begin(void);
void kfac_split_end(void);
/* products divided so far, all nets (tests) */
long kfac_split_products(void);
/* the smallest product divided, in multiply-adds (tests: their nets are small) */
void kfac_split_set_min_work(double work);

/* Checks the [kfac] section and every kfac= key of a cfg read by Darknet's read_cfg;
 * then takes them out of `sections`.  Returns 0 with *out the configuration (NULL
 * when there is no [kfac]), or -1 with a message naming the file, the section and the
 * key in err, the list untouched. */
int kfac_config_parse(const char *cfgfile, list *sections, kfac_config **out, char *err, size_t errlen);
void kfac_config_free(kfac_config *c);
void kfac_config_print(const kfac_config *c, FILE *out);

/* ---- per-layer state -------------------------------------------------------------- */

/* One set of a layer's decompositions and damped inverses (kfac_inverses.c).  Every
 * float pointer is a buffer of the net's backend. */
typedef struct {
    float *EA, *dA;         /* groups x K x K, groups x K: rows eigenvectors, eigenvalues >= 0 */
    float *EG, *dG;         /* groups x M x M, groups x M */
    float *Ainv, *Ginv;     /* damped inverses built from them: groups x K x K, groups x M x M */
    float damping;          /* the damping key Ainv and Ginv were built with; 0 = not built */
    int inv_ok;             /* 0: a factor was all zeros (no preconditioning with it) */
    int status;             /* 0 good; else why it failed: KFAC_EIGH_NONFINITE, the
                               solver's info, or KFAC_FACTOR_NONFINITE */
} kfac_eigs;

/* The damping the damped inverses are built with: the relative damping of the KL-clipped
 * step, or the adaptive step's gamma (factored Tikhonov, with pi). */
typedef struct {
    int tikhonov;           /* 1: gamma with pi (step=adaptive); 0: relative to the eigenvalues */
    float key;              /* gamma, or the relative damping */
    float floor;            /* tikhonov: each factor's damping at least sqrt(floor) times its
                               mean eigenvalue (the cfg's relative damping) */
} kfac_damping;
/* host scratch the damping needs, one per thread that builds inverses */
typedef struct {
    float *host_d;          /* max groups x dim: eigenvalues */
    float *lambda;          /* max groups (A's blocks): damping values of A */
    float *lambda_g;        /* max groups: those of G */
} kfac_scratch;
/* kfac_eigs.status of a decomposition skipped because a factor held a NaN or an inf */
#define KFAC_FACTOR_NONFINITE (-1001)

/* Every float pointer below is a buffer of the net's backend (kfac_backend.h). */
typedef struct {
    int index;              /* position in net->layers */
    kfac_shape s;
    /* factors, each groups x K x K / groups x M x M */
    float *A, *G;           /* running averages */
    float *A_acc, *G_acc;   /* sums over the images of the current update */
    int n_acc_A, n_acc_G;   /* images in A_acc, G_acc */
    int have_factors;       /* batches folded into A and G so far (0: none) */
    /* eigendecompositions: E rows are eigenvectors (E = Q^T), d eigenvalues >= 0 */
    float *EA, *dA;         /* groups x K x K, groups x K */
    float *EG, *dG;         /* groups x M x M, groups x M */
    int have_inverse;
    /* damped inverses, (A + lA I)^-1 and (G + lG I)^-1 per group (kfac_inverses.c) */
    float *Ainv, *Ginv;     /* groups x K x K, groups x M x M */
    float inv_damping;      /* the damping Ainv and Ginv were built with; 0 = stale */
    int inv_ok;             /* 0: a factor was all zeros, the layer stays on SGD */
    /* the next decomposition (kfac_worker.c): the factors are copied into next.EA and
     * next.EG at its launch and decomposed there in place; at its install the buffers
     * are swapped with the ones above when it succeeded */
    kfac_eigs next;
    int in_job;             /* next is being made (or made, not yet installed) */
    /* update integration, DESIGN.md 4: snapshots of Darknet's *_updates taken right
     * after each update (they then hold momentum*v) */
    float *w_snap;          /* groups x M x k_in */
    float *b_snap;          /* groups x M, only with has_bias */
    float *D, *P;           /* groups x M x K: new gradient and its preconditioned form */
    float *tmp;             /* groups x M x K scratch */
    int bad_factors_logged, bad_eig_logged, bad_grad_logged;
    /* host copies of A and G for kfac_layer_factors, when the backend's memory is not
     * the host's (allocated on first use) */
    float *host_A, *host_G;
    /* step=adaptive (kfac_adaptive.c) */
    float *theta;           /* groups x M x K: the weights (bias column 0), for the decay */
    float *prev;            /* groups x M x K: the last update of this layer (delta_0) */
    float *w_save, *b_save; /* Darknet's weights and biases before the update */
    float *w_pre, *b_pre;   /* those of the last update whose ratio is pending */
    int adaptive;           /* in this update's quadratic model */
    int pend;               /* moved by the step whose ratio is pending */
    /* scaling=ekfac (kfac_ekfac.c) */
    int basis_gen;          /* counts the decompositions EA, EG have held */
    struct kfac_ekfac *ek;  /* NULL unless scaling=ekfac */
} kfac_layer;

/* ---- batch-norm blocks (kfac_bn.c) ------------------------------------------------- */

/* The scales and shifts of one batch norm (a batch-normalized convolutional or
 * connected layer, or a [batchnorm]): per image n the 2C-vector g_n of their
 * gradients, per channel c (scale, shift) = (sum_t delta x_norm, sum_t delta) over the
 * image's T positions, interleaved; F = E_n[g_n g_n^T] (shared/DESIGN.md 6b), whole
 * (2C x 2C) or, when 2C > max_dim, its C diagonal 2 x 2 blocks, one per channel.
 * Every float pointer is a buffer of the net's backend. */
typedef struct {
    int index;              /* position in net->layers */
    /* F as a factor: type BATCHNORM, groups 1, M 1, K = k_in = 2C, T, a_blocks 1 or C;
     * preconditioning P = D Finv is the backend's precondition with G = [1] */
    kfac_shape s;
    /* the parameters as Darknet's update buffers: C rows (scale, shift), k_in 1 and
     * has_bias 1, so that gather and scatter move [scale_updates | bias_updates] */
    kfac_shape u;
    float *F, *F_acc;       /* kfac_a_len(&s): running average, sum over the update's images */
    int n_acc;              /* images in F_acc */
    int have_factors;       /* batches folded into F (0: none) */
    float *E, *d;           /* decomposition: kfac_a_len(&s), 2C */
    int have_inverse;
    float *Finv;            /* kfac_a_len(&s): damped inverse, block by block */
    float inv_damping;      /* the damping key Finv was built with; 0 = stale */
    int inv_ok;             /* 0: F is all zeros, the block stays on SGD */
    float *s_snap, *b_snap; /* C each: scale_updates, bias_updates after the last update */
    float *D, *P;           /* 2C: the new gradient, interleaved, and its preconditioned form */
    float *tmp;             /* 2C: scratch of the preconditioning */
    int mode;               /* KFAC_MODE_* of this update */
    /* the adaptive step (kfac_adaptive.c through kfac_bn_adaptive_*) */
    float *theta;           /* 2C: the scales and shifts, interleaved */
    float *prev;            /* 2C: the block's last update (delta_0) */
    float *s_save, *b_save; /* C each: Darknet's scales and shifts before the update */
    float *s_pre, *b_pre;   /* those of the last update whose ratio is pending */
    int adaptive;           /* in this update's quadratic model */
    int pend;               /* moved by the step whose ratio is pending */
    int bad_factors_logged, bad_eig_logged, bad_grad_logged;
    float *host_F;          /* host copy for kfac_bn_factor when the backend's memory is not the host's */
} kfac_bn;

/* ---- network state ---------------------------------------------------------------- */

typedef enum { KFAC_CAPTURE_NONE = 0, KFAC_CAPTURE_A = 1, KFAC_CAPTURE_G = 2 } kfac_capture;

/* measurements each of the schedule's medians is taken over (kfac_schedule.c) */
#define KFAC_WALL_RING 9

/* The kinds of loss layer, each with its entry in kfac_losses.c. */
typedef enum {
    KFAC_LOSS_NONE = 0,     /* not a loss layer */
    KFAC_LOSS_SOFTMAX,
    KFAC_LOSS_LOGISTIC,
    KFAC_LOSS_GAUSSIAN,     /* [cost] sse, masked */
    KFAC_LOSS_YOLO,
    KFAC_LOSS_REGION,
    KFAC_LOSS_EMPIRICAL     /* the true Fisher keeps a loss layer's data-label delta */
} kfac_loss_kind;

typedef struct {
    int index;              /* position in net->layers */
    kfac_loss_kind kind;
    float *delta_save;      /* backend: batch x outputs, the real delta during the pass */
    size_t len;             /* its length (resize_network may grow the layer) */
} kfac_loss;

typedef struct {
    kfac_config cfg;
    kfac_backend *be;       /* where the buffers live and the numbers are computed */
    kfac_layer *layers;     /* covered layers, in net order */
    int nlayers;
    kfac_bn *bn;            /* batch-norm blocks, in net order (kfac_bn.c) */
    int nbn;
    int *bn_of;             /* per net layer: its position in bn, or -1 */
    float *bn_delta, *bn_xnorm; /* backend scratch, bn_len each: one batch norm's inputs */
    size_t bn_len;
    float *one;             /* backend: a single 1, the batch-norm blocks' G */
    float *bn_host, *bn_lambda; /* host, the largest 2C: a block's eigenvalues, its damping */
    int lowest;             /* the lowest layer whose backward the statistics need (net->n: none) */
    int bn_dir;             /* the adaptive step's probes move the blocks along: KFAC_BN_DIR_* */
    int ek_step;            /* scaling=ekfac: the update whose decompositions were taken early, or -1 */
    int step;               /* completed updates since K-FAC was attached (saved) */
    uint64_t rng;           /* true-Fisher sampler state (saved) */
    int identity;           /* tests: preconditioner replaced by the identity */
    int true_fisher;        /* 1 when a loss layer's targets are sampled */
    kfac_loss *losses;      /* the loss layers, in net order (true Fisher only) */
    int nlosses;
    int capture;            /* KFAC_CAPTURE_* bits for the backward now running */
    int in_fisher_pass;     /* the true-Fisher pass's backward is running */
    int lean_fisher;        /* the backend's deltas-only backward on (1, default) or not */
    /* backend buffers */
    float *sink;            /* sink_len: where *_updates point in the true-Fisher pass */
    size_t sink_len;
    /* host scratch */
    float *uniforms;        /* batch: the softmax sampler's draws */
    float *host_p, *host_delta; /* the largest loss layer's outputs: host-side samplers */
    size_t host_len;
    float *slot_weight;     /* the largest kfac_loss_slots: [yolo], [region] assignments */
    size_t slot_len;
    double *results;        /* 3 per layer: backend result slots read back */
    int *mode;              /* per layer: what this update writes back (kfac_driver.c) */
    kfac_scratch scratch;   /* the main thread's, for the damping */
    /* timing and the progress line every inverse_interval updates */
    int phase_depth;        /* nested timed stretches count once */
    int phase_now;
    double t_reported[KFAC_NPHASES]; /* seconds per phase at the last line */
    int report_updates;     /* updates since the last line */
    int nu_count, nu_clipped; /* KL-clip decisions since the last line, and clipped ones */
    double nu_sum;          /* sum of their factors nu */
    /* step=adaptive (kfac_adaptive.c); lambda, have_prev and adapt_updates are saved */
    struct kfac_adaptive *adapt;
    /* backward_thread: Darknet's backward pass of a statistics update on a copy of the
     * net (kfac_clone.c) on a second thread, beside the true-Fisher pass */
    struct kfac_clone *bwd_clone; /* NULL: on the training thread */
    pthread_t bwd_thread;
    int bwd_running;        /* launched and not yet joined */
    long bwd_taken;         /* backward passes run there (tests) */
    /* the schedule (kfac_schedule.c): the intervals and lag in force (the cfg's, or
     * chosen from the measured costs when it says auto), saved with the state */
    struct kfac_sched {
        int stats_interval, inverse_interval, inverse_lag;
        int auto_stats, auto_inverse, auto_lag; /* chosen here, not given by the cfg */
        /* measured seconds (running averages; 0 = not measured yet): an update's own
         * work (Darknet's passes, the preconditioning and step), one statistics step's
         * extra work, one decomposition of every layer */
        double t_update, t_stats, t_decomp;
        double wall[KFAC_WALL_RING]; /* the last updates' own seconds, a ring */
        int nwall;              /* updates measured so far */
        double stats_ring[KFAC_WALL_RING], decomp_ring[KFAC_WALL_RING]; /* likewise */
        int nstats, ndecomp;
        double last_updated;    /* clock at the end of the last update (0: none) */
        double update_began;    /* clock at this update's first forward pass (0: not marked) */
        double phase_mark[KFAC_NPHASES]; /* phase totals at that moment */
        int changes;            /* times the choice changed, for the progress line */
    } sched;
    /* decompositions in the background (kfac_worker.c; NULL: at once) */
    struct kfac_worker *worker;
    int job_install_at;     /* update at which the job in flight is installed; -1: none */
    /* jobs launched (or loaded) in this process: two jobs can share an install update
     * when auto shortens the lag, so the update cannot name a job */
    int job_serial;
    double worker_seconds;  /* the worker's busy time so far */
    double wait_seconds;    /* the main thread's wait for the worker so far */
    double wait_reported, worker_reported; /* those two at the last progress line */
    /* replicas (kfac_sync.c) */
    int replicas;           /* replicas in this net's sync group (0 before the first sync) */
    int inverse_due;        /* a refresh fell due since the last sync (replicas > 1) */
    double sync_seconds[KFAC_NPHASES]; /* time in kfac_networks_sync, by phase */
    float eta;              /* Darknet's weight decay (net->decay) */
    /* ranks of a job (kfac_dist_factors.c); NULL for a net no trainer started */
    struct kfac_dist *dist;
} kfac_net;

static inline kfac_net *kfac_of(const network *net) { return (kfac_net *)net->kfac; }

/* What the write-back does with a layer this update (kfac_net.mode). */
enum {
    KFAC_MODE_SCALED = 1,   /* wu += nu*P - D: preconditioned, KL-clipped */
    KFAC_MODE_PLAIN = 2,    /* wu += P - D with P = D: Darknet's own gradient */
    KFAC_MODE_SNAPSHOT = 3, /* wu = snapshot: the momentum step without a bad gradient */
    KFAC_MODE_ADAPTIVE = 4  /* step=adaptive: the weights are set after Darknet's update */
};

/* slots of kfac_net.results per layer */
#define KFAC_SLOTS_PER_LAYER 8

/* ---- kfac_driver.c ---------------------------------------------------------------- */

float kfac_fold_weight(const kfac_layer *kl, float decay);

/* ---- kfac_schedule.c -------------------------------------------------------------- */

/* The intervals in force at attach: the cfg's, or the first guesses of auto. */
void kfac_schedule_init(kfac_net *k);
/* 1 when update `step` gathers statistics (kfac_stats_step: this update) */
int kfac_stats_step_at(const kfac_net *k, int step);
int kfac_stats_step(const kfac_net *k);
/* 1 when a decomposition of every layer is launched at this update */
int kfac_inverse_due(const kfac_net *k);
/* updates between that launch and the decompositions' use (0: used at once) */
int kfac_inverse_lag(const kfac_net *k);
/* At each forward pass of training (kfac_network_train_begin): the first of an
 * update starts its clock. */
void kfac_schedule_began(kfac_net *k);
/* After each update: measures what it cost and, under auto, chooses again. */
void kfac_schedule_updated(kfac_net *k);
/* Which of n workers (replicas, ranks) decomposes each covered layer (owner:
 * nlayers): largest factors first (cost ~ dim^3), each to the least loaded worker. */
void kfac_owners_assign(const kfac_net *k, int n, int *owner);
/* auto's choice from the costs measured so far (sched.t_update, t_stats, t_decomp) */
void kfac_schedule_choose(kfac_net *k);
/* A decomposition of every layer took `seconds` (on the worker, or at once). */
void kfac_schedule_decomposed(kfac_net *k, double seconds);
/* one line on the schedule in force, for the progress line */
void kfac_schedule_describe(const kfac_net *k, char *buf, size_t len);
/* Timed stretches: nested ones count once, in the outermost's phase. */
void kfac_phase_begin(kfac_net *k, int phase);
void kfac_phase_end(kfac_net *k);
/* seconds per phase so far, the replicas' sync included */
void kfac_network_timing_of(const kfac_net *k, double *stats, double *inverse, double *precond);

/* ---- kfac_worker.c ---------------------------------------------------------------- */

/* Starts the background worker when the schedule can use it (kfac_network_attach). */
void kfac_worker_attach(kfac_net *k);
void kfac_worker_free(kfac_net *k);
/* At each update, after the statistics are folded: installs the decompositions whose
 * update has come (waiting for the worker when it is not done), decomposes at once a
 * layer that has factors and no decomposition yet, and launches the decompositions the
 * schedule makes due. */
void kfac_decompositions_step(kfac_net *k);
/* Waits until the job in flight is done, without installing it (state save). */
void kfac_worker_wait(kfac_net *k);
/* 1 while the background worker has a job (it holds a core) */
int kfac_worker_busy(kfac_net *k);
/* Decomposes the layer's factors at once (across ranks: its owner, the others receive
 * it), keeping the last good inverse on failure: 0 on success, -1 on failure (logged
 * once per layer). */
int kfac_inverse_refresh(kfac_net *k, kfac_layer *kl);

/* ---- kfac_inverses.c -------------------------------------------------------------- */

kfac_damping kfac_damping_now(const kfac_net *k);
/* one layer's (or block's) share of the KL clip's quadratic */
double kfac_kl_term(const update_args *a, const layer *l, double p_dot_d);
/* Copies the layer's factors into kl->next (on k's backend), to be decomposed there. */
void kfac_inverse_stage(kfac_net *k, kfac_layer *kl);
/* Decomposes kl->next's copies in place and builds its damped inverses for dmp, on
 * backend be with scratch sc; sets kl->next.status.  Touches nothing but kl->next and
 * sc, so another thread may run it while the net trains. */
void kfac_inverse_compute(kfac_backend *be, kfac_scratch *sc, kfac_layer *kl, kfac_damping dmp);
/* kl->next in place of the current decomposition when it succeeded (else the last
 * good one stays, logged once): 0 on success, -1 on failure. */
int kfac_inverse_install(kfac_net *k, kfac_layer *kl);

/* Eigenvalues at or below KFAC_RANK_TOL times the largest are rounding noise of a
 * rank-deficient factor (a factor from n samples has rank <= n). */
#define KFAC_RANK_TOL 1e-5f
/* The damped inverses for the damping in force, rebuilt when it moved since they
 * were made: 1, or 0 when the layer has none usable (a factor all zeros). */
int kfac_inverse_current(kfac_net *k, kfac_layer *kl);
/* P = (G + lG I)^-1 D (A + lA I)^-1 from the current damped inverses. */
void kfac_precondition_kron(kfac_net *k, kfac_layer *kl);

/* Mean of the eigenvalues d (n, >= 0) above KFAC_RANK_TOL times the largest: the
 * trace over the numerical rank (0 when all are 0). */
float kfac_eig_mean(const float *d, int n);
/* The factors' damping of the decomposition e under dmp: A's blocks into sc->lambda,
 * G's groups into sc->lambda_g (kfac_inverses.c's rule).  Returns 0 when a factor
 * group is all zeros. */
int kfac_damping_values(kfac_backend *be, kfac_scratch *sc, const kfac_shape *s, const kfac_eigs *e, kfac_damping dmp);

/* ---- kfac_bn.c --------------------------------------------------------------------- */

/* Chooses the batch-norm blocks of the net (after the covered layers): the start
 * line's part into note, the batch norms left on SGD appended to skipped. */
void kfac_bn_choose(kfac_net *k, const network *net, char *note, size_t note_len, char *skipped, size_t skipped_len);
void kfac_bn_alloc(kfac_net *k, const network *net);
void kfac_bn_free(kfac_net *k);
/* Statistics of the batch norm of layer `index`, whose delta is now complete (called
 * after the backward of layer index + 1, before its own). */
void kfac_bn_capture(kfac_net *k, network *net, int index);
/* The update's statistics into the running averages (a non-finite batch is dropped). */
void kfac_bn_fold(kfac_net *k);
/* Decompositions when `refresh` (or when a block has none yet). */
void kfac_bn_refresh(kfac_net *k, int refresh);
/* Decomposes one block's F: 0, or -1 keeping the last good decomposition (logged). */
int kfac_bn_decompose(kfac_net *k, kfac_bn *b);
/* The KL-clipped step's part: each block's D and P (P = D on SGD) and its <P, D> and
 * finiteness into result slots from `slot0` on (KFAC_SLOTS_PER_LAYER per block); then,
 * with the results read, the blocks' share of the KL quadratic. */
void kfac_bn_step(kfac_net *k, network *net, int on, int slot0);
double kfac_bn_step_results(kfac_net *k, network *net, const update_args *a, const double *results);
/* The write-back into scale_updates and bias_updates, with the KL factor nu. */
void kfac_bn_write_back(kfac_net *k, network *net, float nu);
/* Snapshots of scale_updates and bias_updates after Darknet's update. */
void kfac_bn_snapshot(kfac_net *k, network *net);
/* The adaptive step (kfac_adaptive.c) on the blocks: the blocks take part in its
 * quadratic model as the covered layers do, each with the damping gamma^2 = lambda +
 * eta of the model itself (no decay applies to scales and shifts in Darknet, so none
 * enters their gradient or the ratio's decay term). */
enum { KFAC_BN_DIR_NONE = 0, KFAC_BN_DIR_DELTA = 1, KFAC_BN_DIR_PREV = 2 };
typedef struct {
    double gd, gp, dd, dp, pp, tt; /* <D,P>, <D,prev>, <P,P>, <P,prev>, <prev,prev>, <theta,theta> */
    int any;                /* a block takes part */
} kfac_bn_sums;
/* The direction of every block with an inverse (P = Delta = (F + gamma^2)^-1 D / B, D
 * the negative gradient summed over the batch), their sums; the others' modes set. */
void kfac_bn_adaptive_direction(kfac_net *k, network *net, int on, double B, kfac_bn_sums *sums);
/* The blocks in the model moved by scale times their k->bn_dir vector (probes), and back */
void kfac_bn_adaptive_move(kfac_net *k, network *net, float scale);
void kfac_bn_adaptive_restore(kfac_net *k, network *net);
/* prev <- a prev + b P (the step delta = r (alpha Delta + mu delta_0)), or 0 */
void kfac_bn_adaptive_combine(kfac_net *k, float a, float b);
void kfac_bn_adaptive_forget(kfac_net *k);
/* A ratio pending: mark the blocks that moved; rho_next_batch: to the weights before
 * that step (to 1) and back (to 0) */
void kfac_bn_adaptive_pend(kfac_net *k);
void kfac_bn_adaptive_swap_pre(kfac_net *k, network *net, int to_pre);
/* After Darknet's update: the blocks' scales and shifts become their saved values +
 * prev, their update buffers zero */
void kfac_bn_adaptive_updated(kfac_net *k, network *net);

/* Replicas (kfac_networks_sync): the blocks' F averaged and, when `decompose`, each
 * replica's decomposed; kfac_bn_need_inverse: a block has factors but no inverse. */
void kfac_bn_sync(kfac_net **ks, kfac_backend **bs, int n, int decompose);
int kfac_bn_need_inverse(const kfac_net *k);

/* ---- kfac_ekfac.c ------------------------------------------------------------------ */

/* scaling=ekfac (George et al. 2018, shared/DESIGN.md 6b): a covered layer's scaling
 * S_ij = E_n[(E_G dW_n E_A^T)_ij^2] in its current Kronecker eigenbasis, in place of
 * the eigenvalue products dG_i dA_j.  Every float pointer is a backend buffer. */
typedef struct kfac_ekfac {
    float *S, *S_acc;       /* groups x M x K: running average, sum over the update's images */
    float *R;               /* groups x M x K: the reciprocal damped denominators (ekfac_scale) */
    int n_acc;              /* images in S_acc */
    int acc_gen;            /* the basis S_acc was taken in (kfac_layer.basis_gen) */
    int gen;                /* the basis S belongs to */
    int batches;            /* batches in S since that basis (0: none, K-FAC's scaling is used) */
    int R_ok;               /* R is built from the current S ... */
    int R_gen;              /* ... in the basis of this generation ... */
    float R_key;            /* ... with this damping key */
    int bad_logged;
} kfac_ekfac;

void kfac_ekfac_attach(kfac_net *k);
void kfac_ekfac_free(kfac_net *k);
/* Statistics step, start of the update: the decompositions due in this update are
 * taken now, from the factors so far, so that its scaling is estimated in the basis
 * it will precondition with. */
void kfac_ekfac_begin_update(kfac_net *k);
/* 1 when kfac_ekfac_begin_update took this update's decompositions. */
int kfac_ekfac_refreshed(const kfac_net *k);
/* The scaling's statistics of one layer from its input and delta (a statistics
 * backward), in its current basis. */
void kfac_ekfac_capture(kfac_net *k, kfac_layer *kl, const layer *l, const float *input, const float *delta);
/* The update's statistics into S; a batch of another basis or non-finite is dropped. */
void kfac_ekfac_fold(kfac_net *k);
/* A covered layer's direction P from its gradient D: with the damped inverses of the
 * damping in force (rebuilt when it moved), E_G^T [(E_G D E_A^T) / (S + damping)] E_A
 * when scaling=ekfac has measured S in the layer's basis, K-FAC's otherwise; P = D
 * when a factor is all zeros. */
void kfac_precondition_layer(kfac_net *k, kfac_layer *kl);

/* ---- kfac_fisher.c ---------------------------------------------------------------- */

/* Finds the loss layers and how each is sampled (k->losses, k->true_fisher); writes
 * the start line's description of the Fisher into note. */
void kfac_fisher_setup(kfac_net *k, const network *net, char *note, size_t note_len);

/* ---- kfac_losses.c: the loss layers, one entry per kind --------------------------- */

/* A loss layer on the host, as its entry's operations read it. */
typedef struct {
    const network *net;     /* its truth ([cost] masked), Darknet's seen ([region]) */
    const layer *l;
    const float *p;         /* batch x outputs: the layer's outputs */
    const float *d;         /* batch x outputs: its delta, the negative gradient of its loss */
    const float *weight;    /* [yolo], [region]: batch x n x locations, the slots' assigned-box
                               weights (assign); NULL for the others */
} kfac_loss_view;

/* What K-FAC needs from one kind of loss layer.  An operation a kind lacks is NULL. */
typedef struct {
    LAYER_TYPE layer;       /* the Darknet layer it serves */
    const char *targets;    /* the start line: how the true Fisher draws its targets */
    /* NULL when layer l's targets can be sampled (else why not: its data-label delta stays) */
    const char *(*unsampled)(const layer *l);
    /* 1 when the adaptive step's quadratic model takes layer l (fisher_dot, value) */
    int (*modelled)(const layer *l);
    /* uniform draws of the sampler per image, image after image (kfac_dist_factors.c
     * skips the other ranks' by it); NULL: the count varies with the image */
    size_t (*draws_per_image)(const layer *l);
    /* [yolo], [region]: each anchor slot's weight of the box the truth in net assigns
     * to it, 0 for none, into weight (kfac_loss_slots floats); p the layer's outputs on
     * the host, read by [region] with bias_match=0 (which assigns by the predicted
     * shapes) and by no kind the adaptive step takes */
    void (*assign)(const layer *l, const network *net, const float *p, float *weight);
    /* the true Fisher's sampled delta into out (batch x outputs, host; may be v->d) */
    void (*sample)(uint64_t *rng, const kfac_loss_view *v, float *out);
    /* in place of sample, on the backend where the outputs are: b's delta from b's
     * output, drawing from k->rng ([softmax]) */
    void (*sample_backend)(kfac_net *k, const layer *l, const kfac_darknet_buffers *b);
    /* total + (1/batch) sum_i u_i^T F_R,i w_i, u and w (batch x inputs, host) in the
     * layer's input space, F_R its output Fisher at v's outputs; the images' terms are
     * added to total one by one */
    double (*fisher_dot)(const kfac_loss_view *v, const float *u, const float *w, double total);
    /* the loss v->d differentiates, summed over the images, from the outputs and the
     * targets they imply (never Darknet's cost, NaN once a float output saturates) */
    double (*value)(const kfac_loss_view *v);
} kfac_loss_ops;

/* The entry of kind (not KFAC_LOSS_NONE or KFAC_LOSS_EMPIRICAL). */
const kfac_loss_ops *kfac_loss_ops_of(kfac_loss_kind kind);
/* How the true-Fisher pass treats layer l: KFAC_LOSS_NONE (not a loss layer), its
 * kind, or KFAC_LOSS_EMPIRICAL with the reason in why. */
kfac_loss_kind kfac_loss_sampled(const layer *l, const char **why);
/* The kind of the adaptive step's model term for layer l, KFAC_LOSS_NONE when its
 * output Fisher is not known here. */
kfac_loss_kind kfac_loss_modelled(const layer *l);
/* the length of layer l's assigned-box weights (batch x n x locations), 0 for a kind
 * without assign */
size_t kfac_loss_slots(const layer *l);

/* ---- kfac_adaptive.c --------------------------------------------------------------- */

/* The adaptive step's state, NULL unless step=adaptive. */
/* A loss layer of the adaptive step's quadratic model; off: where its input and output
 * (batch x inputs) start in the host arrays of kfac_adaptive. */
typedef struct kfac_model_loss {
    int index;
    kfac_loss_kind kind;
    size_t off;
    size_t slot_off;        /* where its assigned-box weights start in kfac_adaptive.slot_weight */
} kfac_model_loss;

/* steps whose mu the progress line's median is taken over */
#define KFAC_MU_RING 256

typedef struct kfac_adaptive {
    int active;             /* adaptive steps are taken (saved; step=auto turns it off) */
    int may_switch;         /* step=auto on a softmax: may give way to the KL clip */
    int low_ratios;         /* step=auto: generalization ratios below 1/4 in a row (saved) */
    int probing;            /* the probes' forward passes are running (kfac_network_quiet) */
    double gen_last;        /* the last generalization ratio (NAN before the first) */
    float lambda;           /* Levenberg-Marquardt damping (saved) */
    int have_prev;          /* a previous update exists for the momentum term (saved) */
    int updates;            /* adaptive updates so far, for the every-T1 rule (saved) */
    int check_next;         /* 1: the next update measures rho, whatever T1 says (saved) */
    int rho_checked;        /* this update measured rho */
    int coupled;            /* a layer couples the images of a batch (batch norm) */
    struct kfac_model_loss *loss; /* the loss layers whose output Fisher the model uses */
    int nloss;
    float *zeros;           /* backend: the largest groups x M x K, all zero */
    /* what a probe's forward pass overwrites, saved before and put back after */
    float **saved;          /* per net layer KFAC_PROBE_FIELDS backend copies */
    size_t *saved_len;      /* their lengths (resize_network may grow the layers) */
    int nsaved;
    size_t nout;            /* length of the host arrays below: the loss layers' inputs */
    float *costs;           /* host: every layer's cost[0], then *net->cost */
    /* host, the loss layers one after the other: their inputs at a probe (zp) and at
     * theta (z0), their outputs and deltas at theta (p, d) and at the last forward
     * (hp, hd) */
    float *zp, *z0, *p, *d, *hp, *hd;
    float *jv[2];           /* host: J Delta, J delta_0 on the probe batch */
    float **dirs;           /* nlayers: the directions a probe moves the layers along */
    float *slot_weight;     /* host: the loss layers' assigned-box weights ([yolo]'s), one
                               after the other (slot_len), for the batch of this update */
    size_t slot_len;
    /* the progress line */
    double alpha_sum;
    float mus[KFAC_MU_RING]; /* the last steps' mu, for their median */
    int steps;              /* adaptive steps taken since the last line */
    int failed;             /* steps failed since the last line (non-finite or rho < 0) */
    int failed_logged;      /* the first failure was said */
    double rho_last;        /* the last reduction ratio (NAN before the first) */
    int pending;            /* a ratio to measure on the next update's batch */
    double pend_m, pend_decay; /* its model value and decay term */
    /* J delta_0 on a second thread while the training thread runs the backward pass
     * (probe_thread=1, CPU): launched after the update's last forward pass on a copy
     * of the net, taken in the update when the layers it moved and its eps are the
     * update's own, else made on the training thread as without it */
    struct kfac_clone *clone; /* NULL: every probe on the training thread */
    int split;              /* probe_split: attached to kfac_split.c */
    long split_passes[2];   /* probe passes on one thread (the core was taken), split */
    pthread_t bg_thread;
    int bg_running;         /* launched and not yet joined */
    int bg_finished;        /* its pass is over (__atomic: read before the join) */
    int bg_ready;           /* its result is this update's to take */
    float bg_eps;           /* the launch's eps */
    unsigned char *bg_set;  /* nlayers + nbn: the layers and blocks it moved */
    float *bg_out;          /* host: the loss layers' inputs at theta + eps delta_0 */
    size_t bg_len;          /* bg_out's length */
    long bg_taken, bg_missed; /* updates that took its result, launches not taken */
} kfac_adaptive;

/* Checks the net and allocates the state at attach.  Returns 1, or 0 with the reason
 * in why when the adaptive step cannot run on this net (step=adaptive then stops the
 * program with it, step=auto takes the KL-clipped step). */
int kfac_adaptive_attach(kfac_net *k, network *net, char *why, size_t why_len);
static inline int kfac_adaptive_on(const kfac_net *k) { return k->adapt && k->adapt->active; }
/* the factored Tikhonov damping gamma = sqrt(lambda + eta) of the adaptive step's
 * factors: here, so that the decompositions below the step (kfac_inverses.c) read it
 * without calling up into the step */
static inline float kfac_adaptive_gamma(const kfac_net *k) { return sqrtf(k->adapt->lambda + k->eta); }
void kfac_adaptive_free(kfac_net *k);
/* After a training forward pass (kfac_network_fisher_pass): on the update's last
 * subdivision, J delta_0's forward pass starts on a second thread (probe_thread). */
void kfac_adaptive_train_forward(kfac_net *k, network *net);
/* backward_thread: the copy set up at attach when the net allows it (kfac_fisher.c);
 * the thread joined (kfac_network_backward does it after each true-Fisher pass) */
void kfac_backward_attach(kfac_net *k, network *net);
void kfac_backward_join(kfac_net *k);
/* The second thread joined and its result dropped, if the update has not taken it:
 * before anything changes the weights or delta_0 */
void kfac_adaptive_settle(kfac_net *k);
/* The step for every layer with an inverse, in place of the KL-clipped write-back:
 * returns after setting k->mode for each layer. */
void kfac_adaptive_step(kfac_net *k, network *net, const update_args *a);
/* After Darknet's update: the covered layers' weights become theta + delta. */
void kfac_adaptive_updated(kfac_net *k, network *net);
/* The progress line's part: alpha, mu, lambda, rho (into buf). */
void kfac_adaptive_report(kfac_net *k, char *buf, size_t len);
/* The network's output change along v (groups x M x K per covered layer, in the
 * layers' order; NULL for a layer left out) on the probe batch, by central finite
 * differences of Darknet's forward pass with a step of relative size rel (0: the
 * step's own); out (host, batch x inputs of the loss layer).  Every buffer of the net
 * is as it was afterwards.  For tests. */
void kfac_adaptive_jv(kfac_net *k, network *net, float *const *v, double rel, float *out);
/* (1/b) sum_i u_i^T F_R,i w_i over the probe batch, u and w host arrays in the loss
 * layers' input space (each loss layer's batch x inputs, in net order), F_R their
 * output Fisher at the current outputs.  For tests. */
double kfac_adaptive_fisher_dot(kfac_net *k, const network *net, const float *u, const float *w);
/* h, the model's loss on the batch (mean over images), at the last forward pass.  For
 * tests. */
double kfac_adaptive_loss(kfac_net *k, const network *net);
/* alpha, mu minimizing the model with curvatures cdd = Delta^T C Delta, cdp, cpp and
 * gradients gd = grad^T Delta, gp; 0 when the model cannot be used. */
int kfac_adaptive_solve(double cdd, double cdp, double cpp, double gd, double gp, int have_prev, double *alpha,
                        double *mu);
/* lambda after a reduction ratio rho (the Levenberg-Marquardt rule, M&G 6.5). */
float kfac_adaptive_lambda_rule(float lambda, double rho);

/* ---- kfac_dist_factors.c: K-FAC across the ranks of a job (k->dist set) ------------- */

/* Makes K-FAC's side of a net train as a rank of d's job: the owners of the layers'
 * decompositions (kfac_owners_assign over the ranks); sets k->dist. */
void kfac_dist_factors_attach(kfac_net *k, struct kfac_dist *d);
/* Before the statistics are folded: A_acc, G_acc, the batch-norm blocks' F_acc,
 * EKFAC's S_acc and their image counts summed over the ranks, so every rank folds the
 * statistics of the global batch. */
void kfac_dist_sum_statistics(kfac_net *k);
/* 1 when this rank decomposes covered layer i (always without ranks) */
int kfac_dist_owns(const kfac_net *k, int i);
/* Layer kl's next decomposition from its owner, made at once (kfac_inverse_refresh). */
void kfac_dist_share_one(kfac_net *k, const kfac_layer *kl);
/* The background job's decompositions from their owners, each rank's worker finished
 * first (the caller waits: kfac_worker_wait); once per job (at its install, or before rank 0 saves it in the state).  With
 * dist_precondition=owner only how each went is shared, unless `whole` (a save). */
void kfac_dist_share_job(kfac_net *k, int whole);
/* dist_precondition=owner, before rank 0 saves the state: every layer's decompositions
 * in force from their owners (the job's: kfac_dist_share_job whole), so that the file
 * holds them all. */
void kfac_dist_gather(kfac_net *k);
/* 1 when this rank computes covered layer i's preconditioned gradient: alone, with
 * dist_precondition=everyone, or as the layer's owner */
int kfac_dist_preconditions(const kfac_net *k, int i);
/* dist_precondition=owner: P of every layer whose k->mode is `mode` from its owner
 * (nothing otherwise, or without ranks) */
void kfac_dist_share_preconditioned(kfac_net *k, int mode);
/* After every update: rank 0's choice of the auto intervals and lag for every rank. */
void kfac_dist_agree_schedule(kfac_net *k);
/* x[0..n) <- its mean over the ranks (the adaptive step's per-rank sums over its own
 * probe images; all ranks' batches are equal) */
void kfac_dist_mean(const kfac_net *k, double *x, int n);
/* Around the true-Fisher sampling of loss layer l: each rank draws the labels the one
 * process with all ranks' images would draw for its own images (the generator skips
 * the other ranks' draws), or, for a [yolo] layer whose draws per image vary, from a
 * stream of its own; afterwards every rank's generator is in the same state. */
void kfac_dist_sample_begin(kfac_net *k, const layer *l, kfac_loss_kind kind);
void kfac_dist_sample_end(kfac_net *k, const layer *l, kfac_loss_kind kind);

/* ---- kfac_state.c ---------------------------------------------------------------- */

/* lengths of a conv/connected layer's weight, bias and scale update buffers (0 where
 * the layer has none) */
void kfac_layer_update_counts(const layer *l, size_t c[3]);

#endif
