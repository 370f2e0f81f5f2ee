/* test_update: how K-FAC's preconditioned gradient enters Darknet's update.
 *
 *  - KL clipping (DESIGN.md 4): nu = min(1, sqrt(kl_clip / (lr^2 sum_l <P/B, D/B>)))
 *    shared by all layers (the cfg has no momentum and a constant rate, where the
 *    core's momentum factor 1/(1-momentum) and rate factor (rate/learning_rate)^2
 *    are both 1).  With no momentum and no weight decay an update moves the
 *    weights by exactly lr/B * nu * P, so nu can be read off the weights.  A first
 *    net (kl_clip=0: off) measures the quadratic form q of the first update; nets
 *    from the same seed and batch with kl_clip = q/4 and kl_clip = 4q must take
 *    nu = 1/2 (in every layer) and nu = 1.
 *  - warmup=W: the first W updates are Darknet's SGD bit for bit, the next is not.
 *  - schedules: with stats_interval=2, inverse_interval=3, warmup=1, the factors
 *    change exactly after updates 0, 2, 4, 6 and, with inverse_lag=0, the
 *    eigendecompositions after updates 1, 2, 4, 7 (k - warmup divisible by the
 *    interval, and each statistics step of the first interval).  With the default
 *    lag (the statistics interval, 2) the same decompositions are launched there but
 *    installed 2 updates later (the first one, at 1, at once: there is nothing to use
 *    meanwhile): after updates 1, 4 (launched at 2), 6 (launched at 4); what is
 *    installed is bit for bit the decomposition of the factors of its launch.
 *  - a batch of NaN inputs: the statistics and the gradient of that update are
 *    dropped, weights and factors stay finite and training goes on. */
#include "kt.h"
#include "kfac_internal.h"

static const char *base = "tests/cfg/update.cfg";

static double dot(const float *a, const float *b, size_t n)
{
    double s = 0;
    size_t i;
    for (i = 0; i < n; ++i) s += (double)a[i] * (double)b[i];
    return s;
}

static network *make(const char *tag, const char *section)
{
    char path[256];
    snprintf(path, sizeof path, "build/tests/update-%s.cfg", tag);
    return kt_net(kt_cfg_with(path, base, section), 23);
}

typedef struct {
    double nu[2];   /* per covered layer: <dW, P_w> / (lr/B <P_w, P_w>) */
    double quad;    /* lr^2 sum <P, D> / B^2 of the update */
} step_info;

/* one update from batch 0; reads nu and the quadratic form back */
static step_info one_update(network *net)
{
    step_info s = {{0, 0}, 0};
    float *before[2];
    kfac_net *k = kfac_of(net);
    int i;
    for (i = 0; i < k->nlayers; ++i) {
        const layer *l = &net->layers[k->layers[i].index];
        before[i] = (float *)malloc(kt_nweights(l) * sizeof(float));
        memcpy(before[i], l->weights, kt_nweights(l) * sizeof(float));
    }
    kt_train_updates(net, 81, 0, 1);
    const double lr = net->learning_rate, B = net->batch * net->subdivisions;
    for (i = 0; i < k->nlayers; ++i) {
        const kfac_layer *kl = &k->layers[i];
        const layer *l = &net->layers[kl->index];
        double dp = 0, pp = 0;
        int r, c;
        for (r = 0; r < kl->s.groups * kl->s.M; ++r)
            for (c = 0; c < kl->s.k_in; ++c) {
                double p = kl->P[(size_t)r * kl->s.K + c];
                double dw = (double)l->weights[(size_t)r * kl->s.k_in + c] - before[i][(size_t)r * kl->s.k_in + c];
                dp += dw * p;
                pp += p * p;
            }
        s.nu[i] = dp / (lr / B * pp);
        s.quad += lr * lr * dot(kl->P, kl->D, (size_t)kl->s.groups * kl->s.M * kl->s.K) / (B * B);
        free(before[i]);
    }
    return s;
}

