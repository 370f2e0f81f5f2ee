/* kt.h: the little test harness shared by tests/test_*.c (header only).
 *
 * Every check prints one line on stdout, `ok NAME` or `FAIL NAME: reason`, which
 * tests/run.sh counts; details of a failure (first mismatches) follow on lines that
 * start with two spaces.  A test program exits 1 when any of its checks failed.
 *
 *     int main(void) {
 *         network *net = kt_net("tests/cfg/x.cfg", 7);  // srand(7) first: fixed weights
 *         kt_batch(net, 1, 0);                          // batch 0 of data stream 1
 *         train_network_datum(net);
 *         kt_close("name", got, ref, n, atol, rtol);    // |got-ref| <= atol + rtol*|ref|
 *         return kt_exit();
 *     }
 *
 * Data never comes from rand(): Darknet and its loaders share that generator.  Batches
 * come from kt_rng, seeded by (stream, step), so batch k is the same in every process
 * and in every net, whatever ran before. */
#ifndef KT_H
#define KT_H

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "darknet.h"

static int kt_failures = 0;
static int kt_checks = 0;

static inline void kt_ok(const char *name)
{
    ++kt_checks;
    printf("ok %s\n", name);
    fflush(stdout);
}

static inline void kt_fail(const char *name, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline void kt_fail(const char *name, const char *fmt, ...)
{
    va_list ap;
    ++kt_checks;
    ++kt_failures;
    printf("FAIL %s: ", name);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
}

/* one check from a condition */
static inline int kt_check(const char *name, int cond, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static inline int kt_check(const char *name, int cond, const char *fmt, ...)
{
    if (cond) {
        kt_ok(name);
        return 1;
    }
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    kt_fail(name, "%s", buf);
    return 0;
}

static inline int kt_exit(void)
{
    if (kt_checks == 0) {
        printf("FAIL %s: no check ran\n", "harness");
        return 1;
    }
    return kt_failures ? 1 : 0;
}

/* Largest |x|, for tolerances scaled to a matrix's magnitude. */
static inline double kt_maxabs(const double *x, size_t n)
{
    double m = 0;
    size_t i;
    for (i = 0; i < n; ++i) if (fabs(x[i]) > m) m = fabs(x[i]);
    return m;
}

/* Passes when |got[i] - ref[i]| <= atol + rtol*|ref[i]| for every i (NaN fails).
 * Prints the first 5 mismatches.  Returns 1 on pass. */
static inline int kt_close_d(const char *name, const double *got, const double *ref, size_t n, double atol, double rtol)
{
    size_t i, bad = 0, worst = 0;
    double worst_ratio = 0;
    for (i = 0; i < n; ++i) {
        double err = fabs(got[i] - ref[i]), tol = atol + rtol * fabs(ref[i]);
        if (!(err <= tol)) {
            if (bad < 5) printf("  %s[%zu]: got %.9g ref %.9g |diff| %.3g > tol %.3g\n", name, i, got[i], ref[i], err, tol);
            ++bad;
        }
        double r = tol > 0 ? err / tol : err;
        if (!(r <= worst_ratio)) { worst_ratio = r; worst = i; }
    }
    if (bad) {
        kt_fail(name, "%zu of %zu values outside atol %.3g + rtol %.3g*|ref| (worst at %zu: got %.9g ref %.9g)",
                bad, n, atol, rtol, worst, got[worst], ref[worst]);
        return 0;
    }
    kt_ok(name);
    return 1;
}

static inline int kt_close_f(const char *name, const float *got, const double *ref, size_t n, double atol, double rtol)
{
    double *g = (double *)malloc((n ? n : 1) * sizeof(double));
    size_t i;
    for (i = 0; i < n; ++i) g[i] = got[i];
    int r = kt_close_d(name, g, ref, n, atol, rtol);
    free(g);
    return r;
}

/* Bit-for-bit equality of two float arrays; prints the first differences. */
static inline int kt_same_bits(const char *what, const float *a, const float *b, size_t n, int quiet_ok)
{
    if (n == 0 || memcmp(a, b, n * sizeof(float)) == 0) return 1;
    size_t i, shown = 0, diff = 0;
    for (i = 0; i < n; ++i) {
        if (memcmp(&a[i], &b[i], sizeof(float)) != 0) {
            if (shown++ < 5) printf("  %s[%zu]: %.9g vs %.9g\n", what, i, a[i], b[i]);
            ++diff;
        }
    }
    if (!quiet_ok) printf("  %s: %zu of %zu values differ\n", what, diff, n);
    return 0;
}

/* Solves X x = b in place (X is n x n row-major, destroyed; b becomes x).
 * Returns 0, or -1 when X is singular to double precision. */
static inline int kt_solve_dense(double *X, double *b, int n)
{
    int i, j, k;
    for (k = 0; k < n; ++k) {
        int p = k;
        for (i = k + 1; i < n; ++i) if (fabs(X[(size_t)i * n + k]) > fabs(X[(size_t)p * n + k])) p = i;
        if (X[(size_t)p * n + k] == 0) return -1;
        if (p != k) {
            for (j = 0; j < n; ++j) {
                double t = X[(size_t)k * n + j]; X[(size_t)k * n + j] = X[(size_t)p * n + j]; X[(size_t)p * n + j] = t;
            }
            double t = b[k]; b[k] = b[p]; b[p] = t;
        }
        for (i = k + 1; i < n; ++i) {
            double f = X[(size_t)i * n + k] / X[(size_t)k * n + k];
            if (f == 0) continue;
            for (j = k; j < n; ++j) X[(size_t)i * n + j] -= f * X[(size_t)k * n + j];
            b[i] -= f * b[k];
        }
    }
    for (i = n - 1; i >= 0; --i) {
        double s = b[i];
        for (j = i + 1; j < n; ++j) s -= X[(size_t)i * n + j] * b[j];
        b[i] = s / X[(size_t)i * n + i];
    }
    return 0;
}

/* ---- data ------------------------------------------------------------------------- */

typedef struct { uint64_t s; } kt_rng;

static inline kt_rng kt_rng_make(uint64_t stream, uint64_t step)
{
    kt_rng r;
    /* splitmix64 of (stream, step): distinct streams for distinct pairs */
    uint64_t z = stream * 0x9E3779B97F4A7C15ULL + step * 0xD1B54A32D192ED03ULL + 0x632BE59BD9B4E019ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    r.s = (z ^ (z >> 31)) | 1;
    return r;
}

static inline double kt_uniform(kt_rng *r) /* [0, 1) */
{
    uint64_t x = r->s;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    r->s = x;
    return (double)((x * 0x2545F4914F6CDD1DULL) >> 11) * (1.0 / 9007199254740992.0);
}

/* Fills net->input (uniform in [-1, 1)) and net->truth (one-hot, random class) with
 * batch `step` of data stream `stream`. */
static inline void kt_batch(network *net, uint64_t stream, uint64_t step)
{
    kt_rng r = kt_rng_make(stream, step);
    int i, b;
    for (i = 0; i < net->inputs * net->batch; ++i) net->input[i] = (float)(2 * kt_uniform(&r) - 1);
    memset(net->truth, 0, (size_t)net->truths * net->batch * sizeof(float));
    for (b = 0; b < net->batch; ++b) {
        int y = (int)(kt_uniform(&r) * net->truths);
        if (y >= net->truths) y = net->truths - 1;
        net->truth[(size_t)b * net->truths + y] = 1;
    }
}

/* Fills net->input (uniform in [0, 1)) and net->truth with one box per image
 * (x, y in [0.3, 0.7), w, h in [0.2, 0.5), class 0 or 1) for a [yolo] net: batch
 * `step` of data stream `stream`. */
static inline void kt_yolo_batch(network *net, uint64_t stream, uint64_t step)
{
    kt_rng r = kt_rng_make(stream, step);
    int i, b;
    for (i = 0; i < net->inputs * net->batch; ++i) net->input[i] = (float)kt_uniform(&r);
    memset(net->truth, 0, (size_t)net->truths * net->batch * sizeof(float));
    for (b = 0; b < net->batch; ++b) {
        float *t = net->truth + (size_t)b * net->truths;
        t[0] = (float)(0.3 + 0.4 * kt_uniform(&r));
        t[1] = (float)(0.3 + 0.4 * kt_uniform(&r));
        t[2] = (float)(0.2 + 0.3 * kt_uniform(&r));
        t[3] = (float)(0.2 + 0.3 * kt_uniform(&r));
        t[4] = (float)(kt_uniform(&r) < 0.5 ? 0 : 1);
    }
}

/* stdout into a temporary file from kt_stdout_begin to kt_stdout_lines, which puts it
 * back and counts the lines that start with `prefix` (a [yolo] head's "Region ") */
typedef struct {
    FILE *tmp;
    int saved;
} kt_stdout;

static inline kt_stdout kt_stdout_begin(void)
{
    kt_stdout c;
    c.tmp = tmpfile();
    fflush(stdout);
    c.saved = dup(1);
    dup2(fileno(c.tmp), 1);
    return c;
}

static inline int kt_stdout_lines(kt_stdout c, const char *prefix)
{
    char line[512];
    int count = 0;
    fflush(stdout);
    dup2(c.saved, 1);
    close(c.saved);
    rewind(c.tmp);
    while (fgets(line, sizeof line, c.tmp))
        if (!strncmp(line, prefix, strlen(prefix))) ++count;
    fclose(c.tmp);
    return count;
}

/* A network from a cfg, weights initialised after srand(seed) (Darknet uses rand()). */
static inline network *kt_net(const char *cfg, unsigned seed)
{
    srand(seed);
    network *net = parse_network_cfg((char *)cfg);
    return net;
}

/* Writes `out`: the cfg `base` followed by `extra` (e.g. a [kfac] section), so that
 * nets with and without K-FAC come from one cfg file.  Returns out. */
static inline const char *kt_cfg_with(const char *out, const char *base, const char *extra)
{
    FILE *in = fopen(base, "rb"), *o = fopen(out, "wb");
    char buf[4096];
    size_t n;
    if (!in || !o) {
        printf("FAIL harness: cannot read %s or write %s\n", base, out);
        exit(1);
    }
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, n, o);
    fprintf(o, "\n%s\n", extra);
    fclose(in);
    if (fclose(o) != 0) {
        printf("FAIL harness: cannot write %s\n", out);
        exit(1);
    }
    return out;
}

/* One update = subdivisions calls of train_network_datum on consecutive batches
 * (batch index = update*subdivisions + call). */
static inline void kt_train_updates(network *net, uint64_t stream, int first_update, int n_updates)
{
    int u, s;
    for (u = first_update; u < first_update + n_updates; ++u) {
        for (s = 0; s < net->subdivisions; ++s) {
            kt_batch(net, stream, (uint64_t)u * net->subdivisions + s);
            train_network_datum(net);
        }
    }
}

/* Number of trainable values of layer l per buffer (Darknet's own counts). */
static inline size_t kt_nweights(const layer *l)
{
    return l->type == CONNECTED ? (size_t)l->inputs * l->outputs : (size_t)l->nweights;
}

/* Bit-for-bit equality of every parameter and batch-norm statistic of two nets of
 * the same cfg; prints what differs.  Returns 1 when identical. */
static inline int kt_nets_same_bits(const network *a, const network *b)
{
    int i, same = 1;
    char what[64];
    for (i = 0; i < a->n; ++i) {
        const layer *x = &a->layers[i], *y = &b->layers[i];
        if (x->type != CONVOLUTIONAL && x->type != CONNECTED) continue;
        size_t nb = x->type == CONNECTED ? (size_t)x->outputs : (size_t)x->n;
        snprintf(what, sizeof what, "layer %d weights", i);
        same &= kt_same_bits(what, x->weights, y->weights, kt_nweights(x), 0);
        snprintf(what, sizeof what, "layer %d biases", i);
        same &= kt_same_bits(what, x->biases, y->biases, nb, 0);
        if (x->batch_normalize) {
            snprintf(what, sizeof what, "layer %d scales", i);
            same &= kt_same_bits(what, x->scales, y->scales, nb, 0);
            snprintf(what, sizeof what, "layer %d rolling_mean", i);
            same &= kt_same_bits(what, x->rolling_mean, y->rolling_mean, nb, 0);
            snprintf(what, sizeof what, "layer %d rolling_variance", i);
            same &= kt_same_bits(what, x->rolling_variance, y->rolling_variance, nb, 0);
        }
    }
    return same;
}

#endif
