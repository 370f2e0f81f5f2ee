/* darknet-kfac: the state file <weights>.kfac saved next to each weights file.
 *
 * Darknet's .weights file keeps the weights and `seen` but no optimizer state: a
 * resumed run would restart its factors from nothing and lose the momentum that
 * K-FAC's update relies on.  Layout (little-endian, as Darknet's own files):
 *
 *   u32 magic "KFAC", u32 version, u32 net->n, u32 covered layers, i32 step, u64 rng
 *   per covered layer: i32 index, type, groups, K, M, has_bias, have_factors (batches),
 *                      have_inverse; f32 A, G, EA, dA, EG, dG, w_snap, b_snap
 *   per conv/connected layer: i32 index, u32 counts; f32 weight, bias, scale updates
 *   u64 FNV-1a hash of everything before it
 *
 * Written to <file>.tmp and renamed, so a crash mid-write never leaves a torn file. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "kfac_internal.h"
#include "kfac_gpu.h"

#define KFAC_STATE_MAGIC 0x4341464bu /* "KFAC" */
#define KFAC_STATE_VERSION 1u

typedef struct {
    FILE *fp;
    const char *path;
    uint64_t hash;
    int failed;
} kfac_stream;

static void hash_bytes(uint64_t *h, const void *p, size_t n)
{
    const unsigned char *c = (const unsigned char *)p;
    size_t i;
    for (i = 0; i < n; ++i) { *h ^= c[i]; *h *= 0x100000001b3ULL; }
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

static size_t sq(int g, int d) { return (size_t)g * d * d; }

void kfac_layer_update_counts(const layer *l, size_t c[3])
{
    c[0] = l->weight_updates ? (size_t)(l->type == CONNECTED ? l->inputs * l->outputs : l->nweights) : 0;
    c[1] = l->bias_updates ? (size_t)(l->type == CONNECTED ? l->outputs : l->n) : 0;
    c[2] = l->scale_updates ? (size_t)(l->type == CONNECTED ? l->outputs : l->n) : 0;
}

/* the counts as the file stores them */
static void layer_update_counts(const layer *l, uint32_t c[3])
{
    size_t n[3];
    int j;
    kfac_layer_update_counts(l, n);
    for (j = 0; j < 3; ++j) c[j] = (uint32_t)n[j];
}

void kfac_state_save(network *net, const char *weightfile)
{
    kfac_net *k = kfac_of(net);
    char path[4096], tmp[4200];
    int i;
    snprintf(path, sizeof path, "%s.kfac", weightfile);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
#ifdef GPU
    if (net->gpu_index >= 0) kfac_state_pull_gpu(net); /* the host arrays stage the file */
#endif
    kfac_stream s = {fopen(tmp, "wb"), tmp, 0xcbf29ce484222325ULL, 0};
    if (!s.fp) {
        kfac_log("cannot write %s (%s): K-FAC state not saved; the weights are saved", tmp, strerror(errno));
        return;
    }
    uint32_t head[4] = {KFAC_STATE_MAGIC, KFAC_STATE_VERSION, (uint32_t)net->n, (uint32_t)k->nlayers};
    put(&s, head, sizeof(uint32_t), 4);
    put(&s, &k->step, sizeof(int32_t), 1);
    put(&s, &k->rng, sizeof(uint64_t), 1);
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i];
        int32_t d[8] = {kl->index, kl->type, kl->groups, kl->K, kl->M, kl->has_bias, kl->have_factors, kl->have_inverse};
        put(&s, d, sizeof(int32_t), 8);
        put(&s, kl->A, sizeof(float), sq(kl->groups, kl->K));
        put(&s, kl->G, sizeof(float), sq(kl->groups, kl->M));
        put(&s, kl->EA, sizeof(float), sq(kl->groups, kl->K));
        put(&s, kl->dA, sizeof(float), (size_t)kl->groups * kl->K);
        put(&s, kl->EG, sizeof(float), sq(kl->groups, kl->M));
        put(&s, kl->dG, sizeof(float), (size_t)kl->groups * kl->M);
        put(&s, kl->w_snap, sizeof(float), (size_t)kl->groups * kl->M * kl->k_in);
        if (kl->has_bias) put(&s, kl->b_snap, sizeof(float), (size_t)kl->groups * kl->M);
    }
    for (i = 0; i < net->n; ++i) {
        const layer *l = &net->layers[i];
        uint32_t c[3];
        if (l->type != CONVOLUTIONAL && l->type != CONNECTED) continue;
        layer_update_counts(l, c);
        int32_t idx = i;
        put(&s, &idx, sizeof idx, 1);
        put(&s, c, sizeof(uint32_t), 3);
        put(&s, l->weight_updates, sizeof(float), c[0]);
        put(&s, l->bias_updates, sizeof(float), c[1]);
        put(&s, l->scale_updates, sizeof(float), c[2]);
    }
    uint64_t h = s.hash;
    put(&s, &h, sizeof h, 1);
    if (fclose(s.fp) != 0 && !s.failed) s.failed = errno ? errno : EIO;
    if (s.failed || rename(tmp, path) != 0) {
        kfac_log("writing %s failed (%s): K-FAC state not saved; the weights are saved", path,
                 strerror(s.failed ? s.failed : errno));
        remove(tmp);
    }
}

