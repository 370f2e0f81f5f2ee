/* test_region: the true-Fisher pass's sampled targets for [region] (YOLOv2's loss,
 * darknet-kfac/kfac_losses.c) against the expectation from the loss's analytic output
 * Fisher, as tests/test_fisher_losses.c does for [yolo].
 *
 * tests/cfg/fisher-region.cfg: a 1x1 linear convolution into a [region] layer on a 3x3
 * grid, 2 anchor slots of 7 entries (x, y, w, h, objectness, 2 classes), one box per
 * image on anchor 0's shape in a known cell (bias_match), thresh 1 (no slot ignored).
 * The convolution is linear, so its delta is the region layer's sampled delta after
 * region's backward (patches/0022: the sigmoid's derivative p (1 - p) on x, y and the
 * objectness), and K-FAC's G after one statistics step is its mean outer product over
 * the N = B*T (image, location) rows.  Per entry the variance of the delta below:
 *
 *   x, y      s (p (1 - p))^2, Gaussian; s = coord_scale (2 - w h) on the assigned slot,
 *             else 0.01 while Darknet's seen < 12800 (the prior towards the anchors), else 0
 *   w, h      s, Gaussian
 *   obj       object_scale (assigned) or noobject_scale, times (p (1 - p))^2, Gaussian
 *   classes   class_scale p (1 - p) on the assigned slot (Bernoulli), else 0
 *
 * Every entry of G within 5 standard deviations of its expectation (as
 * test_fisher_losses: the sampler has its own fixed seed; 5 sigma says the check is
 * not tuned to it), an entry of no variance exactly 0; with softmax classes the two
 * classes' deltas are opposite (e_y - p over two classes), so their entries of G are
 * checked on the diagonal and against each other.  Cases: the prior on (seen < 12800)
 * and off, logistic and softmax classes.  Control per case: the empirical Fisher is
 * far (> 20 sigma) from the expectation. */
#include "kt.h"
#include "kfac_internal.h"

#define T 9   /* locations */
#define M 14  /* channels: 2 slots x 7 entries */
#define E 7

/* per-row second and fourth moments of the delta (N x M) */
typedef struct {
    int N;
    double *v, *m;
} moments;

static void set_gaussian(moments *s, int row, int j, double var)
{
    s->v[(size_t)row * M + j] = var;
    s->m[(size_t)row * M + j] = 3 * var * var;
}

static void set_bernoulli(moments *s, int row, int j, double p, double w)
{
    s->v[(size_t)row * M + j] = w * p * (1 - p);
    s->m[(size_t)row * M + j] = w * w * (p * pow(1 - p, 4) + (1 - p) * pow(p, 4));
}

/* worst |G - E G| / sigma over the entries (softmax: not the pairs of one slot's two
 * classes, which are correlated); *exact_bad when an entry of no variance is not 0 */
static double worst_z(const moments *s, const float *G, int softmax, int *exact_bad)
{
    double worst = 0;
    int i, j, k;
    *exact_bad = 0;
    for (j = 0; j < M; ++j)
        for (k = 0; k < M; ++k) {
            if (softmax && j != k && j / E == k / E && j % E >= 5 && k % E >= 5) continue;
            double e = 0, var = 0;
            for (i = 0; i < s->N; ++i) {
                const double vj = s->v[(size_t)i * M + j], vk = s->v[(size_t)i * M + k];
                if (j == k) {
                    e += vj;
                    var += s->m[(size_t)i * M + j] - vj * vj;
                } else {
                    var += vj * vk;
                }
            }
            e /= s->N;
            var /= (double)s->N * s->N;
            const double g = G[(size_t)j * M + k];
            if (var == 0) {
                if (g != e) *exact_bad = 1;
                continue;
            }
            const double z = fabs(g - e) / sqrt(var);
            if (!(z <= worst)) worst = z;
        }
    return worst;
}

