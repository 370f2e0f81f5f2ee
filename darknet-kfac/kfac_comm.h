/* darknet-kfac: the collectives interface, one struct of operations per transport
 * (shared/STYLE.md 1b), as kfac_backend.h is for the numerics.
 *
 * Data-parallel training (kfac_dist.c, kfac_dist_factors.c) is written once against
 * it.  Three implementations:
 *
 *     kfac_comm.c        "single": one process, every operation does nothing (or a
 *                        copy), so training alone runs the very same code
 *     kfac_comm_mpi.c    "mpi": host buffers over MPI (MPI=1 builds; the only file
 *                        with MPI_* calls)
 *     kfac_comm_nccl.c   device buffers over NCCL (GPU=1 MPI=1 builds; the only file
 *                        with nccl* calls), bootstrapped over the MPI communicator
 *
 * Why NCCL and not CUDA-aware MPI for device buffers: Debian's Open MPI is built
 * without CUDA support (`ompi_info`: mpi_built_with_cuda_support false), so a device
 * pointer handed to it is read as host memory; a CUDA-aware MPI means building Open
 * MPI (and UCX) by hand on every machine.  NCCL comes with the CUDA installation,
 * picks NVLink, PCIe peer-to-peer, InfiniBand (GPUDirect) or sockets by itself,
 * runs its rings and trees as kernels, and is ordered on a CUDA stream with Darknet's
 * own kernels, so the gradient never leaves the GPU.
 *
 * A call looks like this (kfac_dist.c, the gradient all-reduce of one update):
 *
 *     kfac_comm *c = kfac_comm_world();
 *     if (device) c->ops->device_sum(c, fusion, n);   // device floats (NCCL)
 *     else c->ops->sum(c, fusion, n);                 // host floats (MPI)
 *
 * Every operation is collective: all ranks call it, in the same order, with the same
 * sizes; it returns when this rank's result is complete (device operations: ordered
 * on the legacy default stream, complete when they return).  Every rank must end a
 * sum with the same bits: Open MPI's and NCCL's sum reductions combine each element
 * along one path, or pairwise with (commutative) float additions, so they do; the
 * weights checksum at every save (kfac_dist.c) would name the ranks otherwise.  A
 * failure inside a transport stops the program with the library's own message
 * (MPI_ERRORS_ARE_FATAL, KFAC_NCCL_CHECK). */
#ifndef KFAC_COMM_H
#define KFAC_COMM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kfac_comm kfac_comm;

typedef struct {
    const char *name;       /* "single", "mpi" */
    /* ---- host buffers ----------------------------------------------------------------- */
    /* x[0..n) <- the sum over ranks of every rank's x, in place */
    void (*sum)(kfac_comm *c, float *x, size_t n);
    void (*sum_double)(kfac_comm *c, double *x, size_t n);
    /* bytes at p <- root's bytes at p */
    void (*broadcast)(kfac_comm *c, void *p, size_t bytes, int root);
    /* all (size x bytes) <- every rank's `mine` (bytes), in rank order */
    void (*allgather)(kfac_comm *c, const void *mine, void *all, size_t bytes);
    void (*barrier)(kfac_comm *c);
    /* ---- device buffers (GPU builds with NCCL attached; NULL otherwise) ------------- */
    void (*device_sum)(kfac_comm *c, float *x, size_t n);
    void (*device_broadcast)(kfac_comm *c, float *x, size_t n, int root);
} kfac_comm_ops;

struct kfac_comm {
    const kfac_comm_ops *ops;
    int rank, size;         /* this process and the job's processes (MPI_COMM_WORLD) */
    int local_rank;         /* among the ranks on this machine: picks its GPU */
    int local_size;
    char description[160];  /* the transport, for the start line and the build check */
    void *impl;             /* the transport's own state */
    void *device_impl;      /* NCCL's state once attached (kfac_comm_nccl_attach) */
};

/* The process's communicator: the MPI one once kfac_comm_init has joined a job of
 * several ranks, the single-process one otherwise (created on first use). */
kfac_comm *kfac_comm_world(void);

/* 1 when a launcher (mpirun: Open MPI's OMPI_COMM_WORLD_SIZE, or PMI_SIZE) started
 * this process as one of several ranks; nothing is initialized. */
int kfac_comm_launched(void);

/* Joins the job when kfac_comm_launched() (MPI builds; a build without MPI stops
 * with a message naming the MPI build), and returns kfac_comm_world().  Called once,
 * before the program starts threads. */
kfac_comm *kfac_comm_init(void);

#ifdef KFAC_MPI
/* kfac_comm_mpi.c: MPI_Init_thread (MPI_THREAD_SERIALIZED: one thread at a time may
 * call a collective) and MPI_COMM_WORLD; at exit the job is finalized after a normal
 * end of every rank and aborted otherwise (see kfac_comm_mpi.c). */
kfac_comm *kfac_comm_mpi_create(void);
#endif
#if defined(KFAC_MPI) && defined(GPU)
/* kfac_comm_nccl.c: device operations on `device` (the current CUDA device of every
 * rank's net); ranks that share a GPU fall back to copies through the host. */
void kfac_comm_nccl_attach(kfac_comm *c, int device);
#endif

#ifdef __cplusplus
}
#endif
#endif
