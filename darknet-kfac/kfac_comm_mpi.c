/* darknet-kfac: collectives on host buffers over MPI (MPI=1 builds).  The only file
 * with MPI_* calls; everything above it calls kfac_comm.h.
 *
 * The job's life: MPI_Init_thread when the process starts (kfac_comm_init, from
 * Darknet's main or a tool's), MPI_COMM_WORLD for every collective, and at exit:
 *
 *   - exit status 0 on every rank (training ended): MPI_Finalize.  A rank waits up to
 *     KFAC_COMM_EXIT_WAIT seconds for the others (rank 0 may still be writing the last
 *     save);
 *   - any other status, or a rank that ends while the others still train (Darknet's
 *     file_error exits with status 0 in mid-run): MPI_Abort, which makes mpirun end
 *     every rank.  Without it the others would wait in their next collective forever.
 *
 * A rank killed by a signal ends the job the same way: mpirun sees it and ends the
 * others (Open MPI's default). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <mpi.h>
#include "kfac_comm.h"
#include "kfac_util.h"

/* seconds a rank that ended normally waits for the others before it ends the job */
#define KFAC_COMM_EXIT_WAIT 120
/* the largest count of one MPI call (MPI counts are int) */
#define KFAC_COMM_CHUNK ((size_t)1 << 30)

/* in place, n values of `size` bytes, in calls of at most KFAC_COMM_CHUNK values */
static void sum_in_chunks(void *x, size_t n, size_t size, MPI_Datatype type)
{
    size_t off;
    for (off = 0; off < n; off += KFAC_COMM_CHUNK) {
        const size_t m = n - off < KFAC_COMM_CHUNK ? n - off : KFAC_COMM_CHUNK;
        MPI_Allreduce(MPI_IN_PLACE, (char *)x + off * size, (int)m, type, MPI_SUM, MPI_COMM_WORLD);
    }
}

static void mpi_sum(kfac_comm *c, float *x, size_t n)
{
    (void)c;
    sum_in_chunks(x, n, sizeof *x, MPI_FLOAT);
}

static void mpi_sum_double(kfac_comm *c, double *x, size_t n)
{
    (void)c;
    sum_in_chunks(x, n, sizeof *x, MPI_DOUBLE);
}

static void mpi_broadcast(kfac_comm *c, void *p, size_t bytes, int root)
{
    size_t off;
    (void)c;
    for (off = 0; off < bytes; off += KFAC_COMM_CHUNK) {
        const size_t m = bytes - off < KFAC_COMM_CHUNK ? bytes - off : KFAC_COMM_CHUNK;
        MPI_Bcast((char *)p + off, (int)m, MPI_BYTE, root, MPI_COMM_WORLD);
    }
}

static void mpi_allgather(kfac_comm *c, const void *mine, void *all, size_t bytes)
{
    (void)c;
    KFAC_ASSERT(bytes <= INT_MAX);
    MPI_Allgather(mine, (int)bytes, MPI_BYTE, all, (int)bytes, MPI_BYTE, MPI_COMM_WORLD);
}

static void mpi_barrier(kfac_comm *c)
{
    (void)c;
    MPI_Barrier(MPI_COMM_WORLD);
}

static const kfac_comm_ops mpi_ops = {
    .name = "mpi",
    .sum = mpi_sum,
    .sum_double = mpi_sum_double,
    .broadcast = mpi_broadcast,
    .allgather = mpi_allgather,
    .barrier = mpi_barrier,
    /* device operations: kfac_comm_nccl_attach (GPU builds) */
};

/* on_exit handler (see the top of this file) */
static void mpi_at_exit(int status, void *arg)
{
    kfac_comm *c = (kfac_comm *)arg;
    fflush(stdout);
    fflush(stderr);
    if (status == 0) {
        MPI_Request req;
        int done = 0;
        double t0 = MPI_Wtime();
        MPI_Ibarrier(MPI_COMM_WORLD, &req);
        while (!done && MPI_Wtime() - t0 < KFAC_COMM_EXIT_WAIT) {
            MPI_Test(&req, &done, MPI_STATUS_IGNORE);
            if (!done) usleep(1000);
        }
        if (done) {
            MPI_Finalize();
            return;
        }
        fprintf(stderr, "darknet-kfac: rank %d ended (exit status 0) while another rank did not end within %d s: "
                "ending the job\n", c->rank, KFAC_COMM_EXIT_WAIT);
    }
    MPI_Abort(MPI_COMM_WORLD, status ? status : 1);
}

kfac_comm *kfac_comm_mpi_create(void)
{
    int provided, len, local_rank, local_size;
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    MPI_Comm local;
    MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided);
    if (provided < MPI_THREAD_SERIALIZED)
        kfac_user_error("darknet-kfac: the MPI library gives thread level %d, darknet-kfac needs MPI_THREAD_SERIALIZED "
                        "(%d)", provided, MPI_THREAD_SERIALIZED);
    kfac_comm *c = (kfac_comm *)kfac_calloc(1, sizeof *c);
    c->ops = &mpi_ops;
    MPI_Comm_rank(MPI_COMM_WORLD, &c->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &c->size);
    /* the ranks on this machine (shared memory), for the choice of GPU */
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &local);
    MPI_Comm_rank(local, &local_rank);
    MPI_Comm_size(local, &local_size);
    MPI_Comm_free(&local);
    c->local_rank = local_rank;
    c->local_size = local_size;
    MPI_Get_library_version(version, &len);
    version[strcspn(version, ",\n")] = 0; /* "Open MPI v4.1.4": the first item */
    snprintf(c->description, sizeof c->description, "%.100s, %d ranks", version, c->size);
    if (on_exit(mpi_at_exit, c) != 0) kfac_die(__FILE__, __LINE__, "on_exit failed");
    return c;
}
