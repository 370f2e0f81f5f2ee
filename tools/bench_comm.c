/* bench_comm: the time of darknet-kfac's collectives on host buffers (kfac_comm.h),
 * for the scaling model in BENCHMARKS.md ("Training across processes").
 *
 *   mpirun -np N build/bench_comm [REPEATS]
 *   mpirun -np N --mca btl self,tcp build/bench_comm     (the TCP path)
 *
 * For buffers of 1 float to 4M floats (16 MiB), the median over REPEATS (default 20)
 * of the ranks' mean time for one sum (all-reduce) and one broadcast from rank 0, each
 * after a barrier.  Rank 0 prints one line per size: bytes, seconds, and the bytes per
 * second of a ring all-reduce's traffic (2 (N-1)/N of the buffer per rank).
 *
 * Build: make MPI=1 build/bench_comm (the top Makefile). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kfac.h"
#include "kfac_comm.h"
#include "kfac_util.h"

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* median over reps of the ranks' mean seconds for op (0 sum, 1 broadcast) */
static double time_op(kfac_comm *c, float *buf, size_t n, int op, int reps)
{
    double *t = (double *)kfac_calloc((size_t)reps, sizeof(double));
    int r;
    for (r = 0; r < reps; ++r) {
        c->ops->barrier(c);
        const double t0 = kfac_now();
        if (op == 0) c->ops->sum(c, buf, n);
        else c->ops->broadcast(c, buf, n * sizeof(float), 0);
        double dt = kfac_now() - t0;
        c->ops->sum_double(c, &dt, 1);
        t[r] = dt;
    }
    qsort(t, (size_t)reps, sizeof(double), cmp_double);
    const double med = t[reps / 2] / c->size;
    free(t);
    return med;
}

int main(int argc, char **argv)
{
    const int reps = argc > 1 ? atoi(argv[1]) : 20;
    kfac_dist_init(-1);
    kfac_comm *c = kfac_comm_world();
    size_t n;
    if (reps < 1) {
        fprintf(stderr, "bench_comm: REPEATS must be >= 1\n");
        return 1;
    }
    float *buf = (float *)kfac_calloc((size_t)1 << 22, sizeof(float));
    printf("# %s; the mean over ranks of each rank's time, median of %d\n", c->description, reps);
    printf("# floats bytes all-reduce_s broadcast_s ring_all-reduce_bytes_per_s\n");
    for (n = 1; n <= ((size_t)1 << 22); n *= 4) {
        const double ts = time_op(c, buf, n, 0, reps), tb = time_op(c, buf, n, 1, reps);
        const double ring = 2.0 * (c->size - 1) / c->size * (double)n * sizeof(float);
        printf("%zu %zu %.3g %.3g %.3g\n", n, n * sizeof(float), ts, tb, ring / ts);
    }
    free(buf);
    return 0;
}
