/* test_identity: with the preconditioner replaced by the identity, K-FAC is Darknet's
 * SGD bit for bit, and the true-Fisher pass changes nothing but the statistics.
 *
 * Nets from one cfg (tests/cfg/small.cfg: batch norm, subdivisions, momentum,
 * weight decay, burn_in, steps policy) and one seed:
 *   sgd        no [kfac]
 *   true_id    [kfac] fisher=true,      kfac_network_set_identity(net, 1)
 *   emp_id     [kfac] fisher=empirical, kfac_network_set_identity(net, 1)
 *   kfac       [kfac] fisher=true, the real preconditioner (the control)
 * all trained on the same batches for more updates than the statistics and inverse
 * intervals.  The identity nets must end with exactly SGD's weights, biases, scales
 * and rolling statistics: the snapshot/write-back integration adds exact zeros, and
 * the true-Fisher pass (an extra backward with the update buffers redirected, then
 * every delta restored) leaves the real step alone.  Their A factors must be equal
 * (same inputs) and their G factors different (sampled vs data labels).  The real
 * preconditioner must move the weights away from SGD's: otherwise the comparison
 * above would prove nothing.
 *
 * The same for tests/cfg/layers.cfg (shortcut, activation, route, dropout, maxpool,
 * poly policy): SGD and the identity preconditioner with the true-Fisher
 * pass, bit for bit.  Dropout draws from rand(), so rand() is seeded before every
 * call in both nets (K-FAC's sampler has its own generator). */
#include "kt.h"
#include "kfac.h"

#define UPDATES 7 /* > stats_interval 1 and inverse_interval 2; past burn_in and both steps */

static double rel_diff(const float *a, const float *b, size_t n)
{
    double d = 0, s = 0;
    size_t i;
    for (i = 0; i < n; ++i) {
        d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        s += (double)b[i] * b[i];
    }
    return s > 0 ? sqrt(d / s) : (d > 0 ? INFINITY : 0);
}

static void many_layer_types(void)
{
    const char *base = "tests/cfg/layers.cfg";
    const char *cfg = kt_cfg_with("build/tests/layers-true.cfg", base, "[kfac]\nstats_interval=1\ninverse_interval=2\n");
    network *nets[2] = {kt_net(base, 6), kt_net(cfg, 6)};
    int u, s, n;
    kfac_network_set_identity(nets[1], 1);
    for (u = 0; u < UPDATES; ++u)
        for (s = 0; s < nets[0]->subdivisions; ++s)
            for (n = 0; n < 2; ++n) {
                srand(1000 + 10 * u + s);
                kt_batch(nets[n], 22, (uint64_t)u * nets[n]->subdivisions + s);
                train_network_datum(nets[n]);
            }
    kt_check("layers_cfg_kfac_ran", kfac_network_step(nets[1]) == UPDATES, "K-FAC step %d", kfac_network_step(nets[1]));
    kt_check("layers_cfg_identity_true_fisher_is_sgd_bit_for_bit", kt_nets_same_bits(nets[0], nets[1]),
             "parameters or statistics differ from SGD's (listed above)");
    free_network(nets[0]);
    free_network(nets[1]);
}

int main(void)
{
    const char *base = "tests/cfg/small.cfg";
    const char *kfac_common = "stats_interval=1\ninverse_interval=2\n";
    char sec[256];
    snprintf(sec, sizeof sec, "[kfac]\n%sfisher=true\n", kfac_common);
    const char *cfg_true = kt_cfg_with("build/tests/identity-true.cfg", base, sec);
    snprintf(sec, sizeof sec, "[kfac]\n%sfisher=empirical\n", kfac_common);
    const char *cfg_emp = kt_cfg_with("build/tests/identity-empirical.cfg", base, sec);

    network *sgd = kt_net(base, 5);
    network *true_id = kt_net(cfg_true, 5);
    network *emp_id = kt_net(cfg_emp, 5);
    network *kfac = kt_net(cfg_true, 5);
    kfac_network_set_identity(true_id, 1);
    kfac_network_set_identity(emp_id, 1);

    kt_check("same_initial_weights", kt_nets_same_bits(sgd, true_id) && kt_nets_same_bits(sgd, kfac),
             "srand(5) before each parse should give the same weights");

    kt_train_updates(sgd, 21, 0, UPDATES);
    kt_train_updates(true_id, 21, 0, UPDATES);
    kt_train_updates(emp_id, 21, 0, UPDATES);
    kt_train_updates(kfac, 21, 0, UPDATES);

    kt_check("kfac_ran_every_update", kfac_network_step(true_id) == UPDATES && kfac_network_step(emp_id) == UPDATES &&
             kfac_network_step(kfac) == UPDATES,
             "K-FAC steps %d %d %d, expected %d", kfac_network_step(true_id), kfac_network_step(emp_id),
             kfac_network_step(kfac), UPDATES);

    kt_check("identity_true_fisher_is_sgd_bit_for_bit", kt_nets_same_bits(true_id, sgd),
             "weights, biases, scales or rolling statistics differ from SGD's (listed above)");
    kt_check("identity_empirical_fisher_is_sgd_bit_for_bit", kt_nets_same_bits(emp_id, sgd),
             "weights, biases, scales or rolling statistics differ from SGD's (listed above)");

    int i, covered = 0;
    for (i = 0; i < sgd->n; ++i) {
        const float *At, *Gt, *Ae, *Ge;
        int gt, kt, mt, ge, ke, me;
        char nm[128];
        if (!kfac_layer_factors(true_id, i, &At, &Gt, &gt, &kt, &mt)) continue;
        kfac_layer_factors(emp_id, i, &Ae, &Ge, &ge, &ke, &me);
        ++covered;
        size_t nA = (size_t)gt * kt * kt, nG = (size_t)gt * mt * mt;
        double trace = 0;
        int j;
        for (j = 0; j < kt; ++j) trace += At[(size_t)j * kt + j];
        snprintf(nm, sizeof nm, "L%d_identity_still_collects_factors", i);
        kt_check(nm, trace > 0, "trace(A) = %g: no statistics were collected", trace);
        snprintf(nm, sizeof nm, "L%d_A_same_for_true_and_empirical_fisher", i);
        kt_check(nm, kt_same_bits("A", At, Ae, nA, 0), "A differs: both come from the same layer inputs");
        /* sampled labels (true Fisher) vs the data's labels (empirical): G differs
         * by O(1) relative; 1e-2 leaves room for any sampling luck */
        double d = rel_diff(Gt, Ge, nG);
        snprintf(nm, sizeof nm, "L%d_G_differs_for_true_and_empirical_fisher", i);
        kt_check(nm, d > 1e-2, "relative difference of G %.3g: the sampling pass did not change the statistics", d);
    }
    kt_check("four_layers_covered", covered == 4, "%d layers under K-FAC, expected 4", covered);

    /* control: the real preconditioner changes the weights (relative change of the
     * last layer's weights well above float rounding) */
    double d = rel_diff(kfac->layers[4].weights, sgd->layers[4].weights, kt_nweights(&sgd->layers[4]));
    kt_check("control_real_kfac_differs_from_sgd", d > 1e-3, "relative difference %.3g", d);

    free_network(sgd);
    free_network(true_id);
    free_network(emp_id);
    free_network(kfac);
    many_layer_types();
    return kt_exit();
}
