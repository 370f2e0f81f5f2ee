/* darknet-kfac: the [kfac] cfg section and the per-layer kfac= key.
 *
 * Darknet turns unknown sections into zeroed layers and never checks keys for typos,
 * so the section is taken out of the parsed list here, before make_network, and every
 * key is checked.  The section struct below mirrors the private one in Darknet's
 * parser.c (type string + option list), unchanged since 2016. */
#include <errno.h>
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
    .stats_interval = 10,
    .inverse_interval = 100,
    .kl_clip = 1e-3f,
    .fisher = KFAC_FISHER_TRUE,
    .warmup = 0,
    .max_dim = 4096,
    .seed = 1,
};

static const char *kfac_known_keys =
    "damping, decay, stats_interval, inverse_interval, kl_clip, fisher, warmup, max_dim, seed";

static void list_unlink(list *l, node *n)
{
    if (n->prev) n->prev->next = n->next; else l->front = n->next;
    if (n->next) n->next->prev = n->prev; else l->back = n->prev;
    --l->size;
    free(n);
}

static double parse_number(const char *file, const char *key, const char *val, int integer)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(val, &end);
    if (end == val || *end != '\0' || errno == ERANGE || v != v)
        kfac_user_error("%s [kfac] %s=%s: not a number", file, key, val);
    if (integer && (v != (double)(long)v || v > 2147483647.0 || v < -2147483647.0))
        kfac_user_error("%s [kfac] %s=%s: must be a whole number", file, key, val);
    return v;
}

static void check_range(const char *file, const char *key, const char *val, double v,
                        double lo, int lo_open, double hi, int hi_open)
{
    int bad = lo_open ? !(v > lo) : !(v >= lo);
    bad |= hi_open ? !(v < hi) : !(v <= hi);
    if (bad)
        kfac_user_error("%s [kfac] %s=%s: must be in %c%g, %g%c", file, key, val,
                        lo_open ? '(' : '[', lo, hi, hi_open ? ')' : ']');
}

static void parse_kfac_section(kfac_config *c, const char *file, list *options)
{
    node *n;
    for (n = options->front; n; n = n->next) {
        kvp *p = (kvp *)n->val;
        const char *k = p->key, *v = p->val;
        if (!v || !*v) kfac_user_error("%s [kfac] %s: has no value", file, k);
        if (!strcmp(k, "damping")) {
            c->damping = parse_number(file, k, v, 0);
            check_range(file, k, v, c->damping, 0, 1, 1e6, 0);
        } else if (!strcmp(k, "decay")) {
            c->decay = parse_number(file, k, v, 0);
            check_range(file, k, v, c->decay, 0, 0, 1, 1);
        } else if (!strcmp(k, "stats_interval")) {
            c->stats_interval = parse_number(file, k, v, 1);
            check_range(file, k, v, c->stats_interval, 1, 0, 1e6, 0);
        } else if (!strcmp(k, "inverse_interval")) {
            c->inverse_interval = parse_number(file, k, v, 1);
            check_range(file, k, v, c->inverse_interval, 1, 0, 1e6, 0);
        } else if (!strcmp(k, "kl_clip")) {
            c->kl_clip = parse_number(file, k, v, 0);
            check_range(file, k, v, c->kl_clip, 0, 0, 1e6, 0);
        } else if (!strcmp(k, "fisher")) {
            if (!strcmp(v, "true")) c->fisher = KFAC_FISHER_TRUE;
            else if (!strcmp(v, "empirical")) c->fisher = KFAC_FISHER_EMPIRICAL;
            else kfac_user_error("%s [kfac] fisher=%s: must be true or empirical", file, v);
        } else if (!strcmp(k, "warmup")) {
            c->warmup = parse_number(file, k, v, 1);
            check_range(file, k, v, c->warmup, 0, 0, 1e9, 0);
        } else if (!strcmp(k, "max_dim")) {
            c->max_dim = parse_number(file, k, v, 1);
            check_range(file, k, v, c->max_dim, 1, 0, 65536, 0);
        } else if (!strcmp(k, "seed")) {
            c->seed = parse_number(file, k, v, 1);
        } else {
            kfac_user_error("%s [kfac] %s=%s: unknown option (known: %s)", file, k, v, kfac_known_keys);
        }
    }
}

