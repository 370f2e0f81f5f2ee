/* darknet-kfac: the state file <weights>.kfac saved next to each weights file.
 *
 * Darknet's .weights file keeps the weights and `seen` but no optimizer state: a
 * resumed run would restart its factors from nothing and lose the momentum that
 * K-FAC's update relies on.  Layout (little-endian, as Darknet's own files):
 *
 *   u32 magic "KFAC", u32 version, u32 net->n, u32 covered layers, i32 step, u64 rng,
 *   u64 seen and u64 FNV-1a hash of the weights file this state was saved with
 *   per covered layer: i32 index, type, groups, K, M, has_bias, A's blocks per group,
 *                      have_factors (batches), have_inverse; f32 A, G, EA, dA, EG, dG,
 *                      w_snap, b_snap (A and EA: the blocks, one after another)
 *   per conv/connected/batchnorm layer: i32 index, u32 counts; f32 weight, bias,
 *                      scale updates
 *   u32 step rule (0 kl_clip, 1 adaptive, 2 auto); adaptive and auto: f32 lambda,
 *   i32 have_prev, updates, active, low_ratios, check_next, per covered layer f32
 *   delta_0
 *   (groups x M x K)
 *   the schedule: i32 stats_interval, inverse_interval, inverse_lag in force; f64 the
 *   measured t_update, t_stats, t_decomp; i32 the update the background job is
 *   installed at (-1: none); per covered layer i32 in the job, and for those i32 its
 *   status and f32 its EA, dA, EG, dG (the job finished, not yet installed)
 *   u32 batch-norm blocks; per block: i32 index, channels, blocks, have_factors
 *                      (batches), have_inverse; f32 F, E, d, scale and shift
 *                      snapshots, and with step=adaptive or auto delta_0 (2C;
 *                      kfac_bn.c)
 *   u32 scaling (0 kfac, 1 ekfac); ekfac: per covered layer i32 batches in S (0 when
 *                      S does not belong to the saved decomposition), f32 S
 *                      (groups x M x K; kfac_ekfac.c)
 *   u64 FNV-1a hash of everything before it
 *
 * Version 5 added the batch-norm blocks, the [batchnorm] momentum and the EKFAC
 * scaling (version 4: the schedule and the background job); a file of another version
 * is refused with its number named.
 *
 * Written to <file>.tmp, flushed to disk and renamed, so a crash mid-write never
 * leaves a torn file.  A file is read whole and checked before anything of the net
 * changes; every length in it must equal what this net gives, so no size read from the
 * file is trusted.
 *
 * The pair: Darknet writes the weights first (patches/0014: also to a temporary file,
 * renamed), then this file, so a crash between the two, or a file saved over in place
 * (<cfg>.backup, _final) by another run, can leave a state next to weights it was not
 * saved with.  Loading it would resume momentum and factors of another point of
 * training.  So the state records the weights it belongs to (Darknet's `seen` and a
 * hash of the weights file's bytes), and a state that does not match the weights
 * beside it is not loaded: K-FAC starts fresh from those weights, with a notice (the
 * weights are good; only K-FAC's statistics and Darknet's momentum, which Darknet never
 * saves at all, are lost). */
#include <errno.h>
#include <stdarg.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include "kfac_internal.h"

#define KFAC_STATE_MAGIC 0x4341464bu /* "KFAC" */
#define KFAC_STATE_VERSION 5u

typedef struct {
    FILE *fp;
    uint64_t hash;
    int failed;             /* errno of the first failed write */
} kfac_stream;

#define KFAC_FNV_OFFSET 0xcbf29ce484222325ULL

static void hash_bytes(uint64_t *h, const void *p, size_t n)
{
    const unsigned char *c = (const unsigned char *)p;
    size_t i;
    for (i = 0; i < n; ++i) { *h ^= c[i]; *h *= 0x100000001b3ULL; }
}

/* FNV-1a of a whole file: what identifies the weights a state belongs to.  0 on
 * success, -1 with errno set. */
static int hash_file(const char *path, uint64_t *h)
{
    unsigned char buf[1 << 16];
    size_t n;
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    *h = KFAC_FNV_OFFSET;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) hash_bytes(h, buf, n);
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        errno = EIO;
        return -1;
    }
    return 0;
}

static void put(kfac_stream *s, const void *p, size_t size, size_t n)
{
    if (s->failed || n == 0) return;
    if (fwrite(p, size, n, s->fp) != n) s->failed = errno ? errno : EIO;
    hash_bytes(&s->hash, p, size * n);
}

/* 0 on success; the caller reports which part was short */
static int get(kfac_stream *s, void *p, size_t size, size_t n)
{
    if (n == 0) return 0;
    if (fread(p, size, n, s->fp) != n) return -1;
    hash_bytes(&s->hash, p, size * n);
    return 0;
}

