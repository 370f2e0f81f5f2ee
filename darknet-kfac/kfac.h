/* darknet-kfac: K-FAC (Kronecker-factored approximate curvature) inside Darknet.
 *
 * Usage: add a [kfac] section to a Darknet cfg and train as usual.
 *
 *     [net]
 *     batch=64
 *     learning_rate=0.05
 *     momentum=0.9
 *     ...
 *     [kfac]            # empty: every default (see README.md for each option)
 *     damping=0.001
 *
 *     darknet classifier train digits.data digits-kfac.cfg
 *
 * Each convolutional and connected layer gets a Kronecker-factored Fisher block
 * A (x) G (Martens & Grosse 2015; Grosse & Martens 2016 for convolutions).  The
 * preconditioned gradient replaces the new gradient inside Darknet's own update, so
 * learning-rate policy, burn_in, momentum, decay and subdivisions keep working.
 *
 * Darknet reaches this file through a handful of guarded calls (patches/0004):
 *
 *     parse_network_cfg   cfg = kfac_cfg_take(file, sections) ... kfac_network_attach
 *     train_network_datum kfac_network_train_begin   before forward (patches/0025)
 *                         kfac_network_fisher_pass   between forward and backward
 *                         kfac_network_backward      whether Darknet's backward runs
 *                                                    on a second thread (patches/0026)
 *     backward_network    kfac_fisher_backward       instead of l.backward, in the
 *                                                    true-Fisher pass only
 *                         kfac_layer_backward        after each l.backward
 *     update_network      kfac_network_precondition  before the layer updates,
 *                         kfac_network_updated       after them
 *     save_weights        kfac_state_save            <weights>.kfac next to the weights
 *     load_network        kfac_state_load
 *     free_network        kfac_network_free
 *     sync_nets           kfac_networks_sync         multi-GPU builds: replicas
 *     forward_yolo_layer  kfac_network_quiet         no progress line for probes
 *
 * and for training across processes (mpirun; kfac_dist.c, patches/0020):
 *
 *     main                kfac_dist_init             join the job, pick this rank's GPU
 *     train_classifier,   kfac_dist_start            check the ranks agree, rank 0's
 *     train_detector                                 weights to all, loaders seeded per rank
 *                         kfac_dist_loss             the loss over all ranks' images
 *     update_network      kfac_dist_gradients        the new gradients averaged over ranks,
 *                                                    before kfac_network_precondition
 *                         kfac_dist_updated          after the layers' updates
 *     save_weights        kfac_dist_save             weights checksum; only rank 0 writes
 *     free_network        kfac_dist_free
 *
 * Every other function here is for the tests and tools.
 */
#ifndef KFAC_H
#define KFAC_H

#include "darknet.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Takes the [kfac] section out of a parsed cfg (and every layer's own kfac= key),
 * checks it and returns the configuration, or NULL when the cfg has no [kfac].
 * Stops the program with a message naming file, section and key on bad input. */
void *kfac_cfg_take(const char *cfgfile, list *sections);

/* Attaches K-FAC to a freshly built network (consumes cfg) and prints the summary. */
void kfac_network_attach(network *net, void *cfg);
void kfac_network_free(network *net);

/* The training hooks (see above).  `input` is the layer's input as backward saw it. */
void kfac_network_train_begin(network *net);
void kfac_network_fisher_pass(network *net);
/* 1 when this subdivision's own backward pass ran on a second thread beside the
 * true-Fisher pass (backward_thread; waits for it to finish): the caller must not run
 * it again; 0 otherwise */
int kfac_network_backward(network *net);
void kfac_layer_backward(network *net, int index, float *input);
/* In the true-Fisher pass (CPU), the backward of layer `index` with the loss's sampled
 * derivative: returns 1 when it did that layer's part (or found it not needed) and
 * Darknet's own l.backward must not run, 0 otherwise.  `input` and `delta` are the
 * layer's input and the delta below it, as backward_network passes them. */
int kfac_fisher_backward(network *net, int index, float *input, float *delta);
void kfac_network_precondition(network *net, update_args *a);
void kfac_network_updated(network *net);

/* State file <weightfile>.kfac.  Save writes a temporary file and renames it, so a
 * crash never leaves a half-written state.  Load stops the program with a clear
 * message on a corrupt or mismatched file and never touches the weights; a missing
 * file starts K-FAC fresh with a notice. */
void kfac_state_save(network *net, const char *weightfile);
void kfac_state_load(network *net, const char *weightfile);

