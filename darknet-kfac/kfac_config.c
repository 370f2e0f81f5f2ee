/* darknet-kfac: the [kfac] cfg section and the per-layer kfac= key.
 *
 * Darknet turns unknown sections into zeroed layers and never checks keys for typos,
 * so the section is taken out of the parsed list here, before make_network, and every
 * key is checked.  The section struct below mirrors the private one in Darknet's
 * parser.c (type string + option list), unchanged since 2016.
 *
 * kfac_config_parse checks everything before it changes anything, so a bad cfg
 * leaves the section list as Darknet read it (the fuzz target in tests/fuzz relies on
 * that to free it); kfac_cfg_take, Darknet's hook, stops the program on its message. */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include "kfac_internal.h"
#include "option_list.h"

typedef struct {
    char *type;
    list *options;
} kfac_section; /* = parser.c's section */

/* Defaults: the values README.md documents.  Keep the two in step. */
static const kfac_config kfac_defaults = {
    .damping = 1e-2f,
    .decay = 0.95f,
    .stats_interval = 0,    /* auto */
    .inverse_interval = 0,  /* auto */
    .inverse_lag = -1,      /* auto */
    .kl_clip = 1e-3f,
    .fisher = KFAC_FISHER_TRUE,
    .warmup = 0,
    .max_dim = 4096,
    .seed = 1,
    .step = KFAC_STEP_AUTO,
    .lambda = 1.0f,
    .probe_batch = 0,       /* all: the whole last subdivision */
    .probe_thread = 1,
    /* off: on the 2-core machine the helper finds the core taken (BENCHMARKS.md) */
    .probe_split = 0,
    .backward_thread = 1,
    .scaling = KFAC_SCALING_KFAC,
    .dist_precondition = KFAC_DIST_EVERYONE,
};

static const char *kfac_known_keys =
    "damping, decay, stats_interval, inverse_interval, inverse_lag, kl_clip, fisher, warmup, max_dim, seed, step, lambda, "
    "probe_batch, probe_thread, probe_split, backward_thread, scaling, dist_precondition";

/* A parse error: the message goes to err, the return value is -1. */
typedef struct {
    char *buf;
    size_t len;
} kfac_err;