void kfac_layer_update_counts(const layer *l, size_t c[3])
{
    /* outputs per image of a connected layer, filters of a conv, channels of a [batchnorm] */
    const size_t per = (size_t)(l->type == CONNECTED ? l->outputs : l->type == BATCHNORM ? l->c : l->n);
    c[0] = l->weight_updates ? (size_t)(l->type == CONNECTED ? l->inputs * l->outputs : l->nweights) : 0;
    c[1] = l->bias_updates ? per : 0;
    c[2] = l->scale_updates ? per : 0;
}

/* the layers whose momentum (Darknet's *_updates) the file keeps */
static int is_weighted(const layer *l)
{
    return l->type == CONVOLUTIONAL || l->type == CONNECTED || l->type == BATCHNORM;
}

/* The arrays of one batch-norm block the file holds, in file order, with their lengths. */
#define KFAC_BN_ARRAYS 5
static void bn_arrays(kfac_bn *b, float **p[KFAC_BN_ARRAYS], size_t n[KFAC_BN_ARRAYS])
{
    const size_t len = kfac_a_len(&b->s), K = (size_t)b->s.K;
    p[0] = &b->F;      n[0] = len;
    p[1] = &b->E;      n[1] = len;
    p[2] = &b->d;      n[2] = K;
    p[3] = &b->s_snap; n[3] = K / 2;
    p[4] = &b->b_snap; n[4] = K / 2;
}

/* The arrays of one covered layer the file holds, in file order, with their lengths. */
#define KFAC_LAYER_ARRAYS 8
static void layer_arrays(kfac_layer *kl, float **p[KFAC_LAYER_ARRAYS], size_t n[KFAC_LAYER_ARRAYS])
{
    const size_t g = (size_t)kl->s.groups, K = (size_t)kl->s.K, M = (size_t)kl->s.M, nA = kfac_a_len(&kl->s);
    p[0] = &kl->A;      n[0] = nA;
    p[1] = &kl->G;      n[1] = g * M * M;
    p[2] = &kl->EA;     n[2] = nA;
    p[3] = &kl->dA;     n[3] = g * K;
    p[4] = &kl->EG;     n[4] = g * M * M;
    p[5] = &kl->dG;     n[5] = g * M;
    p[6] = &kl->w_snap; n[6] = g * M * (size_t)kl->s.k_in;
    p[7] = &kl->b_snap; n[7] = kl->s.has_bias ? g * M : 0;
}

/* lengths of a layer's next decomposition in the file: EA, dA, EG, dG */
static void next_lengths(const kfac_layer *kl, size_t n[4])
{
    const size_t g = (size_t)kl->s.groups, M = (size_t)kl->s.M;
    n[0] = kfac_a_len(&kl->s);
    n[1] = g * (size_t)kl->s.K;
    n[2] = g * M * M;
    n[3] = g * M;
}

/* ---- save ----------------------------------------------------------------------- */

