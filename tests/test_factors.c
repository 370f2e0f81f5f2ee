/* test_factors: the Kronecker factors A and G against a naive reference.
 *
 * For each covered layer, after every train_network_datum call, the reference adds
 * (DESIGN.md 4; KFC, Grosse & Martens 2016)
 *
 *   A += sum_i sum_t a_it a_it^T          a_it: patch of image i at output location t,
 *                                         a 1 appended when the layer has its own bias
 *   G += sum_i (1/T) sum_t g_it g_it^T    g_it: l.delta of image i at location t
 *
 * in double with plain loops, from the layer's input and delta as they are after the
 * call (fisher=empirical: the real backward is the one K-FAC captured from), and
 * divides by the images of the update at the update.  The first update must give the
 * batch average exactly; the second the running average decay*old + (1-decay)*new.
 *
 * The reference's patch layout is not taken on trust: for layers with their own bias
 * and a linear activation, W a_it + b must reproduce Darknet's own forward output.
 *
 * A third net is resized (resize_network, as `random=1` does in Darknet's trainers)
 * between the two updates: the number of output locations T changes, and the
 * factors must follow.  A fourth is the yolov3-tiny layout of tests/cfg/yolo-tiny.cfg
 * (13 batch-normalized convolutions, route, upsample, two [yolo] heads) with one box
 * per image, the detection path of issue 8. */
#include "kt.h"
#include "kfac.h"

typedef struct {
    int index;          /* layer in the net */
    int groups, K, M, kin, has_bias;
    double *A, *G;      /* groups x K x K, groups x M x M: running reference */
    double *A_acc, *G_acc;
    int n;              /* images in the accumulators */
    int have;           /* A, G hold at least one update */
} ref_layer;

/* patch of image `im` (c/groups channels of h x w, one group) at output (oy, ox):
 * a[(ch*size + ky)*size + kx], then a 1 for the bias */
static void conv_patch(const layer *l, const float *im, int oy, int ox, int has_bias, double *a)
{
    int ch, ky, kx, s = l->size, cg = l->c / l->groups;
    for (ch = 0; ch < cg; ++ch)
        for (ky = 0; ky < s; ++ky)
            for (kx = 0; kx < s; ++kx) {
                int iy = oy * l->stride - l->pad + ky, ix = ox * l->stride - l->pad + kx;
                double v = 0;
                if (iy >= 0 && iy < l->h && ix >= 0 && ix < l->w) v = im[((size_t)ch * l->h + iy) * l->w + ix];
                a[(ch * s + ky) * s + kx] = v;
            }
    if (has_bias) a[cg * s * s] = 1;
}

static void add_outer(double *X, const double *v, int n, double w)
{
    int i, j;
    for (i = 0; i < n; ++i)
        for (j = 0; j < n; ++j) X[(size_t)i * n + j] += w * v[i] * v[j];
}

/* Adds the call's statistics of layer r->index to r's accumulators.  `w_before` and
 * `b_before` are the layer's weights and biases the forward pass used; when
 * `selfcheck` is set the reference patches are checked against Darknet's output. */
