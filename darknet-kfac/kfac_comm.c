/* darknet-kfac: the process's communicator, and the single-process one whose
 * collectives do nothing (one rank: a sum over ranks is the value itself). */
#include <stdlib.h>
#include <string.h>
#include "kfac_comm.h"
#include "kfac_util.h"

/* ---- single process ----------------------------------------------------------------- */

static void single_sum(kfac_comm *c, float *x, size_t n) { (void)c; (void)x; (void)n; }
static void single_sum_double(kfac_comm *c, double *x, size_t n) { (void)c; (void)x; (void)n; }
static void single_broadcast(kfac_comm *c, void *p, size_t bytes, int root) { (void)c; (void)p; (void)bytes; (void)root; }
static void single_allgather(kfac_comm *c, const void *mine, void *all, size_t bytes)
{
    (void)c;
    memmove(all, mine, bytes);
}
static void single_barrier(kfac_comm *c) { (void)c; }
static void single_device_sum(kfac_comm *c, float *x, size_t n) { (void)c; (void)x; (void)n; }
static void single_device_broadcast(kfac_comm *c, float *x, size_t n, int root) { (void)c; (void)x; (void)n; (void)root; }

static const kfac_comm_ops single_ops = {
    .name = "single",
    .sum = single_sum,
    .sum_double = single_sum_double,
    .broadcast = single_broadcast,
    .allgather = single_allgather,
    .barrier = single_barrier,
    .device_sum = single_device_sum,
    .device_broadcast = single_device_broadcast,
};

static kfac_comm single_comm = {&single_ops, 0, 1, 0, 1, "one process", NULL, NULL};

/* ---- the process's communicator ---------------------------------------------------- */

/* Set once by kfac_comm_init: a process belongs to one job (MPI_COMM_WORLD) for its
 * whole life, so the communicator is the process's, not a net's. */
static kfac_comm *world;

kfac_comm *kfac_comm_world(void)
{
    return world ? world : &single_comm;
}

/* the launcher's size variable: Open MPI's mpirun, or a PMI launcher (MPICH's hydra,
 * Slurm's srun --mpi=pmi2) */
static int launch_size(void)
{
    const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"};
    size_t i;
    for (i = 0; i < sizeof vars / sizeof vars[0]; ++i) {
        const char *v = getenv(vars[i]);
        if (v && atoi(v) > 0) return atoi(v);
    }
    return 1;
}

int kfac_comm_launched(void)
{
    return launch_size() > 1;
}

kfac_comm *kfac_comm_init(void)
{
    if (world || !kfac_comm_launched()) return kfac_comm_world();
#ifdef KFAC_MPI
    world = kfac_comm_mpi_create();
#else
    kfac_user_error("darknet-kfac: started as one of %d ranks (mpirun), but this build has no MPI: every rank would "
                    "train alone and write the same files; build with `make MPI=1` and launch "
                    "build/darknet-cpu-mpi/darknet (GPU: build/darknet-gpu-mpi/darknet)", launch_size());
#endif
    return world;
}
