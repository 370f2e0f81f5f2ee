/* bench_threads: seconds per call of the CPU backend's heavy operations on factors of
 * a given size, under whatever OpenBLAS thread setting the environment gives; what
 * tools/bench_threads.sh runs with 1 thread, every core, and the backend's own choice
 * (OPENBLAS_NUM_THREADS unset), on an idle and on a loaded CPU.
 *
 *   bench_threads N [SECONDS]     one line: N, then seconds per call of
 *     eigh            ssyevd of an N x N factor (an inverse refresh's share)
 *     inverse         the damped inverse from that decomposition
 *     precondition    Ginv D Ainv with a 64 x 64 G (D is 64 x N)
 *     capture         an A factor product: N x N += P P^T, P N x 4096 (a conv layer's
 *                     patches of a few images)
 * each repeated for about SECONDS (default 1) and the median call kept.
 *
 * Build: `make build/bench_threads` (the top Makefile). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kfac_backend.h"
#include "kfac_util.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* a deterministic value in [-1, 1) */
static float val(size_t i)
{
    uint64_t x = i * 0x9E3779B97F4A7C15ULL + 1;
    x ^= x >> 29;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 32;
    return (float)((double)(x >> 11) / 9007199254740992.0 * 2 - 1);
}

typedef struct {
    kfac_backend *b;
    int n;
    float *X, *E, *d, *inv, *G, *D, *tmp, *P, *patches, *acc;
    float lambda;
} bench;

enum { OP_EIGH, OP_INVERSE, OP_PRECOND, OP_CAPTURE, NOPS };

static void run_op(bench *s, int op)
{
    kfac_shape sh = {CONNECTED, 1, s->n, s->n, 64, 0, 1};
    layer l;
    switch (op) {
    case OP_EIGH:
        s->b->ops->eigh(s->b, s->X, s->n, 1, s->E, s->d);
        break;
    case OP_INVERSE:
        s->b->ops->damped_inverse(s->b, s->E, s->d, s->n, 1, &s->lambda, s->inv);
        break;
    case OP_PRECOND:
        s->b->ops->precondition(s->b, &sh, s->G, s->inv, s->D, s->tmp, s->P);
        break;
    case OP_CAPTURE:
        /* a connected layer's A product over 4096 inputs: K = n, batch 4096 */
        memset(&l, 0, sizeof l);
        l.type = CONNECTED;
        l.batch = 4096;
        l.inputs = s->n;
        s->b->ops->capture_A(s->b, &sh, &l, s->patches, s->acc);
        break;
    }
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s N [SECONDS]\n", argv[0]);
        return 2;
    }
    bench s = {0};
    s.n = atoi(argv[1]);
    double budget = argc > 2 ? atof(argv[2]) : 1.0;
    if (s.n < 1 || budget <= 0) {
        fprintf(stderr, "%s: N must be >= 1 and SECONDS > 0\n", argv[0]);
        return 2;
    }
    const size_t n = (size_t)s.n, nn = n * n;
    size_t i, j;
    s.b = kfac_backend_cpu_create(1);
    s.X = s.b->ops->alloc(s.b, nn);
    s.E = s.b->ops->alloc(s.b, nn);
    s.d = s.b->ops->alloc(s.b, n);
    s.inv = s.b->ops->alloc(s.b, nn);
    s.G = s.b->ops->alloc(s.b, 64 * 64);
    s.D = s.b->ops->alloc(s.b, 64 * n);
    s.tmp = s.b->ops->alloc(s.b, 64 * n);
    s.P = s.b->ops->alloc(s.b, 64 * n);
    s.patches = s.b->ops->alloc(s.b, 4096 * n);
    s.acc = s.b->ops->alloc(s.b, nn);
    s.lambda = 0.1f;
    /* X = R R^T / n + I: symmetric positive definite, like a damped factor */
    float *R = (float *)kfac_calloc(nn, sizeof(float));
    for (i = 0; i < nn; ++i) R[i] = val(i);
    for (i = 0; i < n; ++i)
        for (j = 0; j <= i; ++j) {
            double acc = 0;
            size_t k;
            for (k = 0; k < n; ++k) acc += (double)R[i * n + k] * R[j * n + k];
            s.X[i * n + j] = s.X[j * n + i] = (float)(acc / n + (i == j));
        }
    free(R);
    for (i = 0; i < 64 * 64; ++i) s.G[i] = val(i + 7);
    for (i = 0; i < 64 * n; ++i) s.D[i] = val(i + 11);
    for (i = 0; i < 4096 * n; ++i) s.patches[i] = val(i + 13);
    s.b->ops->eigh(s.b, s.X, s.n, 1, s.E, s.d); /* a decomposition for the inverse */

    printf("%d", s.n);
    int op;
    for (op = 0; op < NOPS; ++op) {
        double t[1000];
        int reps = 0;
        double start = kfac_now();
        while (reps < 1000 && (reps < 3 || kfac_now() - start < budget)) {
            double t0 = kfac_now();
            run_op(&s, op);
            t[reps++] = kfac_now() - t0;
        }
        qsort(t, (size_t)reps, sizeof t[0], cmp_double);
        printf(" %.6f", t[reps / 2]);
    }
    printf("\n");
    float *bufs[] = {s.X, s.E, s.d, s.inv, s.G, s.D, s.tmp, s.P, s.patches, s.acc};
    for (i = 0; i < sizeof bufs / sizeof bufs[0]; ++i) s.b->ops->release(s.b, bufs[i]);
    s.b->ops->destroy(s.b);
    return 0;
}