void kfac_state_save(network *net, const char *weightfile)
{
    kfac_net *k = kfac_of(net);
    kfac_backend *be = k->be;
    char path[4096], tmp[4200];
    int i, j;
    uint64_t identity[2] = {(uint64_t)*net->seen, 0}; /* seen, hash of the weights file */
    snprintf(path, sizeof path, "%s.kfac", weightfile);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    /* a background job in flight is saved finished (not installed: it is used at its
     * own update, after the resume too) */
    kfac_worker_wait(k);
    if (hash_file(weightfile, &identity[1]) != 0) {
        kfac_log("cannot read back %s (%s): K-FAC state not saved", weightfile, strerror(errno));
        return;
    }
    kfac_stream s = {fopen(tmp, "wb"), KFAC_FNV_OFFSET, 0};
    if (!s.fp) {
        kfac_log("cannot write %s (%s): K-FAC state not saved; the weights are saved", tmp, strerror(errno));
        return;
    }
    /* one host buffer, as long as the longest array, stages every array */
    size_t longest = 1;
    for (i = 0; i < k->nlayers; ++i) {
        float **p[KFAC_LAYER_ARRAYS];
        size_t n[KFAC_LAYER_ARRAYS];
        layer_arrays(&k->layers[i], p, n);
        for (j = 0; j < KFAC_LAYER_ARRAYS; ++j) if (n[j] > longest) longest = n[j];
    }
    for (i = 0; i < net->n; ++i) {
        size_t c[3];
        if (!is_weighted(&net->layers[i])) continue;
        kfac_layer_update_counts(&net->layers[i], c);
        for (j = 0; j < 3; ++j) if (c[j] > longest) longest = c[j];
    }
    for (i = 0; i < k->nbn; ++i)
        if (kfac_a_len(&k->bn[i].s) > longest) longest = kfac_a_len(&k->bn[i].s);
    float *host = (float *)kfac_calloc(longest, sizeof(float));

    uint32_t head[4] = {KFAC_STATE_MAGIC, KFAC_STATE_VERSION, (uint32_t)net->n, (uint32_t)k->nlayers};
    put(&s, head, sizeof(uint32_t), 4);
    put(&s, &k->step, sizeof(int32_t), 1);
    put(&s, &k->rng, sizeof(uint64_t), 1);
    put(&s, identity, sizeof(uint64_t), 2);
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        float **p[KFAC_LAYER_ARRAYS];
        size_t n[KFAC_LAYER_ARRAYS];
        int32_t d[9] = {kl->index, kl->s.type, kl->s.groups, kl->s.K, kl->s.M, kl->s.has_bias, kfac_a_blocks(&kl->s),
                        kl->have_factors, kl->have_inverse};
        put(&s, d, sizeof(int32_t), 9);
        layer_arrays(kl, p, n);
        for (j = 0; j < KFAC_LAYER_ARRAYS; ++j) {
            if (!n[j]) continue;
            be->ops->to_host(be, host, *p[j], n[j]);
            put(&s, host, sizeof(float), n[j]);
        }
    }
    for (i = 0; i < net->n; ++i) {
        const layer *l = &net->layers[i];
        size_t c[3];
        uint32_t c32[3];
        kfac_darknet_buffers b;
        if (!is_weighted(l)) continue;
        kfac_layer_update_counts(l, c);
        be->ops->darknet_buffers(l, &b);
        float *src[3] = {b.weight_updates, b.bias_updates, b.scale_updates};
        int32_t idx = i;
        for (j = 0; j < 3; ++j) c32[j] = (uint32_t)c[j];
        put(&s, &idx, sizeof idx, 1);
        put(&s, c32, sizeof(uint32_t), 3);
        for (j = 0; j < 3; ++j) {
            if (!c[j]) continue;
            be->ops->to_host(be, host, src[j], c[j]);
            put(&s, host, sizeof(float), c[j]);
        }
    }
    uint32_t rule = k->adapt ? (uint32_t)k->cfg.step : 0u;
    put(&s, &rule, sizeof rule, 1);
    if (k->adapt) {
        int32_t ints[5] = {k->adapt->have_prev, k->adapt->updates, k->adapt->active, k->adapt->low_ratios,
                           k->adapt->check_next};
        put(&s, &k->adapt->lambda, sizeof(float), 1);
        put(&s, ints, sizeof(int32_t), 5);
        for (i = 0; i < k->nlayers; ++i) {
            kfac_layer *kl = &k->layers[i];
            const size_t n = (size_t)kl->s.groups * kl->s.M * kl->s.K;
            if (n > longest) {
                free(host);
                host = (float *)kfac_calloc(n, sizeof(float));
                longest = n;
            }
            be->ops->to_host(be, host, kl->prev, n);
            put(&s, host, sizeof(float), n);
        }
    }
    {
        const struct kfac_sched *sc = &k->sched;
        int32_t ints[4] = {sc->stats_interval, sc->inverse_interval, sc->inverse_lag, k->job_install_at};
        /* the measurements only where auto uses them: a run with a fixed schedule saves
         * the same bytes whatever the clock said */
        const int uses = sc->auto_stats || sc->auto_inverse || sc->auto_lag;
        double times[3] = {uses ? sc->t_update : 0, uses ? sc->t_stats : 0, uses ? sc->t_decomp : 0};
        put(&s, ints, sizeof(int32_t), 3);
        put(&s, times, sizeof(double), 3);
        put(&s, &ints[3], sizeof(int32_t), 1);
        for (i = 0; i < k->nlayers; ++i) {
            kfac_layer *kl = &k->layers[i];
            float *arr[4] = {kl->next.EA, kl->next.dA, kl->next.EG, kl->next.dG};
            size_t n[4];
            int32_t job[2] = {kl->in_job, kl->next.status};
            next_lengths(kl, n);
            put(&s, job, sizeof(int32_t), 1);
            if (!kl->in_job) continue;
            put(&s, &job[1], sizeof(int32_t), 1);
            for (j = 0; j < 4; ++j) {
                if (n[j] > longest) {
                    free(host);
                    host = (float *)kfac_calloc(n[j], sizeof(float));
                    longest = n[j];
                }
                be->ops->to_host(be, host, arr[j], n[j]);
                put(&s, host, sizeof(float), n[j]);
            }
        }
    }
    uint32_t nbn = (uint32_t)k->nbn;
    put(&s, &nbn, sizeof nbn, 1);
    for (i = 0; i < k->nbn; ++i) {
        kfac_bn *b = &k->bn[i];
        float **p[KFAC_BN_ARRAYS];
        size_t n[KFAC_BN_ARRAYS];
        int32_t d[5] = {b->index, b->s.K / 2, kfac_a_count(&b->s), b->have_factors, b->have_inverse};
        put(&s, d, sizeof(int32_t), 5);
        bn_arrays(b, p, n);
        for (j = 0; j < KFAC_BN_ARRAYS; ++j) {
            be->ops->to_host(be, host, *p[j], n[j]);
            put(&s, host, sizeof(float), n[j]);
        }
        if (k->adapt) {
            be->ops->to_host(be, host, b->prev, (size_t)b->s.K);
            put(&s, host, sizeof(float), (size_t)b->s.K);
        }
    }
    uint32_t scaling = (uint32_t)k->cfg.scaling;
    put(&s, &scaling, sizeof scaling, 1);
    for (i = 0; scaling && i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        const size_t n = (size_t)kl->s.groups * kl->s.M * kl->s.K;
        int32_t batches = kl->ek->gen == kl->basis_gen ? kl->ek->batches : 0;
        if (n > longest) {
            free(host);
            host = (float *)kfac_calloc(n, sizeof(float));
            longest = n;
        }
        put(&s, &batches, sizeof batches, 1);
        be->ops->to_host(be, host, kl->ek->S, n);
        put(&s, host, sizeof(float), n);
    }
    free(host);
    uint64_t h = s.hash;
    put(&s, &h, sizeof h, 1);
    if (!s.failed && (fflush(s.fp) != 0 || fsync(fileno(s.fp)) != 0)) s.failed = errno ? errno : EIO;
    if (fclose(s.fp) != 0 && !s.failed) s.failed = errno ? errno : EIO;
    if (s.failed || rename(tmp, path) != 0) {
        kfac_log("writing %s failed (%s): K-FAC state not saved; the weights are saved", path,
                 strerror(s.failed ? s.failed : errno));
        remove(tmp);
    }
}