static void kl_clip_checks(void)
{
    char sec[256];
    const char *common = "[kfac]\nstep=kl_clip\nstats_interval=1\ninverse_interval=1\nfisher=empirical\n";
    snprintf(sec, sizeof sec, "%skl_clip=0\n", common);
    network *off = make("klclip-off", sec);
    step_info s0 = one_update(off);
    free_network(off);
    /* weights move by lr/B*P exactly, up to float rounding of w + dw: 1e-4 */
    kt_check("kl_clip_0_is_off", fabs(s0.nu[0] - 1) < 1e-4 && fabs(s0.nu[1] - 1) < 1e-4 && s0.quad > 0,
             "nu = %.6g %.6g, quad %.3g", s0.nu[0], s0.nu[1], s0.quad);

    snprintf(sec, sizeof sec, "%skl_clip=%.9g\n", common, s0.quad / 4);
    network *half = make("klclip-half", sec);
    step_info s1 = one_update(half);
    free_network(half);
    /* same seed and batch: same P and D, so nu = sqrt((q/4)/q) = 1/2 in both layers
     * (1e-4: rounding of the weight differences and of kl_clip printed with 9 digits) */
    kt_check("kl_clip_quarter_halves_the_step", fabs(s1.nu[0] - 0.5) < 1e-4 && fabs(s1.nu[1] - 0.5) < 1e-4,
             "nu = %.6g %.6g, expected 0.5 in both layers (quad %.6g, unclipped %.6g)", s1.nu[0], s1.nu[1], s1.quad, s0.quad);

    snprintf(sec, sizeof sec, "%skl_clip=%.9g\n", common, s0.quad * 4);
    network *loose = make("klclip-loose", sec);
    step_info s2 = one_update(loose);
    free_network(loose);
    kt_check("kl_clip_above_the_step_leaves_it", fabs(s2.nu[0] - 1) < 1e-4 && fabs(s2.nu[1] - 1) < 1e-4,
             "nu = %.6g %.6g, expected 1", s2.nu[0], s2.nu[1]);
}

static void warmup_checks(void)
{
    network *sgd = kt_net(base, 23);
    network *w = make("warmup", "[kfac]\nstep=kl_clip\nstats_interval=1\ninverse_interval=1\nwarmup=3\n");
    kt_train_updates(sgd, 82, 0, 3);
    kt_train_updates(w, 82, 0, 3);
    kt_check("warmup_updates_are_sgd_bit_for_bit", kt_nets_same_bits(w, sgd), "differ after the 3 warmup updates");
    kt_train_updates(sgd, 82, 3, 1);
    kt_train_updates(w, 82, 3, 1);
    int same = 1, i;
    for (i = 0; i < 2 && same; ++i) {
        const layer *a = &sgd->layers[i], *b = &w->layers[i];
        same = memcmp(a->weights, b->weights, kt_nweights(a) * sizeof(float)) == 0;
    }
    kt_check("preconditioning_starts_after_warmup", !same, "update 4 (after warmup=3) is still plain SGD");
    free_network(sgd);
    free_network(w);
}

static void schedule_checks(void)
{
    network *net = make("schedule", "[kfac]\nstep=kl_clip\nstats_interval=2\ninverse_interval=3\ninverse_lag=0\nwarmup=1\n");
    kfac_net *k = kfac_of(net);
    const kfac_layer *kl = &k->layers[1];
    size_t nA = (size_t)kl->s.K * kl->s.K;
    float *A_prev = (float *)calloc(nA, sizeof(float)), *d_prev = (float *)calloc((size_t)kl->s.K, sizeof(float));
    char factors[64] = "", inverses[64] = "";
    int u;
    for (u = 0; u < 8; ++u) {
        kt_train_updates(net, 83, u, 1);
        if (memcmp(A_prev, kl->A, nA * sizeof(float)))
            snprintf(factors + strlen(factors), sizeof factors - strlen(factors), "%d ", u);
        if (memcmp(d_prev, kl->dA, (size_t)kl->s.K * sizeof(float)))
            snprintf(inverses + strlen(inverses), sizeof inverses - strlen(inverses), "%d ", u);
        memcpy(A_prev, kl->A, nA * sizeof(float));
        memcpy(d_prev, kl->dA, (size_t)kl->s.K * sizeof(float));
    }
    kt_check("factors_change_on_statistics_steps", !strcmp(factors, "0 2 4 6 "),
             "A changed after updates %s(expected 0 2 4 6)", factors);
    /* after warmup=1: every inverse_interval=3 updates (1, 4, 7), and during the first
     * 3 updates also on each statistics step (2): kfac_inverse_due */
    kt_check("inverses_change_on_refresh_steps", !strcmp(inverses, "1 2 4 7 "),
             "eigenvalues changed after updates %s(expected 1 2 4 7)", inverses);
    free(A_prev);
    free(d_prev);
    free_network(net);
}