/* Darknet's sync_nets hook (multi-GPU training): averages the factors of the n
 * replicas and shares their decompositions out.  Called while no replica trains. */
void kfac_networks_sync(network **nets, int n);

/* ---- training across processes (kfac_dist.c) --------------------------------- */

/* Joins the job when mpirun started this process as one of several ranks (MPI=1
 * builds; any other build stops with a message) and returns the GPU this rank trains
 * on: `gpu` + its rank among the ranks on its machine (modulo the GPUs there), or
 * `gpu` unchanged when it is < 0 or the process is alone.  Ranks other than 0 write
 * nothing to stdout.  Call before the program starts threads or uses a GPU. */
int kfac_dist_init(int gpu);

/* Makes a freshly loaded net train as this rank of the job (alone: as the only one).
 * Stops before training, on every rank, with a message naming what differs when the
 * ranks disagree on the build, the cfg text, the [kfac] options, the weights loaded
 * from `weightfile` (NULL: a random initialization) or their K-FAC state; then gives
 * every rank rank 0's weights and seeds rand() per rank (each rank's loaders draw their
 * own images).  ngpus > 1 (Darknet's thread per GPU) is refused with several ranks and
 * left alone with one. */
void kfac_dist_start(network *net, const char *cfgfile, const char *weightfile, int ngpus);

/* The hooks above; see kfac_dist.c. */
void kfac_dist_gradients(network *net);
void kfac_dist_updated(network *net);
/* the mean over ranks of each rank's mean loss per image (all ranks' batches equal) */
float kfac_dist_loss(network *net, float loss);
/* 1 when this rank writes the save (rank 0), 0 on the others; stops every rank when
 * the ranks' weights differ. */
int kfac_dist_save(network *net, const char *filename);
void kfac_dist_free(network *net);

/* this process's rank and the job's size (0 and 1 when alone) */
int kfac_dist_rank(void);
int kfac_dist_size(void);

/* Seconds spent in collectives so far, by what they carried, and the bytes handed to
 * them (each buffer once per call; 0 when alone). */
typedef struct {
    double waiting;         /* for the slowest rank before each update's gradients */
    double gradients;       /* the gradient (and batch-norm statistics) all-reduce */
    double statistics;      /* K-FAC's factor statistics all-reduce */
    double sharing;         /* the decompositions from their owners (waits for them) */
    double preconditioned;  /* the preconditioned gradients from their owners
                               (dist_precondition=owner; waits for them) */
    double scalars;         /* the loss, the adaptive step's scalars, start-up checks */
    double bytes;           /* handed to the collectives */
    int updates;            /* updates since kfac_dist_start */
} kfac_dist_times;
void kfac_dist_timing(const network *net, kfac_dist_times *t);

/* ---- for tests and tools ---------------------------------------------------- */

/* Number of completed updates K-FAC has seen (saved in the state file). */
int kfac_network_step(const network *net);

/* 1 while the adaptive step's own forward passes run (patches/0018: [yolo] layers
 * print no progress line for them). */
int kfac_network_quiet(const network *net);

/* Replace the preconditioner by the identity (1) or restore it (0): everything else
 * (capture, true-Fisher pass, snapshots, write-back, KL clip off) keeps running. */
void kfac_network_set_identity(network *net, int identity);

/* The true-Fisher pass through kfac_fisher_backward (1, the default) or through
 * Darknet's full backward (0): the reference the lean one is tested against. */
void kfac_network_set_lean_fisher(network *net, int lean);

/* Seconds spent so far in statistics, decompositions and preconditioning. */
void kfac_network_timing(const network *net, double *stats, double *inverse, double *precond);

/* Reads and checks the state file `path` for this net without applying it: 0 when it
 * would load, 1 when it does not exist, -1 with the reason in err. */
int kfac_state_check(network *net, const char *path, char *err, size_t errlen);

/* Pointers into a covered layer's state (NULL when layer `index` is not covered).
 * A is groups x a_dim x a_dim, G is groups x g_dim x g_dim, row-major, symmetric. */
int kfac_layer_factors(const network *net, int index, const float **A, const float **G,
                       int *groups, int *a_dim, int *g_dim);

/* The batch-norm block of layer `index` (0 when it has none): F is blocks x
 * dim x dim, row-major, symmetric, its vector (scale, shift) per channel, interleaved. */
int kfac_bn_factor(const network *net, int index, const float **F, int *blocks, int *dim);

#ifdef __cplusplus
}
#endif
#endif
