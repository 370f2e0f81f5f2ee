/* fuzz_cfg: libFuzzer target for the [kfac] section parser, reached as Darknet
 * reaches it: the input is a cfg file, read by Darknet's own read_cfg and handed to
 * kfac_config_parse (darknet-kfac/kfac_config.c), which must accept it or give a
 * message, never crash, leak or read out of bounds; everything is freed afterwards.
 *
 * Built by tests/fuzz/run.sh (make fuzz) with clang's libFuzzer, ASan and UBSan, and
 * by tests/test_fuzz_regress.sh with tests/fuzz/replay.c as main, which replays the
 * seed corpus and every input that once crashed (tests/fuzz/regress/cfg). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "darknet.h"
#include "kfac_internal.h"
#include "fuzz_input.h"

/* parser.c's private section type and its two functions (non-static there) */
typedef struct {
    char *type;
    list *options;
} fuzz_section;
list *read_cfg(char *filename);
void free_section(fuzz_section *s);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_write_input(".cfg", data, size);
    list *sections = read_cfg((char *)path);
    kfac_config *c = NULL;
    char err[1024];
    if (kfac_config_parse(path, sections, &c, err, sizeof err) == 0 && c) {
        kfac_config_free(c);
        free(c);
    }
    node *n;
    for (n = sections->front; n; n = n->next) free_section((fuzz_section *)n->val);
    free_list(sections);
    return 0;
}
