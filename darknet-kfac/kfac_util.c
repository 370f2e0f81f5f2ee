/* darknet-kfac: errors, logging, checked allocation, finiteness, the sampler RNG. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <stdio.h>
#include "kfac_util.h"

void kfac_die(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "darknet-kfac: %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

void kfac_user_error(const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

void kfac_log(const char *fmt, ...)
{
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    const int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* one fprintf, one write: the lines of several processes (mpirun) stay whole */
    fprintf(stderr, "K-FAC: %s%s\n", line, n >= (int)sizeof line ? " [...]" : "");
}

void *kfac_calloc(size_t n, size_t size)
{
    if (n == 0 || size == 0) return NULL;
    if (n > SIZE_MAX / size) kfac_die(__FILE__, __LINE__, "allocation of %zu x %zu bytes overflows", n, size);
    void *p = calloc(n, size);
    if (!p) kfac_die(__FILE__, __LINE__, "out of memory allocating %zu bytes", n * size);
    return p;
}

/* Bit test rather than isfinite(): Darknet builds with -Ofast, where the compiler may
 * assume no NaN exists and fold isfinite() to 1. */
int kfac_all_finite(const float *x, size_t n)
{
    size_t i;
    for (i = 0; i < n; ++i) {
        uint32_t u;
        memcpy(&u, &x[i], sizeof u);
        if ((u & 0x7f800000u) == 0x7f800000u) return 0;
    }
    return 1;
}

double kfac_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

uint64_t kfac_rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

float kfac_rng_uniform(uint64_t *s)
{
    /* top 24 bits: every value exactly representable, strictly below 1 */
    return (float)(kfac_rng_next(s) >> 40) * (1.0f / 16777216.0f);
}