static void ref_accumulate(network *net, ref_layer *r, const float *w_before, const float *b_before,
                           int selfcheck, const char *name)
{
    const layer *l = &net->layers[r->index];
    const float *x = r->index == 0 ? net->input : net->layers[r->index - 1].output;
    const int T = l->type == CONVOLUTIONAL ? l->out_h * l->out_w : 1; /* now: resize_network changes it */
    double *a = (double *)calloc((size_t)r->K, sizeof(double));
    double *g = (double *)calloc((size_t)r->M, sizeof(double));
    double worst = 0, scale = 0;
    int b, grp, t, m, k;
    for (b = 0; b < l->batch; ++b) {
        for (grp = 0; grp < r->groups; ++grp) {
            double *Ag = r->A_acc + (size_t)grp * r->K * r->K, *Gg = r->G_acc + (size_t)grp * r->M * r->M;
            for (t = 0; t < T; ++t) {
                if (l->type == CONNECTED) {
                    for (k = 0; k < r->kin; ++k) a[k] = x[(size_t)b * l->inputs + k];
                    if (r->has_bias) a[r->kin] = 1;
                    for (m = 0; m < r->M; ++m) g[m] = l->delta[(size_t)b * l->outputs + m];
                } else {
                    const float *im = x + ((size_t)b * l->c + (size_t)grp * (l->c / l->groups)) * l->h * l->w;
                    conv_patch(l, im, t / l->out_w, t % l->out_w, r->has_bias, a);
                    for (m = 0; m < r->M; ++m)
                        g[m] = l->delta[((size_t)b * l->n + (size_t)grp * r->M + m) * T + t];
                }
                add_outer(Ag, a, r->K, 1.0);
                add_outer(Gg, g, r->M, 1.0 / T);
                if (selfcheck) {
                    for (m = 0; m < r->M; ++m) {
                        int o = grp * r->M + m;
                        double z = b_before[o];
                        for (k = 0; k < r->kin; ++k) z += (double)w_before[(size_t)o * r->kin + k] * a[k];
                        double out = l->type == CONNECTED ? l->output[(size_t)b * l->outputs + o]
                                                          : l->output[((size_t)b * l->n + o) * T + t];
                        if (fabs(z - out) > worst) worst = fabs(z - out);
                        if (fabs(out) > scale) scale = fabs(out);
                    }
                }
            }
        }
    }
    r->n += l->batch;
    if (selfcheck) {
        /* float forward vs double reference of a dot product of <= 37 terms of size
         * O(1): a few float ulps of the largest output */
        char nm[256];
        snprintf(nm, sizeof nm, "%s_reference_patches_reproduce_forward", name);
        kt_check(nm, worst <= 1e-5 * (scale > 1 ? scale : 1), "max |W a + b - output| = %.3g (outputs up to %.3g)", worst, scale);
    }
    free(a);
    free(g);
}

static void ref_fold(ref_layer *r, double decay)
{
    size_t nA = (size_t)r->groups * r->K * r->K, nG = (size_t)r->groups * r->M * r->M, i;
    double wo = r->have ? decay : 0, wn = r->have ? 1 - decay : 1;
    for (i = 0; i < nA; ++i) r->A[i] = wo * r->A[i] + wn * r->A_acc[i] / r->n;
    for (i = 0; i < nG; ++i) r->G[i] = wo * r->G[i] + wn * r->G_acc[i] / r->n;
    memset(r->A_acc, 0, nA * sizeof(double));
    memset(r->G_acc, 0, nG * sizeof(double));
    r->n = 0;
    r->have = 1;
}

/* resize_w > 0: resize_network(net, resize_w, resize_h) before the second update, as
 * Darknet's trainers do with random=1; fill: the batches (kt_batch when NULL) */