/* ---- load ------------------------------------------------------------------------- */

/* A state file read whole into host memory, not yet applied to the net. */
typedef struct {
    int32_t step;
    uint64_t rng;
    uint64_t identity[2];   /* seen and weights-file hash it was saved with */
    int nlayers;
    int32_t (*flags)[2];    /* per covered layer: have_factors, have_inverse */
    float **arrays;         /* per covered layer KFAC_LAYER_ARRAYS host arrays */
    float **updates;        /* per net layer 3 host arrays (NULL for other layer types) */
    uint32_t rule;          /* the step rule it was saved with */
    float lambda;           /* step=adaptive's state, when saved with it */
    int32_t adapt_ints[5];  /* have_prev, updates, active, low_ratios, check_next */
    float **prev;           /* per covered layer delta_0, when saved with step=adaptive */
    int32_t sched[4];       /* stats_interval, inverse_interval, inverse_lag, job_install_at */
    double times[3];        /* t_update, t_stats, t_decomp */
    int32_t (*job)[2];      /* per covered layer: in the job, its status */
    float **next;           /* per covered layer 4 host arrays (the job's layers only) */
    int32_t (*bn_flags)[2]; /* per batch-norm block: have_factors, have_inverse */
    float **bn;             /* per batch-norm block KFAC_BN_ARRAYS host arrays */
    float **bn_prev;        /* per batch-norm block delta_0, when saved with step=adaptive */
    int nbn;
    uint32_t scaling;       /* the scaling it was saved with */
    int32_t *ek_batches;    /* per covered layer, when saved with scaling=ekfac */
    float **ek_S;
    int n;                  /* net->n */
} kfac_staged;

static void staged_free(kfac_staged *st)
{
    int i;
    if (st->arrays)
        for (i = 0; i < st->nlayers * KFAC_LAYER_ARRAYS; ++i) free(st->arrays[i]);
    if (st->updates)
        for (i = 0; i < st->n * 3; ++i) free(st->updates[i]);
    if (st->prev)
        for (i = 0; i < st->nlayers; ++i) free(st->prev[i]);
    if (st->next)
        for (i = 0; i < st->nlayers * 4; ++i) free(st->next[i]);
    if (st->bn)
        for (i = 0; i < st->nbn * KFAC_BN_ARRAYS; ++i) free(st->bn[i]);
    if (st->bn_prev)
        for (i = 0; i < st->nbn; ++i) free(st->bn_prev[i]);
    free(st->bn_prev);
    free(st->bn);
    free(st->bn_flags);
    if (st->ek_S)
        for (i = 0; i < st->nlayers; ++i) free(st->ek_S[i]);
    free(st->ek_S);
    free(st->ek_batches);
    free(st->prev);
    free(st->next);
    free(st->job);
    free(st->arrays);
    free(st->updates);
    free(st->flags);
    memset(st, 0, sizeof *st);
}