static int fail(kfac_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(kfac_err *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (e->len) vsnprintf(e->buf, e->len, fmt, ap);
    va_end(ap);
    return -1;
}

static void list_unlink(list *l, node *n)
{
    if (n->prev) n->prev->next = n->next; else l->front = n->next;
    if (n->next) n->next->prev = n->prev; else l->back = n->prev;
    --l->size;
    free(n);
}

/* 0 with *out set, or -1 */
static int parse_number(kfac_err *e, const char *file, const char *key, const char *val, int integer, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(val, &end);
    if (end == val || *end != '\0' || errno == ERANGE || v != v)
        return fail(e, "%s [kfac] %s=%s: not a number", file, key, val);
    if (integer && !(v >= -2147483647.0 && v <= 2147483647.0 && v == (double)(long)v))
        return fail(e, "%s [kfac] %s=%s: must be a whole number", file, key, val);
    *out = v;
    return 0;
}

static int check_range(kfac_err *e, const char *file, const char *key, const char *val, double v, double lo,
                       int lo_open, double hi, int hi_open)
{
    int bad = lo_open ? !(v > lo) : !(v >= lo);
    bad |= hi_open ? !(v < hi) : !(v <= hi);
    if (bad)
        return fail(e, "%s [kfac] %s=%s: must be in %c%g, %g%c", file, key, val, lo_open ? '(' : '[', lo, hi,
                    hi_open ? ')' : ']');
    return 0;
}

/* A numeric option: its name, kind and range. */
typedef struct {
    const char *key;
    int integer;
    double lo, hi;
    int lo_open, hi_open;
    size_t offset;          /* of the float or int field in kfac_config */
} kfac_numeric;

static const kfac_numeric kfac_numerics[] = {
    {"damping", 0, 0, 1e6, 1, 0, offsetof(kfac_config, damping)},
    {"decay", 0, 0, 1, 0, 1, offsetof(kfac_config, decay)},
    {"stats_interval", 1, 1, 1e6, 0, 0, offsetof(kfac_config, stats_interval)},
    {"inverse_interval", 1, 1, 1e6, 0, 0, offsetof(kfac_config, inverse_interval)},
    {"inverse_lag", 1, 0, 1e6, 0, 0, offsetof(kfac_config, inverse_lag)},
    {"kl_clip", 0, 0, 1e6, 0, 0, offsetof(kfac_config, kl_clip)},
    {"warmup", 1, 0, 1e9, 0, 0, offsetof(kfac_config, warmup)},
    {"max_dim", 1, 1, 65536, 0, 0, offsetof(kfac_config, max_dim)},
    {"seed", 1, -2147483647.0, 2147483647.0, 0, 0, offsetof(kfac_config, seed)},
    {"lambda", 0, 0, 1e8, 1, 0, offsetof(kfac_config, lambda)},
    {"probe_batch", 1, 1, 1e6, 0, 0, offsetof(kfac_config, probe_batch)},
    {"probe_thread", 1, 0, 1, 0, 0, offsetof(kfac_config, probe_thread)},
    {"probe_split", 1, 0, 1, 0, 0, offsetof(kfac_config, probe_split)},
    {"backward_thread", 1, 0, 1, 0, 0, offsetof(kfac_config, backward_thread)},
};

static int parse_kfac_section(kfac_err *e, kfac_config *c, const char *file, list *options)
{
    node *n;
    size_t i;
    for (n = options->front; n; n = n->next) {
        kvp *p = (kvp *)n->val;
        const char *k = p->key, *v = p->val;
        if (!v || !*v) return fail(e, "%s [kfac] %s: has no value", file, k);
        if (!strcmp(k, "fisher")) {
            if (!strcmp(v, "true")) c->fisher = KFAC_FISHER_TRUE;
            else if (!strcmp(v, "empirical")) c->fisher = KFAC_FISHER_EMPIRICAL;
            else return fail(e, "%s [kfac] fisher=%s: must be true or empirical", file, v);
            continue;
        }
        if (!strcmp(k, "scaling")) {
            if (!strcmp(v, "kfac")) c->scaling = KFAC_SCALING_KFAC;
            else if (!strcmp(v, "ekfac")) c->scaling = KFAC_SCALING_EKFAC;
            else return fail(e, "%s [kfac] scaling=%s: must be kfac or ekfac", file, v);
            continue;
        }
        if (!strcmp(k, "dist_precondition")) {
            if (!strcmp(v, "everyone")) c->dist_precondition = KFAC_DIST_EVERYONE;
            else if (!strcmp(v, "owner")) c->dist_precondition = KFAC_DIST_OWNER;
            else return fail(e, "%s [kfac] dist_precondition=%s: must be everyone or owner", file, v);
            continue;
        }
        if (!strcmp(k, "step")) {
            if (!strcmp(v, "kl_clip")) c->step = KFAC_STEP_KL_CLIP;
            else if (!strcmp(v, "adaptive")) c->step = KFAC_STEP_ADAPTIVE;
            else if (!strcmp(v, "auto")) c->step = KFAC_STEP_AUTO;
            else return fail(e, "%s [kfac] step=%s: must be auto, adaptive or kl_clip", file, v);
            continue;
        }
        /* the schedule's options take `auto` (kfac_schedule.c) */
        const int sched = !strcmp(k, "stats_interval") || !strcmp(k, "inverse_interval") || !strcmp(k, "inverse_lag");
        if (sched && !strcmp(v, "auto")) {
            if (!strcmp(k, "stats_interval")) c->stats_interval = 0;
            else if (!strcmp(k, "inverse_interval")) c->inverse_interval = 0;
            else c->inverse_lag = -1;
            continue;
        }
        if (!strcmp(k, "probe_batch") && !strcmp(v, "all")) {
            c->probe_batch = 0;
            continue;
        }
        if (sched) {
            char *end = NULL;
            (void)strtod(v, &end);
            if (end == v || *end != '\0') return fail(e, "%s [kfac] %s=%s: must be a whole number or auto", file, k, v);
        }
        for (i = 0; i < sizeof kfac_numerics / sizeof kfac_numerics[0]; ++i)
            if (!strcmp(k, kfac_numerics[i].key)) break;
        if (i == sizeof kfac_numerics / sizeof kfac_numerics[0])
            return fail(e, "%s [kfac] %s=%s: unknown option (known: %s)", file, k, v, kfac_known_keys);
        const kfac_numeric *o = &kfac_numerics[i];
        double x = 0;
        if (parse_number(e, file, k, v, o->integer, &x)) return -1;
        if (!o->integer) x = (float)x; /* the range holds for the value stored */
        if (check_range(e, file, k, v, x, o->lo, o->lo_open, o->hi, o->hi_open)) return -1;
        if (o->integer) *(int *)((char *)c + o->offset) = (int)x;
        else *(float *)((char *)c + o->offset) = (float)x;
    }
    return 0;
}

/* the sections K-FAC preconditions: weights, and a [batchnorm]'s scales and shifts */
static int is_covered_type(const char *type)
{
    return !strcmp(type, "[convolutional]") || !strcmp(type, "[conv]") || !strcmp(type, "[connected]") ||
           !strcmp(type, "[conn]") || !strcmp(type, "[batchnorm]");
}

/* Checks the kfac= keys of every section and fills on[] (layers: sections after the
 * first that are not [kfac]). */
static int check_layer_keys(kfac_err *e, const char *cfgfile, list *sections, int *on, int nlayers)
{
    node *n, *o;
    int index = -1; /* layer index of the section: [net] is -1 */
    for (n = sections->front; n; n = n->next) {
        kfac_section *s = (kfac_section *)n->val;
        if (!strcmp(s->type, "[kfac]")) continue;
        if (index >= 0 && index < nlayers) on[index] = 1;
        for (o = s->options->front; o; o = o->next) {
            kvp *p = (kvp *)o->val;
            if (strcmp(p->key, "kfac") != 0) continue;
            const char *v = p->val ? p->val : "";
            if (index < 0)
                return fail(e, "%s %s kfac=%s: kfac= belongs in a layer section; K-FAC options go in [kfac]", cfgfile,
                            s->type, v);
            if (strcmp(v, "0") && strcmp(v, "1"))
                return fail(e, "%s %s (layer %d) kfac=%s: must be 0 or 1", cfgfile, s->type, index, v);
            if (!is_covered_type(s->type))
                return fail(e, "%s %s (layer %d) kfac=%s: only convolutional, connected and batchnorm layers have K-FAC",
                            cfgfile, s->type, index, v);
            on[index] = v[0] == '1';
        }
        ++index;
    }
    return 0;
}

/* Darknet's free_section, for the [kfac] section we take out */
static void free_kfac_section(kfac_section *s)
{
    node *o = s->options->front;
    while (o) {
        node *on = o->next;
        kvp *p = (kvp *)o->val;
        free(p->key);
        free(p);
        free(o);
        o = on;
    }
    free(s->options);
    free(s->type);
    free(s);
}

/* Takes the [kfac] section and every kfac= key out of the list (after the checks). */
static void take_out(list *sections)
{
    node *n, *next, *o, *onext;
    for (n = sections->front; n; n = next) {
        kfac_section *s = (kfac_section *)n->val;
        next = n->next;
        if (!strcmp(s->type, "[kfac]")) {
            free_kfac_section(s);
            list_unlink(sections, n);
            continue;
        }
        for (o = s->options->front; o; o = onext) {
            kvp *p = (kvp *)o->val;
            onext = o->next;
            if (strcmp(p->key, "kfac") != 0) continue;
            free(p->key);
            free(p);
            list_unlink(s->options, o);
        }
    }
}

int kfac_config_parse(const char *cfgfile, list *sections, kfac_config **out, char *err, size_t errlen)
{
    kfac_err e = {err, errlen};
    kfac_section *found = NULL;
    node *n;
    int nlayers = 0;
    *out = NULL;
    if (errlen) err[0] = '\0';

    for (n = sections->front; n; n = n->next) {
        kfac_section *s = (kfac_section *)n->val;
        if (strcmp(s->type, "[kfac]") != 0) {
            ++nlayers;
            continue;
        }
        if (found) return fail(&e, "%s: more than one [kfac] section", cfgfile);
        if (n == sections->front) return fail(&e, "%s: [kfac] cannot be the first section: [net] comes first", cfgfile);
        found = s;
    }
    --nlayers; /* [net] */
    if (nlayers < 0) nlayers = 0;

    kfac_config *c = (kfac_config *)kfac_calloc(1, sizeof *c);
    *c = kfac_defaults;
    c->nlayers = nlayers;
    c->layer_on = (int *)kfac_calloc((size_t)(nlayers > 0 ? nlayers : 1), sizeof(int));
    if ((found && parse_kfac_section(&e, c, cfgfile, found->options)) ||
        check_layer_keys(&e, cfgfile, sections, c->layer_on, nlayers)) {
        kfac_config_free(c);
        free(c);
        return -1;
    }
    take_out(sections);
    if (!found) {
        kfac_config_free(c);
        free(c);
        return 0;
    }
    c->cfgfile = strdup(cfgfile);
    if (!c->cfgfile) kfac_die(__FILE__, __LINE__, "out of memory");
    *out = c;
    return 0;
}

void *kfac_cfg_take(const char *cfgfile, list *sections)
{
    char err[1024];
    kfac_config *c = NULL;
    if (kfac_config_parse(cfgfile, sections, &c, err, sizeof err) != 0) kfac_user_error("%s", err);
    return c;
}

void kfac_config_free(kfac_config *c)
{
    free(c->cfgfile);
    free(c->layer_on);
    c->cfgfile = NULL;
    c->layer_on = NULL;
}

void kfac_config_print(const kfac_config *c, FILE *out)
{
    static const char *names[] = {"kl_clip", "adaptive", "auto"};
    fprintf(out, "step=%s ", names[c->step]);
    if (c->step != KFAC_STEP_KL_CLIP) {
        fprintf(out, "lambda=%g ", c->lambda);
        if (c->probe_batch > 0) fprintf(out, "probe_batch=%d ", c->probe_batch);
        else fprintf(out, "probe_batch=all ");
        fprintf(out, "probe_thread=%d probe_split=%d ", c->probe_thread, c->probe_split);
    }
    if (c->step != KFAC_STEP_ADAPTIVE) fprintf(out, "damping=%g kl_clip=%g ", c->damping, c->kl_clip);
    char si[16] = "auto", ii[16] = "auto", il[16] = "auto";
    if (c->stats_interval > 0) snprintf(si, sizeof si, "%d", c->stats_interval);
    if (c->inverse_interval > 0) snprintf(ii, sizeof ii, "%d", c->inverse_interval);
    if (c->inverse_lag >= 0) snprintf(il, sizeof il, "%d", c->inverse_lag);
    fprintf(out, "backward_thread=%d ", c->backward_thread);
    fprintf(out, "decay=%g stats_interval=%s inverse_interval=%s inverse_lag=%s fisher=%s scaling=%s warmup=%d max_dim=%d "
            "seed=%d dist_precondition=%s", c->decay, si, ii, il, c->fisher == KFAC_FISHER_TRUE ? "true" : "empirical",
            c->scaling == KFAC_SCALING_EKFAC ? "ekfac" : "kfac", c->warmup, c->max_dim, c->seed,
            c->dist_precondition == KFAC_DIST_OWNER ? "owner" : "everyone");
}
