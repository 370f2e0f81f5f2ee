/* fuzz_state: libFuzzer target for the state-file reader.  The input is a
 * <weights>.kfac file offered to a [kfac] net of tests/fuzz/state.cfg (conv with
 * groups, batch norm, connected layers); kfac_state_check (darknet-kfac/kfac_state.c)
 * must accept it or give a message, never crash, leak, read out of bounds or
 * allocate from a size it read, and the net must not change.
 *
 * KFAC_FUZZ_WRITE_SEED=<path>: trains the net two updates, saves <path> and
 * <path>.kfac (the valid seed of tests/fuzz/corpus/state) and exits.
 *
 * Built as fuzz_cfg.c is (tests/fuzz/run.sh, tests/test_fuzz_regress.sh); run from
 * the repository root, or with KFAC_FUZZ_CFG naming state.cfg. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "darknet.h"
#include "kfac_internal.h"
#include "fuzz_input.h"

static network *net;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *cfg = getenv("KFAC_FUZZ_CFG");
    const char *seed = getenv("KFAC_FUZZ_WRITE_SEED");
    int i, u;
    (void)argc;
    (void)argv;
    srand(1);
    net = parse_network_cfg((char *)(cfg && *cfg ? cfg : "tests/fuzz/state.cfg"));
    if (seed && *seed) {
        for (u = 0; u < 2; ++u) {
            for (i = 0; i < net->inputs * net->batch; ++i) net->input[i] = (float)((i * 7919 + u * 104729) % 2001) / 1000.0f - 1.0f;
            memset(net->truth, 0, (size_t)net->truths * net->batch * sizeof(float));
            for (i = 0; i < net->batch; ++i) net->truth[i * net->truths + (i + u) % net->truths] = 1;
            train_network_datum(net);
        }
        save_weights(net, (char *)seed);
        exit(0);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[1024];
    const char *path = fuzz_write_input(".kfac", data, size);
    const int step = kfac_network_step(net);
    kfac_state_check(net, path, err, sizeof err);
    if (kfac_network_step(net) != step) abort(); /* a check must never apply the file */
    return 0;
}
