/* test_schedule_clock: what the auto schedule counts as an update's own time
 * (kfac_schedule.c, t_update; patches/0025).
 *
 *  - work between two updates (an evaluation, a checkpoint, a wait for data: here a
 *    sleep of PAUSE seconds after every update) is not training: t_update stays below
 *    PAUSE / 2, where the update itself takes about a millisecond.  Measured from the
 *    end of the last update, as before patches/0025, it was at least PAUSE;
 *  - work inside an update is: with subdivisions=2 and the same sleep between the
 *    update's two forward passes, t_update is at least PAUSE, so the clock starts at
 *    the update's first forward pass, not at its last. */
#include <time.h>
#include "kt.h"
#include "kfac_internal.h"

/* long against the tiny net's update (about 1 ms here, a few under the sanitizers),
 * short enough for the suite: 24 of them */
#define PAUSE 0.05

static void pause_for(double seconds)
{
    struct timespec t;
    t.tv_sec = (time_t)seconds;
    t.tv_nsec = (long)((seconds - (double)t.tv_sec) * 1e9);
    while (nanosleep(&t, &t) != 0) {}
}

/* tests/cfg/update.cfg (80 images an update) with [kfac] step=kl_clip (the intervals
 * auto), its 80 images in `subdivisions` forward passes */
static network *make(const char *tag, int subdivisions)
{
    char base[256], path[256], *text;
    snprintf(base, sizeof base, "build/tests/schedule-clock-%s-base.cfg", tag);
    snprintf(path, sizeof path, "build/tests/schedule-clock-%s.cfg", tag);
    FILE *in = fopen("tests/cfg/update.cfg", "rb"), *out = fopen(base, "wb");
    if (!in || !out) {
        printf("FAIL harness: cannot read tests/cfg/update.cfg or write %s\n", base);
        exit(1);
    }
    text = (char *)calloc(1 << 16, 1);
    const size_t n = fread(text, 1, (1 << 16) - 1, in);
    char *sub = strstr(text, "subdivisions=1\n");
    if (!sub || n == 0) {
        printf("FAIL harness: tests/cfg/update.cfg has no subdivisions=1 line\n");
        exit(1);
    }
    fwrite(text, 1, (size_t)(sub - text), out);
    fprintf(out, "subdivisions=%d\n%s", subdivisions, sub + strlen("subdivisions=1\n"));
    fclose(in);
    fclose(out);
    free(text);
    return kt_net(kt_cfg_with(path, base, "[kfac]\nstep=kl_clip\n"), 5);
}

int main(void)
{
    int u, s;
    {
        network *net = make("between", 1);
        for (u = 0; u < 12; ++u) {
            kt_train_updates(net, 7, u, 1);
            pause_for(PAUSE); /* the trainer's own work between updates */
        }
        const double t = kfac_of(net)->sched.t_update;
        kt_check("pause_between_updates_not_counted", t > 0 && t < PAUSE / 2,
                 "t_update %.4f s with a %.3f s pause after every update", t, PAUSE);
        free_network(net);
    }
    {
        network *net = make("inside", 2);
        kt_check("two_forward_passes_per_update", net->subdivisions == 2 && net->batch == 40, "subdivisions %d batch %d",
                 net->subdivisions, net->batch);
        for (u = 0; u < 12; ++u)
            for (s = 0; s < 2; ++s) {
                if (s == 1) pause_for(PAUSE); /* inside the update */
                kt_batch(net, 7, (uint64_t)u * 2 + s);
                train_network_datum(net);
            }
        const double t = kfac_of(net)->sched.t_update;
        kt_check("pause_inside_update_counted", t >= PAUSE, "t_update %.4f s with a %.3f s pause inside every update",
                 t, PAUSE);
        free_network(net);
    }
    return kt_exit();
}