static int fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* The batch-norm blocks' section into st; 0, or -1 with the message in err. */
static int read_bn(kfac_net *k, const char *path, kfac_stream *s, kfac_staged *st, char *err, size_t errlen)
{
    uint32_t nbn;
    int i, j;
    if (get(s, &nbn, sizeof nbn, 1)) return fail(err, errlen, "%s: truncated K-FAC state file (batch-norm blocks)", path);
    if (nbn != (uint32_t)k->nbn)
        return fail(err, errlen, "%s: saved with %u batch-norm blocks; this cfg has %d (another net or another [kfac])", path,
                    nbn, k->nbn);
    st->nbn = k->nbn;
    st->bn_flags = (int32_t(*)[2])kfac_calloc((size_t)(k->nbn ? k->nbn : 1), sizeof *st->bn_flags);
    st->bn = (float **)kfac_calloc((size_t)(k->nbn ? k->nbn : 1) * KFAC_BN_ARRAYS, sizeof(float *));
    st->bn_prev = (float **)kfac_calloc((size_t)(k->nbn ? k->nbn : 1), sizeof(float *));
    for (i = 0; i < k->nbn; ++i) {
        kfac_bn *b = &k->bn[i];
        float **p[KFAC_BN_ARRAYS];
        size_t n[KFAC_BN_ARRAYS];
        int32_t d[5];
        if (get(s, d, sizeof(int32_t), 5))
            return fail(err, errlen, "%s: truncated K-FAC state file (batch-norm block of layer %d)", path, b->index);
        if (d[0] != b->index || d[1] != b->s.K / 2 || d[2] != kfac_a_count(&b->s))
            return fail(err, errlen, "%s: the batch-norm block of layer %d was saved with %d channels in %d blocks; this cfg gives layer %d %d channels in %d blocks: another net or another cfg",
                        path, d[0], d[1], d[2], b->index, b->s.K / 2, kfac_a_count(&b->s));
        st->bn_flags[i][0] = d[3];
        st->bn_flags[i][1] = d[4];
        bn_arrays(b, p, n);
        for (j = 0; j < KFAC_BN_ARRAYS; ++j) {
            float **a = &st->bn[i * KFAC_BN_ARRAYS + j];
            *a = (float *)kfac_calloc(n[j], sizeof(float));
            if (get(s, *a, sizeof(float), n[j]))
                return fail(err, errlen, "%s: truncated K-FAC state file (batch-norm block of layer %d)", path, b->index);
        }
        if (st->rule == 0) continue;
        st->bn_prev[i] = (float *)kfac_calloc((size_t)b->s.K, sizeof(float));
        if (get(s, st->bn_prev[i], sizeof(float), (size_t)b->s.K))
            return fail(err, errlen, "%s: truncated K-FAC state file (batch-norm block of layer %d)", path, b->index);
    }
    return 0;
}

/* Reads and checks path for this net.  Returns 0 with st filled, 1 when the file does
 * not exist, -1 with a message in err (naming the file and the fault). */
