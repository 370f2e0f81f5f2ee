/* darknet-kfac: collectives on device buffers over NCCL (GPU=1 MPI=1 builds).  The
 * only file with nccl* calls.  Why NCCL and not CUDA-aware MPI: kfac_comm.h.
 *
 * NCCL's communicator is bootstrapped over the MPI one: rank 0 makes the unique id,
 * the host broadcast hands it to every rank, and each rank joins with its own GPU
 * (kfac_dist.c picks local rank + -i).  NCCL refuses two ranks on one GPU; ranks that
 * share one (a test of the distributed path on a one-GPU machine) copy the buffer to
 * the host and use the MPI sum instead, which is slower but the same arithmetic.
 * Every operation runs on the legacy default stream, after Darknet's kernels that
 * wrote the buffer, and returns when it is complete.  The NCCL communicator lives as
 * long as the process, like MPI's. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cuda_runtime.h>
#include <nccl.h>
#include "kfac_comm.h"
#include "kfac_util.h"

#define KFAC_NCCL_CHECK(call)                                                                         \
    do {                                                                                              \
        ncclResult_t r_ = (call);                                                                     \
        if (r_ != ncclSuccess) kfac_die(__FILE__, __LINE__, "%s: %s", #call, ncclGetErrorString(r_)); \
    } while (0)
#define KFAC_CUDA_CHECK(call)                                                                         \
    do {                                                                                              \
        cudaError_t e_ = (call);                                                                      \
        if (e_ != cudaSuccess) kfac_die(__FILE__, __LINE__, "%s: %s", #call, cudaGetErrorString(e_)); \
    } while (0)

typedef struct {
    ncclComm_t comm;        /* NULL when the ranks share a GPU (staged) */
    int device;
    float *host;            /* staged: host copy of the buffer */
    size_t host_len;
} nccl_state;

static nccl_state *state_of(kfac_comm *c) { return (nccl_state *)c->device_impl; }

/* staged: the buffer through host memory */
static float *host_buffer(nccl_state *s, size_t n)
{
    if (n > s->host_len) {
        free(s->host);
        s->host = (float *)kfac_calloc(n, sizeof(float));
        s->host_len = n;
    }
    return s->host;
}

static void nccl_device_sum(kfac_comm *c, float *x, size_t n)
{
    nccl_state *s = state_of(c);
    if (n == 0) return;
    if (s->comm) {
        KFAC_NCCL_CHECK(ncclAllReduce(x, x, n, ncclFloat, ncclSum, s->comm, 0));
        KFAC_CUDA_CHECK(cudaStreamSynchronize(0));
        return;
    }
    float *h = host_buffer(s, n);
    KFAC_CUDA_CHECK(cudaMemcpy(h, x, n * sizeof(float), cudaMemcpyDeviceToHost));
    c->ops->sum(c, h, n);
    KFAC_CUDA_CHECK(cudaMemcpy(x, h, n * sizeof(float), cudaMemcpyHostToDevice));
}

static void nccl_device_broadcast(kfac_comm *c, float *x, size_t n, int root)
{
    nccl_state *s = state_of(c);
    if (n == 0) return;
    if (s->comm) {
        KFAC_NCCL_CHECK(ncclBroadcast(x, x, n, ncclFloat, root, s->comm, 0));
        KFAC_CUDA_CHECK(cudaStreamSynchronize(0));
        return;
    }
    float *h = host_buffer(s, n);
    if (c->rank == root) KFAC_CUDA_CHECK(cudaMemcpy(h, x, n * sizeof(float), cudaMemcpyDeviceToHost));
    c->ops->broadcast(c, h, n * sizeof(float), root);
    if (c->rank != root) KFAC_CUDA_CHECK(cudaMemcpy(x, h, n * sizeof(float), cudaMemcpyHostToDevice));
}

/* the MPI operations with the device ones added (one table per process) */
static kfac_comm_ops with_device;

/* one rank's (machine, GPU) for the shared-GPU test */
typedef struct {
    char host[64];
    int device;
} gpu_seat;

void kfac_comm_nccl_attach(kfac_comm *c, int device)
{
    int i, j, shared = 0;
    if (c->device_impl || c->size < 2) return;
    nccl_state *s = (nccl_state *)kfac_calloc(1, sizeof *s);
    s->device = device;
    KFAC_CUDA_CHECK(cudaSetDevice(device));
    gpu_seat me, *all = (gpu_seat *)kfac_calloc((size_t)c->size, sizeof *all);
    memset(&me, 0, sizeof me);
    gethostname(me.host, sizeof me.host - 1);
    me.device = device;
    c->ops->allgather(c, &me, all, sizeof me);
    for (i = 0; i < c->size; ++i)
        for (j = i + 1; j < c->size; ++j)
            shared |= all[i].device == all[j].device && !strcmp(all[i].host, all[j].host);
    free(all);
    if (!shared) {
        ncclUniqueId id;
        if (c->rank == 0) KFAC_NCCL_CHECK(ncclGetUniqueId(&id));
        c->ops->broadcast(c, &id, sizeof id, 0);
        KFAC_NCCL_CHECK(ncclCommInitRank(&s->comm, c->size, id, c->rank));
    }
    int v = 0;
    ncclGetVersion(&v);
    size_t len = strlen(c->description);
    snprintf(c->description + len, sizeof c->description - len, shared ? "; device buffers through the host (ranks share a GPU)"
             : "; device buffers over NCCL %d", v);
    with_device = *c->ops;
    with_device.device_sum = nccl_device_sum;
    with_device.device_broadcast = nccl_device_broadcast;
    c->device_impl = s;
    c->ops = &with_device;
}
