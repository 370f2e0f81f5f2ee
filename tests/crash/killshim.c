/* killshim: an LD_PRELOAD library for tests/test_crash_save.sh that kills the process
 * with SIGKILL in the middle of writing a chosen file, as a crash or `kill -9` would.
 *
 *   KFAC_KILL_SUFFIX=.weights.tmp:.weights
 *                                   watch files whose names end in one of these
 *                                   (colon-separated), opened for writing
 *   KFAC_KILL_OPEN=N                the N-th such opening is the one (1: the first)
 *   KFAC_KILL_WRITES=W              kill after W fwrite calls to it (0: at the opening,
 *                                   before anything is written)
 *
 * Before the kill the stream is flushed, so the file on disk holds what was written so
 * far: the state a crash leaves once the kernel has taken the writes. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static FILE *watched;
static int opens;
static long writes;

static long env_long(const char *name, long dflt)
{
    const char *v = getenv(name);
    return v && *v ? strtol(v, NULL, 10) : dflt;
}

static int watched_name(const char *path, const char *mode)
{
    const char *s = getenv("KFAC_KILL_SUFFIX");
    const size_t n = strlen(path);
    if (!s || !strchr(mode, 'w')) return 0;
    while (*s) {
        size_t m = strcspn(s, ":");
        if (m && n >= m && strncmp(path + n - m, s, m) == 0) return 1;
        s += m + (s[m] == ':');
    }
    return 0;
}

FILE *fopen(const char *path, const char *mode)
{
    static FILE *(*real)(const char *, const char *);
    if (!real) real = (FILE * (*)(const char *, const char *)) dlsym(RTLD_NEXT, "fopen");
    FILE *f = real(path, mode);
    if (f && watched_name(path, mode) && ++opens == env_long("KFAC_KILL_OPEN", 1)) {
        if (env_long("KFAC_KILL_WRITES", 0) == 0) raise(SIGKILL);
        watched = f;
    }
    return f;
}

size_t fwrite(const void *p, size_t size, size_t n, FILE *f)
{
    static size_t (*real)(const void *, size_t, size_t, FILE *);
    if (!real) real = (size_t(*)(const void *, size_t, size_t, FILE *))dlsym(RTLD_NEXT, "fwrite");
    size_t r = real(p, size, n, f);
    if (f && f == watched && ++writes >= env_long("KFAC_KILL_WRITES", 0)) {
        fflush(f);
        raise(SIGKILL);
    }
    return r;
}