static int state_read(network *net, const char *path, kfac_staged *st, char *err, size_t errlen)
{
    kfac_net *k = kfac_of(net);
    int i, j, rc = -1;
    memset(st, 0, sizeof *st);
    kfac_stream s = {fopen(path, "rb"), KFAC_FNV_OFFSET, 0};
    if (!s.fp) {
        if (errno == ENOENT) return 1;
        return fail(err, errlen, "%s: cannot open K-FAC state file (%s)", path, strerror(errno));
    }
    uint32_t head[4];
    if (get(&s, head, sizeof(uint32_t), 4)) { fail(err, errlen, "%s: not a K-FAC state file (too short)", path); goto done; }
    if (head[0] != KFAC_STATE_MAGIC) { fail(err, errlen, "%s: not a K-FAC state file (bad magic number)", path); goto done; }
    if (head[1] != KFAC_STATE_VERSION) {
        fail(err, errlen, "%s: K-FAC state file version %u, this build reads version %u (delete it to start K-FAC fresh from these weights)",
             path, head[1], KFAC_STATE_VERSION);
        goto done;
    }
    if (head[2] != (uint32_t)net->n || head[3] != (uint32_t)k->nlayers) {
        fail(err, errlen, "%s: saved for a network of %u layers with %u under K-FAC; this cfg has %d and %d (another net or another [kfac])",
             path, head[2], head[3], net->n, k->nlayers);
        goto done;
    }
    if (get(&s, &st->step, sizeof st->step, 1) || get(&s, &st->rng, sizeof st->rng, 1) ||
        get(&s, st->identity, sizeof(uint64_t), 2)) {
        fail(err, errlen, "%s: truncated K-FAC state file", path);
        goto done;
    }
    st->nlayers = k->nlayers;
    st->n = net->n;
    st->flags = (int32_t(*)[2])kfac_calloc((size_t)(k->nlayers ? k->nlayers : 1), sizeof *st->flags);
    st->arrays = (float **)kfac_calloc((size_t)(k->nlayers ? k->nlayers : 1) * KFAC_LAYER_ARRAYS, sizeof(float *));
    st->updates = (float **)kfac_calloc((size_t)net->n * 3, sizeof(float *));
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        float **p[KFAC_LAYER_ARRAYS];
        size_t n[KFAC_LAYER_ARRAYS];
        int32_t d[9];
        if (get(&s, d, sizeof(int32_t), 9)) { fail(err, errlen, "%s: truncated K-FAC state file (layer %d)", path, kl->index); goto done; }
        if (d[0] != kl->index || d[1] != kl->s.type || d[2] != kl->s.groups || d[3] != kl->s.K || d[4] != kl->s.M ||
            d[5] != kl->s.has_bias || d[6] != kfac_a_blocks(&kl->s)) {
            fail(err, errlen, "%s: layer %d was saved with factors A %d in %d blocks, G %d (groups %d); this cfg gives layer %d A %d in %d blocks, G %d (groups %d): another net or another cfg",
                 path, d[0], d[3], d[6], d[4], d[2], kl->index, kl->s.K, kfac_a_blocks(&kl->s), kl->s.M, kl->s.groups);
            goto done;
        }
        st->flags[i][0] = d[7];
        st->flags[i][1] = d[8];
        layer_arrays(kl, p, n);
        for (j = 0; j < KFAC_LAYER_ARRAYS; ++j) {
            float **a = &st->arrays[i * KFAC_LAYER_ARRAYS + j];
            *a = (float *)kfac_calloc(n[j] ? n[j] : 1, sizeof(float));
            if (get(&s, *a, sizeof(float), n[j])) {
                fail(err, errlen, "%s: truncated K-FAC state file (layer %d factors)", path, kl->index);
                goto done;
            }
        }
    }
    for (i = 0; i < net->n; ++i) {
        const layer *l = &net->layers[i];
        size_t c[3];
        uint32_t fc[3];
        int32_t idx;
        if (!is_weighted(l)) continue;
        kfac_layer_update_counts(l, c);
        if (get(&s, &idx, sizeof idx, 1) || get(&s, fc, sizeof(uint32_t), 3)) {
            fail(err, errlen, "%s: truncated K-FAC state file (momentum of layer %d)", path, i);
            goto done;
        }
        if (idx != i || fc[0] != c[0] || fc[1] != c[1] || fc[2] != c[2]) {
            fail(err, errlen, "%s: momentum of layer %d saved with %u/%u/%u values, this net has %zu/%zu/%zu: another net",
                 path, i, fc[0], fc[1], fc[2], c[0], c[1], c[2]);
            goto done;
        }
        for (j = 0; j < 3; ++j) {
            float **a = &st->updates[3 * i + j];
            *a = (float *)kfac_calloc(c[j] ? c[j] : 1, sizeof(float));
            if (get(&s, *a, sizeof(float), c[j])) {
                fail(err, errlen, "%s: truncated K-FAC state file (momentum of layer %d)", path, i);
                goto done;
            }
        }
    }
    if (get(&s, &st->rule, sizeof st->rule, 1) || st->rule > 2) {
        fail(err, errlen, "%s: truncated or corrupt K-FAC state file (step rule)", path);
        goto done;
    }
    if (st->rule != 0) {
        if (get(&s, &st->lambda, sizeof(float), 1) || get(&s, st->adapt_ints, sizeof(int32_t), 5)) {
            fail(err, errlen, "%s: truncated K-FAC state file (adaptive step)", path);
            goto done;
        }
        st->prev = (float **)kfac_calloc((size_t)(k->nlayers ? k->nlayers : 1), sizeof(float *));
        for (i = 0; i < k->nlayers; ++i) {
            const kfac_shape *sh = &k->layers[i].s;
            const size_t n = (size_t)sh->groups * sh->M * sh->K;
            st->prev[i] = (float *)kfac_calloc(n, sizeof(float));
            if (get(&s, st->prev[i], sizeof(float), n)) {
                fail(err, errlen, "%s: truncated K-FAC state file (adaptive step of layer %d)", path, k->layers[i].index);
                goto done;
            }
        }
    }
    if (get(&s, st->sched, sizeof(int32_t), 3) || get(&s, st->times, sizeof(double), 3) ||
        get(&s, &st->sched[3], sizeof(int32_t), 1)) {
        fail(err, errlen, "%s: truncated K-FAC state file (schedule)", path);
        goto done;
    }
    if (st->sched[0] < 1 || st->sched[1] < 1 || st->sched[2] < 0 || st->sched[3] < -1 ||
        (st->sched[3] >= 0 && st->sched[3] < st->step)) {
        fail(err, errlen, "%s: corrupt K-FAC state file (schedule %d %d %d %d at step %d)", path, st->sched[0],
             st->sched[1], st->sched[2], st->sched[3], st->step);
        goto done;
    }
    st->job = (int32_t(*)[2])kfac_calloc((size_t)(k->nlayers ? k->nlayers : 1), sizeof *st->job);
    st->next = (float **)kfac_calloc((size_t)(k->nlayers ? k->nlayers : 1) * 4, sizeof(float *));
    for (i = 0; i < k->nlayers; ++i) {
        size_t n[4];
        if (get(&s, &st->job[i][0], sizeof(int32_t), 1)) {
            fail(err, errlen, "%s: truncated K-FAC state file (background job)", path);
            goto done;
        }
        if (!st->job[i][0]) continue;
        if (st->sched[3] < 0 || get(&s, &st->job[i][1], sizeof(int32_t), 1)) {
            fail(err, errlen, "%s: truncated or corrupt K-FAC state file (background job of layer %d)", path,
                 k->layers[i].index);
            goto done;
        }
        next_lengths(&k->layers[i], n);
        for (j = 0; j < 4; ++j) {
            st->next[i * 4 + j] = (float *)kfac_calloc(n[j] ? n[j] : 1, sizeof(float));
            if (get(&s, st->next[i * 4 + j], sizeof(float), n[j])) {
                fail(err, errlen, "%s: truncated K-FAC state file (background job of layer %d)", path,
                     k->layers[i].index);
                goto done;
            }
        }
    }
    if (read_bn(k, path, &s, st, err, errlen)) goto done;
    if (get(&s, &st->scaling, sizeof st->scaling, 1) || st->scaling > 1) {
        fail(err, errlen, "%s: truncated or corrupt K-FAC state file (scaling)", path);
        goto done;
    }
    if (st->scaling) {
        st->ek_batches = (int32_t *)kfac_calloc((size_t)(k->nlayers ? k->nlayers : 1), sizeof(int32_t));
        st->ek_S = (float **)kfac_calloc((size_t)(k->nlayers ? k->nlayers : 1), sizeof(float *));
        for (i = 0; i < k->nlayers; ++i) {
            const kfac_shape *sh = &k->layers[i].s;
            const size_t n = (size_t)sh->groups * sh->M * sh->K;
            st->ek_S[i] = (float *)kfac_calloc(n, sizeof(float));
            if (get(&s, &st->ek_batches[i], sizeof(int32_t), 1) || get(&s, st->ek_S[i], sizeof(float), n)) {
                fail(err, errlen, "%s: truncated K-FAC state file (EKFAC scaling of layer %d)", path, k->layers[i].index);
                goto done;
            }
        }
    }
    uint64_t want = s.hash, h;
    if (fread(&h, sizeof h, 1, s.fp) != 1) { fail(err, errlen, "%s: truncated K-FAC state file (no checksum)", path); goto done; }
    if (h != want) { fail(err, errlen, "%s: K-FAC state file is corrupt (checksum mismatch)", path); goto done; }
    if (fgetc(s.fp) != EOF) { fail(err, errlen, "%s: K-FAC state file has trailing bytes: corrupt", path); goto done; }
    rc = 0;
