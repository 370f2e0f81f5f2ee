/* test_lean_fisher: the true-Fisher pass's own backward (kfac_fisher_backward: no
 * weight gradients, OpenBLAS for the deltas, nothing below the lowest covered layer)
 * gives the statistics that Darknet's full backward gives.
 *
 * Three nets from tests/cfg/lean.cfg (groups, stride, 1x1 into a shortcut, batch
 * norm, layers on SGD below and between covered ones) and one seed:
 *   sgd    no [kfac]
 *   lean   [kfac] true Fisher, identity preconditioner, the lean pass (default)
 *   full   the same through Darknet's full backward (the reference)
 * trained on the same batches.  With the identity preconditioner the weights do not
 * depend on G, so the two K-FAC nets see the same weights at every step: their A
 * factors must be equal bit for bit, their G factors equal to rounding, and both nets
 * SGD's weights bit for bit (the lean pass leaves the real step alone). */
#include "kt.h"
#include "kfac.h"

#define UPDATES 4 /* statistics on every update, 2 calls each: 8 sampled backwards */

static network *net_with(const char *extra, const char *out, int lean)
{
    network *net = kt_net(extra ? kt_cfg_with(out, "tests/cfg/lean.cfg", extra) : "tests/cfg/lean.cfg", 5);
    if (extra) {
        kfac_network_set_identity(net, 1);
        kfac_network_set_lean_fisher(net, lean);
    }
    kt_train_updates(net, 33, 0, UPDATES);
    return net;
}

int main(void)
{
    const char *sec = "[kfac]\nstats_interval=1\ninverse_interval=1\nfisher=true\n";
    network *sgd = net_with(NULL, NULL, 0);
    network *lean = net_with(sec, "build/tests/lean-lean.cfg", 1);
    network *full = net_with(sec, "build/tests/lean-full.cfg", 0);
    const int covered[] = {1, 2, 6, 7};
    char nm[96];
    int c;

    kt_check("lean_pass_identity_is_sgd_bit_for_bit", kt_nets_same_bits(lean, sgd), "parameters differ from SGD's (listed above)");
    kt_check("full_pass_identity_is_sgd_bit_for_bit", kt_nets_same_bits(full, sgd), "parameters differ from SGD's (listed above)");
    for (c = 0; c < 4; ++c) {
        const float *Al, *Gl, *Af, *Gf;
        int g, k, m, i;
        int ok = kfac_layer_factors(lean, covered[c], &Al, &Gl, &g, &k, &m) &&
                 kfac_layer_factors(full, covered[c], &Af, &Gf, &g, &k, &m);
        snprintf(nm, sizeof nm, "L%d_covered", covered[c]);
        if (!kt_check(nm, ok, "layer %d has no K-FAC state", covered[c])) continue;
        snprintf(nm, sizeof nm, "L%d_A_lean_equals_full_bit_for_bit", covered[c]);
        kt_check(nm, kt_same_bits("A", Al, Af, (size_t)g * k * k, 0), "A differs (listed above)");

        size_t n = (size_t)g * m * m;
        double *ref = (double *)malloc(n * sizeof(double));
        for (i = 0; i < (int)n; ++i) ref[i] = Gf[i];
        double scale = kt_maxabs(ref, n);
        double worst = 0;
        for (i = 0; i < (int)n; ++i) worst = fmax(worst, fabs(Gl[i] - ref[i]));
        printf("  layer %d: max |G_lean - G_full| = %.3g of max |G| %.3g\n", covered[c], worst, scale);
        snprintf(nm, sizeof nm, "L%d_G_is_not_zero", covered[c]);
        kt_check(nm, scale > 0, "G of layer %d is all zeros: the comparison below would prove nothing", covered[c]);
        /* The deltas differ only in the order of float sums (OpenBLAS against Darknet's
         * gemm, a few dozen terms each, then a few layers): ~1e-7 relative, so 1e-5 of
         * G's largest entry is ample, while a missing term (batch norm's backward, the
         * 1x1 overwrite, a group's offset) changes G at the 1e-1 level. */
        snprintf(nm, sizeof nm, "L%d_G_lean_equals_full", covered[c]);
        kt_close_f(nm, Gl, ref, n, 1e-5 * scale, 0);
        free(ref);
    }
    free_network(sgd);
    free_network(lean);
    free_network(full);
    return kt_exit();
}
