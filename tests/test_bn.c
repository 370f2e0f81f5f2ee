/* test_bn: the batch-norm blocks (darknet-kfac/kfac_bn.c) against the dense Fisher of
 * the scales and shifts, on tests/cfg/bn.cfg (a standalone [batchnorm], a
 * batch-normalized conv layer with groups, a batch-normalized connected layer).
 *
 * The test runs train_network_datum's steps by hand and, for each batch norm, reads
 * the layer's delta just before the layer's own backward (the derivative of the summed
 * loss at its output; Darknet's delta is the negative gradient) and its x_norm, and
 * forms in double each image's gradients, per channel c
 *
 *     g_n = (sum_t delta f'(out) x_norm, sum_t delta f'(out))   over the T positions,
 *
 * f' the activation's derivative, written here for leaky and linear.  Then:
 *
 *   grads     sum_n g_n equals Darknet's own scale_updates and bias_updates (momentum 0,
 *             one batch): the per-image gradients are a split of Darknet's gradient
 *   fisher    K-FAC's F equals (1/B) sum_n g_n g_n^T, interleaved (scale, shift) per
 *             channel ([kfac] decay=0: this batch's alone), whole or, with max_dim 8,
 *             as the 2 x 2 diagonal blocks of the channels whose 2C exceeds it
 *   precond   P = (F + lambda I)^-1 D block by block against an explicit solve,
 *             lambda = damping times the mean nonzero eigenvalue of the block, and
 *             Darknet's update then moves the scales and shifts by lr/B P (kl_clip=0)
 *   lean      the true-Fisher pass's own backward gives the blocks Darknet's full
 *             backward gives, on tests/cfg/bn-lean.cfg (layers 0, 2, 3 on SGD: the
 *             pass must start above the [batchnorm] block of layer 1)
 *   identity  with the identity preconditioner, training equals Darknet's SGD bit for
 *             bit, scales and shifts of the [batchnorm] included (patches/0021 gives
 *             it its update)
 *   kfac=0    in the [batchnorm]'s section leaves it without a block
 *   adaptive  step=adaptive takes the blocks into its model: their scales and shifts
 *             move by exactly the step's delta (saved values + delta_0, Darknet's
 *             own update of them replaced), their update buffers start from 0, and a
 *             net whose only preconditioned parameters are a [batchnorm]'s still
 *             takes adaptive steps that lower the loss */
#include "kt.h"
#include "kfac_internal.h"
#include "activations.h"

#define NBN 3
static const int bn_layers[NBN] = {1, 2, 4};

static double derivative(const layer *l, float out)
{
    if (l->type == BATCHNORM) return 1;
    if (l->activation == LINEAR) return 1;
    if (l->activation == LEAKY) return out > 0 ? 1 : 0.1;
    printf("FAIL harness: layer activation %d has no derivative here\n", (int)l->activation);
    exit(1);
}

/* g (B x 2C, interleaved) of layer l from its delta before its backward */
static void per_image_grads(const layer *l, const float *delta, double *g)
{
    const int C = l->out_c, T = l->out_h * l->out_w;
    int n, c, t;
    for (n = 0; n < l->batch; ++n)
        for (c = 0; c < C; ++c) {
            double sg = 0, sb = 0;
            for (t = 0; t < T; ++t) {
                const size_t i = ((size_t)n * C + c) * T + t;
                const double d = delta[i] * derivative(l, l->output[i]);
                sg += d * l->x_norm[i];
                sb += d;
            }
            g[(size_t)n * 2 * C + 2 * c] = sg;
            g[(size_t)n * 2 * C + 2 * c + 1] = sb;
        }
}

/* One training datum by hand (train_network_datum and backward_network, src/network.c),
 * with each batch norm's per-image gradients read before its layer's backward. */
static void datum(network *net, uint64_t step, double *g[NBN])
{
    int i, j;
    kt_batch(net, 41, step);
    *net->seen += net->batch;
    net->train = 1;
    forward_network(net);
    kfac_network_fisher_pass(net);
    network orig = *net;
    for (i = net->n - 1; i >= 0; --i) {
        layer l = net->layers[i];
        network v = orig;
        if (i > 0) {
            v.input = net->layers[i - 1].output;
            v.delta = net->layers[i - 1].delta;
        }
        v.index = i;
        for (j = 0; j < NBN; ++j)
            if (bn_layers[j] == i) per_image_grads(&l, l.delta, g[j]);
        l.backward(l, v);
        kfac_layer_backward(net, i, v.input);
    }
}

