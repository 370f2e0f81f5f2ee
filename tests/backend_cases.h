/* backend_cases.h: checks of every operation of kfac_backend_ops (kfac_backend.h),
 * shared by tests/test_backend.c (the CPU backend) and tests/gpu/test_gpu_kfac.c (the
 * CUDA backend).  Header only; include it once, after kt.h.
 *
 *     bc_ctx c = {be, oracle, make, make_oracle};   // oracle and make_oracle may be NULL
 *     bc_run_all(&c, geometry_net);                 // a net of tests/cfg/backend.cfg
 *
 * Each case makes its inputs on the host from a kt_rng stream with a fixed seed,
 * computes what the operation must give with plain loops in double (the dense
 * reference), runs the operation on the backend under test and compares.  Data moves
 * only through the backend's from_host and to_host, so the same case runs on device
 * buffers.  With an oracle (the GPU test passes the CPU backend) the same inputs also
 * go through the oracle, and the backend under test is held to the oracle's output
 * as well: checks named `cuda_vs_cpu_...`.
 *
 * Tolerances.  u = 2^-24 is float32's unit roundoff.  A float sum of N terms, in any
 * order, with or without FMA, is within about N*u*sum|terms| of the exact sum
 * (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., section 3.1), so
 * a case that sums N products is held, element by element, to (N + c)*u times the
 * sum of the absolute values of its terms, c counting the few other roundings of the
 * element (a scale, the add into an accumulator).  That bound does not depend on the
 * data's conditioning and is what two correct implementations may differ by from the
 * exact value, so against the oracle the bound is doubled.  A bug (a wrong index, a
 * missing image, a wrong scale) moves an element by the size of its terms, far
 * outside it.  Subtractions, copies and label choices are exact on both backends and
 * are compared bit for bit.  Eigendecompositions are backward stable, not exact:
 * see bc_case_eigh.
 *
 * The driver-level cases at the end (bc_net_fallbacks, bc_net_replicas) run K-FAC's
 * own functions (kfac_internal.h) on a [kfac] net of either backend. */
#ifndef BACKEND_CASES_H
#define BACKEND_CASES_H

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include "kfac_internal.h"

#define BC_U (1.0 / 16777216.0)          /* float32 unit roundoff, 2^-24 */
#define BC_UD (1.0 / 9007199254740992.0) /* double's, 2^-53 */

typedef struct {
    kfac_backend *be;                      /* the backend under test */
    kfac_backend *oracle;                  /* NULL, or a backend of another kind run on the same inputs */
    kfac_backend *(*make)(int nslots);     /* another backend of be's kind (replica cases) */
    kfac_backend *(*make_oracle)(int nslots); /* another of the oracle's kind; NULL without an oracle */
} bc_ctx;

/* ---- helpers ------------------------------------------------------------------------ */

static void *bc_alloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p) {
        printf("FAIL harness: out of memory (%zu x %zu bytes)\n", n, size);
        exit(1);
    }
    return p;
}

static float *bc_f(size_t n) { return (float *)bc_alloc(n, sizeof(float)); }
static double *bc_d(size_t n) { return (double *)bc_alloc(n, sizeof(double)); }

/* a buffer of backend b holding host[0..n) (zeros when host is NULL) */
static float *bc_up(kfac_backend *b, const float *host, size_t n)
{
    float *p = b->ops->alloc(b, n);
    if (host && n) b->ops->from_host(b, p, host, n);
    return p;
}

/* a new host copy of backend buffer p (n floats) */
static float *bc_down(kfac_backend *b, const float *p, size_t n)
{
    float *h = bc_f(n);
    if (n) b->ops->to_host(b, h, p, n);
    return h;
}

static void bc_fill(kt_rng *r, float *x, size_t n, double lo, double hi)
{
    size_t i;
    for (i = 0; i < n; ++i) x[i] = (float)(lo + (hi - lo) * kt_uniform(r));
}

static double *bc_widen(const float *x, size_t n)
{
    double *d = bc_d(n);
    size_t i;
    for (i = 0; i < n; ++i) d[i] = x[i];
    return d;
}