static void run_cfg(const char *cfg, const char *tag, unsigned seed, double decay, int resize_w, int resize_h,
                    void (*fill)(network *, uint64_t, uint64_t))
{
    network *net = kt_net(cfg, seed);
    ref_layer refs[16];
    int nref = 0, i, u, s;
    for (i = 0; i < net->n; ++i) {
        const float *A, *G;
        int groups, K, M;
        const layer *l = &net->layers[i];
        if (!kfac_layer_factors(net, i, &A, &G, &groups, &K, &M)) continue;
        ref_layer *r = &refs[nref++];
        memset(r, 0, sizeof *r);
        r->index = i;
        r->groups = l->type == CONVOLUTIONAL ? l->groups : 1;
        r->has_bias = !l->batch_normalize;
        r->kin = l->type == CONVOLUTIONAL ? l->c / l->groups * l->size * l->size : l->inputs;
        r->K = r->kin + r->has_bias;
        r->M = l->type == CONVOLUTIONAL ? l->n / l->groups : l->outputs;
        char nm[160];
        snprintf(nm, sizeof nm, "%s_L%d_factor_shapes", tag, i);
        kt_check(nm, groups == r->groups && K == r->K && M == r->M,
                 "core has groups %d A %d G %d, expected groups %d A %d G %d", groups, K, M, r->groups, r->K, r->M);
        r->A = (double *)calloc((size_t)r->groups * r->K * r->K, sizeof(double));
        r->A_acc = (double *)calloc((size_t)r->groups * r->K * r->K, sizeof(double));
        r->G = (double *)calloc((size_t)r->groups * r->M * r->M, sizeof(double));
        r->G_acc = (double *)calloc((size_t)r->groups * r->M * r->M, sizeof(double));
    }
    {
        char nm[160];
        snprintf(nm, sizeof nm, "%s_all_layers_covered", tag);
        int want = 0;
        for (i = 0; i < net->n; ++i) want += net->layers[i].type == CONVOLUTIONAL || net->layers[i].type == CONNECTED;
        kt_check(nm, nref == want && nref > 0, "%d layers under K-FAC, %d conv/connected layers", nref, want);
    }

    for (u = 0; u < 2; ++u) {
        if (u == 1 && resize_w > 0) resize_network(net, resize_w, resize_h);
        for (s = 0; s < net->subdivisions; ++s) {
            /* weights the forward pass will use, for the patch self-check */
            float *wb[16], *bb[16];
            for (i = 0; i < nref; ++i) {
                const layer *l = &net->layers[refs[i].index];
                size_t nw = kt_nweights(l), nb = (size_t)refs[i].groups * refs[i].M;
                wb[i] = (float *)malloc(nw * sizeof(float));
                bb[i] = (float *)malloc(nb * sizeof(float));
                memcpy(wb[i], l->weights, nw * sizeof(float));
                memcpy(bb[i], l->biases, nb * sizeof(float));
            }
            (fill ? fill : kt_batch)(net, 11, (uint64_t)u * net->subdivisions + s);
            train_network_datum(net);
            for (i = 0; i < nref; ++i) {
                const layer *l = &net->layers[refs[i].index];
                char nm[64];
                snprintf(nm, sizeof nm, "%s_L%d", tag, refs[i].index);
                int selfcheck = u == 0 && s == 0 && refs[i].has_bias && l->activation == LINEAR;
                ref_accumulate(net, &refs[i], wb[i], bb[i], selfcheck, nm);
                free(wb[i]);
                free(bb[i]);
            }
        }
        for (i = 0; i < nref; ++i) {
            ref_layer *r = &refs[i];
            const float *A, *G;
            int groups, K, M;
            char nm[160];
            ref_fold(r, decay);
            kfac_layer_factors(net, r->index, &A, &G, &groups, &K, &M);
            size_t nA = (size_t)r->groups * r->K * r->K, nG = (size_t)r->groups * r->M * r->M;
            /* float32 ssyrk sums of at most a few hundred products vs a double sum:
             * about 1e-5 relative to the largest entry; 1e-4 leaves a margin while a
             * wrong index, scale (1/T, 1/n) or decay is off by far more */
            snprintf(nm, sizeof nm, "%s_L%d_%s_A_update%d", tag, r->index,
                     net->layers[r->index].type == CONNECTED ? "conn" : "conv", u);
            kt_close_f(nm, A, r->A, nA, 1e-4 * kt_maxabs(r->A, nA), 1e-4);
            snprintf(nm, sizeof nm, "%s_L%d_%s_G_update%d", tag, r->index,
                     net->layers[r->index].type == CONNECTED ? "conn" : "conv", u);
            kt_close_f(nm, G, r->G, nG, 1e-4 * kt_maxabs(r->G, nG), 1e-4);
        }
    }
    for (i = 0; i < nref; ++i) {
        free(refs[i].A); free(refs[i].A_acc); free(refs[i].G); free(refs[i].G_acc);
    }
    free_network(net);
}

int main(void)
{
    /* both cfgs set [kfac] decay=0.5: the second update's factors are 0.5 old + 0.5 new */
    run_cfg("tests/cfg/factors1.cfg", "factors1", 3, 0.5, 0, 0, NULL);
    run_cfg("tests/cfg/factors2.cfg", "factors2", 4, 0.5, 0, 0, NULL);
    /* a fully convolutional net resized between the two updates (7x8 -> 10x9) */
    run_cfg("tests/cfg/factors3.cfg", "resized", 5, 0.5, 10, 9, NULL);
    /* the yolov3-tiny layout, empirical Fisher (the reference reads the real deltas) */
    run_cfg(kt_cfg_with("build/tests/factors-yolo.cfg", "tests/cfg/yolo-tiny.cfg",
                        "[kfac]\ndecay=0.5\nfisher=empirical\nstats_interval=1\n"),
            "yolo_tiny", 6, 0.5, 0, 0, kt_yolo_batch);
    return kt_exit();
}