static kfac_bn *block_of(network *net, int index)
{
    kfac_net *k = kfac_of(net);
    return k->bn_of[index] >= 0 ? &k->bn[k->bn_of[index]] : NULL;
}

/* The checks of one net; max_dim 0: the cfg's default (every block whole). */
static void dense_checks(const char *tag, int max_dim)
{
    char sec[256], path[128], nm[160];
    snprintf(sec, sizeof sec, "[kfac]\nfisher=empirical\nstats_interval=1\ndecay=0\nstep=kl_clip\nkl_clip=0\n%s%d\n",
             max_dim ? "max_dim=" : "# ", max_dim);
    snprintf(path, sizeof path, "build/tests/bn-%s.cfg", tag);
    network *net = kt_net(kt_cfg_with(path, "tests/cfg/bn.cfg", sec), 3);
    kfac_net *k = kfac_of(net);
    double *g[NBN];
    float *scales0[NBN], *biases0[NBN];
    int j, n, a, b2;
    snprintf(nm, sizeof nm, "%s_three_blocks", tag);
    kt_check(nm, k->nbn == NBN && block_of(net, 1) && block_of(net, 2) && block_of(net, 4), "%d blocks, expected on layers 1, 2, 4",
             k->nbn);
    if (k->nbn != NBN) {
        free_network(net);
        return;
    }
    for (j = 0; j < NBN; ++j) {
        const layer *l = &net->layers[bn_layers[j]];
        g[j] = (double *)calloc((size_t)l->batch * 2 * l->out_c, sizeof(double));
        scales0[j] = (float *)malloc(l->out_c * sizeof(float));
        biases0[j] = (float *)malloc(l->out_c * sizeof(float));
    }
    datum(net, 0, g);
    for (j = 0; j < NBN; ++j) {
        const layer *l = &net->layers[bn_layers[j]];
        const int C = l->out_c, K = 2 * C;
        double *sum = (double *)calloc((size_t)K, sizeof(double)), *darknet = (double *)calloc((size_t)K, sizeof(double));
        for (n = 0; n < l->batch; ++n)
            for (a = 0; a < K; ++a) sum[a] += g[j][(size_t)n * K + a];
        for (a = 0; a < C; ++a) {
            darknet[2 * a] = l->scale_updates[a];
            darknet[2 * a + 1] = l->bias_updates[a];
        }
        /* float sums of B*T <= 150 products against double ones: 1e-5 of the largest */
        snprintf(nm, sizeof nm, "%s_layer%d_image_gradients_sum_to_darknets", tag, bn_layers[j]);
        kt_close_d(nm, sum, darknet, (size_t)K, 1e-5 * kt_maxabs(darknet, (size_t)K), 1e-5);
        memcpy(scales0[j], l->scales, C * sizeof(float));
        memcpy(biases0[j], l->biases, C * sizeof(float));
        free(sum);
        free(darknet);
    }
    update_network(net);

    for (j = 0; j < NBN; ++j) {
        const layer *l = &net->layers[bn_layers[j]];
        const int C = l->out_c, K = 2 * C, B = l->batch;
        kfac_bn *bk = block_of(net, bn_layers[j]);
        const int nb = kfac_a_count(&bk->s), dim = kfac_a_dim(&bk->s);
        const int want_nb = max_dim && K > max_dim ? C : 1;
        snprintf(nm, sizeof nm, "%s_layer%d_blocks", tag, bn_layers[j]);
        kt_check(nm, nb == want_nb && nb * dim == K, "%d blocks of %d, expected %d of %d", nb, dim, want_nb, K / want_nb);
        if (nb != want_nb) continue;
        /* dense F and its diagonal blocks */
        double *F = (double *)calloc((size_t)K * K, sizeof(double));
        double *got = (double *)calloc((size_t)nb * dim * dim, sizeof(double));
        double *ref = (double *)calloc((size_t)nb * dim * dim, sizeof(double));
        for (n = 0; n < B; ++n)
            for (a = 0; a < K; ++a)
                for (b2 = 0; b2 < K; ++b2) F[(size_t)a * K + b2] += g[j][(size_t)n * K + a] * g[j][(size_t)n * K + b2] / B;
        int blk;
        for (blk = 0; blk < nb; ++blk)
            for (a = 0; a < dim; ++a)
                for (b2 = 0; b2 < dim; ++b2) {
                    const size_t at = ((size_t)blk * dim + a) * dim + b2;
                    got[at] = bk->F[at];
                    ref[at] = F[(size_t)(blk * dim + a) * K + blk * dim + b2];
                }
        /* float ssyrk over B = 6 images of float gradients (each a float of a double
         * sum) against double: a few float ulps, 1e-5 of the largest entry */
        snprintf(nm, sizeof nm, "%s_layer%d_F_is_dense_fisher_of_scales_and_shifts", tag, bn_layers[j]);
        const double mag = kt_maxabs(ref, (size_t)nb * dim * dim);
        kt_close_d(nm, got, ref, (size_t)nb * dim * dim, 1e-5 * mag, 1e-5);
        snprintf(nm, sizeof nm, "%s_layer%d_F_not_zero", tag, bn_layers[j]);
        kt_check(nm, mag > 1e-12, "max |F| = %g: a vacuous comparison", mag);

        /* P against (F_block + lambda_block I)^-1 D, lambda from the block's own
         * eigenvalues by the rule of kfac_bn.c */
        double *x = (double *)calloc((size_t)K, sizeof(double)), worst = 0, pmag = 0;
        for (blk = 0; blk < nb; ++blk) {
            double *X = (double *)calloc((size_t)dim * dim, sizeof(double)), s = 0, mx = 0, all_s = 0, all_mx = 0;
            int r = 0, all_r = 0;
            for (a = 0; a < dim; ++a) {
                s += bk->d[blk * dim + a];
                if (bk->d[blk * dim + a] > mx) mx = bk->d[blk * dim + a];
            }
            for (a = 0; a < dim; ++a) r += bk->d[blk * dim + a] > 1e-5f * mx;
            for (a = 0; a < K; ++a) {
                all_s += bk->d[a];
                if (bk->d[a] > all_mx) all_mx = bk->d[a];
            }
            for (a = 0; a < K; ++a) all_r += bk->d[a] > 1e-5f * all_mx;
            const double lambda = k->cfg.damping * (r ? s / r : all_s / all_r);
            for (a = 0; a < dim; ++a) {
                for (b2 = 0; b2 < dim; ++b2) X[a * dim + b2] = bk->F[((size_t)blk * dim + a) * dim + b2] + (a == b2 ? lambda : 0);
                x[blk * dim + a] = bk->D[blk * dim + a];
            }
            kt_solve_dense(X, x + blk * dim, dim);
            free(X);
        }
        for (a = 0; a < K; ++a) {
            pmag = fmax(pmag, fabs(x[a]));
            worst = fmax(worst, fabs(bk->P[a] - x[a]));
        }
        /* float32 eigendecomposition against a double solve of a matrix damped to a
         * condition of at most about 1/damping: 1e-3 of max |P| */
        snprintf(nm, sizeof nm, "%s_layer%d_P_matches_dense_solve", tag, bn_layers[j]);
        kt_check(nm, worst <= 1e-3 * pmag && pmag > 0, "worst %.3g, max |P| %.3g", worst, pmag);
        /* Darknet's update moved the scales and shifts by lr/B P (momentum 0, no
         * decay on them, kl_clip 0): float differences of values near 1, 1e-4 of
         * the largest move */
        double *moved = (double *)calloc((size_t)K, sizeof(double)), *want = (double *)calloc((size_t)K, sizeof(double));
        for (a = 0; a < C; ++a) {
            moved[2 * a] = (double)l->scales[a] - scales0[j][a];
            moved[2 * a + 1] = (double)l->biases[a] - biases0[j][a];
            want[2 * a] = net->learning_rate / B * bk->P[2 * a];
            want[2 * a + 1] = net->learning_rate / B * bk->P[2 * a + 1];
        }
        snprintf(nm, sizeof nm, "%s_layer%d_update_moves_by_P", tag, bn_layers[j]);
        kt_close_d(nm, moved, want, (size_t)K, 1e-4 * kt_maxabs(want, (size_t)K), 0);
        free(moved);
        free(want);
        free(x);
        free(F);
        free(got);
        free(ref);
    }
    for (j = 0; j < NBN; ++j) {
        free(g[j]);
        free(scales0[j]);
        free(biases0[j]);
    }
    free_network(net);
}

