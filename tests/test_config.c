/* test_config: what the [kfac] section and the per-layer kfac= key turn into.
 *
 *  - no [kfac]: net->kfac is NULL (Darknet untouched);
 *  - an empty [kfac]: the documented defaults (kfac_config.c, README.md);
 *  - every key set: each value arrives, including fisher=empirical;
 *  - kfac=0 on a layer and a max_dim below a layer's factor size: those layers stay
 *    on SGD, the others are covered, whatever the position of the [kfac] section
 *    among the layer sections (layer indices must not shift);
 *  - a net whose last layer is not a softmax falls back to the empirical Fisher.
 * (Rejected values are tests/test_cli.sh's job: they end the process.) */
#include "kt.h"
#include "kfac_internal.h"

static const char *base = "tests/cfg/small.cfg"; /* layers: conv, conv, maxpool, conn, conn, softmax */

static int covered(const network *net, int i)
{
    const float *A, *G;
    int g, k, m;
    return kfac_layer_factors(net, i, &A, &G, &g, &k, &m);
}

int main(void)
{
    network *net = kt_net(base, 1);
    kt_check("no_kfac_section_no_kfac", net->kfac == NULL, "net->kfac set without a [kfac] section");
    free_network(net);

    net = kt_net(kt_cfg_with("build/tests/config-empty.cfg", base, "[kfac]\n"), 1);
    const kfac_config *c = &kfac_of(net)->cfg;
    kt_check("empty_section_gives_defaults",
             c->damping == 1e-2f && c->decay == 0.95f && c->stats_interval == 0 && c->inverse_interval == 0 &&
             c->inverse_lag == -1 && c->kl_clip == 1e-3f && c->fisher == KFAC_FISHER_TRUE && c->warmup == 0 &&
             c->max_dim == 4096 && c->seed == 1 && c->step == KFAC_STEP_AUTO && c->lambda == 1.0f &&
             c->dist_precondition == KFAC_DIST_EVERYONE,
             "got damping=%g decay=%g stats_interval=%d inverse_interval=%d inverse_lag=%d kl_clip=%g fisher=%d warmup=%d "
             "max_dim=%d seed=%d step=%d lambda=%g dist_precondition=%d",
             c->damping, c->decay, c->stats_interval, c->inverse_interval, c->inverse_lag, c->kl_clip, (int)c->fisher,
             c->warmup, c->max_dim, c->seed, (int)c->step, c->lambda, (int)c->dist_precondition);
    /* auto (0, -1 above): chosen by the schedule, which starts from statistics and
     * decompositions every update, used one update later, on the worker thread */
    {
        const struct kfac_sched *sc = &kfac_of(net)->sched;
        kt_check("auto_schedule_starts_every_update",
                 sc->auto_stats && sc->auto_inverse && sc->auto_lag && sc->stats_interval == 1 &&
                     sc->inverse_interval == 1 && sc->inverse_lag == 1 && kfac_of(net)->worker != NULL,
                 "auto %d %d %d, intervals %d %d lag %d, worker %p", sc->auto_stats, sc->auto_inverse, sc->auto_lag,
                 sc->stats_interval, sc->inverse_interval, sc->inverse_lag, (void *)kfac_of(net)->worker);
    }
    /* auto's choice from measured costs (an update of 1 s; the statistics' budget is
     * a tenth of it): an interval moves only when the need it answers moves a quarter
     * beyond it.  A need hovering around 1 (t_stats 0.11, 0.095, 0.12, 0.09) keeps
     * statistics every update; before, ceil(1.1) = 2 was a change of more than a
     * quarter from 1 and the interval flipped at every choice. */
    {
        kfac_net *k = kfac_of(net);
        struct kfac_sched *sc = &k->sched;
        const double hover[4] = {0.11, 0.095, 0.12, 0.09};
        int i, kept = 1;
        sc->t_update = 1;
        sc->t_decomp = 0; /* the decompositions' choice apart, below */
        for (i = 0; i < 4; ++i) {
            sc->t_stats = hover[i];
            kfac_schedule_choose(k);
            kept &= sc->stats_interval == 1;
        }
        kt_check("auto_need_near_one_keeps_every_update", kept, "statistics every %d after a need of 0.9-1.2",
                 sc->stats_interval);
        sc->t_stats = 0.13; /* a need of 1.3: more than a quarter over */
        kfac_schedule_choose(k);
        const int up = sc->stats_interval;
        sc->t_stats = 0.09; /* 0.9 > 1 / 1.25: every update would be in budget, not a quarter under: kept */
        kfac_schedule_choose(k);
        const int held = sc->stats_interval;
        sc->t_stats = 0.07; /* 0.7 < 0.8: every update is within budget again */
        kfac_schedule_choose(k);
        kt_check("auto_stats_moves_a_quarter_beyond", up == 2 && held == 2 && sc->stats_interval == 1,
                 "needs 1.3, 0.9, 0.7 gave intervals %d, %d, %d (expected 2, 2, 1)", up, held, sc->stats_interval);
        /* statistics every 3 (need 2.5); decompositions of need 4 (t_decomp / (share
         * t_update)) every 6, the next multiple of 3; the lag 1.25 t_decomp / t_update
         * updates, at most the interval */
        const double share = k->worker && k->be->worker_free ? 0.5 : 0.1;
        sc->t_stats = 0.25;
        sc->t_decomp = 4 * share;
        kfac_schedule_choose(k);
        const int lag = (int)ceil(1.25 * 4 * share);
        kt_check("auto_inverse_multiple_of_stats_lag_within",
                 sc->stats_interval == 3 && sc->inverse_interval == 6 && sc->inverse_lag == (lag < 6 ? lag : 6),
                 "statistics every %d, decompositions every %d, lag %d (expected 3, 6, %d)", sc->stats_interval,
                 sc->inverse_interval, sc->inverse_lag, lag < 6 ? lag : 6);
    }
    kt_check("default_covers_all_conv_and_connected",
             covered(net, 0) && covered(net, 1) && !covered(net, 2) && covered(net, 3) && covered(net, 4) && !covered(net, 5),
             "coverage of layers 0-5: %d %d %d %d %d %d", covered(net, 0), covered(net, 1), covered(net, 2),
             covered(net, 3), covered(net, 4), covered(net, 5));
    kt_check("softmax_net_uses_true_fisher",
             kfac_of(net)->true_fisher == 1 && kfac_of(net)->nlosses == 1 && kfac_of(net)->losses[0].index == 5 &&
                 kfac_of(net)->losses[0].kind == KFAC_LOSS_SOFTMAX,
             "true_fisher %d, %d loss layers", kfac_of(net)->true_fisher, kfac_of(net)->nlosses);
    free_network(net);

    net = kt_net(kt_cfg_with("build/tests/config-all.cfg", base,
                             "[kfac]\ndamping=0.25\ndecay=0.5\nstats_interval=3\ninverse_interval=7\ninverse_lag=4\nkl_clip=0.01\n"
                             "fisher=empirical\nwarmup=11\nmax_dim=30\nseed=42\nstep=adaptive\nlambda=3.5\n"
                             "dist_precondition=owner\n"),
                 1);
    c = &kfac_of(net)->cfg;
    kt_check("every_key_arrives",
             c->damping == 0.25f && c->decay == 0.5f && c->stats_interval == 3 && c->inverse_interval == 7 &&
             c->inverse_lag == 4 && c->kl_clip == 0.01f && c->fisher == KFAC_FISHER_EMPIRICAL && c->warmup == 11 &&
             c->max_dim == 30 && c->seed == 42 && c->step == KFAC_STEP_ADAPTIVE && c->lambda == 3.5f &&
             c->dist_precondition == KFAC_DIST_OWNER,
             "got damping=%g decay=%g stats_interval=%d inverse_interval=%d inverse_lag=%d kl_clip=%g fisher=%d warmup=%d "
             "max_dim=%d seed=%d step=%d lambda=%g dist_precondition=%d",
             c->damping, c->decay, c->stats_interval, c->inverse_interval, c->inverse_lag, c->kl_clip, (int)c->fisher,
             c->warmup, c->max_dim, c->seed, (int)c->step, c->lambda, (int)c->dist_precondition);
    kt_check("set_schedule_is_used", kfac_of(net)->sched.stats_interval == 3 && kfac_of(net)->sched.inverse_interval == 7 &&
                 kfac_of(net)->sched.inverse_lag == 4 && !kfac_of(net)->sched.auto_lag,
             "intervals %d %d lag %d", kfac_of(net)->sched.stats_interval, kfac_of(net)->sched.inverse_interval,
             kfac_of(net)->sched.inverse_lag);
    /* layer 1 (conv 3x3x4 + bias: A is 37 > max_dim 30) stays on SGD; layer 0 (A 27) is covered */
    kt_check("max_dim_leaves_big_layers_on_sgd", covered(net, 0) && !covered(net, 1) && covered(net, 3) && covered(net, 4),
             "coverage of layers 0, 1, 3, 4: %d %d %d %d", covered(net, 0), covered(net, 1), covered(net, 3), covered(net, 4));
    kt_check("empirical_fisher_when_asked", kfac_of(net)->true_fisher == 0, "true_fisher %d", kfac_of(net)->true_fisher);
    free_network(net);

    /* `auto` spelled out; inverse_lag=0: the decompositions at once, no worker */
    net = kt_net(kt_cfg_with("build/tests/config-auto.cfg", base,
                             "[kfac]\nstats_interval=auto\ninverse_interval=auto\ninverse_lag=0\n"), 1);
    c = &kfac_of(net)->cfg;
    kt_check("auto_and_lag_0_parse", c->stats_interval == 0 && c->inverse_interval == 0 && c->inverse_lag == 0 &&
                                        kfac_of(net)->worker == NULL && kfac_of(net)->sched.inverse_lag == 0,
             "stats_interval=%d inverse_interval=%d inverse_lag=%d worker %p", c->stats_interval, c->inverse_interval,
             c->inverse_lag, (void *)kfac_of(net)->worker);
    free_network(net);

    /* kfac=0 on layers 1 and 3, with the [kfac] section between the layer sections */
    {
        const char *path = "build/tests/config-kfac0.cfg";
        FILE *in = fopen(base, "r"), *out = fopen(path, "w");
        char line[512];
        int conv = 0, conn = 0;
        while (fgets(line, sizeof line, in)) {
            fputs(line, out);
            if (!strcmp(line, "[convolutional]\n") && conv++ == 1) fputs("kfac=0\n", out);
            if (!strcmp(line, "[connected]\n") && conn++ == 0) fputs("kfac=0\n", out);
            if (!strcmp(line, "[maxpool]\n")) fputs("size=2\nstride=2\n\n[kfac]\nstats_interval=2\n\n[maxpool]\n", out);
        }
        fclose(in);
        fclose(out);
        /* the extra [maxpool] (layer 3 now: 6x6 -> ... ) shifts the connected layers to 4 and 5 */
        net = kt_net(path, 1);
        kt_check("kfac_section_between_layers_is_taken_out", net->n == 7 && net->kfac && kfac_of(net)->cfg.stats_interval == 2,
                 "n = %d layers, kfac %p", net->n, net->kfac);
        kt_check("kfac_0_leaves_layers_on_sgd",
                 covered(net, 0) && !covered(net, 1) && !covered(net, 2) && !covered(net, 3) && !covered(net, 4) &&
                 covered(net, 5),
                 "coverage of layers 0-5: %d %d %d %d %d %d", covered(net, 0), covered(net, 1), covered(net, 2),
                 covered(net, 3), covered(net, 4), covered(net, 5));
        free_network(net);
    }

    /* a [cost] sse layer is a Gaussian likelihood: sampled */
    {
        const char *path = "build/tests/config-sse.cfg";
        FILE *in = fopen(base, "r"), *out = fopen(path, "w");
        char line[512];
        while (fgets(line, sizeof line, in)) fputs(!strcmp(line, "[softmax]\n") ? "[cost]\ntype=sse\n" : line, out);
        fprintf(out, "\n[kfac]\n");
        fclose(in);
        fclose(out);
        net = kt_net(path, 1);
        kt_check("sse_cost_uses_true_fisher",
                 kfac_of(net)->true_fisher == 1 && kfac_of(net)->nlosses == 1 && kfac_of(net)->losses[0].kind == KFAC_LOSS_GAUSSIAN,
                 "true_fisher %d", kfac_of(net)->true_fisher);
        free_network(net);
    }
    /* a [cost] smooth (smooth L1) is no likelihood K-FAC samples: empirical */
    {
        const char *path = "build/tests/config-cost.cfg";
        FILE *in = fopen(base, "r"), *out = fopen(path, "w");
        char line[512];
        while (fgets(line, sizeof line, in)) fputs(!strcmp(line, "[softmax]\n") ? "[cost]\ntype=smooth\n" : line, out);
        fprintf(out, "\n[kfac]\n");
        fclose(in);
        fclose(out);
        net = kt_net(path, 1);
        kt_check("non_softmax_loss_falls_back_to_empirical", kfac_of(net)->true_fisher == 0 && kfac_of(net)->cfg.fisher == KFAC_FISHER_TRUE,
                 "true_fisher %d", kfac_of(net)->true_fisher);
        /* and trains: the fallback must capture statistics from the real backward */
        kt_train_updates(net, 61, 0, 10);
        const float *A, *G;
        int g, k, m;
        kfac_layer_factors(net, 4, &A, &G, &g, &k, &m);
        kt_check("empirical_fallback_collects_factors", kfac_of(net)->layers[3].have_factors && G[0] > 0,
                 "have_factors %d G[0] %g", kfac_of(net)->layers[3].have_factors, G[0]);
        free_network(net);
    }
    return kt_exit();
}
