/* test_blocks: a layer whose A is larger than max_dim keeps A as diagonal blocks over
 * its input channels (issue 8: YOLO's 3x3x512 and 3x3x1024 convolutions), tested
 * against the dense definition (tests/cfg/blocks.cfg has the shapes):
 *
 *   shapes    the blocks each layer gets (the fewest that fit max_dim)
 *   factors   every block equals the diagonal block of the dense A, computed here in
 *             double from the layer's input patches: A = (1/B) sum_i sum_t a_t a_t^T
 *   precond   P against an explicit solve of
 *             [blockdiag(A_j + l_j I) (x) (G + l_G I)] vec(P) = vec(D), with
 *             step=kl_clip's damping, l_j = sqrt(damping) * mean nonzero eigenvalue
 *             of A_j (as for whole factors), and with step=adaptive's, l_j = pi gamma
 *             and l_G = gamma / pi, gamma = sqrt(lambda + decay), one
 *             pi = sqrt((tr A / K) / (tr G / M)) over all of A's blocks
 *   trains    a few updates keep every weight finite */
#include "kt.h"
#include "kfac_internal.h"

/* dense A (K x K) of a conv layer from its input, or of a connected one (T = 1) */
static void dense_A(const layer *l, const float *input, double *A, int group, int groups)
{
    const int cg = l->type == CONVOLUTIONAL ? l->c / groups : l->inputs;
    const int s = l->type == CONVOLUTIONAL ? l->size : 1;
    const int K = cg * s * s;
    double *a = (double *)calloc((size_t)K, sizeof(double));
    int b, oy, ox, c, ky, kx, i, j;
    memset(A, 0, sizeof(double) * K * K);
    for (b = 0; b < l->batch; ++b) {
        const int oh = l->type == CONVOLUTIONAL ? l->out_h : 1, ow = l->type == CONVOLUTIONAL ? l->out_w : 1;
        for (oy = 0; oy < oh; ++oy)
            for (ox = 0; ox < ow; ++ox) {
                if (l->type == CONVOLUTIONAL) {
                    const float *im = input + ((size_t)b * groups + group) * cg * l->h * l->w;
                    for (c = 0; c < cg; ++c)
                        for (ky = 0; ky < s; ++ky)
                            for (kx = 0; kx < s; ++kx) {
                                int iy = oy * l->stride + ky - l->pad, ix = ox * l->stride + kx - l->pad;
                                a[(c * s + ky) * s + kx] =
                                    iy >= 0 && iy < l->h && ix >= 0 && ix < l->w ? im[(c * l->h + iy) * l->w + ix] : 0;
                            }
                } else {
                    for (i = 0; i < K; ++i) a[i] = input[(size_t)b * l->inputs + i];
                }
                for (i = 0; i < K; ++i)
                    for (j = 0; j < K; ++j) A[(size_t)i * K + j] += a[i] * a[j] / l->batch;
            }
    }
    free(a);
}

/* sqrt(damping) * mean of the eigenvalues above 1e-5 times the largest (kfac_inverses.c) */
static double damping_of(const float *d, int n, double damping)
{
    double s = 0, mx = 0;
    int i, r = 0;
    for (i = 0; i < n; ++i) {
        s += d[i];
        if (d[i] > mx) mx = d[i];
    }
    for (i = 0; i < n; ++i) r += d[i] > 1e-5f * mx;
    return sqrt(damping) * s / r;
}

/* P of layer 0 (3 blocks of 18, G 8) against the explicit solve, with the net's own
 * damping rule */