done:
    fclose(s.fp);
    if (rc != 0) staged_free(st);
    return rc;
}

static void state_commit(network *net, const kfac_staged *st)
{
    kfac_net *k = kfac_of(net);
    kfac_backend *be = k->be;
    int i, j;
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        float **p[KFAC_LAYER_ARRAYS];
        size_t n[KFAC_LAYER_ARRAYS];
        layer_arrays(kl, p, n);
        for (j = 0; j < KFAC_LAYER_ARRAYS; ++j)
            if (n[j]) be->ops->from_host(be, *p[j], st->arrays[i * KFAC_LAYER_ARRAYS + j], n[j]);
        kl->have_factors = st->flags[i][0];
        kl->have_inverse = st->flags[i][1];
        kl->inv_damping = 0; /* damped inverses rebuilt from the loaded decomposition */
    }
    for (i = 0; i < net->n; ++i) {
        const layer *l = &net->layers[i];
        size_t c[3];
        kfac_darknet_buffers b;
        if (!is_weighted(l)) continue;
        kfac_layer_update_counts(l, c);
        be->ops->darknet_buffers(l, &b);
        float *dst[3] = {b.weight_updates, b.bias_updates, b.scale_updates};
        for (j = 0; j < 3; ++j)
            if (c[j]) be->ops->from_host(be, dst[j], st->updates[3 * i + j], c[j]);
    }
    if (k->adapt && st->rule != 0) {
        k->adapt->lambda = st->lambda;
        k->adapt->check_next = st->adapt_ints[4];
        k->adapt->have_prev = st->adapt_ints[0];
        k->adapt->updates = st->adapt_ints[1];
        /* step=auto resumes where it was (adaptive or given up); step=adaptive always steps */
        k->adapt->active = k->cfg.step == KFAC_STEP_AUTO ? st->adapt_ints[2] != 0 : 1;
        k->adapt->low_ratios = st->adapt_ints[3];
        for (i = 0; i < k->nlayers; ++i) {
            const kfac_shape *sh = &k->layers[i].s;
            be->ops->from_host(be, k->layers[i].prev, st->prev[i], (size_t)sh->groups * sh->M * sh->K);
        }
    } else if (k->adapt || st->rule != 0) {
        kfac_log("the state was saved with another step rule than this cfg's: factors and momentum resumed, the "
                 "adaptive step's own state starts fresh");
    }
    /* the schedule: the cfg's values where it sets them, else auto's as it had chosen */
    struct kfac_sched *sc = &k->sched;
    if (sc->auto_stats) sc->stats_interval = st->sched[0];
    if (sc->auto_inverse) sc->inverse_interval = st->sched[1];
    if (sc->auto_lag) sc->inverse_lag = st->sched[2];
    sc->t_update = st->times[0];
    sc->t_stats = st->times[1];
    sc->t_decomp = st->times[2];
    k->job_install_at = st->sched[3];
    ++k->job_serial;
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        float *arr[4] = {kl->next.EA, kl->next.dA, kl->next.EG, kl->next.dG};
        size_t n[4];
        kl->in_job = st->job[i][0] != 0;
        if (!kl->in_job) continue;
        kl->next.status = st->job[i][1];
        kl->next.damping = 0; /* its damped inverses are built when it is installed */
        next_lengths(kl, n);
        for (j = 0; j < 4; ++j) be->ops->from_host(be, arr[j], st->next[i * 4 + j], n[j]);
    }
    for (i = 0; i < k->nbn; ++i) {
        kfac_bn *b = &k->bn[i];
        float **p[KFAC_BN_ARRAYS];
        size_t n[KFAC_BN_ARRAYS];
        bn_arrays(b, p, n);
        for (j = 0; j < KFAC_BN_ARRAYS; ++j) be->ops->from_host(be, *p[j], st->bn[i * KFAC_BN_ARRAYS + j], n[j]);
        b->have_factors = st->bn_flags[i][0];
        b->have_inverse = st->bn_flags[i][1];
        b->inv_damping = 0; /* the damped inverse is rebuilt from the loaded decomposition */
        if (k->adapt && st->rule != 0) be->ops->from_host(be, b->prev, st->bn_prev[i], (size_t)b->s.K);
    }
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        ++kl->basis_gen; /* the loaded decomposition */
        if (!kl->ek || !st->scaling) continue;
        const size_t n = (size_t)kl->s.groups * kl->s.M * kl->s.K;
        be->ops->from_host(be, kl->ek->S, st->ek_S[i], n);
        kl->ek->batches = st->ek_batches[i];
        kl->ek->gen = kl->basis_gen;
        kl->ek->R_ok = 0;
    }
    if ((uint32_t)k->cfg.scaling != st->scaling)
        kfac_log("the state was saved with scaling=%s, this cfg has scaling=%s: factors and momentum resumed, the "
                 "EKFAC scaling starts fresh", st->scaling ? "ekfac" : "kfac", k->cfg.scaling ? "ekfac" : "kfac");
    k->step = st->step;
    k->rng = st->rng;
}

