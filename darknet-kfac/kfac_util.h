/* darknet-kfac: helpers every other file may call (kfac_util.c): errors, logging,
 * checked allocation, the finiteness test, the clock and the sampler's generator.
 * They call nothing of darknet-kfac's own. */
#ifndef KFAC_UTIL_H
#define KFAC_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Misuse or an impossible state: stop with expression, file and line, in every build. */
#define KFAC_ASSERT(cond)                                                        \
    do {                                                                         \
        if (!(cond)) kfac_die(__FILE__, __LINE__, "assertion failed: %s", #cond); \
    } while (0)

void kfac_die(const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));
/* A user's mistake (cfg, state file): one line to stderr, exit status 1. */
void kfac_user_error(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
/* One line to stderr, prefixed "K-FAC: ". */
void kfac_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* calloc of n*size bytes with the product checked for overflow; dies on failure.
 * Returns NULL for n == 0 or size == 0. */
void *kfac_calloc(size_t n, size_t size);
/* 1 when no element is a NaN or an infinity (a bit test: -Ofast may fold isfinite) */
int kfac_all_finite(const float *x, size_t n);
/* seconds on a monotonic clock */
double kfac_now(void);

/* xorshift64*: the true-Fisher sampler's own generator, saved with the state so a
 * resumed run draws the same labels; Darknet's rand() is left alone. */
uint64_t kfac_rng_next(uint64_t *s);
float kfac_rng_uniform(uint64_t *s); /* in [0, 1) */

#endif
