/* test_fisher_losses: the true-Fisher pass samples each loss's targets so that the
 * sampled output derivatives have the loss's output Fisher as their expectation
 * (kfac_fisher.c), for every loss but the softmax (tests/test_fisher.c):
 *
 *   logistic  [logistic] after a linear 4 -> 5 map: E[d d^T] = diag(p (1 - p))
 *   sse       [cost] sse with scale 2: the delta below is sqrt(2) z, E = 2 I
 *   masked    [cost] masked: entries whose truth is SECRET_NUM are exactly 0, the
 *             others as sse (scale 1)
 *   yolo      [yolo] after a 1x1 linear convolution (14 channels on a 3x3 grid), one
 *             box per image on anchor 0's shape in a known cell: objectness p (1 - p)
 *             everywhere (ignore_thresh 1 ignores nothing), the assigned slot's x and
 *             y s p (1 - p) and w and h s (s = 2 - w h, the layer's box weight), its
 *             classes p (1 - p), everything else 0
 *
 * The layer before the loss is linear, so its delta is the loss's sampled delta and
 * K-FAC's G after one statistics step is its mean outer product over the N = B*T
 * (image, location) samples.  With per-sample variances v_i = E[d_i^2] and fourth
 * moments m_i, E[G_jj] = (1/N) sum v_ij, Var[G_jj] = (1/N^2) sum (m_ij - v_ij^2),
 * E[G_jk] = 0 and Var[G_jk] = (1/N^2) sum v_ij v_ik (j != k; the entries are
 * independent and zero-mean).  Every entry must be within 5 standard deviations
 * (deterministic: K-FAC's sampler has its own seed; 5 sigma says the check is not tuned
 * to it), and an entry with no variance (a masked output, an unassigned box) exactly 0.
 * Control per loss: the same net with fisher=empirical must be far (> 20 sigma) away. */
#include "kt.h"
#include "kfac_internal.h"

/* per-sample second and fourth moments of the sampled delta, N x M */
typedef struct {
    int N, M;
    double *v, *m;
} moments;

static moments moments_make(int N, int M)
{
    moments s = {N, M, (double *)calloc((size_t)N * M, sizeof(double)), (double *)calloc((size_t)N * M, sizeof(double))};
    return s;
}

static void bernoulli(moments *s, int i, int j, double p)
{
    s->v[(size_t)i * s->M + j] = p * (1 - p);
    s->m[(size_t)i * s->M + j] = p * pow(1 - p, 4) + (1 - p) * pow(p, 4);
}

/* sqrt(w) times a centred Bernoulli(p) */
static void scaled_bernoulli(moments *s, int i, int j, double p, double w)
{
    bernoulli(s, i, j, p);
    s->v[(size_t)i * s->M + j] *= w;
    s->m[(size_t)i * s->M + j] *= w * w;
}

static void gaussian(moments *s, int i, int j, double var)
{
    s->v[(size_t)i * s->M + j] = var;
    s->m[(size_t)i * s->M + j] = 3 * var * var;
}

/* worst |G - E G| / sigma; sets *exact_bad when an entry of zero variance is not 0 */
static double worst_z(const moments *s, const float *G, int *exact_bad)
{
    const int M = s->M, N = s->N;
    double worst = 0;
    int i, j, k;
    *exact_bad = 0;
    for (j = 0; j < M; ++j)
        for (k = 0; k < M; ++k) {
            double e = 0, var = 0;
            for (i = 0; i < N; ++i) {
                double vj = s->v[(size_t)i * M + j], vk = s->v[(size_t)i * M + k];
                if (j == k) {
                    e += vj;
                    var += s->m[(size_t)i * M + j] - vj * vj;
                } else {
                    var += vj * vk;
                }
            }
            e /= N;
            var /= (double)N * N;
            double g = G[(size_t)j * M + k];
            if (var == 0) {
                if (g != e) *exact_bad = 1;
                continue;
            }
            double z = fabs(g - e) / sqrt(var);
            if (!(z <= worst)) worst = z;
        }
    return worst;
}

/* a net of cfg with its weights scaled (to spread the outputs away from 0.5) */
static network *make(const char *cfg, const char *extra, unsigned seed, float wscale)
{
    char path[256];
    const char *c = cfg;
    if (extra) {
        snprintf(path, sizeof path, "build/tests/fisher-losses-%u.cfg", seed);
        c = kt_cfg_with(path, cfg, extra);
    }
    network *net = kt_net(c, seed);
    const layer *l = &net->layers[0];
    size_t n = l->type == CONNECTED ? (size_t)l->inputs * l->outputs : (size_t)l->nweights, i;
    for (i = 0; i < n; ++i) l->weights[i] *= wscale;
    return net;
}

/* the two checks of one loss: the true Fisher's G within 5 sigma of its expectation,
 * the empirical control (r = 1) far from it; frees both nets */