/* the true-Fisher pass through its own backward and through Darknet's, identity
 * preconditioner (the weights stay the same in both); and both against SGD */
static void lean_and_identity(void)
{
    const char *sec = "[kfac]\nfisher=true\nstats_interval=1\ninverse_interval=2\n";
    const char *cfg = kt_cfg_with("build/tests/bn-lean-kfac.cfg", "tests/cfg/bn-lean.cfg", sec);
    network *sgd = kt_net("tests/cfg/bn-lean.cfg", 5), *lean = kt_net(cfg, 5), *full = kt_net(cfg, 5);
    const int covered[2] = {1, 4};
    char nm[128];
    int c;
    kfac_network_set_identity(lean, 1);
    kfac_network_set_identity(full, 1);
    kfac_network_set_lean_fisher(full, 0);
    kt_check("lean_cfg_lowest_is_above_the_batchnorm", kfac_of(lean)->lowest == 2, "lowest %d, expected 2",
             kfac_of(lean)->lowest);
    kt_train_updates(sgd, 43, 0, 4);
    kt_train_updates(lean, 43, 0, 4);
    kt_train_updates(full, 43, 0, 4);
    kt_check("identity_with_bn_blocks_is_sgd_bit_for_bit", kt_nets_same_bits(lean, sgd) && kt_nets_same_bits(full, sgd),
             "parameters differ from SGD's (listed above)");
    /* kt_nets_same_bits covers conv and connected layers: the [batchnorm] too */
    kt_check("identity_batchnorm_scales_and_shifts_are_sgds",
             kt_same_bits("scales", lean->layers[1].scales, sgd->layers[1].scales, 4, 0) &&
                 kt_same_bits("biases", lean->layers[1].biases, sgd->layers[1].biases, 4, 0),
             "the [batchnorm]'s parameters differ (listed above)");
    kt_check("batchnorm_trains", fabsf(sgd->layers[1].scales[0] - 1.0f) > 1e-6f && sgd->layers[1].biases[0] != 0,
             "the [batchnorm]'s scale %g and shift %g did not move (patches/0021)", sgd->layers[1].scales[0],
             sgd->layers[1].biases[0]);
    for (c = 0; c < 2; ++c) {
        const float *Fl, *Ff;
        int nb, dim, i;
        int ok = kfac_bn_factor(lean, covered[c], &Fl, &nb, &dim) && kfac_bn_factor(full, covered[c], &Ff, &nb, &dim);
        snprintf(nm, sizeof nm, "lean_layer%d_has_block", covered[c]);
        if (!kt_check(nm, ok, "no batch-norm block")) continue;
        size_t len = (size_t)nb * dim * dim;
        double *ref = (double *)malloc(len * sizeof(double));
        for (i = 0; i < (int)len; ++i) ref[i] = Ff[i];
        const double mag = kt_maxabs(ref, len);
        snprintf(nm, sizeof nm, "lean_layer%d_F_not_zero", covered[c]);
        kt_check(nm, mag > 0, "F is all zeros: the comparison below would prove nothing");
        /* the deltas differ only in the order of float sums (OpenBLAS against Darknet's
         * gemm), as in test_lean_fisher: 1e-5 of the largest entry */
        snprintf(nm, sizeof nm, "lean_layer%d_F_equals_full_pass", covered[c]);
        kt_close_f(nm, Fl, ref, len, 1e-5 * mag, 0);
        free(ref);
    }
    free_network(sgd);
    free_network(lean);
    free_network(full);
}