void *kfac_cfg_take(const char *cfgfile, list *sections)
{
    kfac_config *c = NULL;
    node *n, *next;
    int index = -1; /* layer index of the section: [net] is -1 */
    int nlayers = 0;

    for (n = sections->front; n; n = n->next) {
        kfac_section *s = (kfac_section *)n->val;
        if (strcmp(s->type, "[kfac]") != 0) ++nlayers;
    }
    --nlayers; /* [net] */

    for (n = sections->front; n; n = next) {
        kfac_section *s = (kfac_section *)n->val;
        next = n->next;
        if (!strcmp(s->type, "[kfac]")) {
            if (c) kfac_user_error("%s: more than one [kfac] section", cfgfile);
            if (n == sections->front) kfac_user_error("%s: [kfac] cannot be the first section: [net] comes first", cfgfile);
            c = (kfac_config *)kfac_calloc(1, sizeof *c);
            *c = kfac_defaults;
            c->cfgfile = strdup(cfgfile);
            c->nlayers = nlayers > 0 ? nlayers : 0;
            c->layer_on = (int *)kfac_calloc(nlayers > 0 ? nlayers : 1, sizeof(int));
            parse_kfac_section(c, cfgfile, s->options);
            /* free it as parser.c's free_section would */
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
            list_unlink(sections, n);
        }
    }

    /* per-layer kfac=0|1, taken out so Darknet does not report it unused */
    int *on = (int *)kfac_calloc(nlayers > 0 ? nlayers : 1, sizeof(int));
    for (n = sections->front, index = -1; n; n = n->next, ++index) {
        kfac_section *s = (kfac_section *)n->val;
        node *o, *onext;
        if (index >= 0) on[index] = 1;
        for (o = s->options->front; o; o = onext) {
            kvp *p = (kvp *)o->val;
            onext = o->next;
            if (strcmp(p->key, "kfac") != 0) continue;
            if (index < 0) kfac_user_error("%s %s kfac=%s: kfac= belongs in a layer section; K-FAC options go in [kfac]", cfgfile, s->type, p->val);
            if (strcmp(p->val, "0") && strcmp(p->val, "1"))
                kfac_user_error("%s %s (layer %d) kfac=%s: must be 0 or 1", cfgfile, s->type, index, p->val);
            if (strcmp(s->type, "[convolutional]") && strcmp(s->type, "[conv]") &&
                strcmp(s->type, "[connected]") && strcmp(s->type, "[conn]"))
                kfac_user_error("%s %s (layer %d) kfac=%s: only convolutional and connected layers have K-FAC", cfgfile, s->type, index, p->val);
            on[index] = p->val[0] == '1';
            free(p->key);
            free(p);
            list_unlink(s->options, o);
        }
    }
    if (!c) {
        free(on);
        return NULL;
    }
    memcpy(c->layer_on, on, (size_t)(nlayers > 0 ? nlayers : 1) * sizeof(int));
    free(on);
    return c;
}

void kfac_config_free(kfac_config *c)
{
    free(c->cfgfile);
    free(c->layer_on);
}

void kfac_config_print(const kfac_config *c, FILE *out)
{
    fprintf(out, "damping=%g decay=%g stats_interval=%d inverse_interval=%d kl_clip=%g fisher=%s warmup=%d max_dim=%d seed=%d",
            c->damping, c->decay, c->stats_interval, c->inverse_interval, c->kl_clip,
            c->fisher == KFAC_FISHER_TRUE ? "true" : "empirical", c->warmup, c->max_dim, c->seed);
}
