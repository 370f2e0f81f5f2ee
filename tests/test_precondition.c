/* test_precondition: the preconditioned gradient against an explicit dense solve.
 *
 * kfac_precondition_layer (after kfac_inverse_refresh; the CPU backend) must return,
 * for each
 * group, the P solving
 *
 *   [(A + lA I) (x) (G + lG I)] vec(P) = vec(D),   lA = sqrt(damping) * mean eig(A),
 *                                                  lG = sqrt(damping) * mean eig(G)
 *
 * where "mean eig" is over the nonzero eigenvalues (the trace over the rank),
 *
 * (factored Tikhonov damping, Martens & Grosse 2015 section 6.3, as documented in
 * kfac_inverses.c), with vec() stacking columns so that (A (x) G) vec(P) =
 * vec(G P A).  The reference builds that (M K) x (M K) matrix explicitly and solves it
 * in double by Gaussian elimination with partial pivoting; mean eig = trace / rank,
 * with the rank the factors were built with (random_psd). */
#include "kt.h"
#include "kfac_internal.h"

/* random symmetric PSD n x n: X = R R^T / r + shift I, R n x r with entries in [-1,1)
 * scaled by `scale`; r < n makes it rank deficient when shift is 0 */
static void random_psd(kt_rng *g, float *X, int n, int r, double scale, double shift)
{
    double *R = (double *)calloc((size_t)n * r, sizeof(double));
    int i, j, k;
    for (i = 0; i < n * r; ++i) R[i] = scale * (2 * kt_uniform(g) - 1);
    for (i = 0; i < n; ++i)
        for (j = 0; j < n; ++j) {
            double s = 0;
            for (k = 0; k < r; ++k) s += R[(size_t)i * r + k] * R[(size_t)j * r + k];
            X[(size_t)i * n + j] = (float)(s / r + (i == j ? shift : 0));
        }
    free(R);
}

static double trace_of(const float *X, int n)
{
    double s = 0;
    int i;
    for (i = 0; i < n; ++i) s += X[(size_t)i * n + i];
    return s;
}

typedef struct {
    const char *name;
    int groups, K, M;
    int rank_A, rank_G;     /* rank of the random factors (= dim: full rank) */
    double scale_A, scale_G;/* entry scale: G's are tiny, as real G factors are */
    float damping;
} pcase;

/* A net whose layer 0 has factors of the case's shapes: a connected layer
 * (groups 1, K-1 inputs, M outputs) or a 1x1 conv over a 1x1 image with
 * groups*(K-1) channels and groups*M filters.  The K-FAC layer state is the core's
 * own (every buffer it needs allocated by kfac_network_attach). */
static network *layer_net(const pcase *c)
{
    char path[256], text[512];
    snprintf(path, sizeof path, "build/tests/precondition-%s.cfg", c->name);
    if (c->groups == 1)
        snprintf(text, sizeof text, "[net]\nbatch=1\ninputs=%d\n\n[connected]\noutput=%d\nactivation=linear\n\n"
                 "[softmax]\n\n[kfac]\nstep=kl_clip\n", c->K - 1, c->M);
    else
        snprintf(text, sizeof text, "[net]\nbatch=1\nheight=1\nwidth=1\nchannels=%d\n\n[convolutional]\nfilters=%d\n"
                 "size=1\nstride=1\ngroups=%d\nactivation=linear\n\n[softmax]\n\n[kfac]\nstep=kl_clip\n",
                 c->groups * (c->K - 1), c->groups * c->M, c->groups);
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        printf("FAIL harness: cannot write %s\n", path);
        exit(1);
    }
    return kt_net(path, 1);
}