static void verdict(const char *name, const double z[2], const int bad[2], network *net[2])
{
    char nm[128];
    printf("  %s: worst |G - E[G]| in standard deviations: true Fisher %.2f, empirical %.1f\n", name, z[0], z[1]);
    snprintf(nm, sizeof nm, "%s_sampled_G_matches_its_expectation", name);
    kt_check(nm, z[0] < 5 && !bad[0], "an entry is %.2f sigma away%s", z[0], bad[0] ? ", or an entry of no variance is not 0" : "");
    snprintf(nm, sizeof nm, "%s_control_empirical_G_is_far", name);
    kt_check(nm, z[1] > 20 || bad[1], "the empirical G is only %.1f sigma away", z[1]);
    free_network(net[0]);
    free_network(net[1]);
}

/* logistic, sse, masked: a connected layer 0 feeding the loss layer 1 */
static void dense_case(const char *name, const char *cfg, float truth_mask_frac)
{
    network *net[2];
    double z[2];
    int bad[2], r;
    for (r = 0; r < 2; ++r) {
        net[r] = make(cfg, r ? "fisher=empirical\n" : NULL, 23, 3);
        network *n = net[r];
        kt_batch(n, 31, 0);
        if (truth_mask_frac > 0) {
            kt_rng g = kt_rng_make(37, 0);
            int i;
            for (i = 0; i < n->truths * n->batch; ++i)
                if (kt_uniform(&g) < truth_mask_frac) n->truth[i] = SECRET_NUM;
        }
        train_network_datum(n);
        const layer *loss = &n->layers[1];
        const int M = loss->inputs, B = loss->batch;
        moments s = moments_make(B, M);
        int i, j;
        for (i = 0; i < B; ++i)
            for (j = 0; j < M; ++j) {
                size_t x = (size_t)i * M + j;
                if (loss->type == LOGXENT) bernoulli(&s, i, j, loss->output[x]);
                else if (!(loss->cost_type == MASKED && n->truth[x] == SECRET_NUM)) gaussian(&s, i, j, loss->scale);
            }
        const float *A, *G;
        int gr, k, m;
        kfac_layer_factors(n, 0, &A, &G, &gr, &k, &m);
        z[r] = worst_z(&s, G, &bad[r]);
        free(s.v);
        free(s.m);
    }
    verdict(name, z, bad, net);
}

/* one box per image, anchor 0's shape (1/3 x 1/3 of the 3x3 input), in a random cell;
 * returns the cells (per image) in cell[] */
static void yolo_truth(network *net, int *cell)
{
    kt_rng g = kt_rng_make(41, 0);
    int b;
    memset(net->truth, 0, (size_t)net->truths * net->batch * sizeof(float));
    for (b = 0; b < net->batch; ++b) {
        int i = (int)(3 * kt_uniform(&g)), j = (int)(3 * kt_uniform(&g)), cls = (int)(2 * kt_uniform(&g));
        float *t = net->truth + (size_t)b * net->truths;
        t[0] = (i + 0.5f) / 3;
        t[1] = (j + 0.5f) / 3;
        t[2] = t[3] = 1.0f / 3;
        t[4] = (float)cls;
        cell[b] = j * 3 + i;
    }
}

static void yolo_case(void)
{
    network *net[2];
    double z[2];
    int bad[2], r;
    for (r = 0; r < 2; ++r) {
        net[r] = make("tests/cfg/fisher-yolo.cfg", r ? "fisher=empirical\n" : NULL, 29, 3);
        network *n = net[r];
        const int B = n->batch, T = 9, M = 14, E = 7;
        int *cell = (int *)calloc((size_t)B, sizeof(int));
        kt_rng g = kt_rng_make(43, 0);
        int i, b, t, c;
        for (i = 0; i < n->inputs * B; ++i) n->input[i] = (float)(2 * kt_uniform(&g) - 1);
        yolo_truth(n, cell);
        train_network_datum(n);
        const layer *y = &n->layers[1];
        const double w = 2 - (1.0 / 3) * (1.0 / 3); /* the layer's weight for a 1/3 x 1/3 box */
        moments s = moments_make(B * T, M);
        for (b = 0; b < B; ++b)
            for (t = 0; t < T; ++t)
                for (c = 0; c < M; ++c) {
                    const int slot = c / E, e = c % E, row = b * T + t;
                    const int assigned = slot == 0 && t == cell[b];
                    const double p = y->output[(size_t)b * y->outputs + (size_t)c * T + t];
                    if (e < 2) {
                        if (assigned) scaled_bernoulli(&s, row, c, p, w);
                    } else if (e < 4) {
                        if (assigned) gaussian(&s, row, c, w);
                    } else if (e == 4 || assigned) {
                        bernoulli(&s, row, c, p);
                    }
                }
        const float *A, *G;
        int gr, k, m;
        kfac_layer_factors(n, 0, &A, &G, &gr, &k, &m);
        z[r] = worst_z(&s, G, &bad[r]);
        free(s.v);
        free(s.m);
        free(cell);
    }
    verdict("yolo", z, bad, net);
}

int main(void)
{
    dense_case("logistic", "tests/cfg/fisher-logistic.cfg", 0);
    dense_case("sse", "tests/cfg/fisher-sse.cfg", 0);
    dense_case("masked", "tests/cfg/fisher-masked.cfg", 0.3f);
    yolo_case();
    return kt_exit();
}