/* `in` copied to `out` with kfac=0 after every section header named in `sections`
 * (e.g. "[batchnorm]\n[connected]\n") and `kfac` appended */
static const char *cfg_off(const char *out, const char *in_path, const char *sections, const char *kfac)
{
    FILE *in = fopen(in_path, "rb"), *o = fopen(out, "wb");
    char line[512];
    if (!in || !o) {
        printf("FAIL harness: cannot read %s or write %s\n", in_path, out);
        exit(1);
    }
    while (fgets(line, sizeof line, in)) {
        fputs(line, o);
        if (line[0] == '[' && strstr(sections, line)) fputs("kfac=0\n", o);
    }
    fprintf(o, "\n%s\n", kfac);
    fclose(in);
    fclose(o);
    return out;
}

/* tests/cfg/bn.cfg with kfac=0 in its [batchnorm] section: no block there, the others kept */
static void batchnorm_off(void)
{
    network *net = kt_net(cfg_off("build/tests/bn-off.cfg", "tests/cfg/bn.cfg", "[batchnorm]\n", "[kfac]"), 3);
    kt_check("batchnorm_kfac0_leaves_it_on_sgd", !block_of(net, 1) && block_of(net, 2) && block_of(net, 4),
             "blocks on layers 1/2/4: %d/%d/%d, expected only 2 and 4", block_of(net, 1) != NULL, block_of(net, 2) != NULL,
             block_of(net, 4) != NULL);
    free_network(net);
}

