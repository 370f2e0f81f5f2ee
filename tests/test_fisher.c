/* test_fisher: the true-Fisher pass samples labels from the model's own prediction.
 *
 * For the last layer before a softmax, the sampled output derivative is e_y - p with
 * y ~ p, whose outer product has expectation diag(p) - p p^T.  With fisher=true and
 * one statistics step on a batch of B = 4096 images, K-FAC's G of that layer (the
 * batch mean of the sampled outer products) must agree with
 * (1/B) sum_i (diag(p_i) - p_i p_i^T) to within 5 standard deviations of the sampling
 * noise, computed exactly per entry: Var = (1/B^2) sum_i Var_{y~p_i}[v_i(y)].  The
 * run is deterministic (K-FAC's sampler has its own seed), so this never flakes; 5
 * sigma says the check is not tuned to the seed.  Control: the same net with
 * fisher=empirical and every label = class 0 must be far (> 20 sigma) from that
 * expectation, so the check can tell sampled labels from data labels. */
#include "kt.h"
#include "kfac.h"

#define NC 3

/* worst |G - E G| / sigma over the entries, with E and sigma from the model's p */
static double worst_z(network *net, const float *G)
{
    const layer *soft = &net->layers[1];
    const int B = soft->batch;
    double E[NC * NC] = {0}, V[NC * NC] = {0}, worst = 0;
    int i, j, k, y;
    for (i = 0; i < B; ++i) {
        const float *p = soft->output + (size_t)i * NC;
        for (j = 0; j < NC; ++j)
            for (k = 0; k < NC; ++k) {
                double m = (j == k ? p[j] : 0) - (double)p[j] * p[k], v2 = 0;
                for (y = 0; y < NC; ++y) {
                    double v = ((y == j) - (double)p[j]) * ((y == k) - (double)p[k]);
                    v2 += p[y] * (v - m) * (v - m);
                }
                E[j * NC + k] += m / B;
                V[j * NC + k] += v2 / ((double)B * B);
            }
    }
    for (j = 0; j < NC * NC; ++j) {
        double z = fabs(G[j] - E[j]) / sqrt(V[j]);
        if (!(z <= worst)) worst = z;
    }
    return worst;
}

static network *make(const char *cfg)
{
    network *net = kt_net(cfg, 17);
    int i;
    /* spread the logits so that p is far from uniform */
    for (i = 0; i < net->layers[0].inputs * net->layers[0].outputs; ++i) net->layers[0].weights[i] *= 3;
    kt_batch(net, 71, 0);
    /* every data label is class 0 (for the empirical control) */
    memset(net->truth, 0, (size_t)net->truths * net->batch * sizeof(float));
    for (i = 0; i < net->batch; ++i) net->truth[(size_t)i * net->truths] = 1;
    train_network_datum(net);
    return net;
}

int main(void)
{
    const float *A, *G;
    int g, k, m;
    network *t = make("tests/cfg/fisher.cfg");
    network *e = make(kt_cfg_with("build/tests/fisher-empirical.cfg", "tests/cfg/fisher.cfg",
                                 "fisher=empirical\n")); /* lands in the last section, [kfac] */
    kfac_layer_factors(t, 0, &A, &G, &g, &k, &m);
    double zt = worst_z(t, G);
    kfac_layer_factors(e, 0, &A, &G, &g, &k, &m);
    double ze = worst_z(e, G);
    printf("  worst |G - E[G]| in sampling standard deviations: true Fisher %.2f, empirical %.1f\n", zt, ze);
    kt_check("true_fisher_G_matches_its_expectation", zt < 5, "an entry is %.2f sigma from diag(p) - p p^T", zt);
    kt_check("control_empirical_G_is_far_from_it", ze > 20, "the empirical G is only %.1f sigma away", ze);
    free_network(t);
    free_network(e);
    return kt_exit();
}
