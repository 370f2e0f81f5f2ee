/* test_resume: save, resume and continue = uninterrupted, bit for bit.
 *
 * Run 1 (this process): N updates, save_weights(f) (which also writes f.kfac), M more
 * updates, save_weights(straight).  Run 2 (a child process, so nothing is shared but
 * the files): load_network(cfg, f, 0), which loads f.kfac, M updates on the same
 * batches, save_weights(resumed).  The two final .weights files (seen, weights,
 * biases, scales, rolling statistics) and .kfac files (step, sampler state, factors,
 * inverses, snapshots, momentum) must be byte-identical.
 *
 * N and M are chosen so that the update after the save uses the saved inverse (no
 * refresh at step 3) and the continuation crosses statistics steps, a refresh and a
 * learning-rate step; the true-Fisher sampler runs throughout.  Control: a run
 * resumed from the weights alone (no .kfac: K-FAC starts fresh, momentum lost) must
 * end elsewhere, or the comparison above would not show that the state file matters.
 * All of it twice: with step=kl_clip and with step=adaptive (whose lambda, update
 * count and previous update delta_0 are in the state too; its reduction ratio is
 * measured once before the save and once after). */
#include <sys/wait.h>
#include <unistd.h>
#include "kt.h"
#include "kfac.h"

#define N_FIRST 3 /* steps 0-2; warmup 1, inverse_interval 3: refreshes at 1, 4, 7 */
#define M_MORE 5

static const char *kfac_sections[2] = {
    "[kfac]\nstats_interval=2\ninverse_interval=3\nwarmup=1\nfisher=true\nseed=7\n",
    "[kfac]\nstep=adaptive\nstats_interval=2\ninverse_interval=3\nwarmup=1\nfisher=true\nseed=7\n",
};
static const char *tag = "";

/* whole file into memory; NULL when it cannot be read */
static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *p = (unsigned char *)malloc(n > 0 ? (size_t)n : 1);
    *len = fread(p, 1, (size_t)n, f);
    fclose(f);
    return p;
}

static int files_same(const char *name, const char *a, const char *b, int want_same)
{
    size_t la = 0, lb = 0, i;
    unsigned char *pa = slurp(a, &la), *pb = slurp(b, &lb);
    int ok;
    if (!pa || !pb) {
        kt_fail(name, "cannot read %s or %s", a, b);
        free(pa);
        free(pb);
        return 0;
    }
    int same = la == lb && memcmp(pa, pb, la) == 0;
    if (want_same) {
        for (i = 0; !same && i < (la < lb ? la : lb); ++i)
            if (pa[i] != pb[i]) break;
        ok = kt_check(name, same, "%s (%zu bytes) and %s (%zu bytes) differ, first at byte %zu", a, la, b, lb, i);
    } else {
        ok = kt_check(name, !same, "%s and %s are identical", a, b);
    }
    free(pa);
    free(pb);
    return ok;
}

/* run 2: a fresh process loads the saved weights (and their .kfac) and continues */
static int resumed_run(const char *cfg, const char *from, const char *to, int expect_step)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        network *net = load_network((char *)cfg, (char *)from, 0);
        char nm[128];
        snprintf(nm, sizeof nm, "%sresumed_at_kfac_step_%d", tag, expect_step);
        kt_check(nm, kfac_network_step(net) == expect_step, "K-FAC step after load_network: %d", kfac_network_step(net));
        kt_train_updates(net, 51, N_FIRST, M_MORE);
        save_weights(net, (char *)to);
        free_network(net);
        fflush(stdout);
        _exit(kt_failures ? 1 : 0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/* kt_check with the variant's tag before the name */
static int tagged(const char *name, int cond, const char *why)
{
    char nm[160];
    snprintf(nm, sizeof nm, "%s%s", tag, name);
    return kt_check(nm, cond, "%s", why);
}

static void variant(const char *name_tag, const char *section)
{
    char cfgp[128], mid[128], straight[128], resumed[128], nostate[128], nostate_from[128], nm[160];
    tag = name_tag;
    snprintf(cfgp, sizeof cfgp, "build/tests/resume%s.cfg", tag);
    const char *cfg = kt_cfg_with(cfgp, "tests/cfg/small.cfg", section);
    snprintf(mid, sizeof mid, "build/tests/resume%s-mid.weights", tag);
    snprintf(straight, sizeof straight, "build/tests/resume%s-straight.weights", tag);
    snprintf(resumed, sizeof resumed, "build/tests/resume%s-resumed.weights", tag);
    snprintf(nostate, sizeof nostate, "build/tests/resume%s-nostate.weights", tag);
    snprintf(nostate_from, sizeof nostate_from, "build/tests/resume%s-mid-nostate.weights", tag);
    const char *files[] = {mid, straight, resumed, nostate, nostate_from};
    char path[256];
    size_t i;
    for (i = 0; i < sizeof files / sizeof files[0]; ++i) {
        remove(files[i]);
        snprintf(path, sizeof path, "%s.kfac", files[i]);
        remove(path);
    }

    network *net = kt_net(cfg, 8);
    kt_train_updates(net, 51, 0, N_FIRST);
    save_weights(net, (char *)mid);
    kt_train_updates(net, 51, N_FIRST, M_MORE);
    save_weights(net, (char *)straight);
    free_network(net);

    snprintf(path, sizeof path, "%s.kfac", mid);
    size_t len = 0;
    unsigned char *st = slurp(path, &len);
    tagged("save_weights_writes_kfac_state", st && len > 0, "no state file after save_weights");
    free(st);

    tagged("resumed_process_ran", resumed_run(cfg, mid, resumed, N_FIRST), "the resumed run's process failed");
    snprintf(nm, sizeof nm, "%sresumed_weights_bit_identical", tag);
    files_same(nm, straight, resumed, 1);
    char a[256], b[256];
    snprintf(a, sizeof a, "%s.kfac", straight);
    snprintf(b, sizeof b, "%s.kfac", resumed);
    snprintf(nm, sizeof nm, "%sresumed_kfac_state_bit_identical", tag);
    files_same(nm, a, b, 1);

    /* control: the weights alone (a copy without .kfac) */
    size_t wl = 0;
    unsigned char *w = slurp(mid, &wl);
    FILE *f = fopen(nostate_from, "wb");
    if (w && f) fwrite(w, 1, wl, f);
    if (f) fclose(f);
    free(w);
    tagged("control_resumed_without_state_ran", resumed_run(cfg, nostate_from, nostate, 0),
           "the control run's process failed");
    snprintf(nm, sizeof nm, "%scontrol_without_state_file_differs", tag);
    files_same(nm, straight, nostate, 0);
}

int main(void)
{
    variant("", kfac_sections[0]);
    variant("adaptive_", kfac_sections[1]);
    return kt_exit();
}
