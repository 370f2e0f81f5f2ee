/* darknet-kfac: the state of a net that trains as one rank of a job (net->dist, and
 * kfac_net.dist when K-FAC is on), shared by kfac_dist.c (every net: gradients,
 * start-up checks, saves) and kfac_dist_factors.c (K-FAC's part: statistics,
 * decompositions, the adaptive step's scalars, the true-Fisher sampler). */
#ifndef KFAC_DIST_H
#define KFAC_DIST_H

#include <stddef.h>
#include <stdint.h>
#include "kfac.h"
#include "kfac_backend.h"
#include "kfac_comm.h"

/* One Darknet array (backend memory) and where it sits in the fusion buffer. */
typedef struct {
    float *buf;
    size_t len;
    size_t off;
} kfac_dist_span;

typedef struct kfac_dist {
    kfac_comm *comm;        /* kfac_comm_world() */
    kfac_backend *be;       /* copies and sums where the net's arrays live (several ranks; NULL alone) */
    int device;             /* 1: device memory (the comm's device operations) */
    /* *_updates arrays: their new gradients are averaged (offsets in stash and fusion) */
    kfac_dist_span *grad;
    int ngrad;
    /* batch-norm rolling statistics: averaged too (offsets after the gradients') */
    kfac_dist_span *stat;
    int nstat;
    /* weights, biases, scales and rolling statistics: rank 0's at the start, hashed at
     * every save */
    kfac_dist_span *param;
    int nparam;
    size_t grad_len;        /* floats of all gradient spans */
    size_t fusion_len;      /* grad_len + the statistics' */
    float *stash;           /* grad_len: the *_updates arrays as the last update left them */
    int folded;             /* 1: the arrays hold stash + the new gradients (after a start
                               or a save), 0: the new gradients alone */
    float *fusion;          /* fusion_len: one all-reduce per update */
    float *host;            /* host scratch for the checksum (host_len floats) */
    size_t host_len;
    /* K-FAC (kfac_dist_factors.c), per covered layer */
    int *owner;             /* the rank that decomposes the layer */
    int *due;               /* scratch: the layers whose decompositions are shared now */
    double *flags;          /* scratch: three values per covered layer */
    int shared_job;         /* job_serial of the background job last shared (-1: none) */
    int owner_precondition; /* 1: dist_precondition=owner in force (several ranks, not
                               scaling=ekfac): owners precondition and broadcast P */
    uint64_t rng_saved;     /* the true-Fisher generator while a [yolo] layer samples */
    /* timing, the progress line */
    kfac_dist_times times;
    kfac_dist_times reported; /* at the last progress line */
    double t_start;         /* clock at the last progress line (or the start) */
} kfac_dist;

/* kfac_dist_factors.c: frees what kfac_dist_factors_attach allocated (NULL is fine). */
void kfac_dist_factors_free(kfac_dist *d);

/* kfac_dist_factors.c: adds the seconds since t0 to *slot and returns the clock. */
double kfac_dist_tick(double t0, double *slot);
/* One collective's bytes into the count (only with several ranks). */
void kfac_dist_count(kfac_dist *d, size_t bytes);

#endif