#define BAD(...) do { fclose(s.fp); kfac_user_error(__VA_ARGS__); } while (0)

void kfac_state_load(network *net, const char *weightfile)
{
    kfac_net *k = kfac_of(net);
    char path[4096];
    int i;
    snprintf(path, sizeof path, "%s.kfac", weightfile);
    kfac_stream s = {fopen(path, "rb"), path, 0xcbf29ce484222325ULL, 0};
    if (!s.fp) {
        if (errno == ENOENT) {
            kfac_log("no state file %s: K-FAC starts fresh from these weights", path);
            return;
        }
        kfac_user_error("%s: cannot open K-FAC state file (%s)", path, strerror(errno));
    }
    uint32_t head[4];
    int32_t step;
    uint64_t rng;
    if (get(&s, head, sizeof(uint32_t), 4)) BAD("%s: not a K-FAC state file (too short)", path);
    if (head[0] != KFAC_STATE_MAGIC) BAD("%s: not a K-FAC state file (bad magic number)", path);
    if (head[1] != KFAC_STATE_VERSION) BAD("%s: K-FAC state file version %u, this build reads version %u", path, head[1], KFAC_STATE_VERSION);
    if (head[2] != (uint32_t)net->n || head[3] != (uint32_t)k->nlayers)
        BAD("%s: saved for a network of %u layers with %u under K-FAC; this cfg has %d and %d (another net or another [kfac])",
            path, head[2], head[3], net->n, k->nlayers);
    if (get(&s, &step, sizeof step, 1) || get(&s, &rng, sizeof rng, 1)) BAD("%s: truncated K-FAC state file", path);

    /* read everything into scratch first: a bad file must leave the state untouched */
    kfac_layer *tmp = (kfac_layer *)kfac_calloc((size_t)(k->nlayers ? k->nlayers : 1), sizeof(kfac_layer));
    float **upd = (float **)kfac_calloc((size_t)net->n * 3, sizeof(float *));
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i], *t = &tmp[i];
        int32_t d[8];
        if (get(&s, d, sizeof(int32_t), 8)) BAD("%s: truncated K-FAC state file (layer %d)", path, kl->index);
        if (d[0] != kl->index || d[1] != kl->type || d[2] != kl->groups || d[3] != kl->K || d[4] != kl->M || d[5] != kl->has_bias)
            BAD("%s: layer %d was saved with factors A %d G %d (groups %d), this cfg gives layer %d A %d G %d (groups %d): another net or another cfg",
                path, d[0], d[3], d[4], d[2], kl->index, kl->K, kl->M, kl->groups);
        *t = *kl;
        t->have_factors = d[6];
        t->have_inverse = d[7];
        t->A = (float *)kfac_calloc(sq(kl->groups, kl->K), sizeof(float));
        t->G = (float *)kfac_calloc(sq(kl->groups, kl->M), sizeof(float));
        t->EA = (float *)kfac_calloc(sq(kl->groups, kl->K), sizeof(float));
        t->dA = (float *)kfac_calloc((size_t)kl->groups * kl->K, sizeof(float));
        t->EG = (float *)kfac_calloc(sq(kl->groups, kl->M), sizeof(float));
        t->dG = (float *)kfac_calloc((size_t)kl->groups * kl->M, sizeof(float));
        t->w_snap = (float *)kfac_calloc((size_t)kl->groups * kl->M * kl->k_in, sizeof(float));
        t->b_snap = kl->has_bias ? (float *)kfac_calloc((size_t)kl->groups * kl->M, sizeof(float)) : NULL;
        if (get(&s, t->A, sizeof(float), sq(kl->groups, kl->K)) || get(&s, t->G, sizeof(float), sq(kl->groups, kl->M)) ||
            get(&s, t->EA, sizeof(float), sq(kl->groups, kl->K)) || get(&s, t->dA, sizeof(float), (size_t)kl->groups * kl->K) ||
            get(&s, t->EG, sizeof(float), sq(kl->groups, kl->M)) || get(&s, t->dG, sizeof(float), (size_t)kl->groups * kl->M) ||
            get(&s, t->w_snap, sizeof(float), (size_t)kl->groups * kl->M * kl->k_in) ||
            (kl->has_bias && get(&s, t->b_snap, sizeof(float), (size_t)kl->groups * kl->M)))
            BAD("%s: truncated K-FAC state file (layer %d factors)", path, kl->index);
    }
    for (i = 0; i < net->n; ++i) {
        const layer *l = &net->layers[i];
        uint32_t c[3], fc[3];
        int32_t idx;
        if (l->type != CONVOLUTIONAL && l->type != CONNECTED) continue;
        layer_update_counts(l, c);
        if (get(&s, &idx, sizeof idx, 1) || get(&s, fc, sizeof(uint32_t), 3)) BAD("%s: truncated K-FAC state file (momentum of layer %d)", path, i);
        if (idx != i || fc[0] != c[0] || fc[1] != c[1] || fc[2] != c[2])
            BAD("%s: momentum of layer %d saved with %u/%u/%u values, this net has %u/%u/%u: another net", path, i, fc[0], fc[1], fc[2], c[0], c[1], c[2]);
        int j;
        for (j = 0; j < 3; ++j) {
            upd[3 * i + j] = (float *)kfac_calloc(c[j] ? c[j] : 1, sizeof(float));
            if (get(&s, upd[3 * i + j], sizeof(float), c[j])) BAD("%s: truncated K-FAC state file (momentum of layer %d)", path, i);
        }
    }
    uint64_t want = s.hash, h;
    if (fread(&h, sizeof h, 1, s.fp) != 1) BAD("%s: truncated K-FAC state file (no checksum)", path);
    if (h != want) BAD("%s: K-FAC state file is corrupt (checksum mismatch)", path);
    if (fgetc(s.fp) != EOF) BAD("%s: K-FAC state file has trailing bytes: corrupt", path);
    fclose(s.fp);

    /* commit */
    for (i = 0; i < k->nlayers; ++i) {
        kfac_layer *kl = &k->layers[i], *t = &tmp[i];
        size_t gK = (size_t)kl->groups * kl->K, gM = (size_t)kl->groups * kl->M;
        memcpy(kl->A, t->A, gK * kl->K * sizeof(float));
        memcpy(kl->G, t->G, gM * kl->M * sizeof(float));
        memcpy(kl->EA, t->EA, gK * kl->K * sizeof(float));
        memcpy(kl->dA, t->dA, gK * sizeof(float));
        memcpy(kl->EG, t->EG, gM * kl->M * sizeof(float));
        memcpy(kl->dG, t->dG, gM * sizeof(float));
        memcpy(kl->w_snap, t->w_snap, gM * kl->k_in * sizeof(float));
        if (kl->has_bias) memcpy(kl->b_snap, t->b_snap, gM * sizeof(float));
        kl->have_factors = t->have_factors;
        kl->have_inverse = t->have_inverse;
        kl->inv_damping = 0; /* damped inverses rebuilt from the loaded decomposition */
        free(t->A); free(t->G); free(t->EA); free(t->dA); free(t->EG); free(t->dG); free(t->w_snap); free(t->b_snap);
    }
    for (i = 0; i < net->n; ++i) {
        layer *l = &net->layers[i];
        uint32_t c[3];
        if (l->type != CONVOLUTIONAL && l->type != CONNECTED) continue;
        layer_update_counts(l, c);
        if (c[0]) memcpy(l->weight_updates, upd[3 * i], c[0] * sizeof(float));
        if (c[1]) memcpy(l->bias_updates, upd[3 * i + 1], c[1] * sizeof(float));
        if (c[2]) memcpy(l->scale_updates, upd[3 * i + 2], c[2] * sizeof(float));
        free(upd[3 * i]); free(upd[3 * i + 1]); free(upd[3 * i + 2]);
    }
    free(upd);
    free(tmp);
    k->step = step;
    k->rng = rng;
#ifdef GPU
    if (net->gpu_index >= 0) kfac_state_push_gpu(net);
#endif
    kfac_log("resumed from %s at K-FAC step %d", path, step);
}