static void precondition_check(network *net, const char *name)
{
    kfac_net *k = kfac_of(net);
    int i;
    {
        kfac_layer *kl = &k->layers[0];
        const int K = kl->s.K, M = kl->s.M, nb = kfac_a_blocks(&kl->s), Ka = kfac_a_dim(&kl->s), n = M * K;
        kt_rng g = kt_rng_make(9, 0);
        for (i = 0; i < M * K; ++i) kl->D[i] = (float)(2 * kt_uniform(&g) - 1);
        kl->inv_damping = 0; /* rebuild from the decomposition of the step above */
        kfac_precondition_layer(k, kl);
        double lG = damping_of(kl->dG, M, k->cfg.damping), lA_adaptive = 0;
        if (kfac_adaptive_on(k)) {
            double ta = 0, tg = 0, gamma = sqrt((double)k->adapt->lambda + k->eta);
            for (i = 0; i < K; ++i) ta += kl->dA[i];
            for (i = 0; i < M; ++i) tg += kl->dG[i];
            double pi = sqrt((ta / K) / (tg / M));
            lA_adaptive = pi * gamma;
            lG = gamma / pi;
        }
        double *X = (double *)calloc((size_t)n * n, sizeof(double)), *x = (double *)calloc((size_t)n, sizeof(double));
        int a, b2, p, q, blk;
        for (blk = 0; blk < nb; ++blk) {
            const double lA = kfac_adaptive_on(k) ? lA_adaptive : damping_of(kl->dA + (size_t)blk * Ka, Ka, k->cfg.damping);
            for (a = 0; a < Ka; ++a)
                for (b2 = 0; b2 < Ka; ++b2) {
                    double av = kl->A[((size_t)blk * Ka + a) * Ka + b2] + (a == b2 ? lA : 0);
                    int ra = blk * Ka + a, cb = blk * Ka + b2;
                    /* column-major vec: P[p][q] at q*M + p; X = Ablock (x) G */
                    for (p = 0; p < M; ++p)
                        for (q = 0; q < M; ++q)
                            X[(size_t)(ra * M + p) * n + cb * M + q] = av * (kl->G[p * M + q] + (p == q ? lG : 0));
                }
        }
        for (p = 0; p < M; ++p)
            for (q = 0; q < K; ++q) x[q * M + p] = kl->D[p * K + q];
        kt_solve_dense(X, x, n);
        double worst = 0, mag = 0;
        for (p = 0; p < M; ++p)
            for (q = 0; q < K; ++q) {
                double ref = x[q * M + p];
                if (fabs(ref) > mag) mag = fabs(ref);
                if (fabs(kl->P[p * K + q] - ref) > worst) worst = fabs(kl->P[p * K + q] - ref);
            }
        /* float32 eigendecompositions against a double solve, damped factors of
         * condition <= 1/sqrt(damping) each (as test_precondition): 1e-3 of max|P| */
        kt_check(name, worst <= 1e-3 * mag, "worst %.3g, max |P| %.3g", worst, mag);
        free(X);
        free(x);
    }
}

int main(void)
{
    network *net = kt_net("tests/cfg/blocks.cfg", 3);
    kfac_net *k = kfac_of(net);
    const int want_blocks[4] = {3, 2, 10, 1};
    int i, j, ok = k->nlayers == 4;
    for (i = 0; ok && i < 4; ++i) ok = k->layers[i].index == i && kfac_a_blocks(&k->layers[i].s) == want_blocks[i];
    kt_check("blocks_per_layer", ok, "expected 3, 2, 10 and 1 blocks on layers 0-3");

    /* one statistics step; the factors are then this batch's (the first fold) */
    kt_batch(net, 5, 0);
    train_network_datum(net);
    for (i = 0; i < 3; ++i) {
        const kfac_layer *kl = &k->layers[i];
        const layer *l = &net->layers[kl->index];
        const float *input = i == 0 ? net->input : net->layers[i - 1].output;
        const int K = kl->s.K, nb = kfac_a_blocks(&kl->s), Ka = kfac_a_dim(&kl->s);
        double *A = (double *)calloc((size_t)K * K, sizeof(double)), worst = 0, mag = 0;
        int g, blk, r, c;
        for (g = 0; g < kl->s.groups; ++g) {
            dense_A(l, input, A, g, kl->s.groups);
            for (r = 0; r < K * K; ++r) if (fabs(A[r]) > mag) mag = fabs(A[r]);
            for (blk = 0; blk < nb; ++blk)
                for (r = 0; r < Ka; ++r)
                    for (c = 0; c < Ka; ++c) {
                        double got = kl->A[(((size_t)g * nb + blk) * Ka + r) * Ka + c];
                        double ref = A[(size_t)(blk * Ka + r) * K + blk * Ka + c];
                        if (fabs(got - ref) > worst) worst = fabs(got - ref);
                    }
        }
        char nm[64];
        snprintf(nm, sizeof nm, "layer%d_blocks_are_dense_A_diagonal_blocks", i);
        /* float32 sums of at most B*T = 150 products: 1e-5 of the largest entry */
        kt_check(nm, worst <= 1e-5 * mag, "worst |block - dense| %.3g, largest |A| %.3g", worst, mag);
        free(A);
    }

    precondition_check(net, "blocks_precondition_matches_dense_solve");

    kt_train_updates(net, 5, 1, 4);
    for (i = 0, ok = 1; i < net->n; ++i) {
        const layer *l = &net->layers[i];
        size_t nw = l->type == CONNECTED ? (size_t)l->inputs * l->outputs : (size_t)l->nweights;
        if (l->type == CONVOLUTIONAL || l->type == CONNECTED)
            for (j = 0; j < (int)nw; ++j) ok &= isfinite(l->weights[j]);
    }
    kt_check("blocks_net_trains_finite", ok && kfac_network_step(net) == 5, "a weight is not finite, or step %d",
             kfac_network_step(net));
    free_network(net);

    /* the adaptive step's damping on the same blocks */
    net = kt_net(kt_cfg_with("build/tests/blocks-adaptive.cfg", "tests/cfg/blocks.cfg", "step=adaptive\n"), 3);
    kt_batch(net, 5, 0);
    train_network_datum(net);
    kt_check("blocks_adaptive_active", kfac_adaptive_on(kfac_of(net)), "step=adaptive did not attach");
    precondition_check(net, "blocks_adaptive_precondition_matches_dense_solve");
    free_network(net);
    return kt_exit();
}
