/* replay: main() for a fuzz target built without libFuzzer (tests/test_fuzz_regress.sh):
 * runs LLVMFuzzerInitialize when the target has one, then every file named on the
 * command line through LLVMFuzzerTestOneInput, and prints `ok replay_<target>_<file>`
 * for each.  A file that crashes kills the process before its ok line. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

int main(int argc, char **argv)
{
    int i;
    if (argc < 3) {
        fprintf(stderr, "usage: %s TARGET-NAME FILE...\n", argv[0]);
        return 2;
    }
    if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
    for (i = 2; i < argc; ++i) {
        FILE *f = fopen(argv[i], "rb");
        if (!f) {
            printf("FAIL replay_%s: cannot open %s\n", argv[1], argv[i]);
            return 1;
        }
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        uint8_t *buf = (uint8_t *)malloc(n > 0 ? (size_t)n : 1);
        if (!buf || (n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n)) {
            printf("FAIL replay_%s: cannot read %s\n", argv[1], argv[i]);
            return 1;
        }
        fclose(f);
        printf("# replay_%s %s\n", argv[1], argv[i]);
        fflush(stdout);
        LLVMFuzzerTestOneInput(buf, (size_t)n);
        free(buf);
        const char *base = strrchr(argv[i], '/');
        printf("ok replay_%s_%s\n", argv[1], base ? base + 1 : argv[i]);
        fflush(stdout);
    }
    return 0;
}
