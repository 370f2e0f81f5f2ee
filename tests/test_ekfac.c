/* test_ekfac: [kfac] scaling=ekfac (darknet-kfac/kfac_ekfac.c) against its definition,
 * computed here in double on tests/cfg/ekfac.cfg (a conv layer with groups and its own
 * bias, a conv and a connected layer whose A is kept in blocks).
 *
 * Update 0 gives the factors and their first decomposition.  In update 1 (a
 * decomposition is due: the first inverse_interval updates decompose on every
 * statistics step, scaling=ekfac at the start of the update) the test reads, after
 * Darknet's backward, every covered layer's delta and input and forms each image's
 * gradient dW_n = sum_t g_t a_t^T (M x K per group, the bias column when the layer
 * has its own bias), then:
 *
 *   grads    sum_n dW_n equals Darknet's weight_updates and bias_updates (momentum 0):
 *            the test's per-image gradients are a split of Darknet's gradient
 *   scaling  S = (1/B) sum_n (E_G dW_n E_A^T)^2 ([kfac] decay=0: this batch's alone),
 *            E_G, E_A the layer's own eigenvectors (E_A block diagonal over A's blocks)
 *   precond  P = E_G^T [(E_G D E_A^T) / (S + lA dG + lG dA + lA lG)] E_A, lA and lG
 *            sqrt(damping) times each factor's mean nonzero eigenvalue (per block)
 *   kfac     with S set to dG dA^T the EKFAC step is K-FAC's (the damping carries over)
 *   control  the EKFAC step differs from K-FAC's on the measured S
 *   state    the state file keeps S bit for bit
 *   lag      with decompositions in the background (inverse_lag 2) EKFAC is in force
 *            and training stays finite */
#include "kt.h"
#include "kfac_internal.h"

/* image n's input patch at output location t of group g (K values, the bias last) */
static void patch(const layer *l, const kfac_shape *s, const float *input, int n, int g, int t, double *a)
{
    int i;
    if (l->type == CONNECTED) {
        for (i = 0; i < l->inputs; ++i) a[i] = input[(size_t)n * l->inputs + i];
    } else {
        const int cg = l->c / l->groups, sz = l->size, oy = t / l->out_w, ox = t % l->out_w;
        const float *im = input + ((size_t)n * l->groups + g) * cg * l->h * l->w;
        int c, ky, kx;
        for (c = 0; c < cg; ++c)
            for (ky = 0; ky < sz; ++ky)
                for (kx = 0; kx < sz; ++kx) {
                    const int iy = oy * l->stride + ky - l->pad, ix = ox * l->stride + kx - l->pad;
                    a[(c * sz + ky) * sz + kx] = iy >= 0 && iy < l->h && ix >= 0 && ix < l->w ? im[(c * l->h + iy) * l->w + ix] : 0;
                }
    }
    if (s->has_bias) a[s->k_in] = 1;
}

/* dW (B x groups x M x K) of layer l from its delta and input after the backward */
static void image_grads(const layer *l, const kfac_shape *s, const float *input, double *dW)
{
    const int M = s->M, K = s->K, T = s->T;
    double *a = (double *)calloc((size_t)K, sizeof(double));
    int n, g, t, m, j;
    for (n = 0; n < l->batch; ++n)
        for (g = 0; g < s->groups; ++g) {
            double *w = dW + ((size_t)n * s->groups + g) * M * K;
            for (t = 0; t < T; ++t) {
                patch(l, s, input, n, g, t, a);
                for (m = 0; m < M; ++m) {
                    const double gt = l->type == CONNECTED ? l->delta[(size_t)n * M + m]
                                                           : l->delta[(((size_t)n * s->groups + g) * M + m) * T + t];
                    for (j = 0; j < K; ++j) w[(size_t)m * K + j] += gt * a[j];
                }
            }
        }
    free(a);
}

/* Z = E_G X E_A^T (trans 1) or E_G^T X E_A (trans 0) for one group, E_A by blocks */
static void basis(const kfac_shape *s, const float *EG, const float *EA, const double *X, int trans, double *Z)
{
    const int M = s->M, K = s->K, Ka = kfac_a_dim(s);
    double *Y = (double *)calloc((size_t)M * K, sizeof(double));
    int i, j, m;
    for (i = 0; i < M; ++i)
        for (j = 0; j < K; ++j) {
            double v = 0;
            for (m = 0; m < M; ++m) v += (trans ? EG[(size_t)i * M + m] : EG[(size_t)m * M + i]) * X[(size_t)m * K + j];
            Y[(size_t)i * K + j] = v;
        }
    for (i = 0; i < M; ++i)
        for (j = 0; j < K; ++j) {
            const int b0 = j / Ka * Ka;
            const float *E = EA + (size_t)(j / Ka) * Ka * Ka;
            double v = 0;
            for (m = 0; m < Ka; ++m)
                v += Y[(size_t)i * K + b0 + m] * (trans ? E[(size_t)(j - b0) * Ka + m] : E[(size_t)m * Ka + j - b0]);
            Z[(size_t)i * K + j] = v;
        }
    free(Y);
}