static void run_case(const pcase *c, uint64_t stream)
{
    kt_rng g = kt_rng_make(stream, 0);
    const int G_ = c->groups, K = c->K, M = c->M;
    network *net = layer_net(c);
    kfac_layer *kl = (kfac_layer *)net->layers[0].kfac;
    char nm[160];
    snprintf(nm, sizeof nm, "%s_layer_shapes", c->name);
    if (!kt_check(nm, kl && kl->s.groups == G_ && kl->s.K == K && kl->s.M == M, "layer 0: %s groups %d K %d M %d",
                  kl ? "covered" : "not covered", kl ? kl->s.groups : 0, kl ? kl->s.K : 0, kl ? kl->s.M : 0)) {
        free_network(net);
        return;
    }
    int grp, i, j, a, b;
    for (grp = 0; grp < G_; ++grp) {
        random_psd(&g, kl->A + (size_t)grp * K * K, K, c->rank_A, c->scale_A * (grp + 1), 0);
        random_psd(&g, kl->G + (size_t)grp * M * M, M, c->rank_G, c->scale_G / (grp + 1), 0);
    }
    for (i = 0; i < G_ * M * K; ++i) kl->D[i] = (float)(c->scale_G * (2 * kt_uniform(&g) - 1));
    kl->have_factors = 1;

    snprintf(nm, sizeof nm, "%s_inverse_update", c->name);
    kfac_net *k = kfac_of(net);
    int rc = kfac_inverse_refresh(k, kl);
    kt_check(nm, rc == 0 && kl->have_inverse, "kfac_inverse_refresh returned %d, have_inverse %d", rc, kl->have_inverse);
    k->cfg.damping = c->damping;
    kfac_precondition_layer(k, kl);

    const int n = M * K;
    double *X = (double *)calloc((size_t)n * n, sizeof(double));
    double *x = (double *)calloc((size_t)n, sizeof(double));
    double *ref = (double *)calloc((size_t)G_ * M * K, sizeof(double));
    for (grp = 0; grp < G_; ++grp) {
        const float *A = kl->A + (size_t)grp * K * K, *G = kl->G + (size_t)grp * M * M;
        const float *D = kl->D + (size_t)grp * M * K;
        double lA = sqrt((double)c->damping) * trace_of(A, K) / (c->rank_A < K ? c->rank_A : K);
        double lG = sqrt((double)c->damping) * trace_of(G, M) / (c->rank_G < M ? c->rank_G : M);
        /* column-major vec: index of P[i][j] (row i < M, column j < K) is j*M + i;
         * X = (A + lA I) (x) (G + lG I) */
        for (a = 0; a < K; ++a)
            for (b = 0; b < K; ++b) {
                double av = A[(size_t)a * K + b] + (a == b ? lA : 0);
                for (i = 0; i < M; ++i)
                    for (j = 0; j < M; ++j)
                        X[(size_t)(a * M + i) * n + (b * M + j)] = av * (G[(size_t)i * M + j] + (i == j ? lG : 0));
            }
        for (i = 0; i < M; ++i)
            for (j = 0; j < K; ++j) x[j * M + i] = D[(size_t)i * K + j];
        if (kt_solve_dense(X, x, n) != 0) {
            snprintf(nm, sizeof nm, "%s_reference_solve", c->name);
            kt_fail(nm, "the damped Kronecker matrix is singular: bad test case");
        }
        for (i = 0; i < M; ++i)
            for (j = 0; j < K; ++j) ref[(size_t)grp * M * K + (size_t)i * K + j] = x[j * M + i];
    }
    /* float32 eigendecompositions vs a double solve: the error grows with the
     * condition number of the damped factors, here at most about 1/sqrt(damping)
     * per factor relative to the mean eigenvalue (<= 1e3 for the product); float
     * eps 6e-8 times that is ~1e-4 of the largest |P|, so atol = 1e-3*max|P| and
     * rtol 1e-3.  A wrong damping (e.g. damping instead of sqrt(damping)), a
     * transposed eigenbasis or a group mix-up is off by far more. */
    snprintf(nm, sizeof nm, "%s_P_vs_dense_solve", c->name);
    size_t nP = (size_t)G_ * M * K;
    kt_close_f(nm, kl->P, ref, nP, 1e-3 * kt_maxabs(ref, nP), 1e-3);

    free(X); free(x); free(ref);
    free_network(net);
}

/* A layer whose factors are all zero (a dead layer) has nothing to precondition
 * with: P must be D unchanged (kfac_driver.c) */
static void zero_factor_case(void)
{
    static const pcase c = {"zero_factors", 1, 3, 2, 3, 2, 0, 0, 1e-3f};
    network *net = layer_net(&c);
    kfac_layer *kl = (kfac_layer *)net->layers[0].kfac;
    int i;
    for (i = 0; i < c.M * c.K; ++i) kl->D[i] = (float)(i + 1);
    kl->have_factors = 1; /* A and G are still all zeros */
    kfac_inverse_refresh(kfac_of(net), kl);
    kfac_of(net)->cfg.damping = c.damping;
    kfac_precondition_layer(kfac_of(net), kl);
    kt_check("zero_factors_P_is_D", memcmp(kl->P, kl->D, (size_t)c.M * c.K * sizeof(float)) == 0, "P differs from D");
    free_network(net);
}

int main(void)
{
    static const pcase cases[] = {
        /* name                       groups K   M  rankA rankG scaleA scaleG damping */
        {"small_fullrank",              1,  7,  5,  7,  5,   1.0,  1e-3,  1e-3f},
        {"groups2_fullrank",            2,  6,  4,  6,  4,   1.0,  1e-2,  1e-3f},
        {"lowrank_like_gray_images",    1, 28,  6,  9,  3,   3.0,  1e-4,  1e-2f},
        {"groups2_lowrank_big_damping", 2, 10,  8,  4,  5,   0.5,  1e-3,  0.5f},
        {"medium",                      1, 37, 12, 40, 20,   1.0,  1e-2,  1e-3f},
    };
    size_t i;
    for (i = 0; i < sizeof cases / sizeof cases[0]; ++i) run_case(&cases[i], 100 + i);
    zero_factor_case();
    return kt_exit();
}