/* The same schedule with the default lag: decompositions made in the background. */
static void lag_checks(void)
{
    network *net = make("lag", "[kfac]\nstep=kl_clip\nstats_interval=2\ninverse_interval=3\nwarmup=1\n");
    kfac_net *k = kfac_of(net);
    const kfac_layer *kl = &k->layers[1];
    const size_t nA = (size_t)kl->s.K * kl->s.K;
    float *d_prev = (float *)calloc((size_t)kl->s.K, sizeof(float));
    float *A2 = (float *)calloc(nA, sizeof(float)), *E2 = (float *)calloc(nA, sizeof(float));
    float *d2 = (float *)calloc((size_t)kl->s.K, sizeof(float));
    char inverses[64] = "";
    int u, same = 0;
    kt_check("lag_defaults_to_the_statistics_interval", k->sched.inverse_lag == 2 && k->worker,
             "inverse_lag %d, worker %p", k->sched.inverse_lag, (void *)k->worker);
    for (u = 0; u < 8; ++u) {
        kt_train_updates(net, 83, u, 1);
        if (u == 2) memcpy(A2, kl->A, nA * sizeof(float)); /* the factors the launch at 2 copies */
        if (memcmp(d_prev, kl->dA, (size_t)kl->s.K * sizeof(float)))
            snprintf(inverses + strlen(inverses), sizeof inverses - strlen(inverses), "%d ", u);
        if (u == 4) {
            /* the reference: the CPU backend's own eigh of those factors, at once */
            k->be->ops->eigh(k->be, A2, kl->s.K, 1, E2, d2);
            same = !memcmp(d2, kl->dA, (size_t)kl->s.K * sizeof(float)) && !memcmp(E2, kl->EA, nA * sizeof(float));
        }
        memcpy(d_prev, kl->dA, (size_t)kl->s.K * sizeof(float));
    }
    kt_check("lagged_inverses_change_at_launch_plus_lag", !strcmp(inverses, "1 4 6 "),
             "eigenvalues changed after updates %s(expected 1 4 6)", inverses);
    kt_check("lagged_inverse_is_the_launch_factors_decomposition", same,
             "the decomposition installed at update 4 differs from eigh of the factors after update 2");
    free(d_prev);
    free(A2);
    free(E2);
    free(d2);
    free_network(net);
}

static int net_finite(const network *net)
{
    const kfac_net *k = kfac_of(net);
    int i;
    for (i = 0; i < k->nlayers; ++i) {
        const kfac_layer *kl = &k->layers[i];
        const layer *l = &net->layers[kl->index];
        if (!kfac_all_finite(l->weights, kt_nweights(l)) || !kfac_all_finite(l->biases, (size_t)kl->s.groups * kl->s.M) ||
            !kfac_all_finite(kl->A, (size_t)kl->s.groups * kl->s.K * kl->s.K) ||
            !kfac_all_finite(kl->G, (size_t)kl->s.groups * kl->s.M * kl->s.M) ||
            !kfac_all_finite(kl->dA, (size_t)kl->s.groups * kl->s.K) || !kfac_all_finite(kl->dG, (size_t)kl->s.groups * kl->s.M))
            return 0;
    }
    return 1;
}

static void nan_checks(void)
{
    network *net = make("nan", "[kfac]\nstats_interval=1\ninverse_interval=1\n");
    int i;
    kt_train_updates(net, 84, 0, 2);
    /* update 2: a batch of NaN inputs */
    kt_batch(net, 84, 2);
    for (i = 0; i < net->inputs * net->batch; ++i) net->input[i] = NAN;
    train_network_datum(net);
    kt_check("nan_batch_leaves_weights_and_factors_finite", net_finite(net), "a weight, bias, factor or eigenvalue is not finite");
    float w0 = net->layers[1].weights[0];
    kt_train_updates(net, 84, 3, 3);
    kt_check("training_goes_on_after_a_nan_batch", net_finite(net) && net->layers[1].weights[0] != w0 && kfac_network_step(net) == 6,
             "finite %d, weights moved %d, step %d", net_finite(net), net->layers[1].weights[0] != w0, kfac_network_step(net));
    free_network(net);
}

int main(void)
{
    kl_clip_checks();
    warmup_checks();
    schedule_checks();
    lag_checks();
    nan_checks();
    return kt_exit();
}