static double eig_mean(const float *d, int n)
{
    double s = 0, mx = 0;
    int i, r = 0;
    for (i = 0; i < n; ++i) mx = fmax(mx, d[i]);
    for (i = 0; i < n; ++i)
        if (d[i] > 1e-5f * mx) {
            s += d[i];
            ++r;
        }
    return r ? s / r : 0;
}

int main(void)
{
    const char *cfg = "tests/cfg/ekfac.cfg";
    network *net = kt_net(cfg, 4);
    kfac_net *k = kfac_of(net);
    char nm[160];
    int i;
    kt_check("ekfac_three_layers", k->nlayers == 3 && k->cfg.scaling == KFAC_SCALING_EKFAC &&
             kfac_a_blocks(&k->layers[1].s) == 2 && kfac_a_blocks(&k->layers[2].s) == 3 && k->layers[0].s.groups == 2,
             "%d layers, scaling %d, blocks %d/%d", k->nlayers, (int)k->cfg.scaling, kfac_a_blocks(&k->layers[1].s),
             kfac_a_blocks(&k->layers[2].s));
    kt_train_updates(net, 51, 0, 1);

    /* update 1 by hand (train_network_datum), the images' gradients after the backward */
    kt_batch(net, 51, 1);
    *net->seen += net->batch;
    net->train = 1;
    forward_network(net);
    kfac_network_fisher_pass(net);
    kt_check("ekfac_decomposed_at_the_start_of_the_update", kfac_ekfac_refreshed(k) && k->layers[0].basis_gen == 2,
             "refreshed %d, basis generation %d (expected 2)", kfac_ekfac_refreshed(k), k->layers[0].basis_gen);
    backward_network(net);
    double *dW[3];
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        const layer *l = &net->layers[kl->index];
        const kfac_shape *s = &kl->s;
        const size_t per = (size_t)s->groups * s->M * s->K;
        const float *input = kl->index == 0 ? net->input : net->layers[kl->index - 1].output;
        dW[i] = (double *)calloc(per * l->batch, sizeof(double));
        image_grads(l, s, input, dW[i]);
        /* the sum over images is Darknet's gradient, [weight_updates | bias_updates] */
        double *sum = (double *)calloc(per, sizeof(double)), *dk = (double *)calloc(per, sizeof(double));
        size_t e;
        int n, r, c;
        for (n = 0; n < l->batch; ++n)
            for (e = 0; e < per; ++e) sum[e] += dW[i][n * per + e];
        for (r = 0; r < s->groups * s->M; ++r)
            for (c = 0; c < s->K; ++c)
                dk[(size_t)r * s->K + c] = c < s->k_in ? l->weight_updates[(size_t)r * s->k_in + c] : l->bias_updates[r];
        /* float gemm sums of B*T <= 100 products against double: 1e-5 of the largest */
        snprintf(nm, sizeof nm, "layer%d_image_gradients_sum_to_darknets", kl->index);
        kt_close_d(nm, sum, dk, per, 1e-5 * kt_maxabs(dk, per), 1e-5);
        free(sum);
        free(dk);
    }
    update_network(net);

    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        const kfac_shape *s = &kl->s;
        const int M = s->M, K = s->K, G = s->groups, B = net->batch, nb = kfac_a_blocks(s), Ka = kfac_a_dim(s);
        const size_t MK = (size_t)M * K, per = (size_t)G * MK;
        double *S = (double *)calloc(per, sizeof(double)), *Z = (double *)calloc(MK, sizeof(double));
        double *P = (double *)calloc(per, sizeof(double)), *X = (double *)calloc(MK, sizeof(double));
        int n, g, r, c, bk;
        size_t e;
        kt_check("ekfac_scaling_measured", kl->ek->batches == 1 && kl->ek->gen == kl->basis_gen,
                 "layer %d: %d batches in S, generation %d of %d", kl->index, kl->ek->batches, kl->ek->gen, kl->basis_gen);
        for (n = 0; n < B; ++n)
            for (g = 0; g < G; ++g) {
                basis(s, kl->EG + (size_t)g * M * M, kl->EA + (size_t)g * nb * Ka * Ka, dW[i] + (size_t)n * per + g * MK, 1, Z);
                for (e = 0; e < MK; ++e) S[g * MK + e] += Z[e] * Z[e] / B;
            }
        /* float: a gemm over T terms and two projections over M and Ka, squared, summed
         * over B images: 1e-4 relative to the entry, 1e-5 of the largest */
        snprintf(nm, sizeof nm, "layer%d_S_is_the_second_moment_in_the_eigenbasis", kl->index);
        kt_close_f(nm, kl->ek->S, S, per, 1e-5 * kt_maxabs(S, per), 1e-4);

        /* P from the definition, with K-FAC's damping of each factor */
        for (g = 0; g < G; ++g) {
            const double lG = sqrt(k->cfg.damping) * eig_mean(kl->dG + (size_t)g * M, M);
            for (e = 0; e < MK; ++e) X[e] = kl->D[g * MK + e];
            basis(s, kl->EG + (size_t)g * M * M, kl->EA + (size_t)g * nb * Ka * Ka, X, 1, Z);
            for (r = 0; r < M; ++r)
                for (c = 0; c < K; ++c) {
                    bk = g * nb + c / Ka;
                    const double lA = sqrt(k->cfg.damping) * eig_mean(kl->dA + (size_t)bk * Ka, Ka);
                    const double dg = kl->dG[(size_t)g * M + r], da = kl->dA[(size_t)g * K + c];
                    Z[(size_t)r * K + c] /= S[g * MK + (size_t)r * K + c] + lA * dg + lG * da + lA * lG;
                }
            basis(s, kl->EG + (size_t)g * M * M, kl->EA + (size_t)g * nb * Ka * Ka, Z, 0, P + g * MK);
        }
        /* float32 projections and a float S against double; the damped denominators
         * bound the amplification by 1/(lA lG): 1e-3 of max |P| */
        double worst = 0, mag = kt_maxabs(P, per);
        for (e = 0; e < per; ++e) worst = fmax(worst, fabs(kl->P[e] - P[e]));
        snprintf(nm, sizeof nm, "layer%d_P_is_the_ekfac_step", kl->index);
        kt_check(nm, worst <= 1e-3 * mag && mag > 0, "worst %.3g, max |P| %.3g", worst, mag);

        /* the control: K-FAC's step on the same D differs */
        float *Pe = (float *)malloc(per * sizeof(float)), *Pk = (float *)malloc(per * sizeof(float));
        memcpy(Pe, kl->P, per * sizeof(float));
        kl->ek->batches = 0;
        kfac_precondition_layer(k, kl);
        memcpy(Pk, kl->P, per * sizeof(float));
        double diff = 0, norm = 0;
        for (e = 0; e < per; ++e) {
            diff += ((double)Pe[e] - Pk[e]) * ((double)Pe[e] - Pk[e]);
            norm += (double)Pk[e] * Pk[e];
        }
        snprintf(nm, sizeof nm, "layer%d_control_ekfac_differs_from_kfac", kl->index);
        kt_check(nm, diff > 1e-4 * norm, "relative difference %.3g", sqrt(diff / norm));

        /* with S = dG dA^T the EKFAC step is K-FAC's */
        float *Sk = (float *)malloc(per * sizeof(float));
        for (g = 0; g < G; ++g)
            for (r = 0; r < M; ++r)
                for (c = 0; c < K; ++c) Sk[g * MK + (size_t)r * K + c] = kl->dG[(size_t)g * M + r] * kl->dA[(size_t)g * K + c];
        memcpy(kl->ek->S, Sk, per * sizeof(float));
        kl->ek->batches = 1;
        kl->ek->R_ok = 0;
        kfac_precondition_layer(k, kl);
        double *ref = (double *)malloc(per * sizeof(double));
        for (e = 0; e < per; ++e) ref[e] = Pk[e];
        /* the same float operations in another order (eigenbasis vs damped inverses):
         * 1e-4 of the largest entry */
        snprintf(nm, sizeof nm, "layer%d_ekfac_with_kfac_scaling_is_kfac", kl->index);
        kt_close_f(nm, kl->P, ref, per, 1e-4 * kt_maxabs(ref, per), 0);
        /* the measured scaling back */
        for (n = 0; n < (int)per; ++n) kl->ek->S[n] = (float)S[n];
        kl->ek->R_ok = 0;
        free(ref); free(Sk); free(Pe); free(Pk);
        free(S); free(Z); free(P); free(X); free(dW[i]);
    }

    /* the state file keeps S and its count */
    const char *w = "build/tests/ekfac.weights";
    save_weights(net, (char *)w);
    network *back = kt_net(cfg, 4);
    load_weights(back, (char *)w);
    kfac_state_load(back, w);
    int same = 1;
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *a = &k->layers[i], *b = &kfac_of(back)->layers[i];
        same &= kt_same_bits("S", a->ek->S, b->ek->S, (size_t)a->s.groups * a->s.M * a->s.K, 0) &&
                b->ek->batches == a->ek->batches && b->ek->gen == b->basis_gen;
    }
    kt_check("state_keeps_the_scaling", same, "S, its count or its basis differ after a save and load");
    free_network(back);
    free_network(net);

    /* with the background decompositions (statistics every update, a decomposition
     * every 4 installed 2 later, not on a statistics step's start alone): EKFAC in
     * force at the end, every weight finite */
    net = kt_net(kt_cfg_with("build/tests/ekfac-lag.cfg", cfg, "inverse_interval=4\ninverse_lag=2\n"), 4);
    k = kfac_of(net);
    kt_train_updates(net, 52, 0, 12);
    int finite = 1, used = 0;
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        finite &= kfac_all_finite(net->layers[kl->index].weights, kt_nweights(&net->layers[kl->index]));
        used += kl->ek->batches > 0 && kl->ek->gen == kl->basis_gen;
    }
    kt_check("lagged_decompositions_train_finite_with_ekfac", finite && used == k->nlayers && k->worker,
             "finite %d, %d of %d layers with a scaling of their basis, worker %s", finite, used, k->nlayers,
             k->worker ? "on" : "off");
    free_network(net);
    return kt_exit();
}