/* Check names: `<be>_<what>`, or `<be>_vs_<oracle>_<what>` when o is given. */
static const char *bc_name(char *buf, size_t len, const kfac_backend *b, const kfac_backend *o, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static const char *bc_name(char *buf, size_t len, const kfac_backend *b, const kfac_backend *o, const char *fmt, ...)
{
    va_list ap;
    int k = o ? snprintf(buf, len, "%s_vs_%s_", b->ops->name, o->ops->name) : snprintf(buf, len, "%s_", b->ops->name);
    va_start(ap, fmt);
    vsnprintf(buf + k, len - (size_t)k, fmt, ap);
    va_end(ap);
    return buf;
}

/* Passes when |got[i] - ref[i]| <= tol[i] for every i with tol[i] >= 0 (a negative
 * tolerance marks an element the operation leaves undefined, such as the lower
 * triangle of a factor sum); NaN fails.  Prints the worst |err|/tol, so a run shows
 * the margin, and the first mismatches. */
static int bc_within(const char *name, const float *got, const double *ref, const double *tol, size_t n)
{
    size_t i, bad = 0, worst = 0, compared = 0;
    double worst_ratio = 0;
    for (i = 0; i < n; ++i) {
        if (tol[i] < 0) continue;
        double err = fabs((double)got[i] - ref[i]);
        ++compared;
        if (!(err <= tol[i])) {
            if (bad < 5)
                printf("  %s[%zu]: got %.9g ref %.9g |diff| %.3g > tol %.3g\n", name, i, got[i], ref[i], err, tol[i]);
            ++bad;
        }
        double r = tol[i] > 0 ? err / tol[i] : (err > 0 ? INFINITY : 0);
        if (!(r <= worst_ratio)) {
            worst_ratio = r;
            worst = i;
        }
    }
    printf("  %s: worst |err|/tol %.3g over %zu values\n", name, worst_ratio, compared);
    if (bad) {
        kt_fail(name, "%zu of %zu values outside their tolerance (worst at %zu: got %.9g ref %.9g tol %.3g)", bad,
                compared, worst, got[worst], ref[worst], tol[worst]);
        return 0;
    }
    kt_ok(name);
    return 1;
}

static int bc_same(const char *name, const float *got, const float *ref, size_t n)
{
    return kt_check(name, kt_same_bits(name, got, ref, n, 0), "not bit for bit equal (%zu values)", n);
}

/* got (backend under test) against the dense reference with tolerance tol, and when
 * orc (the oracle's output on the same inputs) is given, against it with 2*tol. */
static void bc_report(const bc_ctx *c, const char *what, const float *got, const float *orc, const double *ref,
                      const double *tol, size_t n)
{
    char name[192];
    bc_within(bc_name(name, sizeof name, c->be, NULL, "%s", what), got, ref, tol, n);
    if (!orc) return;
    double *o = bc_widen(orc, n), *t2 = bc_d(n);
    size_t i;
    for (i = 0; i < n; ++i) t2[i] = tol[i] < 0 ? -1 : 2 * tol[i];
    bc_within(bc_name(name, sizeof name, c->be, c->oracle, "%s", what), got, o, t2, n);
    free(o);
    free(t2);
}

/* the same for an operation that must be exact on every backend */
static void bc_report_exact(const bc_ctx *c, const char *what, const float *got, const float *orc, const float *ref,
                            size_t n)
{
    char name[192];
    bc_same(bc_name(name, sizeof name, c->be, NULL, "%s", what), got, ref, n);
    if (orc) bc_same(bc_name(name, sizeof name, c->be, c->oracle, "%s", what), got, orc, n);
}

/* A covered layer's factor shape, from the definitions in kfac_backend.h (the test's
 * own reading of them, not the driver's code). */
static kfac_shape bc_shape_of(const layer *l)
{
    kfac_shape s;
    memset(&s, 0, sizeof s);
    s.type = l->type;
    s.has_bias = !l->batch_normalize;
    if (l->type == CONVOLUTIONAL) {
        s.groups = l->groups;
        s.k_in = l->c / l->groups * l->size * l->size;
        s.M = l->n / l->groups;
        s.T = l->out_h * l->out_w;
    } else {
        s.groups = 1;
        s.k_in = l->inputs;
        s.M = l->outputs;
        s.T = 1;
    }
    s.K = s.k_in + s.has_bias;
    s.a_blocks = 1; /* backend.cfg's layers are far below max_dim: A whole */
    return s;
}

/* a random symmetric matrix (groups x n x n) with entries in [-1, 1) */
static void bc_random_symmetric(kt_rng *r, float *X, int n, int groups)
{
    int g, i, j;
    for (g = 0; g < groups; ++g) {
        float *x = X + (size_t)g * n * n;
        for (i = 0; i < n; ++i)
            for (j = i; j < n; ++j) x[(size_t)i * n + j] = x[(size_t)j * n + i] = (float)(2 * kt_uniform(r) - 1);
    }
}

/* Random symmetric positive definite n x n matrices (groups of them) with
 * eigenvalues in about [0.5, 3]: X = R R^T / (4n) + 0.5 I, R n x 4n uniform in
 * [-sqrt 3, sqrt 3).  Well conditioned on purpose: inverses test the code, not the
 * conditioning. */
static void bc_random_spd(kt_rng *r, float *X, int n, int groups)
{
    int g, i, j, k, m = 4 * n;
    double *R = bc_d((size_t)n * m);
    for (g = 0; g < groups; ++g) {
        float *x = X + (size_t)g * n * n;
        for (i = 0; i < n * m; ++i) R[i] = sqrt(3.0) * (2 * kt_uniform(r) - 1);
        for (i = 0; i < n; ++i)
            for (j = 0; j <= i; ++j) {
                double s = 0;
                for (k = 0; k < m; ++k) s += R[(size_t)i * m + k] * R[(size_t)j * m + k];
                s = s / m + (i == j ? 0.5 : 0);
                x[(size_t)i * n + j] = x[(size_t)j * n + i] = (float)s;
            }
    }
    free(R);
}

/* Eigenvalues, ascending, of the symmetric n x n matrix A by cyclic Jacobi rotations
 * in double: n^3 work per sweep, slow and simple, accurate to double rounding. */
static void bc_jacobi_eigenvalues(const double *A, int n, double *w)
{
    double *a = bc_d((size_t)n * n);
    int sweep, p, q, k, i, j;
    memcpy(a, A, (size_t)n * n * sizeof(double));
    for (sweep = 0; sweep < 100; ++sweep) {
        double off = 0, all = 0;
        for (i = 0; i < n; ++i)
            for (j = 0; j < n; ++j) {
                all += a[(size_t)i * n + j] * a[(size_t)i * n + j];
                if (i != j) off += a[(size_t)i * n + j] * a[(size_t)i * n + j];
            }
        if (off <= 1e-32 * all) break;
        for (p = 0; p < n; ++p)
            for (q = p + 1; q < n; ++q) {
                double apq = a[(size_t)p * n + q];
                if (apq == 0) continue;
                /* the rotation that zeroes a[p][q] (Numerical Recipes 11.1) */
                double theta = (a[(size_t)q * n + q] - a[(size_t)p * n + p]) / (2 * apq);
                double t = fabs(theta) > 1e150 ? 0.5 / theta
                                               : (theta >= 0 ? 1 : -1) / (fabs(theta) + sqrt(theta * theta + 1));
                double c = 1 / sqrt(t * t + 1), s = t * c;
                for (k = 0; k < n; ++k) {
                    double akp = a[(size_t)k * n + p], akq = a[(size_t)k * n + q];
                    a[(size_t)k * n + p] = c * akp - s * akq;
                    a[(size_t)k * n + q] = s * akp + c * akq;
                }
                for (k = 0; k < n; ++k) {
                    double apk = a[(size_t)p * n + k], aqk = a[(size_t)q * n + k];
                    a[(size_t)p * n + k] = c * apk - s * aqk;
                    a[(size_t)q * n + k] = s * apk + c * aqk;
                }
            }
    }
    for (i = 0; i < n; ++i) w[i] = a[(size_t)i * n + i];
    for (i = 1; i < n; ++i) { /* insertion sort, ascending */
        double x = w[i];
        for (j = i; j > 0 && w[j - 1] > x; --j) w[j] = w[j - 1];
        w[j] = x;
    }
    free(a);
}

/* ---- memory ---------------------------------------------------------------------------- */

static void bc_case_memory(const bc_ctx *c)
{
    kfac_backend *b = c->be;
    const size_t n = 1000;
    char name[128];
    kt_rng r = kt_rng_make(900, 0);
    float *x = bc_f(n), *zeros = bc_f(n), *want = bc_f(n);
    bc_fill(&r, x, n, -1, 1);

    kt_check(bc_name(name, sizeof name, b, NULL, "alloc0_null"), b->ops->alloc(b, 0) == NULL,
             "alloc of 0 floats did not return NULL");
    float *p = b->ops->alloc(b, n), *q = b->ops->alloc(b, n);
    float *h = bc_down(b, p, n);
    bc_same(bc_name(name, sizeof name, b, NULL, "alloc_zeroed"), h, zeros, n);
    free(h);

    b->ops->from_host(b, p, x, n);
    h = bc_down(b, p, n);
    bc_same(bc_name(name, sizeof name, b, NULL, "from_host_to_host"), h, x, n);
    free(h);

    /* copy into the middle of q: q[100..150) = p[0..50), the rest of q still zero */
    b->ops->copy(b, q + 100, p, 50);
    memcpy(want + 100, x, 50 * sizeof(float));
    h = bc_down(b, q, n);
    bc_same(bc_name(name, sizeof name, b, NULL, "copy_range"), h, want, n);
    free(h);
    b->ops->copy(b, q, p, n);
    h = bc_down(b, q, n);
    bc_same(bc_name(name, sizeof name, b, NULL, "copy_whole"), h, x, n);
    free(h);

    /* zero a range: p[10..30) = 0, the rest untouched */
    b->ops->zero(b, p + 10, 20);
    memcpy(want, x, n * sizeof(float));
    memset(want + 10, 0, 20 * sizeof(float));
    h = bc_down(b, p, n);
    bc_same(bc_name(name, sizeof name, b, NULL, "zero_range"), h, want, n);
    free(h);

    b->ops->release(b, NULL);
    b->ops->release(b, p);
    b->ops->release(b, q);
    free(x);
    free(zeros);
    free(want);
}

/* The offsets update_fields gives (where the true-Fisher pass redirects Darknet's
 * *_updates pointers) must name the arrays darknet_buffers hands the driver. */
static void bc_case_update_fields(const bc_ctx *c, const layer *l, int index)
{
    kfac_backend *b = c->be;
    kfac_darknet_buffers bufs;
    char name[128];
    b->ops->darknet_buffers(l, &bufs);
    float *w = *(float *const *)((const char *)l + b->ops->update_fields.weights);
    float *bi = *(float *const *)((const char *)l + b->ops->update_fields.biases);
    float *sc = *(float *const *)((const char *)l + b->ops->update_fields.scales);
    kt_check(bc_name(name, sizeof name, b, NULL, "update_fields_layer%d", index),
             w == bufs.weight_updates && bi == bufs.bias_updates && sc == bufs.scale_updates,
             "update_fields offsets do not name darknet_buffers' weight/bias/scale updates");
}

/* ---- statistics ---------------------------------------------------------------------------- */

/* a (K): layer l's input patch for image b, group g, output location t, as
 * kfac_backend.h defines it: rows (channel, ky, kx) of group g's channels, zero
 * outside the image, then a 1 with has_bias; a connected layer's inputs (t = 0) */
static void bc_patch(const layer *l, const kfac_shape *s, const float *input, int b, int g, int t, double *a)
{
    int k;
    if (s->type == CONNECTED) {
        for (k = 0; k < s->k_in; ++k) a[k] = input[(size_t)b * l->inputs + k];
    } else {
        const int cg = l->c / l->groups, sz = l->size, oy = t / l->out_w, ox = t % l->out_w;
        const float *im = input + (size_t)b * l->inputs + (size_t)g * cg * l->h * l->w;
        int ch, ky, kx;
        for (ch = 0; ch < cg; ++ch)
            for (ky = 0; ky < sz; ++ky)
                for (kx = 0; kx < sz; ++kx) {
                    int iy = oy * l->stride + ky - l->pad, ix = ox * l->stride + kx - l->pad;
                    a[(ch * sz + ky) * sz + kx] =
                        iy >= 0 && iy < l->h && ix >= 0 && ix < l->w ? im[((size_t)ch * l->h + iy) * l->w + ix] : 0.0;
                }
    }
    if (s->has_bias) a[s->k_in] = 1;
}

/* ref[i][j] += w v_i v_j and abs[i][j] += |w v_i v_j| over the upper triangle */
static void bc_add_outer_upper(double *ref, double *abs_sum, const double *v, int n, double w)
{
    int i, j;
    for (i = 0; i < n; ++i)
        for (j = i; j < n; ++j) {
            double x = w * v[i] * v[j];
            ref[(size_t)i * n + j] += x;
            abs_sum[(size_t)i * n + j] += fabs(x);
        }
}

/* the result of capture_A (G when is_G) on backend b: acc0 + the batch's sum */
static float *bc_capture_run(kfac_backend *b, int is_G, const kfac_shape *s, const layer *l, const float *data,
                             size_t ndata, const float *acc0, size_t nacc)
{
    float *d = bc_up(b, data, ndata), *acc = bc_up(b, acc0, nacc);
    if (is_G) b->ops->capture_G(b, s, l, d, acc);
    else b->ops->capture_A(b, s, l, d, acc);
    float *out = bc_down(b, acc, nacc);
    b->ops->release(b, d);
    b->ops->release(b, acc);
    return out;
}

/* capture_A (is_G 0) or capture_G (is_G 1) of layer l on random data, into an
 * accumulator that already holds a random symmetric matrix (the sum must be added). */
static void bc_case_capture(const bc_ctx *c, const layer *l, int index, int is_G)
{
    const kfac_shape s = bc_shape_of(l);
    const int dim = is_G ? s.M : s.K, B = l->batch, T = s.T;
    const size_t dd = (size_t)dim * dim, nacc = (size_t)s.groups * dd;
    const size_t ndata = (size_t)B * (is_G ? l->outputs : l->inputs);
    kt_rng r = kt_rng_make(910 + is_G, (uint64_t)index);
    float *data = bc_f(ndata), *acc0 = bc_f(nacc);
    double *ref = bc_d(nacc), *abs_sum = bc_d(nacc), *tol = bc_d(nacc), *v = bc_d((size_t)dim);
    int b, g, t, m;
    size_t i;
    bc_fill(&r, data, ndata, -1, 1);
    bc_random_symmetric(&r, acc0, dim, s.groups);
    for (i = 0; i < nacc; ++i) {
        ref[i] = acc0[i];
        abs_sum[i] = fabs(acc0[i]);
    }
    /* A: sum over images and locations of a a^T; G: sum over images of
     * (1/T) sum over locations of g g^T, g the delta at t (NCHW, group-major) */
    for (b = 0; b < B; ++b)
        for (g = 0; g < s.groups; ++g)
            for (t = 0; t < T; ++t) {
                if (!is_G) {
                    bc_patch(l, &s, data, b, g, t, v);
                } else {
                    for (m = 0; m < s.M; ++m)
                        v[m] = s.type == CONNECTED ? data[(size_t)b * l->outputs + m]
                                                   : data[(((size_t)b * s.groups + g) * s.M + m) * T + t];
                }
                bc_add_outer_upper(ref + (size_t)g * dd, abs_sum + (size_t)g * dd, v, dim, is_G ? 1.0 / T : 1.0);
            }
    /* B*T products per element, summed in float in some order and added to the
     * accumulator; G's 1/T scale adds one rounding.  Lower triangles: undefined. */
    const double N = (double)B * T;
    for (g = 0; g < s.groups; ++g)
        for (i = 0; i < dd; ++i) {
            size_t row = i / dim, col = i % dim, e = (size_t)g * dd + i;
            tol[e] = row <= col ? (N + 4) * BC_U * abs_sum[e] : -1;
        }
    float *got = bc_capture_run(c->be, is_G, &s, l, data, ndata, acc0, nacc);
    float *orc = c->oracle ? bc_capture_run(c->oracle, is_G, &s, l, data, ndata, acc0, nacc) : NULL;
    char what[96];
    snprintf(what, sizeof what, "capture_%s_layer%d_%s", is_G ? "G" : "A", index,
             s.type == CONNECTED ? "connected" : "conv");
    bc_report(c, what, got, orc, ref, tol, nacc);
    free(data); free(acc0); free(ref); free(abs_sum); free(tol); free(v); free(got); free(orc);
}

/* the result of capture_bn on backend b: acc0 + the batch's sum */
static float *bc_capture_bn_run(kfac_backend *b, const kfac_shape *s, int B, const float *delta, const float *xn,
                                size_t ndata, const float *acc0, size_t nacc)
{
    float *d = bc_up(b, delta, ndata), *x = bc_up(b, xn, ndata), *acc = bc_up(b, acc0, nacc);
    b->ops->capture_bn(b, s, B, d, x, acc);
    float *out = bc_down(b, acc, nacc);
    b->ops->release(b, d);
    b->ops->release(b, x);
    b->ops->release(b, acc);
    return out;
}

/* A batch-norm block's shape (kfac_bn.c): F of 2C, whole or in C blocks of 2 */
static kfac_shape bc_bn_shape(int C, int T, int per_channel)
{
    kfac_shape s;
    memset(&s, 0, sizeof s);
    s.type = BATCHNORM;
    s.groups = 1;
    s.M = 1;
    s.K = s.k_in = 2 * C;
    s.T = T;
    s.a_blocks = per_channel ? C : 1;
    return s;
}

/* capture_bn: per image n the 2C-vector g_n = per channel (sum_t delta x_norm,
 * sum_t delta), and acc (blocks, upper triangles) += sum_n g_n g_n^T, into an
 * accumulator holding random values (the sum must be added). */
static void bc_case_capture_bn(const bc_ctx *c, int per_channel)
{
    const int B = 5, C = 3, T = 7;
    const kfac_shape s = bc_bn_shape(C, T, per_channel);
    const int nb = kfac_a_blocks(&s), Ka = kfac_a_dim(&s), K = s.K;
    const size_t ndata = (size_t)B * C * T, nacc = kfac_a_len(&s), dd = (size_t)Ka * Ka;
    kt_rng r = kt_rng_make(915, (uint64_t)per_channel);
    float *delta = bc_f(ndata), *xn = bc_f(ndata), *acc0 = bc_f(nacc);
    double *ref = bc_d(nacc), *abs_sum = bc_d(nacc), *tol = bc_d(nacc), *v = bc_d((size_t)K);
    int b, ch, t, blk;
    size_t i;
    bc_fill(&r, delta, ndata, -1, 1);
    bc_fill(&r, xn, ndata, -2, 2);
    bc_random_symmetric(&r, acc0, Ka, nb);
    for (i = 0; i < nacc; ++i) {
        ref[i] = acc0[i];
        abs_sum[i] = fabs(acc0[i]);
    }
    for (b = 0; b < B; ++b) {
        for (ch = 0; ch < C; ++ch) {
            double sg = 0, sb = 0;
            for (t = 0; t < T; ++t) {
                sg += (double)delta[((size_t)b * C + ch) * T + t] * xn[((size_t)b * C + ch) * T + t];
                sb += delta[((size_t)b * C + ch) * T + t];
            }
            v[2 * ch] = sg;
            v[2 * ch + 1] = sb;
        }
        for (blk = 0; blk < nb; ++blk) bc_add_outer_upper(ref + blk * dd, abs_sum + blk * dd, v + blk * Ka, Ka, 1.0);
    }
    /* each g_n rounded once to float (its sum in double), then B products summed in
     * float and added to the accumulator; lower triangles undefined */
    for (blk = 0; blk < nb; ++blk)
        for (i = 0; i < dd; ++i)
            tol[blk * dd + i] = i / Ka <= i % Ka ? (B + 6) * BC_U * abs_sum[blk * dd + i] : -1;
    float *got = bc_capture_bn_run(c->be, &s, B, delta, xn, ndata, acc0, nacc);
    float *orc = c->oracle ? bc_capture_bn_run(c->oracle, &s, B, delta, xn, ndata, acc0, nacc) : NULL;
    bc_report(c, per_channel ? "capture_bn_per_channel" : "capture_bn_whole", got, orc, ref, tol, nacc);
    free(delta); free(xn); free(acc0); free(ref); free(abs_sum); free(tol); free(v); free(got); free(orc);
}

static float *bc_fold_run(kfac_backend *b, const float *X0, const float *acc0, int dim, int groups, float w_old,
                          float w_new, float inv_n, float **acc_after)
{
    const size_t n = (size_t)groups * dim * dim;
    float *X = bc_up(b, X0, n), *acc = bc_up(b, acc0, n);
    b->ops->fold(b, X, acc, dim, groups, w_old, w_new, inv_n);
    float *out = bc_down(b, X, n);
    *acc_after = bc_down(b, acc, n);
    b->ops->release(b, X);
    b->ops->release(b, acc);
    return out;
}

/* X <- w_old*X + w_new*inv_n*acc from acc's upper triangle (its lower one holds NaN,
 * which must never be read), both triangles of X written, acc zeroed */
static void bc_case_fold(const bc_ctx *c)
{
    static const int shapes[][2] = {{5, 3}, {1, 1}, {40, 2}}; /* dim, groups */
    const float w_old = 0.7f, w_new = 0.3f, inv_n = 1.0f / 6.0f; /* 1/6: inexact in float */
    int k;
    for (k = 0; k < 3; ++k) {
        const int dim = shapes[k][0], groups = shapes[k][1];
        const size_t dd = (size_t)dim * dim, n = (size_t)groups * dd;
        kt_rng r = kt_rng_make(920, (uint64_t)k);
        float *X0 = bc_f(n), *acc0 = bc_f(n), *zeros = bc_f(n), *acc_after, *orc_acc = NULL;
        double *ref = bc_d(n), *tol = bc_d(n);
        size_t g, i, j;
        bc_random_symmetric(&r, X0, dim, groups);
        for (g = 0; g < (size_t)groups; ++g)
            for (i = 0; i < (size_t)dim; ++i)
                for (j = 0; j < (size_t)dim; ++j)
                    acc0[g * dd + i * dim + j] = j >= i ? (float)(20 * kt_uniform(&r) - 10) : NAN;
        for (g = 0; g < (size_t)groups; ++g)
            for (i = 0; i < (size_t)dim; ++i)
                for (j = 0; j < (size_t)dim; ++j) {
                    size_t e = g * dd + i * dim + j, up = g * dd + (i < j ? i * dim + j : j * dim + i);
                    double a = (double)w_old * X0[up], bb = (double)w_new * inv_n * acc0[up];
                    ref[e] = a + bb;
                    /* w_new*inv_n, its product with acc, w_old*X and the sum: four
                     * roundings (one less with FMA) */
                    tol[e] = 4 * BC_U * (fabs(a) + fabs(bb));
                }
        float *got = bc_fold_run(c->be, X0, acc0, dim, groups, w_old, w_new, inv_n, &acc_after);
        float *orc = c->oracle ? bc_fold_run(c->oracle, X0, acc0, dim, groups, w_old, w_new, inv_n, &orc_acc) : NULL;
        char what[96], name[160];
        snprintf(what, sizeof what, "fold_dim%d_groups%d", dim, groups);
        bc_report(c, what, got, orc, ref, tol, n);
        /* written to both triangles from one value: exactly symmetric */
        int sym = 1;
        for (g = 0; g < (size_t)groups; ++g)
            for (i = 0; i < (size_t)dim; ++i)
                for (j = 0; j < i; ++j)
                    sym &= memcmp(&got[g * dd + i * dim + j], &got[g * dd + j * dim + i], sizeof(float)) == 0;
        kt_check(bc_name(name, sizeof name, c->be, NULL, "%s_symmetric", what), sym, "X is not exactly symmetric");
        snprintf(what, sizeof what, "fold_dim%d_groups%d_acc_zeroed", dim, groups);
        bc_same(bc_name(name, sizeof name, c->be, NULL, "%s", what), acc_after, zeros, n);
        free(X0); free(acc0); free(zeros); free(acc_after); free(orc_acc); free(ref); free(tol); free(got); free(orc);
    }
}

/* ---- numbers for the host ------------------------------------------------------------------ */

/* flag_nonfinite: NaN, +inf, -inf flag their slot; finite values (FLT_MAX, -0,
 * denormals) and a NaN just past n do not; a flag stays set until read; a large
 * array is scanned to its end (on CUDA beyond one pass of the grid); results()
 * zeroes what it read. */
static void bc_case_flags(const bc_ctx *c)
{
    kfac_backend *b = c->be;
    const size_t n = 1000, big = ((size_t)1 << 24) + 261; /* 16.8 M: more than 65535 blocks x 256 threads */
    char name[128];
    kt_rng r = kt_rng_make(930, 0);
    float *x = bc_f(n + 1);
    bc_fill(&r, x, n, -1, 1);
    x[7] = FLT_MAX;
    x[8] = -0.0f;
    x[9] = 1e-40f; /* denormal */
    x[n] = NAN;    /* past the end */
    float *fin = bc_up(b, x, n + 1);
    float *bad[3];
    const float specials[3] = {NAN, INFINITY, -INFINITY};
    const size_t where[3] = {3, n - 1, 0};
    int k;
    for (k = 0; k < 3; ++k) {
        float save = x[where[k]];
        x[where[k]] = specials[k];
        bad[k] = bc_up(b, x, n);
        x[where[k]] = save;
    }
    float *hbig = bc_f(big);
    hbig[big - 1] = NAN;
    float *dbig = bc_up(b, hbig, big);
    free(hbig);

    b->ops->flag_nonfinite(b, fin, n, 0);     /* finite, NaN at x[n] not read */
    b->ops->flag_nonfinite(b, bad[0], n, 1);  /* NaN */
    b->ops->flag_nonfinite(b, bad[1], n, 2);  /* +inf at the last element */
    b->ops->flag_nonfinite(b, bad[2], n, 3);  /* -inf at the first */
    b->ops->flag_nonfinite(b, bad[0], n, 4);  /* bad, then finite: stays 1 */
    b->ops->flag_nonfinite(b, fin, n, 4);
    b->ops->flag_nonfinite(b, dbig, big, 5);  /* NaN at the very end of a long array */
    b->ops->flag_nonfinite(b, dbig, big - 1, 6); /* the same without it */
    double got[7], again[7];
    b->ops->results(b, got, 7);
    b->ops->results(b, again, 7);
    const double want[7] = {0, 1, 1, 1, 1, 1, 0};
    for (k = 0; k < 7; ++k) {
        static const char *what[7] = {"finite", "nan", "pos_inf_last", "neg_inf_first", "sticky", "long_nan_at_end",
                                      "long_finite"};
        kt_check(bc_name(name, sizeof name, b, NULL, "flag_nonfinite_%s", what[k]), got[k] == want[k],
                 "slot %d = %g, expected %g", k, got[k], want[k]);
    }
    kt_check(bc_name(name, sizeof name, b, NULL, "flag_nonfinite_results_zeroed"),
             again[0] == 0 && again[1] == 0 && again[2] == 0 && again[3] == 0 && again[4] == 0 && again[5] == 0 &&
                 again[6] == 0,
             "slots not zero after results(): %g %g %g %g %g %g %g", again[0], again[1], again[2], again[3], again[4],
             again[5], again[6]);
    b->ops->release(b, fin);
    for (k = 0; k < 3; ++k) b->ops->release(b, bad[k]);
    b->ops->release(b, dbig);
    free(x);
}

/* slots after dot on backend b: 0 <- <x0,y0>; 1 <- <x0,y0> + <x1,y1>; 2 <- long; 3 <- n = 0 */
static void bc_dot_run(kfac_backend *b, float *const hx[3], float *const hy[3], const size_t len[3], double out[4])
{
    float *dx[3], *dy[3];
    int k;
    for (k = 0; k < 3; ++k) {
        dx[k] = bc_up(b, hx[k], len[k]);
        dy[k] = bc_up(b, hy[k], len[k]);
    }
    b->ops->dot(b, dx[0], dy[0], len[0], 0);
    b->ops->dot(b, dx[0], dy[0], len[0], 1);
    b->ops->dot(b, dx[1], dy[1], len[1], 1);
    b->ops->dot(b, dx[2], dy[2], len[2], 2);
    b->ops->dot(b, dx[0], dy[0], 0, 3);
    b->ops->results(b, out, 4);
    for (k = 0; k < 3; ++k) {
        b->ops->release(b, dx[k]);
        b->ops->release(b, dy[k]);
    }
}

static void bc_case_dot(const bc_ctx *c)
{
    const size_t len[3] = {1000, 777, (size_t)1 << 20}; /* the last loops over CUDA's capped grid */
    float *hx[3], *hy[3];
    double ref[4] = {0, 0, 0, 0}, abs_sum[4] = {0, 0, 0, 0}, got[4], orc[4];
    char name[128];
    int k;
    size_t i;
    for (k = 0; k < 3; ++k) {
        kt_rng r = kt_rng_make(940, (uint64_t)k);
        hx[k] = bc_f(len[k]);
        hy[k] = bc_f(len[k]);
        bc_fill(&r, hx[k], len[k], -1, 1);
        bc_fill(&r, hy[k], len[k], -1, 1);
    }
    for (k = 0; k < 3; ++k) {
        double s = 0, a = 0;
        for (i = 0; i < len[k]; ++i) {
            s += (double)hx[k][i] * hy[k][i];
            a += fabs((double)hx[k][i] * hy[k][i]);
        }
        if (k == 0) { ref[0] += s; abs_sum[0] += a; ref[1] += s; abs_sum[1] += a; }
        if (k == 1) { ref[1] += s; abs_sum[1] += a; }
        if (k == 2) { ref[2] += s; abs_sum[2] += a; }
    }
    bc_dot_run(c->be, hx, hy, len, got);
    if (c->oracle) bc_dot_run(c->oracle, hx, hy, len, orc);
    /* a product of two floats is exact in double; only the double sum of n terms
     * rounds, within (n+1)*2^-53*sum|x y| in any order */
    const size_t terms[4] = {len[0], 2 * len[0] + len[1], len[2], 0};
    for (k = 0; k < 4; ++k) {
        double tol = (terms[k] + 2) * BC_UD * abs_sum[k];
        kt_check(bc_name(name, sizeof name, c->be, NULL, "dot_slot%d", k), fabs(got[k] - ref[k]) <= tol,
                 "got %.17g, reference %.17g, tolerance %.3g", got[k], ref[k], tol);
        if (c->oracle)
            kt_check(bc_name(name, sizeof name, c->be, c->oracle, "dot_slot%d", k), fabs(got[k] - orc[k]) <= 2 * tol,
                     "got %.17g, oracle %.17g, tolerance %.3g", got[k], orc[k], 2 * tol);
    }
    for (k = 0; k < 3; ++k) {
        free(hx[k]);
        free(hy[k]);
    }
}

/* results(out, n) reads and zeroes slots [0, n) only */
static void bc_case_results(const bc_ctx *c)
{
    kfac_backend *b = c->be;
    const size_t n = 64;
    float *ones = bc_f(n);
    size_t i;
    char name[128];
    for (i = 0; i < n; ++i) ones[i] = 1.0f;
    float *d = bc_up(b, ones, n);
    double first[2] = {-1, -1}, second[3] = {-1, -1, -1};
    b->ops->dot(b, d, d, 3, 0); /* exact small integers */
    b->ops->dot(b, d, d, 5, 1);
    b->ops->dot(b, d, d, 7, 2);
    b->ops->results(b, first, 2);
    b->ops->results(b, NULL, 0);
    b->ops->results(b, second, 3);
    kt_check(bc_name(name, sizeof name, b, NULL, "results_read_and_zero"),
             first[0] == 3 && first[1] == 5 && second[0] == 0 && second[1] == 0 && second[2] == 7,
             "results(2) gave %g %g, then results(3) gave %g %g %g (expected 3 5, then 0 0 7)", first[0], first[1],
             second[0], second[1], second[2]);
    b->ops->release(b, d);
    free(ones);
}

/* ---- decompositions ---------------------------------------------------------------------- */

/* eigh on backend b: returns its status; E, d on the host (when it succeeded) and X
 * as it is afterwards */
static int bc_eigh_run(kfac_backend *b, const float *X0, int dim, int groups, float **E, float **d, float **X_after)
{
    const size_t n = (size_t)groups * dim * dim;
    float *X = bc_up(b, X0, n), *dE = b->ops->alloc(b, n), *dd = b->ops->alloc(b, (size_t)groups * dim);
    int rc = b->ops->eigh(b, X, dim, groups, dE, dd);
    *E = rc == 0 ? bc_down(b, dE, n) : NULL;
    *d = rc == 0 ? bc_down(b, dd, (size_t)groups * dim) : NULL;
    *X_after = bc_down(b, X, n);
    b->ops->release(b, X);
    b->ops->release(b, dE);
    b->ops->release(b, dd);
    return rc;
}

/* Eigendecompositions.  Cases: positive definite matrices (groups 3, a 1x1, n = 64
 * and 257, past the solvers' small-matrix paths),
 * a rank-deficient PSD matrix (a factor of fewer samples than its dimension), an
 * indefinite matrix (negative eigenvalues come back clamped to 0), and a NaN.
 *
 * Tolerances: a backward-stable solver (LAPACK's and cuSOLVER's syevd) returns the
 * exact decomposition of X + dX with ||dX|| <= p(n) u ||X||, p a modest polynomial;
 * by Weyl's theorem each eigenvalue is then within ||dX|| of the exact one, and the
 * reconstruction E^T diag(d) E and the orthonormality of E's rows are within a few
 * n u of theirs.  16 n u ||X|| (||X|| = the largest |eigenvalue|) leaves room for
 * p(n) at these sizes; a wrong row, sign or ordering is O(||X||) off. */
static void bc_case_eigh(const bc_ctx *c)
{
    enum { NCASES = 7 };
    static const struct {
        const char *name;
        int dim, groups, kind; /* kind 0: SPD, 1: rank 5 PSD, 2: diag(3, -1, 2), 3: NaN */
    } cases[NCASES] = {
        {"spd_dim7_groups3", 7, 3, 0}, {"spd_dim1", 1, 1, 0},         {"spd_dim64", 64, 1, 0},
        {"spd_dim257", 257, 1, 0},     {"rank5_dim40", 40, 1, 1},     {"indefinite_dim3", 3, 1, 2},
        {"nan_dim6", 6, 1, 3},
    };
    char name[160], what[96];
    int k;
    for (k = 0; k < NCASES; ++k) {
        const int dim = cases[k].dim, groups = cases[k].groups, kind = cases[k].kind;
        const size_t dd = (size_t)dim * dim, n = (size_t)groups * dd, nd = (size_t)groups * dim;
        kt_rng r = kt_rng_make(950, (uint64_t)k);
        float *X = bc_f(n);
        double *psd = bc_d(n); /* what E^T diag(d) E must give: X, or X's PSD part */
        int g, i, j, m;
        if (kind == 0 || kind == 3) {
            bc_random_spd(&r, X, dim, groups);
        } else if (kind == 1) {
            /* X = R R^T / 5, R dim x 5 */
            double *R = bc_d((size_t)dim * 5);
            for (i = 0; i < dim * 5; ++i) R[i] = 2 * kt_uniform(&r) - 1;
            for (i = 0; i < dim; ++i)
                for (j = 0; j <= i; ++j) {
                    double s = 0;
                    for (m = 0; m < 5; ++m) s += R[(size_t)i * 5 + m] * R[(size_t)j * 5 + m];
                    X[(size_t)i * dim + j] = X[(size_t)j * dim + i] = (float)(s / 5);
                }
            free(R);
        } else {
            X[0] = 3; X[4] = -1; X[8] = 2;
        }
        if (kind == 3) X[1 * dim + 2] = X[2 * dim + 1] = NAN;
        for (i = 0; i < (int)n; ++i) psd[i] = X[i];
        if (kind == 2) psd[4] = 0; /* -1 clamped */

        float *E, *d, *Xa, *oE = NULL, *od = NULL, *oXa = NULL;
        int rc = bc_eigh_run(c->be, X, dim, groups, &E, &d, &Xa);
        int orc = c->oracle ? bc_eigh_run(c->oracle, X, dim, groups, &oE, &od, &oXa) : 0;
        snprintf(what, sizeof what, "eigh_%s", cases[k].name);
        bc_same(bc_name(name, sizeof name, c->be, NULL, "%s_input_kept", what), Xa, X, n);
        if (kind == 3) {
            printf("  eigh of a matrix with a NaN: %s returned %d, %s returned %d (KFAC_EIGH_NONFINITE = %d)\n",
                   c->be->ops->name, rc, c->oracle ? c->oracle->ops->name : "-", orc, KFAC_EIGH_NONFINITE);
            kt_check(bc_name(name, sizeof name, c->be, NULL, "%s_fails", what), rc != 0,
                     "eigh of a matrix with a NaN returned 0");
            if (c->oracle)
                kt_check(bc_name(name, sizeof name, c->oracle, NULL, "%s_fails", what), orc != 0,
                         "the oracle's eigh of a matrix with a NaN returned 0");
            free(X); free(psd); free(Xa); free(oXa);
            continue;
        }
        if (!kt_check(bc_name(name, sizeof name, c->be, NULL, "%s_status", what), rc == 0, "eigh returned %d", rc) ||
            (c->oracle && !kt_check(bc_name(name, sizeof name, c->oracle, NULL, "%s_status", what), orc == 0,
                                    "the oracle's eigh returned %d", orc))) {
            free(X); free(psd); free(Xa); free(oXa); free(E); free(d); free(oE); free(od);
            continue;
        }
        double *lam = bc_d(nd), *Xd = bc_d(dd), *ref_d = bc_d(nd), *tol_d = bc_d(nd);
        double *rec_tol = bc_d(n), *I = bc_d(n), *orth_tol = bc_d(n);
        float *rec = bc_f(n), *orth = bc_f(n);
        int ordered = 1;
        for (g = 0; g < groups; ++g) {
            for (i = 0; i < (int)dd; ++i) Xd[i] = X[(size_t)g * dd + i];
            bc_jacobi_eigenvalues(Xd, dim, lam + (size_t)g * dim);
            double norm = 0;
            for (i = 0; i < dim; ++i) norm = fmax(norm, fabs(lam[(size_t)g * dim + i]));
            const double tol = 16.0 * dim * BC_U * norm;
            const float *Eg = E + (size_t)g * dd, *dg = d + (size_t)g * dim;
            for (i = 0; i < dim; ++i) {
                ref_d[(size_t)g * dim + i] = fmax(lam[(size_t)g * dim + i], 0); /* clamped */
                tol_d[(size_t)g * dim + i] = tol;
                ordered &= dg[i] >= 0 && (i == 0 || dg[i - 1] <= dg[i]);
            }
            for (i = 0; i < dim; ++i)
                for (j = 0; j < dim; ++j) {
                    double sr = 0, so = 0;
                    for (m = 0; m < dim; ++m) {
                        sr += (double)Eg[(size_t)m * dim + i] * dg[m] * Eg[(size_t)m * dim + j];
                        so += (double)Eg[(size_t)i * dim + m] * Eg[(size_t)j * dim + m];
                    }
                    size_t e = (size_t)g * dd + (size_t)i * dim + j;
                    rec[e] = (float)sr;
                    orth[e] = (float)so;
                    I[e] = i == j;
                    rec_tol[e] = tol;
                    orth_tol[e] = 16.0 * dim * BC_U;
                }
        }
        snprintf(what, sizeof what, "eigh_%s_eigenvalues", cases[k].name);
        bc_report(c, what, d, od, ref_d, tol_d, nd);
        kt_check(bc_name(name, sizeof name, c->be, NULL, "eigh_%s_ascending_nonnegative", cases[k].name), ordered,
                 "eigenvalues not ascending or negative");
        bc_within(bc_name(name, sizeof name, c->be, NULL, "eigh_%s_reconstruction", cases[k].name), rec, psd, rec_tol,
                  n);
        bc_within(bc_name(name, sizeof name, c->be, NULL, "eigh_%s_orthonormal_rows", cases[k].name), orth, I,
                  orth_tol, n);
        free(X); free(psd); free(Xa); free(oXa); free(E); free(d); free(oE); free(od);
        free(lam); free(Xd); free(ref_d); free(tol_d); free(rec_tol); free(I); free(orth_tol); free(rec); free(orth);
    }
}

/* rows of a random orthogonal n x n matrix (Gram-Schmidt twice, in double), in float */
static void bc_random_orthogonal(kt_rng *r, float *E, int n)
{
    double *Q = bc_d((size_t)n * n);
    int i, j, k, pass;
    for (i = 0; i < n * n; ++i) Q[i] = 2 * kt_uniform(r) - 1;
    for (i = 0; i < n; ++i) {
        double *q = Q + (size_t)i * n;
        for (pass = 0; pass < 2; ++pass)
            for (j = 0; j < i; ++j) {
                const double *p = Q + (size_t)j * n;
                double s = 0;
                for (k = 0; k < n; ++k) s += q[k] * p[k];
                for (k = 0; k < n; ++k) q[k] -= s * p[k];
            }
        double nrm = 0;
        for (k = 0; k < n; ++k) nrm += q[k] * q[k];
        nrm = sqrt(nrm);
        for (k = 0; k < n; ++k) q[k] /= nrm;
    }
    for (i = 0; i < n * n; ++i) E[i] = (float)Q[i];
    free(Q);
}

static float *bc_damped_inverse_run(kfac_backend *b, const float *E, const float *d, int n, int groups,
                                    const float *lambda)
{
    const size_t nn = (size_t)groups * n * n;
    float *dE = bc_up(b, E, nn), *dd = bc_up(b, d, (size_t)groups * n), *inv = b->ops->alloc(b, nn);
    b->ops->damped_inverse(b, dE, dd, n, groups, lambda, inv);
    float *out = bc_down(b, inv, nn);
    b->ops->release(b, dE);
    b->ops->release(b, dd);
    b->ops->release(b, inv);
    return out;
}

/* inv_g = E_g^T diag(1/(d_g + lambda_g)) E_g: against that product in double, and as
 * the inverse of X_g + lambda_g I, X_g = E_g^T diag(d_g) E_g.  Two groups with
 * different lambdas (a backend using lambda[0] throughout fails), eigenvalues with
 * exact zeros as in a rank-deficient factor. */
static void bc_case_damped_inverse(const bc_ctx *c)
{
    static const int dims[2] = {20, 1};
    const float lambda[2] = {0.1f, 0.01f};
    const int groups = 2;
    char what[96];
    int k;
    for (k = 0; k < 2; ++k) {
        const int n = dims[k];
        const size_t nn = (size_t)n * n, total = (size_t)groups * nn;
        kt_rng r = kt_rng_make(960, (uint64_t)k);
        float *E = bc_f(total), *d = bc_f((size_t)groups * n);
        double *ref = bc_d(total), *tol = bc_d(total), *res = bc_d(total), *I = bc_d(total), *rtol = bc_d(total);
        int g, i, j, m;
        for (g = 0; g < groups; ++g) {
            bc_random_orthogonal(&r, E + (size_t)g * nn, n);
            for (i = 0; i < n; ++i) d[(size_t)g * n + i] = i < n / 4 ? 0.0f : (float)(3 * kt_uniform(&r));
        }
        float *got = bc_damped_inverse_run(c->be, E, d, n, groups, lambda);
        float *orc = c->oracle ? bc_damped_inverse_run(c->oracle, E, d, n, groups, lambda) : NULL;
        for (g = 0; g < groups; ++g) {
            const float *Eg = E + (size_t)g * nn, *dg = d + (size_t)g * n;
            double dmax = 0, dmin = INFINITY;
            for (i = 0; i < n; ++i) {
                dmax = fmax(dmax, dg[i]);
                dmin = fmin(dmin, dg[i]);
            }
            /* cond(X + lambda I) = (dmax + lambda) / (dmin + lambda) */
            const double cond = (dmax + lambda[g]) / (dmin + lambda[g]);
            double *Xg = bc_d(nn);
            for (i = 0; i < n; ++i)
                for (j = 0; j < n; ++j) {
                    double s = 0, a = 0, x = 0;
                    for (m = 0; m < n; ++m) {
                        double t = (double)Eg[(size_t)m * n + i] * Eg[(size_t)m * n + j];
                        s += t / ((double)dg[m] + lambda[g]);
                        a += fabs(t) / ((double)dg[m] + lambda[g]);
                        x += t * dg[m];
                    }
                    size_t e = (size_t)g * nn + (size_t)i * n + j;
                    ref[e] = s;
                    /* n products summed, each of a few rounded factors (d + lambda,
                     * its reciprocal or reciprocal square root, the row scaling) */
                    tol[e] = (n + 8) * BC_U * a;
                    Xg[(size_t)i * n + j] = x + (i == j ? lambda[g] : 0);
                }
            /* inv (X + lambda I) - I: inv's error relative to its norm, times
             * cond(X + lambda I), plus float E's departure from orthogonality (n u) */
            for (i = 0; i < n; ++i)
                for (j = 0; j < n; ++j) {
                    double s = 0;
                    for (m = 0; m < n; ++m)
                        s += (double)got[(size_t)g * nn + (size_t)i * n + m] * Xg[(size_t)m * n + j];
                    size_t e = (size_t)g * nn + (size_t)i * n + j;
                    res[e] = s;
                    I[e] = i == j;
                    rtol[e] = 16.0 * (n + 8) * BC_U * cond;
                }
            free(Xg);
        }
        snprintf(what, sizeof what, "damped_inverse_dim%d_groups%d", n, groups);
        bc_report(c, what, got, orc, ref, tol, total);
        float *resf = bc_f(total);
        for (i = 0; i < (int)total; ++i) resf[i] = (float)res[i];
        char name[160];
        bc_within(bc_name(name, sizeof name, c->be, NULL, "%s_times_damped_factor_is_identity", what), resf, I, rtol,
                  total);
        free(E); free(d); free(ref); free(tol); free(res); free(I); free(rtol); free(got); free(orc); free(resf);
    }
}

/* ---- the update ---------------------------------------------------------------------------- */

/* host inputs of one shape's gather / precondition / scatter */
typedef struct {
    kfac_shape s;
    size_t nw, nb, nD;      /* groups*M*k_in, groups*M (0 without has_bias), groups*M*K */
    float *wu, *ws, *bu, *bs; /* Darknet's update buffers and their snapshots */
} bc_grad;

static bc_grad bc_grad_make(const kfac_shape *s, uint64_t seed)
{
    bc_grad q;
    kt_rng r = kt_rng_make(970, seed);
    q.s = *s;
    q.nw = (size_t)s->groups * s->M * s->k_in;
    q.nb = s->has_bias ? (size_t)s->groups * s->M : 0;
    q.nD = (size_t)s->groups * s->M * s->K;
    q.wu = bc_f(q.nw);
    q.ws = bc_f(q.nw);
    bc_fill(&r, q.wu, q.nw, -1, 1);
    bc_fill(&r, q.ws, q.nw, -0.5, 0.5);
    q.bu = q.nb ? bc_f(q.nb) : NULL;
    q.bs = q.nb ? bc_f(q.nb) : NULL;
    if (q.nb) {
        bc_fill(&r, q.bu, q.nb, -1, 1);
        bc_fill(&r, q.bs, q.nb, -0.5, 0.5);
    }
    return q;
}

static void bc_grad_free(bc_grad *q)
{
    free(q->wu); free(q->ws); free(q->bu); free(q->bs);
}

static float *bc_gather_run(kfac_backend *b, const bc_grad *q)
{
    float *garbage = bc_f(q->nD), *D;
    size_t i;
    for (i = 0; i < q->nD; ++i) garbage[i] = 12345.0f; /* every element must be written */
    float *wu = bc_up(b, q->wu, q->nw), *ws = bc_up(b, q->ws, q->nw);
    float *bu = q->nb ? bc_up(b, q->bu, q->nb) : NULL, *bs = q->nb ? bc_up(b, q->bs, q->nb) : NULL;
    D = bc_up(b, garbage, q->nD);
    b->ops->gather(b, &q->s, wu, ws, bu, bs, D);
    float *out = bc_down(b, D, q->nD);
    b->ops->release(b, wu); b->ops->release(b, ws); b->ops->release(b, bu); b->ops->release(b, bs);
    b->ops->release(b, D);
    free(garbage);
    return out;
}

/* D (groups x M x K) = [wu - ws | bu - bs]: float subtractions, exact on every
 * backend; without has_bias the bias pointers are NULL and must not be read */
static void bc_case_gather(const bc_ctx *c, const kfac_shape *s, int index)
{
    bc_grad q = bc_grad_make(s, (uint64_t)index);
    float *ref = bc_f(q.nD);
    size_t row, col;
    for (row = 0; row < (size_t)s->groups * s->M; ++row) {
        for (col = 0; col < (size_t)s->k_in; ++col)
            ref[row * s->K + col] = q.wu[row * s->k_in + col] - q.ws[row * s->k_in + col];
        if (s->has_bias) ref[row * s->K + s->k_in] = q.bu[row] - q.bs[row];
    }
    float *got = bc_gather_run(c->be, &q), *orc = c->oracle ? bc_gather_run(c->oracle, &q) : NULL;
    char what[96];
    snprintf(what, sizeof what, "gather_layer%d", index);
    bc_report_exact(c, what, got, orc, ref, q.nD);
    bc_grad_free(&q);
    free(ref); free(got); free(orc);
}

static float *bc_precondition_run(kfac_backend *b, const kfac_shape *s, const float *Ginv, const float *Ainv,
                                  const float *D)
{
    const size_t nG = (size_t)s->groups * s->M * s->M, nA = kfac_a_len(s);
    const size_t nD = (size_t)s->groups * s->M * s->K;
    float *g = bc_up(b, Ginv, nG), *a = bc_up(b, Ainv, nA), *d = bc_up(b, D, nD);
    float *tmp = b->ops->alloc(b, nD), *P = b->ops->alloc(b, nD);
    b->ops->precondition(b, s, g, a, d, tmp, P);
    float *out = bc_down(b, P, nD);
    b->ops->release(b, g); b->ops->release(b, a); b->ops->release(b, d);
    b->ops->release(b, tmp); b->ops->release(b, P);
    return out;
}

/* P_g = Ginv_g D_g Ainv_g against the explicit product in double, Ainv_g block
 * diagonal when s keeps A in blocks.  Ginv and Ainv are random and not symmetric, so a
 * transposed operand shows. */
static void bc_case_precondition(const bc_ctx *c, const kfac_shape *s, int index)
{
    const int M = s->M, K = s->K, nb = kfac_a_blocks(s), Ka = kfac_a_dim(s);
    const size_t nG = (size_t)s->groups * M * M, nA = kfac_a_len(s), nD = (size_t)s->groups * M * K;
    kt_rng r = kt_rng_make(980, (uint64_t)index);
    float *Ginv = bc_f(nG), *Ainv = bc_f(nA), *D = bc_f(nD);
    double *ref = bc_d(nD), *tol = bc_d(nD), *t = bc_d((size_t)M * K), *ta = bc_d((size_t)M * K);
    int g, i, j, m;
    bc_fill(&r, Ginv, nG, -1, 1);
    bc_fill(&r, Ainv, nA, -1, 1);
    bc_fill(&r, D, nD, -1, 1);
    for (g = 0; g < s->groups; ++g) {
        const float *Gi = Ginv + (size_t)g * M * M, *Ai = Ainv + (size_t)g * nb * Ka * Ka, *Dg = D + (size_t)g * M * K;
        for (i = 0; i < M; ++i)
            for (j = 0; j < K; ++j) {
                double x = 0, a = 0;
                for (m = 0; m < M; ++m) {
                    x += (double)Gi[(size_t)i * M + m] * Dg[(size_t)m * K + j];
                    a += fabs((double)Gi[(size_t)i * M + m] * Dg[(size_t)m * K + j]);
                }
                t[(size_t)i * K + j] = x;
                ta[(size_t)i * K + j] = a;
            }
        for (i = 0; i < M; ++i)
            for (j = 0; j < K; ++j) {
                /* column j lies in block j / Ka: rows of that block only */
                const int b0 = j / Ka * Ka;
                const float *Ab = Ai + (size_t)(j / Ka) * Ka * Ka;
                double x = 0, a = 0;
                for (m = 0; m < Ka; ++m) {
                    x += t[(size_t)i * K + b0 + m] * Ab[(size_t)m * Ka + j - b0];
                    a += ta[(size_t)i * K + b0 + m] * fabs((double)Ab[(size_t)m * Ka + j - b0]);
                }
                size_t e = (size_t)g * M * K + (size_t)i * K + j;
                ref[e] = x;
                /* two float products of M and Ka terms: to first order within
                 * (M + Ka) u (|Ginv| |D| |Ainv|)_ij */
                tol[e] = (M + Ka + 4) * BC_U * a;
            }
    }
    float *got = bc_precondition_run(c->be, s, Ginv, Ainv, D);
    float *orc = c->oracle ? bc_precondition_run(c->oracle, s, Ginv, Ainv, D) : NULL;
    char what[96];
    if (nb > 1) snprintf(what, sizeof what, "precondition_layer%d_A_in_%d_blocks", index, nb);
    else snprintf(what, sizeof what, "precondition_layer%d", index);
    bc_report(c, what, got, orc, ref, tol, nD);
    free(Ginv); free(Ainv); free(D); free(ref); free(tol); free(t); free(ta); free(got); free(orc);
}

/* scatter on backend b; the new weight updates, then the bias updates, in out */
static float *bc_scatter_run(kfac_backend *b, const bc_grad *q, const float *P, const float *D, float scale)
{
    float *wu = bc_up(b, q->wu, q->nw), *bu = q->nb ? bc_up(b, q->bu, q->nb) : NULL;
    float *dP = bc_up(b, P, q->nD), *dD = bc_up(b, D, q->nD);
    b->ops->scatter(b, &q->s, wu, bu, dP, dD, scale);
    float *out = bc_f(q->nw + q->nb);
    b->ops->to_host(b, out, wu, q->nw);
    if (q->nb) b->ops->to_host(b, out + q->nw, bu, q->nb);
    b->ops->release(b, wu); b->ops->release(b, bu); b->ops->release(b, dP); b->ops->release(b, dD);
    return out;
}

/* [wu | bu] += scale*P - D; with P == D (equal values in two buffers) and scale 1
 * the buffers must come back bit for bit: exact zeros added, as the driver's plain
 * SGD write-back relies on (tests/test_identity.c) */
static void bc_case_scatter(const bc_ctx *c, const kfac_shape *s, int index)
{
    bc_grad q = bc_grad_make(s, 100 + (uint64_t)index);
    kt_rng r = kt_rng_make(990, (uint64_t)index);
    const size_t nout = q.nw + q.nb;
    const float scale = 0.7f;
    float *P = bc_f(q.nD), *D = bc_f(q.nD), *before = bc_f(nout);
    double *ref = bc_d(nout), *tol = bc_d(nout);
    size_t row, col;
    bc_fill(&r, P, q.nD, -1, 1);
    bc_fill(&r, D, q.nD, -1, 1);
    memcpy(before, q.wu, q.nw * sizeof(float));
    if (q.nb) memcpy(before + q.nw, q.bu, q.nb * sizeof(float));
    for (row = 0; row < (size_t)s->groups * s->M; ++row)
        for (col = 0; col < (size_t)s->K; ++col) {
            const size_t e = col < (size_t)s->k_in ? row * s->k_in + col : q.nw + row;
            const double p = (double)scale * P[row * s->K + col], d = D[row * s->K + col];
            ref[e] = before[e] + (p - d);
            /* scale*P, the difference, the add: three roundings */
            tol[e] = 4 * BC_U * (fabs(before[e]) + fabs(p) + fabs(d));
        }
    float *got = bc_scatter_run(c->be, &q, P, D, scale);
    float *orc = c->oracle ? bc_scatter_run(c->oracle, &q, P, D, scale) : NULL;
    char what[96];
    snprintf(what, sizeof what, "scatter_layer%d", index);
    bc_report(c, what, got, orc, ref, tol, nout);
    free(got);
    free(orc);

    float *same = bc_scatter_run(c->be, &q, D, D, 1.0f);
    snprintf(what, sizeof what, "scatter_layer%d_P_equal_D_adds_exact_zeros", index);
    bc_report_exact(c, what, same, NULL, before, nout);
    free(same);
    bc_grad_free(&q);
    free(P); free(D); free(before); free(ref); free(tol);
}

/* ---- scaling=ekfac --------------------------------------------------------------------------- */

/* E_G (groups x M x M) and E_A (kfac_a_count(s) blocks): rows of random orthogonal
 * matrices, as a decomposition leaves them */
static void bc_random_bases(kt_rng *r, const kfac_shape *s, float *EG, float *EA)
{
    const int na = kfac_a_count(s), Ka = kfac_a_dim(s);
    int g;
    for (g = 0; g < s->groups; ++g) bc_random_orthogonal(r, EG + (size_t)g * s->M * s->M, s->M);
    for (g = 0; g < na; ++g) bc_random_orthogonal(r, EA + (size_t)g * Ka * Ka, Ka);
}

/* Z (M x K) = E_G X E_A^T and, into Za, the same with every factor's absolute value
 * (for the rounding bound), E_A by blocks of Ka */
static void bc_project(int M, int K, int Ka, const float *EG, const float *EA, const double *X, const double *Xa,
                       double *Z, double *Za)
{
    double *Y = bc_d((size_t)M * K), *Ya = bc_d((size_t)M * K);
    int i, j, m;
    for (i = 0; i < M; ++i)
        for (j = 0; j < K; ++j)
            for (m = 0; m < M; ++m) {
                Y[(size_t)i * K + j] += (double)EG[(size_t)i * M + m] * X[(size_t)m * K + j];
                Ya[(size_t)i * K + j] += fabs((double)EG[(size_t)i * M + m]) * Xa[(size_t)m * K + j];
            }
    for (i = 0; i < M; ++i)
        for (j = 0; j < K; ++j) {
            const int b0 = j / Ka * Ka;
            const float *E = EA + (size_t)(j / Ka) * Ka * Ka;
            double z = 0, za = 0;
            for (m = 0; m < Ka; ++m) {
                z += Y[(size_t)i * K + b0 + m] * E[(size_t)(j - b0) * Ka + m];
                za += Ya[(size_t)i * K + b0 + m] * fabs((double)E[(size_t)(j - b0) * Ka + m]);
            }
            Z[(size_t)i * K + j] = z;
            Za[(size_t)i * K + j] = za;
        }
    free(Y);
    free(Ya);
}

static float *bc_capture_ekfac_run(kfac_backend *b, const kfac_shape *s, const layer *l, const float *in, size_t nin,
                                   const float *delta, size_t nd, const float *EG, const float *EA, const float *acc0,
                                   size_t nacc)
{
    float *di = bc_up(b, in, nin), *dd = bc_up(b, delta, nd), *eg = bc_up(b, EG, (size_t)s->groups * s->M * s->M);
    float *ea = bc_up(b, EA, kfac_a_len(s)), *acc = bc_up(b, acc0, nacc);
    b->ops->capture_ekfac(b, s, l, di, dd, eg, ea, acc);
    float *out = bc_down(b, acc, nacc);
    b->ops->release(b, di);
    b->ops->release(b, dd);
    b->ops->release(b, eg);
    b->ops->release(b, ea);
    b->ops->release(b, acc);
    return out;
}

/* capture_ekfac of layer l (A whole, or in nb blocks over its input channels) on
 * random inputs, deltas and orthogonal bases: acc += sum_n (E_G dW_n E_A^T)^2. */
static void bc_case_capture_ekfac(const bc_ctx *c, const layer *l, int index, int nb)
{
    kfac_shape s = bc_shape_of(l);
    s.a_blocks = nb;
    const int M = s.M, K = s.K, T = s.T, B = l->batch, Ka = kfac_a_dim(&s);
    const size_t MK = (size_t)M * K, nacc = (size_t)s.groups * MK, nin = (size_t)B * l->inputs, nd = (size_t)B * l->outputs;
    kt_rng r = kt_rng_make(925, (uint64_t)(index * 4 + nb));
    float *in = bc_f(nin), *delta = bc_f(nd), *EG = bc_f((size_t)s.groups * M * M), *EA = bc_f(kfac_a_len(&s));
    float *acc0 = bc_f(nacc);
    double *ref = bc_d(nacc), *tol = bc_d(nacc), *dW = bc_d(MK), *dWa = bc_d(MK), *Z = bc_d(MK), *Za = bc_d(MK);
    double *a = bc_d((size_t)K);
    int n, g, t, m, j;
    size_t e;
    bc_fill(&r, in, nin, -1, 1);
    bc_fill(&r, delta, nd, -1, 1);
    bc_fill(&r, acc0, nacc, 0, 1);
    bc_random_bases(&r, &s, EG, EA);
    for (e = 0; e < nacc; ++e) {
        ref[e] = acc0[e];
        tol[e] = 0;
    }
    for (n = 0; n < B; ++n)
        for (g = 0; g < s.groups; ++g) {
            memset(dW, 0, MK * sizeof(double));
            memset(dWa, 0, MK * sizeof(double));
            for (t = 0; t < T; ++t) {
                bc_patch(l, &s, in, n, g, t, a);
                for (m = 0; m < M; ++m) {
                    const double gt = s.type == CONNECTED ? delta[(size_t)n * l->outputs + m]
                                                          : delta[(((size_t)n * s.groups + g) * M + m) * T + t];
                    for (j = 0; j < K; ++j) {
                        dW[(size_t)m * K + j] += gt * a[j];
                        dWa[(size_t)m * K + j] += fabs(gt * a[j]);
                    }
                }
            }
            bc_project(M, K, Ka, EG + (size_t)g * M * M, EA + (size_t)g * nb * Ka * Ka, dW, dWa, Z, Za);
            for (e = 0; e < MK; ++e) {
                /* Z in float: T products summed, then two projections of M and Ka
                 * terms (or the connected layer's form, fewer); its square then
                 * doubles the relative error, and the B squares are summed */
                const double dz = (T + M + Ka + 6) * BC_U * Za[e];
                ref[g * MK + e] += Z[e] * Z[e];
                tol[g * MK + e] += 2 * fabs(Z[e]) * dz + dz * dz + (B + 4) * BC_U * Z[e] * Z[e];
            }
        }
    for (e = 0; e < nacc; ++e) tol[e] += (B + 4) * BC_U * acc0[e];
    float *got = bc_capture_ekfac_run(c->be, &s, l, in, nin, delta, nd, EG, EA, acc0, nacc);
    float *orc = c->oracle ? bc_capture_ekfac_run(c->oracle, &s, l, in, nin, delta, nd, EG, EA, acc0, nacc) : NULL;
    char what[96];
    snprintf(what, sizeof what, "capture_ekfac_layer%d_%s_A_in_%d", index, s.type == CONNECTED ? "connected" : "conv", nb);
    bc_report(c, what, got, orc, ref, tol, nacc);
    free(in); free(delta); free(EG); free(EA); free(acc0); free(ref); free(tol); free(dW); free(dWa); free(Z); free(Za);
    free(a); free(got); free(orc);
}

static float *bc_ekfac_scale_run(kfac_backend *b, const kfac_shape *s, const float *S, const float *dG, const float *dA,
                                 const float *lG, const float *lA)
{
    const size_t n = (size_t)s->groups * s->M * s->K;
    float *dS = bc_up(b, S, n), *g = bc_up(b, dG, (size_t)s->groups * s->M), *a = bc_up(b, dA, (size_t)s->groups * s->K);
    float *R = bc_up(b, NULL, n);
    b->ops->ekfac_scale(b, s, dS, g, a, lG, lA, R);
    float *out = bc_down(b, R, n);
    b->ops->release(b, dS);
    b->ops->release(b, g);
    b->ops->release(b, a);
    b->ops->release(b, R);
    return out;
}

/* R = 1 / (S + lA dG_i + lG dA_j + lA lG), lA per block of A */
static void bc_case_ekfac_scale(const bc_ctx *c, const kfac_shape *s, int index)
{
    const int M = s->M, K = s->K, G = s->groups, nb = kfac_a_blocks(s), Ka = kfac_a_dim(s);
    const size_t n = (size_t)G * M * K;
    kt_rng r = kt_rng_make(935, (uint64_t)index);
    float *S = bc_f(n), *dG = bc_f((size_t)G * M), *dA = bc_f((size_t)G * K), *lG = bc_f((size_t)G);
    float *lA = bc_f((size_t)G * nb);
    double *ref = bc_d(n), *tol = bc_d(n);
    int g, i, j;
    bc_fill(&r, S, n, 0, 2);
    bc_fill(&r, dG, (size_t)G * M, 0, 3);
    bc_fill(&r, dA, (size_t)G * K, 0, 3);
    bc_fill(&r, lG, (size_t)G, 0.01, 0.1);
    bc_fill(&r, lA, (size_t)G * nb, 0.01, 0.1);
    for (g = 0; g < G; ++g)
        for (i = 0; i < M; ++i)
            for (j = 0; j < K; ++j) {
                const size_t e = ((size_t)g * M + i) * K + j;
                const double la = lA[g * nb + j / Ka], lg = lG[g];
                ref[e] = 1.0 / (S[e] + la * dG[(size_t)g * M + i] + lg * dA[(size_t)g * K + j] + la * lg);
                /* three products, three sums of positive terms and a division */
                tol[e] = 8 * BC_U * ref[e];
            }
    float *got = bc_ekfac_scale_run(c->be, s, S, dG, dA, lG, lA);
    float *orc = c->oracle ? bc_ekfac_scale_run(c->oracle, s, S, dG, dA, lG, lA) : NULL;
    char what[96];
    snprintf(what, sizeof what, "ekfac_scale_layer%d_A_in_%d", index, nb);
    bc_report(c, what, got, orc, ref, tol, n);
    free(S); free(dG); free(dA); free(lG); free(lA); free(ref); free(tol); free(got); free(orc);
}

static float *bc_precondition_eigen_run(kfac_backend *b, const kfac_shape *s, const float *EG, const float *EA,
                                        const float *R, const float *D)
{
    const size_t n = (size_t)s->groups * s->M * s->K;
    float *g = bc_up(b, EG, (size_t)s->groups * s->M * s->M), *a = bc_up(b, EA, kfac_a_len(s)), *dR = bc_up(b, R, n);
    float *dD = bc_up(b, D, n), *tmp = bc_up(b, NULL, n), *P = bc_up(b, NULL, n);
    b->ops->precondition_eigen(b, s, g, a, dR, dD, tmp, P);
    float *out = bc_down(b, P, n);
    b->ops->release(b, g);
    b->ops->release(b, a);
    b->ops->release(b, dR);
    b->ops->release(b, dD);
    b->ops->release(b, tmp);
    b->ops->release(b, P);
    return out;
}

/* P_g = E_G^T [(E_G D_g E_A^T) o R_g] E_A against the products in double */
static void bc_case_precondition_eigen(const bc_ctx *c, const kfac_shape *s, int index)
{
    const int M = s->M, K = s->K, G = s->groups, nb = kfac_a_blocks(s), Ka = kfac_a_dim(s);
    const size_t MK = (size_t)M * K, n = (size_t)G * MK;
    kt_rng r = kt_rng_make(945, (uint64_t)index);
    float *EG = bc_f((size_t)G * M * M), *EA = bc_f(kfac_a_len(s)), *R = bc_f(n), *D = bc_f(n);
    float *EGt = bc_f((size_t)M * M), *EAt = bc_f((size_t)nb * Ka * Ka);
    double *ref = bc_d(n), *tol = bc_d(n), *X = bc_d(MK), *Xa = bc_d(MK), *Z = bc_d(MK), *Za = bc_d(MK);
    int g, i, j, bk;
    size_t e;
    bc_random_bases(&r, s, EG, EA);
    bc_fill(&r, R, n, 0.1, 10);
    bc_fill(&r, D, n, -1, 1);
    for (g = 0; g < G; ++g) {
        const float *Eg = EG + (size_t)g * M * M, *Ea = EA + (size_t)g * nb * Ka * Ka;
        for (e = 0; e < MK; ++e) {
            X[e] = D[g * MK + e];
            Xa[e] = fabs(X[e]);
        }
        bc_project(M, K, Ka, Eg, Ea, X, Xa, Z, Za);
        for (e = 0; e < MK; ++e) {
            X[e] = Z[e] * R[g * MK + e];
            Xa[e] = Za[e] * R[g * MK + e];
        }
        /* back: E_G^T X E_A, the same projection with the transposed bases */
        for (i = 0; i < M; ++i)
            for (j = 0; j < M; ++j) EGt[(size_t)i * M + j] = Eg[(size_t)j * M + i];
        for (bk = 0; bk < nb; ++bk)
            for (i = 0; i < Ka; ++i)
                for (j = 0; j < Ka; ++j) EAt[((size_t)bk * Ka + i) * Ka + j] = Ea[((size_t)bk * Ka + j) * Ka + i];
        bc_project(M, K, Ka, EGt, EAt, X, Xa, Z, Za);
        for (e = 0; e < MK; ++e) {
            ref[g * MK + e] = Z[e];
            /* four float products of M or Ka terms and a scaling */
            tol[g * MK + e] = (2 * M + 2 * Ka + 8) * BC_U * Za[e];
        }
    }
    float *got = bc_precondition_eigen_run(c->be, s, EG, EA, R, D);
    float *orc = c->oracle ? bc_precondition_eigen_run(c->oracle, s, EG, EA, R, D) : NULL;
    char what[96];
    snprintf(what, sizeof what, "precondition_eigen_layer%d_A_in_%d", index, nb);
    bc_report(c, what, got, orc, ref, tol, n);
    free(EG); free(EA); free(R); free(D); free(EGt); free(EAt); free(ref); free(tol); free(X); free(Xa); free(Z);
    free(Za); free(got); free(orc);
}

/* A in 2 blocks over the layer's input channels where its shape allows (no bias row,
 * an even number of channels), else whole */
static int bc_ekfac_blocks(const layer *l)
{
    const kfac_shape s = bc_shape_of(l);
    const int ch = l->type == CONVOLUTIONAL ? l->c / l->groups : s.k_in;
    return !s.has_bias && ch % 2 == 0 ? 2 : 1;
}

/* ---- true Fisher --------------------------------------------------------------------------- */

static float *bc_sample_run(kfac_backend *b, const float *p, const float *u, int batch, int n)
{
    const size_t len = (size_t)batch * n;
    float *dp = bc_up(b, p, len), *delta = b->ops->alloc(b, len);
    b->ops->sample(b, dp, u, batch, n, delta);
    float *out = bc_down(b, delta, len);
    b->ops->release(b, dp);
    b->ops->release(b, delta);
    return out;
}

/* delta = e_y - p with y the first j with u < p_0 + ... + p_j, else n-1.  First rows
 * whose every partial sum is exact in float (boundaries, zero probabilities, u
 * beyond the total), then random softmax rows with u kept 1e-4 away from every
 * boundary, where the float and the double partial sums agree on the label. */
static void bc_case_sample(const bc_ctx *c)
{
    enum { N = 4, FIXED = 7, RANDOM = 300 };
    static const float fixed_p[FIXED][N] = {
        {0.25f, 0.25f, 0.25f, 0.25f}, /* u = 0.25: not < 0.25, < 0.5: y = 1 */
        {0.25f, 0.25f, 0.25f, 0.25f}, /* u = 0: y = 0 */
        {0.0f, 0.5f, 0.5f, 0.0f},     /* u = 0: 0 < 0 is false: y = 1 */
        {0.25f, 0.25f, 0.25f, 0.25f}, /* u = 0.99: y = 3 */
        {0.125f, 0.125f, 0.125f, 0.125f}, /* u = 0.75 beyond the total 0.5: y = n-1 */
        {0.25f, 0.25f, 0.25f, 0.25f}, /* u = 1 = the total, not below it: y = n-1 */
        {0.5f, 0.5f, 0.0f, 0.0f},     /* u = 0.999: y = 1 */
    };
    static const float fixed_u[FIXED] = {0.25f, 0.0f, 0.0f, 0.99f, 0.75f, 1.0f, 0.999f};
    static const int fixed_y[FIXED] = {1, 0, 1, 3, 3, 3, 1};
    const int batch = FIXED + RANDOM, n = N;
    float *p = bc_f((size_t)batch * n), *u = bc_f((size_t)batch), *ref = bc_f((size_t)batch * n);
    int *y = (int *)bc_alloc((size_t)batch, sizeof(int));
    kt_rng r = kt_rng_make(1000, 0);
    int b, j;
    for (b = 0; b < FIXED; ++b) {
        memcpy(p + (size_t)b * n, fixed_p[b], sizeof fixed_p[b]);
        u[b] = fixed_u[b];
        y[b] = fixed_y[b];
    }
    for (b = FIXED; b < batch; ++b) {
        double e[N], sum = 0, cum = 0;
        for (j = 0; j < n; ++j) sum += e[j] = exp(4 * kt_uniform(&r) - 2);
        for (j = 0; j < n; ++j) p[(size_t)b * n + j] = (float)(e[j] / sum);
        double uu;
        int near;
        do { /* redraw while u is within 1e-4 of a partial sum */
            uu = kt_uniform(&r);
            near = 0;
            for (cum = 0, j = 0; j < n; ++j) {
                cum += p[(size_t)b * n + j];
                near |= fabs(uu - cum) < 1e-4;
            }
        } while (near);
        u[b] = (float)uu;
        y[b] = n - 1;
        for (cum = 0, j = 0; j < n; ++j) {
            cum += p[(size_t)b * n + j];
            if (u[b] < cum) { y[b] = j; break; }
        }
    }
    for (b = 0; b < batch; ++b)
        for (j = 0; j < n; ++j) ref[(size_t)b * n + j] = (j == y[b] ? 1.0f : 0.0f) - p[(size_t)b * n + j];
    float *got = bc_sample_run(c->be, p, u, batch, n);
    float *orc = c->oracle ? bc_sample_run(c->oracle, p, u, batch, n) : NULL;
    for (b = 0; b < FIXED; ++b) /* the label a failure means, for the reader */
        if (memcmp(got + (size_t)b * n, ref + (size_t)b * n, (size_t)n * sizeof(float)) != 0)
            printf("  sample row %d (u = %g): expected label %d\n", b, u[b], y[b]);
    bc_report_exact(c, "sample", got, orc, ref, (size_t)batch * n);
    free(p); free(u); free(ref); free(y); free(got); free(orc);
}

/* ---- replicas, timing ---------------------------------------------------------------------- */

/* average (bufs <- their mean, in replica order) and broadcast (bufs <- bufs[from])
 * over three backends of one kind; on backends `bs` (made by the caller), the
 * replicas' contents afterwards in out[i] */
static void bc_replicas_run(kfac_backend **bs, int n, float *const *x, size_t len, int broadcast_from, float **out)
{
    float **bufs = (float **)bc_alloc((size_t)n, sizeof(float *));
    int i;
    for (i = 0; i < n; ++i) bufs[i] = bc_up(bs[i], x[i], len);
    if (broadcast_from < 0) bs[0]->ops->average(bs, bufs, n, len);
    else bs[0]->ops->broadcast(bs, bufs, n, broadcast_from, len);
    bs[0]->ops->average(bs, bufs, n, 0); /* nothing to do */
    for (i = 0; i < n; ++i) {
        out[i] = bc_down(bs[i], bufs[i], len);
        bs[i]->ops->release(bs[i], bufs[i]);
    }
    free(bufs);
}

static void bc_case_replicas(const bc_ctx *c)
{
    enum { N = 3 };
    const size_t len = 1001;
    kfac_backend *bs[N] = {c->be, c->make(4), c->make(4)}, *os[N] = {NULL, NULL, NULL};
    float *x[N], *got[N], *orc[N] = {NULL, NULL, NULL}, *bc[N];
    double *ref = bc_d(len), *tol = bc_d(len);
    char name[128];
    size_t j;
    int i;
    if (c->oracle) {
        os[0] = c->oracle;
        os[1] = c->make_oracle(4);
        os[2] = c->make_oracle(4);
    }
    for (i = 0; i < N; ++i) {
        kt_rng r = kt_rng_make(1010, (uint64_t)i);
        x[i] = bc_f(len);
        bc_fill(&r, x[i], len, -1, 1);
    }
    for (j = 0; j < len; ++j) {
        double s = 0, a = 0;
        for (i = 0; i < N; ++i) {
            s += x[i][j];
            a += fabs(x[i][j]);
        }
        ref[j] = s / N;
        /* N-1 adds, 1/N rounded, one multiply */
        tol[j] = (N + 2) * BC_U * a / N;
    }
    bc_replicas_run(bs, N, x, len, -1, got);
    if (c->oracle) bc_replicas_run(os, N, x, len, -1, orc);
    bc_report(c, "average_3_replicas", got[0], orc[0], ref, tol, len);
    kt_check(bc_name(name, sizeof name, c->be, NULL, "average_3_replicas_equal"),
             kt_same_bits("replica 1", got[1], got[0], len, 0) && kt_same_bits("replica 2", got[2], got[0], len, 0),
             "the replicas differ after average");
    bc_replicas_run(bs, N, x, len, 1, bc);
    kt_check(bc_name(name, sizeof name, c->be, NULL, "broadcast_from_1"),
             kt_same_bits("replica 0", bc[0], x[1], len, 0) && kt_same_bits("replica 1", bc[1], x[1], len, 0) &&
                 kt_same_bits("replica 2", bc[2], x[1], len, 0),
             "the replicas do not all hold replica 1's buffer");
    for (i = 0; i < N; ++i) {
        free(x[i]); free(got[i]); free(orc[i]); free(bc[i]);
    }
    for (i = 1; i < N; ++i) {
        bs[i]->ops->destroy(bs[i]);
        if (os[i]) os[i]->ops->destroy(os[i]);
    }
    free(ref);
    free(tol);
}

/* phase/seconds count time, enter/leave/synchronize run */
static void bc_case_timing(const bc_ctx *c)
{
    kfac_backend *b = c->be;
    double t0[KFAC_NPHASES], t1[KFAC_NPHASES], out[1];
    char name[128];
    int k, ok = 1;
    float *x = b->ops->alloc(b, 4096);
    b->ops->seconds(b, t0);
    int prev = b->ops->enter(b);
    b->ops->phase(b, KFAC_PHASE_PRECOND, 1);
    for (k = 0; k < 20; ++k) b->ops->dot(b, x, x, 4096, 0);
    b->ops->phase(b, KFAC_PHASE_PRECOND, 0);
    b->ops->results(b, out, 1);
    b->ops->synchronize(b);
    b->ops->leave(b, prev);
    b->ops->seconds(b, t1);
    for (k = 0; k < KFAC_NPHASES; ++k) ok &= isfinite(t1[k]) && t1[k] >= t0[k];
    ok &= t1[KFAC_PHASE_STATS] == t0[KFAC_PHASE_STATS] && t1[KFAC_PHASE_INVERSE] == t0[KFAC_PHASE_INVERSE];
    kt_check(bc_name(name, sizeof name, b, NULL, "phase_seconds"), ok,
             "seconds before %g %g %g, after a precondition stretch %g %g %g", t0[0], t0[1], t0[2], t1[0], t1[1],
             t1[2]);
    b->ops->release(b, x);
}

/* Every case; the layers of `geom` (a net of tests/cfg/backend.cfg) give the shapes. */
/* The twin (the background decompositions' backend, kfac_worker.c): from another
 * thread, while this backend works on its own buffers, it decomposes a buffer of
 * this backend in place and builds its damped inverse, giving the bits the backend
 * itself gives (the same library on the same device: a decomposition used in the
 * background is the one that would have been made at once). */
typedef struct {
    kfac_backend *twin;
    float *X, *d, *inv;     /* the backend's buffers: X decomposed in place */
    const float *lambda;
    int dim, rc;
} bc_twin_job;

static void *bc_twin_main(void *p)
{
    bc_twin_job *j = (bc_twin_job *)p;
    j->twin->ops->enter(j->twin);
    j->rc = j->twin->ops->eigh(j->twin, j->X, j->dim, 1, j->X, j->d);
    if (j->rc == 0) j->twin->ops->damped_inverse(j->twin, j->X, j->d, j->dim, 1, j->lambda, j->inv);
    j->twin->ops->synchronize(j->twin);
    return NULL;
}

static void bc_case_twin(const bc_ctx *c)
{
    const int dim = 129;
    const size_t n = (size_t)dim * dim;
    char name[160];
    if (!c->be->ops->twin) {
        printf("SKIP %s_twin: the backend has no twin\n", c->be->ops->name);
        return;
    }
    kt_rng r = kt_rng_make(960, 0);
    float *X = bc_f(n), *W = bc_f(n);
    const float lambda = 0.25f;
    bc_random_spd(&r, X, dim, 1);
    bc_random_spd(&r, W, dim, 1);
    kfac_backend *be = c->be, *twin = be->ops->twin(be, 2);
    /* the reference: this backend, at once, out of place */
    float *E0, *d0, *Xa;
    int rc0 = bc_eigh_run(be, X, dim, 1, &E0, &d0, &Xa);
    float *bX = bc_up(be, X, n), *bd = be->ops->alloc(be, (size_t)dim), *binv = be->ops->alloc(be, n);
    float *ref_inv = be->ops->alloc(be, n), *bE0 = bc_up(be, E0, n), *bd0 = bc_up(be, d0, (size_t)dim);
    be->ops->damped_inverse(be, bE0, bd0, dim, 1, &lambda, ref_inv);
    /* meanwhile on this backend: a decomposition of another matrix, in this thread */
    float *bW = bc_up(be, W, n), *bWE = be->ops->alloc(be, n), *bWd = be->ops->alloc(be, (size_t)dim);
    be->ops->synchronize(be);
    bc_twin_job job = {twin, bX, bd, binv, &lambda, dim, -1};
    pthread_t t;
    int started = pthread_create(&t, NULL, bc_twin_main, &job) == 0;
    int rcw = be->ops->eigh(be, bW, dim, 1, bWE, bWd);
    if (started) pthread_join(t, NULL);
    kt_check(bc_name(name, sizeof name, be, NULL, "twin_ran"), started && job.rc == 0 && rc0 == 0 && rcw == 0,
             "thread %d, twin eigh %d, backend eigh %d and %d", started, job.rc, rc0, rcw);
    if (started && job.rc == 0 && rc0 == 0) {
        float *E1 = bc_down(be, bX, n), *d1 = bc_down(be, bd, (size_t)dim), *inv1 = bc_down(be, binv, n);
        float *inv0 = bc_down(be, ref_inv, n);
        bc_same(bc_name(name, sizeof name, be, NULL, "twin_eigh_in_place_is_the_backends"), E1, E0, n);
        bc_same(bc_name(name, sizeof name, be, NULL, "twin_eigenvalues_are_the_backends"), d1, d0, (size_t)dim);
        bc_same(bc_name(name, sizeof name, be, NULL, "twin_damped_inverse_is_the_backends"), inv1, inv0, n);
        free(E1); free(d1); free(inv1); free(inv0);
    }
    float *bufs[] = {bX, bd, binv, ref_inv, bE0, bd0, bW, bWE, bWd};
    size_t i;
    for (i = 0; i < sizeof bufs / sizeof bufs[0]; ++i) be->ops->release(be, bufs[i]);
    twin->ops->destroy(twin);
    free(X); free(W); free(E0); free(d0); free(Xa);
}

static void bc_run_all(const bc_ctx *c, const network *geom)
{
    int i;
    bc_case_memory(c);
    for (i = 0; i < geom->n; ++i) {
        const layer *l = &geom->layers[i];
        if (l->type != CONVOLUTIONAL && l->type != CONNECTED) continue;
        kfac_shape s = bc_shape_of(l);
        bc_case_update_fields(c, l, i);
        bc_case_capture(c, l, i, 0);
        bc_case_capture(c, l, i, 1);
        bc_case_gather(c, &s, i);
        bc_case_precondition(c, &s, i);
        bc_case_scatter(c, &s, i);
        /* scaling=ekfac: A whole, and in blocks where the layer's shape allows */
        const int nb = bc_ekfac_blocks(l);
        bc_case_capture_ekfac(c, l, i, 1);
        if (nb > 1) bc_case_capture_ekfac(c, l, i, nb);
        s.a_blocks = nb;
        bc_case_ekfac_scale(c, &s, i);
        bc_case_precondition_eigen(c, &s, i);
    }
    /* batch-norm blocks: their statistics, and P = D Finv with F whole and in the
     * per-channel 2 x 2 blocks (M = 1) */
    for (i = 0; i < 2; ++i) {
        kfac_shape s = bc_bn_shape(5, 1, i);
        bc_case_capture_bn(c, i);
        bc_case_precondition(c, &s, 100 + i);
    }
    bc_case_fold(c);
    bc_case_flags(c);
    bc_case_dot(c);
    bc_case_results(c);
    bc_case_eigh(c);
    bc_case_twin(c);
    bc_case_damped_inverse(c);
    bc_case_sample(c);
    bc_case_replicas(c);
    bc_case_timing(c);
}

/* ---- driver-level cases on a [kfac] net of either backend -------------------------------- */

/* The [kfac] section the tests append to tests/cfg/backend.cfg for these cases:
 * statistics folded at every update (the fallbacks' infinite statistics reach the
 * fold), a decomposition due at every update (bc_net_replicas_rounds). */
#define BC_KFAC_SECTION "[kfac]\nstats_interval=1\ninverse_interval=1\ndecay=0.5\n"

/* The shapes the driver gave its layers (kfac_network.c) are the ones the backend
 * cases used (bc_shape_of), for every conv/connected layer of the net. */
static void bc_net_shapes(const network *net)
{
    const kfac_net *k = kfac_of(net);
    char name[128];
    int i, j = 0, same = 1;
    for (i = 0; i < net->n; ++i) {
        const layer *l = &net->layers[i];
        if (l->type != CONVOLUTIONAL && l->type != CONNECTED) continue;
        kfac_shape want = bc_shape_of(l);
        const kfac_shape *got = j < k->nlayers && k->layers[j].index == i ? &k->layers[j].s : NULL;
        j += got != NULL;
        if (!got || memcmp(got, &want, sizeof want) != 0) {
            printf("  layer %d: driver's shape %s, expected groups %d k_in %d K %d M %d has_bias %d T %d\n", i,
                   got ? "differs" : "missing", want.groups, want.k_in, want.K, want.M, want.has_bias, want.T);
            same = 0;
        }
    }
    kt_check(bc_name(name, sizeof name, k->be, NULL, "driver_shapes"), same && j == k->nlayers,
             "the driver's layer shapes are not the ones the backend cases use");
}

/* K-FAC's fallbacks (kfac_driver.c) on the first covered layer of a fresh net whose
 * [kfac] has stats_interval=1: numerical trouble keeps the last good state, logged
 * once.  Every array goes through the net's backend. */
static void bc_net_fallbacks(network *net)
{
    kfac_net *k = kfac_of(net);
    kfac_backend *be = k->be;
    kfac_layer *kl = &k->layers[0];
    const kfac_shape *s = &kl->s;
    const size_t nA = (size_t)s->groups * s->K * s->K, nG = (size_t)s->groups * s->M * s->M;
    const size_t nD = (size_t)s->groups * s->M * s->K, nw = (size_t)s->groups * s->M * s->k_in;
    const size_t nb = s->has_bias ? (size_t)s->groups * s->M : 0;
    char name[128];
    kt_rng r = kt_rng_make(1100, 0);
    float *A = bc_f(nA), *G = bc_f(nG);
    bc_random_spd(&r, A, s->K, s->groups);
    bc_random_spd(&r, G, s->M, s->groups);
    be->ops->from_host(be, kl->A, A, nA);
    be->ops->from_host(be, kl->G, G, nG);
    kl->have_factors = 1;
    int rc = kfac_inverse_refresh(k, kl);
    kt_check(bc_name(name, sizeof name, be, NULL, "fallback_good_factors_decomposed"), rc == 0 && kl->have_inverse,
             "kfac_inverse_refresh returned %d, have_inverse %d", rc, kl->have_inverse);
    float *EA0 = bc_down(be, kl->EA, nA), *dA0 = bc_down(be, kl->dA, (size_t)s->groups * s->K);

    /* a NaN in a factor: no decomposition, the last good one kept */
    A[1] = NAN;
    be->ops->from_host(be, kl->A, A, nA);
    rc = kfac_inverse_refresh(k, kl);
    float *EA1 = bc_down(be, kl->EA, nA), *dA1 = bc_down(be, kl->dA, (size_t)s->groups * s->K);
    int kept = kt_same_bits("EA", EA1, EA0, nA, 1) && kt_same_bits("dA", dA1, dA0, (size_t)s->groups * s->K, 1);
    kt_check(bc_name(name, sizeof name, be, NULL, "fallback_nan_factor_keeps_inverse"),
             rc == -1 && kl->have_inverse && kept && kl->bad_eig_logged == 1,
             "returned %d, have_inverse %d, decomposition %s, logged %d", rc, kl->have_inverse,
             kept ? "kept" : "changed", kl->bad_eig_logged);
    A[1] = A[s->K]; /* symmetric again: A[0][1] = A[1][0] */
    be->ops->from_host(be, kl->A, A, nA);

    /* an infinity in the statistics: the batch is dropped, the averages kept */
    update_args a;
    memset(&a, 0, sizeof a);
    a.batch = net->batch;
    a.learning_rate = net->learning_rate;
    a.momentum = net->momentum;
    a.decay = net->decay;
    float *acc = bc_f(nA);
    acc[0] = INFINITY;
    be->ops->from_host(be, kl->A_acc, acc, nA);
    kl->n_acc_A = kl->n_acc_G = net->batch;
    int factors_before = kl->have_factors;
    kfac_network_precondition(net, &a);
    float *A_after = bc_down(be, kl->A, nA), *acc_after = bc_down(be, kl->A_acc, nA), *zeros = bc_f(nA);
    int same = kt_same_bits("A", A_after, A, nA, 1), zeroed = kt_same_bits("A_acc", acc_after, zeros, nA, 1);
    kt_check(bc_name(name, sizeof name, be, NULL, "fallback_inf_statistics_dropped"),
             same && zeroed && kl->n_acc_A == 0 && kl->have_factors == factors_before && kl->bad_factors_logged == 1,
             "factors %s, accumulator %s, n_acc_A %d, have_factors %d -> %d, logged %d", same ? "kept" : "changed",
             zeroed ? "zeroed" : "not zeroed", kl->n_acc_A, factors_before, kl->have_factors, kl->bad_factors_logged);

    /* a NaN in Darknet's gradient: the update buffers go back to the snapshot (the
     * momentum step without the bad gradient) */
    kfac_darknet_buffers bufs;
    be->ops->darknet_buffers(&net->layers[kl->index], &bufs);
    float *wu = bc_f(nw), *ws = bc_f(nw), *bu = bc_f(nb), *bsn = bc_f(nb);
    bc_fill(&r, wu, nw, -1, 1);
    bc_fill(&r, ws, nw, -1, 1);
    bc_fill(&r, bu, nb, -1, 1);
    bc_fill(&r, bsn, nb, -1, 1);
    wu[0] = NAN;
    be->ops->from_host(be, bufs.weight_updates, wu, nw);
    be->ops->from_host(be, kl->w_snap, ws, nw);
    if (nb) {
        be->ops->from_host(be, bufs.bias_updates, bu, nb);
        be->ops->from_host(be, kl->b_snap, bsn, nb);
    }
    kfac_network_precondition(net, &a);
    float *wu_after = bc_down(be, bufs.weight_updates, nw), *bu_after = bc_down(be, bufs.bias_updates, nb);
    int restored = kt_same_bits("weight_updates", wu_after, ws, nw, 1) &&
                   kt_same_bits("bias_updates", bu_after, bsn, nb, 1);
    kt_check(bc_name(name, sizeof name, be, NULL, "fallback_nan_gradient_keeps_snapshot"),
             restored && kl->bad_grad_logged == 1, "update buffers %s the snapshot, logged %d",
             restored ? "equal" : "differ from", kl->bad_grad_logged);

    /* a factor of zeros (no curvature): the layer stays on SGD, P = D */
    float *D = bc_f(nD);
    bc_fill(&r, D, nD, -1, 1);
    be->ops->from_host(be, kl->D, D, nD);
    be->ops->zero(be, kl->dA, (size_t)s->groups * s->K);
    kl->have_inverse = 1;
    kl->inv_damping = 0;
    kfac_precondition_layer(k, kl);
    float *P = bc_down(be, kl->P, nD);
    kt_check(bc_name(name, sizeof name, be, NULL, "fallback_zero_factor_is_sgd"),
             !kl->inv_ok && kt_same_bits("P", P, D, nD, 1), "inv_ok %d, P %s D", kl->inv_ok,
             memcmp(P, D, nD * sizeof(float)) ? "!=" : "==");

    free(A); free(G); free(EA0); free(dA0); free(EA1); free(dA1); free(acc); free(A_after); free(acc_after);
    free(zeros); free(wu); free(ws); free(bu); free(bsn); free(wu_after); free(bu_after); free(D); free(P);
}

/* Replicas (kfac_sync.c) after each trained on its own batches: `sync` (Darknet's
 * sync_nets on the GPU, kfac_networks_sync on the CPU) must leave every replica with
 * the mean of their factors, computed here beforehand, and one decomposition of that
 * mean.  `tag` names the round. */
static void bc_net_replicas(network **nets, int n, void (*sync)(network **, int), const char *tag)
{
    kfac_net *k0 = kfac_of(nets[0]);
    kfac_backend *be = k0->be;
    char name[160];
    int i, j, f;
    double **mean = (double **)bc_alloc((size_t)k0->nlayers * 2, sizeof(double *));
    double **mtol = (double **)bc_alloc((size_t)k0->nlayers * 2, sizeof(double *));
    for (j = 0; j < k0->nlayers; ++j) {
        const kfac_shape *s = &k0->layers[j].s;
        for (f = 0; f < 2; ++f) {
            const size_t len = (size_t)s->groups * (f ? (size_t)s->M * s->M : (size_t)s->K * s->K);
            size_t e;
            mean[2 * j + f] = bc_d(len);
            mtol[2 * j + f] = bc_d(len);
            for (i = 0; i < n; ++i) {
                kfac_layer *kl = &kfac_of(nets[i])->layers[j];
                float *h = bc_down(kfac_of(nets[i])->be, f ? kl->G : kl->A, len);
                for (e = 0; e < len; ++e) {
                    mean[2 * j + f][e] += (double)h[e] / n;
                    mtol[2 * j + f][e] += fabs((double)h[e]) / n;
                }
                free(h);
            }
            /* n-1 float adds and a scale (as bc_case_replicas) */
            for (e = 0; e < len; ++e) mtol[2 * j + f][e] *= (n + 2) * BC_U;
        }
    }
    sync(nets, n);
    for (j = 0; j < k0->nlayers; ++j) {
        const kfac_shape *s = &k0->layers[j].s;
        const int index = k0->layers[j].index;
        for (f = 0; f < 2; ++f) {
            const int dim = f ? s->M : s->K;
            const size_t dd = (size_t)dim * dim, len = (size_t)s->groups * dd, nd = (size_t)s->groups * dim;
            /* replica 0's factor and decomposition; every other replica's must equal them */
            kfac_layer *k0l = &k0->layers[j];
            float *X = bc_down(be, f ? k0l->G : k0l->A, len), *E = bc_down(be, f ? k0l->EG : k0l->EA, len);
            float *d = bc_down(be, f ? k0l->dG : k0l->dA, nd);
            int shared = 1, have = 1;
            for (i = 0; i < n; ++i) {
                kfac_layer *kl = &kfac_of(nets[i])->layers[j];
                kfac_backend *b = kfac_of(nets[i])->be;
                have &= kl->have_inverse && kl->inv_damping == 0;
                if (i == 0) continue;
                float *Xi = bc_down(b, f ? kl->G : kl->A, len), *Ei = bc_down(b, f ? kl->EG : kl->EA, len);
                float *di = bc_down(b, f ? kl->dG : kl->dA, nd);
                shared &= kt_same_bits("factor", Xi, X, len, 0) && kt_same_bits("E", Ei, E, len, 0) &&
                          kt_same_bits("d", di, d, nd, 0);
                free(Xi); free(Ei); free(di);
            }
            snprintf(name, sizeof name, "%s_%s_layer%d_%s_averaged", be->ops->name, tag, index, f ? "G" : "A");
            bc_within(name, X, mean[2 * j + f], mtol[2 * j + f], len);
            snprintf(name, sizeof name, "%s_%s_layer%d_%s_and_decomposition_shared", be->ops->name, tag, index,
                     f ? "G" : "A");
            kt_check(name, shared && have, "replicas hold different factors or decompositions (have_inverse %d)",
                     have);
            /* the shared decomposition is the mean's: E^T diag(d) E = mean, within
             * the solver's backward error (bc_case_eigh), ||mean|| = max d */
            float *rec = bc_f(len);
            double *tol = bc_d(len);
            int g, a, bb, m;
            for (g = 0; g < s->groups; ++g) {
                const float *Eg = E + (size_t)g * dd, *dg = d + (size_t)g * dim;
                double norm = 0;
                for (m = 0; m < dim; ++m) norm = fmax(norm, dg[m]);
                for (a = 0; a < dim; ++a)
                    for (bb = 0; bb < dim; ++bb) {
                        double sr = 0;
                        for (m = 0; m < dim; ++m)
                            sr += (double)Eg[(size_t)m * dim + a] * dg[m] * Eg[(size_t)m * dim + bb];
                        rec[(size_t)g * dd + (size_t)a * dim + bb] = (float)sr;
                        tol[(size_t)g * dd + (size_t)a * dim + bb] = 16.0 * dim * BC_U * norm;
                    }
            }
            snprintf(name, sizeof name, "%s_%s_layer%d_%s_decomposition_of_mean", be->ops->name, tag, index,
                     f ? "G" : "A");
            bc_within(name, rec, mean[2 * j + f], tol, len);
            free(rec); free(tol); free(X); free(E); free(d);
        }
    }
    int group = 1;
    for (i = 0; i < n; ++i) group &= kfac_of(nets[i])->replicas == n && !kfac_of(nets[i])->inverse_due;
    snprintf(name, sizeof name, "%s_%s_group", be->ops->name, tag);
    kt_check(name, group, "replicas %d, inverse_due %d after the sync", k0->replicas, k0->inverse_due);
    for (j = 0; j < 2 * k0->nlayers; ++j) {
        free(mean[j]);
        free(mtol[j]);
    }
    free(mean);
    free(mtol);
}

/* Two rounds of training and sync of two replicas made from one cfg and seed
 * (streams 5 and 6: different batches).  Before the first sync each replica
 * decomposes its own factors; after it they are a group, and in the second round a
 * replica only marks its due decomposition (kfac_driver.c) and keeps the shared one
 * until the sync.  The cfg must make the second update due: inverse_interval 1 or 2
 * (during the first inverse_interval updates every statistics step is due). */
static void bc_net_replicas_rounds(network **nets, void (*sync)(network **, int))
{
    kfac_net *k0 = kfac_of(nets[0]), *k1 = kfac_of(nets[1]);
    kfac_layer *kl = &k0->layers[0];
    const size_t nA = (size_t)kl->s.groups * kl->s.K * kl->s.K;
    char name[128];
    kt_train_updates(nets[0], 5, 0, 1);
    kt_train_updates(nets[1], 6, 0, 1);
    bc_net_replicas(nets, 2, sync, "sync_first");
    float *EA = bc_down(k0->be, kl->EA, nA);
    kt_train_updates(nets[0], 5, 1, 1);
    kt_train_updates(nets[1], 6, 1, 1);
    float *EA1 = bc_down(k0->be, kl->EA, nA);
    int kept = kt_same_bits("EA", EA1, EA, nA, 0);
    kt_check(bc_name(name, sizeof name, k0->be, NULL, "sync_second_decomposition_deferred"),
             k0->inverse_due && k1->inverse_due && kept, "inverse_due %d/%d, replica 0's decomposition %s",
             k0->inverse_due, k1->inverse_due, kept ? "kept" : "changed");
    bc_net_replicas(nets, 2, sync, "sync_second");
    free(EA);
    free(EA1);
}

#endif