int kfac_state_check(network *net, const char *path, char *err, size_t errlen)
{
    kfac_staged st;
    int rc = state_read(net, path, &st, err, errlen);
    if (rc == 0) staged_free(&st);
    return rc;
}

void kfac_state_load(network *net, const char *weightfile)
{
    char path[4096], err[1024];
    kfac_staged st;
    snprintf(path, sizeof path, "%s.kfac", weightfile);
    int rc = state_read(net, path, &st, err, sizeof err);
    if (rc == 1) {
        kfac_log("no state file %s: K-FAC starts fresh from these weights", path);
        return;
    }
    if (rc != 0) kfac_user_error("%s", err);
    uint64_t hash = 0;
    if (hash_file(weightfile, &hash) != 0) kfac_user_error("%s: cannot read (%s)", weightfile, strerror(errno));
    if (st.identity[0] != (uint64_t)*net->seen || st.identity[1] != hash) {
        kfac_log("%s was saved with other weights (seen %llu, weights hash %016llx) than %s (seen %llu, hash %016llx), "
                 "as after a crash between the two saves: K-FAC starts fresh from these weights (its factors and the "
                 "momentum are not resumed)",
                 path, (unsigned long long)st.identity[0], (unsigned long long)st.identity[1], weightfile,
                 (unsigned long long)*net->seen, (unsigned long long)hash);
        staged_free(&st);
        return;
    }
    state_commit(net, &st);
    kfac_log("resumed from %s at K-FAC step %d", path, st.step);
    staged_free(&st);
}