/* The blocks under step=adaptive: after Darknet's update each block's scales and shifts
 * are its values before the update plus its delta_0, bit for bit. */
static void adaptive_checks(void)
{
    network *net = kt_net(kt_cfg_with("build/tests/bn-adaptive.cfg", "tests/cfg/bn-lean.cfg",
                                      "[kfac]\nstep=adaptive\nstats_interval=1\n"), 7);
    kfac_net *k = kfac_of(net);
    float *sc[NBN], *bi[NBN];
    int j, c, moved = 0, exact = 1, zeroed = 1, adaptive = 0;
    kt_train_updates(net, 45, 0, 3);
    for (j = 0; j < k->nbn; ++j) {
        const layer *l = &net->layers[k->bn[j].index];
        sc[j] = (float *)malloc(l->out_c * sizeof(float));
        bi[j] = (float *)malloc(l->out_c * sizeof(float));
        memcpy(sc[j], l->scales, l->out_c * sizeof(float));
        memcpy(bi[j], l->biases, l->out_c * sizeof(float));
    }
    kt_train_updates(net, 45, 3, 1);
    for (j = 0; j < k->nbn; ++j) {
        const kfac_bn *b = &k->bn[j];
        const layer *l = &net->layers[b->index];
        adaptive += b->mode == KFAC_MODE_ADAPTIVE;
        for (c = 0; c < l->out_c; ++c) {
            const float ws = sc[j][c] + b->prev[2 * c], wb = bi[j][c] + b->prev[2 * c + 1];
            exact &= !memcmp(&ws, &l->scales[c], sizeof ws) && !memcmp(&wb, &l->biases[c], sizeof wb);
            moved += b->prev[2 * c] != 0 && b->prev[2 * c + 1] != 0;
            zeroed &= l->scale_updates[c] == 0 && l->bias_updates[c] == 0;
        }
        free(sc[j]);
        free(bi[j]);
    }
    kt_check("adaptive_takes_the_blocks", adaptive == k->nbn && k->nbn == 2, "%d of %d blocks in the model", adaptive, k->nbn);
    kt_check("adaptive_blocks_move_by_delta", exact && moved > 0, "scales and shifts are not before + delta_0 (moved %d)",
             moved);
    kt_check("adaptive_block_updates_zeroed", zeroed, "scale_updates or bias_updates not 0 after the update");
    free_network(net);

    /* only a [batchnorm] preconditioned: the model is the block's alone */
    net = kt_net(cfg_off("build/tests/bn-only.cfg", "tests/cfg/bn-lean.cfg", "[connected]\n",
                         "[kfac]\nstep=adaptive\nstats_interval=1\n"), 7);
    k = kfac_of(net);
    float before = 0, after = 0;
    int u;
    for (u = 0; u < 8; ++u) {
        kt_batch(net, 46, 0); /* one batch again and again: its loss must fall */
        const float cost = train_network_datum(net);
        if (u == 0) before = cost;
        after = cost;
    }
    kt_check("adaptive_batchnorm_alone", k->nlayers == 0 && k->nbn == 1 && k->bn[0].mode == KFAC_MODE_ADAPTIVE &&
             isfinite(after) && after < before,
             "%d layers, %d blocks, mode %d, loss %g -> %g", k->nlayers, k->nbn, k->nbn ? k->bn[0].mode : -1, before, after);
    free_network(net);
}

int main(void)
{
    batchnorm_off();
    adaptive_checks();
    dense_checks("whole", 0);
    dense_checks("per_channel", 8);
    lean_and_identity();
    return kt_exit();
}