/* one case: the true Fisher's G against its expectation, the empirical one far */
static void region_case(const char *name, int softmax, int seen)
{
    char nm[128], sec[64];
    double z[2];
    int bad[2], r, b, t, c;
    const char *cfg = "tests/cfg/fisher-region.cfg";
    if (softmax) {
        /* the same net with softmax classes */
        FILE *in = fopen(cfg, "rb"), *o = fopen("build/tests/fisher-region-softmax.cfg", "wb");
        char line[256];
        if (!in || !o) {
            printf("FAIL harness: cannot read %s or write build/tests/fisher-region-softmax.cfg\n", cfg);
            exit(1);
        }
        while (fgets(line, sizeof line, in)) fputs(strcmp(line, "softmax=0\n") ? line : "softmax=1\n", o);
        fclose(in);
        fclose(o);
        cfg = "build/tests/fisher-region-softmax.cfg";
    }
    for (r = 0; r < 2; ++r) {
        snprintf(sec, sizeof sec, "%s", r ? "fisher=empirical\n" : "# true Fisher\n");
        snprintf(nm, sizeof nm, "build/tests/fisher-region-%s-%d.cfg", name, r);
        network *n = kt_net(kt_cfg_with(nm, cfg, sec), 31);
        const layer *l0 = &n->layers[0];
        const int B = n->batch;
        int *cell = (int *)calloc((size_t)B, sizeof(int));
        kt_rng g = kt_rng_make(47, 0);
        size_t i;
        /* spread the outputs away from 0.5 */
        for (i = 0; i < (size_t)l0->nweights; ++i) l0->weights[i] *= 3;
        for (i = 0; i < (size_t)n->inputs * B; ++i) n->input[i] = (float)(2 * kt_uniform(&g) - 1);
        memset(n->truth, 0, (size_t)n->truths * B * sizeof(float));
        for (b = 0; b < B; ++b) {
            const int ci = (int)(3 * kt_uniform(&g)), cj = (int)(3 * kt_uniform(&g)), cls = (int)(2 * kt_uniform(&g));
            float *tr = n->truth + (size_t)b * n->truths;
            tr[0] = (ci + 0.5f) / 3;
            tr[1] = (cj + 0.5f) / 3;
            tr[2] = tr[3] = 1.0f / 3;
            tr[4] = (float)cls;
            cell[b] = cj * 3 + ci;
        }
        *n->seen = seen;
        train_network_datum(n);
        const layer *y = &n->layers[1];
        const double wbox = y->coord_scale * (2 - (1.0 / 3) * (1.0 / 3)), prior = *n->seen < 12800 ? 0.01 : 0;
        moments s = {B * T, (double *)calloc((size_t)B * T * M, sizeof(double)), (double *)calloc((size_t)B * T * M, sizeof(double))};
        for (b = 0; b < B; ++b)
            for (t = 0; t < T; ++t)
                for (c = 0; c < M; ++c) {
                    const int e = c % E, row = b * T + t, assigned = c / E == 0 && t == cell[b];
                    const double p = y->output[(size_t)b * y->outputs + (size_t)c * T + t], dp = p * (1 - p);
                    const double sc = assigned ? wbox : prior;
                    if (e < 2) set_gaussian(&s, row, c, sc * dp * dp);
                    else if (e < 4) set_gaussian(&s, row, c, sc);
                    else if (e == 4) set_gaussian(&s, row, c, (assigned ? y->object_scale : y->noobject_scale) * dp * dp);
                    else if (assigned) set_bernoulli(&s, row, c, p, y->class_scale);
                }
        const float *A, *G;
        int gr, k, m;
        kfac_layer_factors(n, 0, &A, &G, &gr, &k, &m);
        z[r] = worst_z(&s, G, softmax, &bad[r]);
        if (softmax && r == 0) {
            /* d6 = -d5 and d13 = -d12 (two classes): their entries of G agree to rounding */
            double worst = 0, mag = 0;
            int slot;
            for (slot = 0; slot < 2; ++slot) {
                const int a = slot * E + 5, bb = slot * E + 6;
                const double gaa = G[a * M + a], gbb = G[bb * M + bb], gab = G[a * M + bb];
                mag = fmax(mag, gaa);
                worst = fmax(worst, fmax(fabs(gaa - gbb), fabs(gaa + gab)));
            }
            snprintf(nm, sizeof nm, "region_%s_softmax_classes_opposite", name);
            /* float sums of 4608 products of values below 2: 1e-4 of the entry */
            kt_check(nm, worst <= 1e-4 * mag && mag > 0, "worst %.3g of %.3g", worst, mag);
        }
        free(s.v);
        free(s.m);
        free(cell);
        if (r == 0) {
            snprintf(nm, sizeof nm, "region_%s_sampled", name);
            kt_check(nm, kfac_of(n)->true_fisher && kfac_of(n)->losses[0].kind == KFAC_LOSS_REGION,
                     "the pass does not sample the [region] layer");
        }
        free_network(n);
    }
    printf("  %s: worst |G - E[G]| in standard deviations: true Fisher %.2f, empirical %.1f\n", name, z[0], z[1]);
    snprintf(nm, sizeof nm, "region_%s_sampled_G_matches_its_expectation", name);
    kt_check(nm, z[0] < 5 && !bad[0], "an entry is %.2f sigma away%s", z[0], bad[0] ? ", or an entry of no variance is not 0" : "");
    snprintf(nm, sizeof nm, "region_%s_control_empirical_G_is_far", name);
    kt_check(nm, z[1] > 20 || bad[1], "the empirical G is only %.1f sigma away", z[1]);
}

int main(void)
{
    region_case("prior_logistic", 0, 0);
    region_case("logistic", 0, 20000);
    region_case("prior_softmax", 1, 0);
    return kt_exit();
}
