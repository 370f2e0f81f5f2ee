/* fuzz_input.h: the fuzz targets' one helper (header only).  Darknet's readers take a
 * file name, so each input is written to a file of this process under $TMPDIR (or
 * /tmp) first; a failed write is the harness's fault and aborts. */
#ifndef FUZZ_INPUT_H
#define FUZZ_INPUT_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* Writes data to <TMPDIR>/kfac-fuzz-<pid><suffix> and returns that path (a static
 * buffer, the same for every call of one process). */
static const char *fuzz_write_input(const char *suffix, const uint8_t *data, size_t size)
{
    static char path[512];
    if (!path[0]) {
        const char *tmp = getenv("TMPDIR");
        snprintf(path, sizeof path, "%s/kfac-fuzz-%d%s", tmp && *tmp ? tmp : "/tmp", (int)getpid(), suffix);
    }
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0) {
        perror(path);
        abort();
    }
    return path;
}

#endif
